//! Durable runs: a `#[job(durable)]` job's input and every step's output are stored, so a run
//! checkpoints each step as it completes and resumes where it stopped.
//!
//! [`Runner::store`](crate::Runner::store) makes a [`DurableRunner`]: it opens the run in the
//! store (creating it with the job's value as its input, or loading it), takes the run's lease
//! so no other runner executes it at the same time, seeds the run with every output already
//! stored, and runs the rest. Each step's output is committed before any of its children starts
//! (a `SqliteStore` commits it together with the other runs' writes queued at the same time; a
//! write that fails is rolled back alone); a failed step's error and attempts are recorded with
//! the steps it skipped. [`resume`] does the same from the stored input alone.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::batch::durable::{DurableBatch, DurableBatchResults, DurableResult, batch_run_id};
use crate::run::RunCore;
use crate::runner::{Runner, drive};
use crate::store::{
    GraphSpec, RunSpec, RunState, StepOutcome, StepSpec, Store, StoreError, StoredRun,
};
use crate::{Job, JobStep, StepError};

/// How long a run's lease lasts without renewal: a runner that crashed holds its runs this long
/// at most. The runner renews it every third of that while it runs.
pub const LEASE: Duration = Duration::from_secs(30);

/// A job whose value (its input) and outputs are stored: what `#[job(durable)]` implements.
///
/// The job type and every step's output must be `serde::Serialize` and
/// `serde::Deserialize`; the macro reports a type that is not on the type itself.
pub trait DurableJob: Job {
    /// How the job's value is stored as the run's input.
    #[doc(hidden)]
    fn __input() -> Codec<Self>;

    /// The outputs of the completed steps of a stored run, decoded: what a resumed run starts
    /// from.
    #[doc(hidden)]
    fn __decode(run: &StoredRun) -> Result<Self::Partial, DecodeError>;

    /// The stored form of `step`'s output, if `partial` holds it: what a worker commits after
    /// running one step.
    #[doc(hidden)]
    fn __encode(
        partial: &Self::Partial,
        step: Self::Step,
    ) -> Result<Option<String>, serde_json::Error>;
}

/// Encodes `value`, if there is one, with `encode`.
#[doc(hidden)]
pub fn encode<T>(
    value: &Option<T>,
    encode: Encode<T>,
) -> Result<Option<String>, serde_json::Error> {
    value.as_ref().map(encode).transpose()
}

/// What can be stored: the value of a `#[job(durable)]` job and its steps' outputs.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is stored by a `#[job(durable)]` job, but it is not `serde::Serialize` and `serde::Deserialize`",
    label = "stored as JSON: derive `Serialize` and `Deserialize` for it",
    note = "a durable job stores its value (the run's input) and every step's output, to resume a run after a crash; add `#[derive(serde::Serialize, serde::Deserialize)]` to the type, or leave `durable` out"
)]
pub trait Stored: Serialize + DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> Stored for T {}

/// How one type is stored: as JSON.
pub struct Codec<T> {
    /// Into its stored form.
    pub encode: Encode<T>,
    /// From its stored form.
    pub decode: fn(&str) -> Result<T, serde_json::Error>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Codec<T> {}

/// How the outputs of a `for_each` step are stored: each element's as it completes, and the
/// step's whole `Vec` when all did.
pub struct ElementsCodec<T> {
    /// One element's output.
    pub element: Codec<T>,
    /// The step's output.
    pub all: Codec<Vec<T>>,
}

/// The codecs of a `for_each` step whose elements output `T`.
#[doc(hidden)]
pub fn elements_codec<T: Stored>() -> ElementsCodec<T> {
    ElementsCodec {
        element: codec::<T>(),
        all: codec::<Vec<T>>(),
    }
}

/// The codec of a stored type.
#[doc(hidden)]
pub fn codec<T: Stored>() -> Codec<T> {
    Codec {
        encode: |value| serde_json::to_string(value),
        decode: |json| serde_json::from_str(json),
    }
}

/// A stored output that no longer decodes as its step's output type (the code changed since it
/// was stored).
#[derive(Debug, thiserror::Error)]
#[error(
    "the stored output of step `{step}` does not decode as its type ({error}); reset the step to \
     run it again (`jobgraph redrive RUN {step}` or `Store::reset_step`)"
)]
pub struct DecodeError {
    /// The step whose output does not decode.
    pub step: &'static str,
    /// Why.
    #[source]
    pub error: serde_json::Error,
}

impl DecodeError {
    #[doc(hidden)]
    pub fn new(step: &'static str, error: serde_json::Error) -> Self {
        DecodeError { step, error }
    }
}

/// Why a durable run did not return its outputs.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum DurableError<S: JobStep, P = ()> {
    /// The run ran, and a step failed (or the run was cancelled): its output and error are
    /// stored, and the next resume runs what did not complete.
    #[error(transparent)]
    Job(crate::JobError<S, P>),
    /// The store could not open, load or finish the run.
    #[error("run `{run}`: {error}")]
    Store {
        /// The run's id.
        run: String,
        /// The store's error.
        #[source]
        error: StoreError,
    },
    /// A stored output does not decode as its step's type.
    #[error("run `{run}`: {error}")]
    Decode {
        /// The run's id.
        run: String,
        /// Which step, and why.
        #[source]
        error: DecodeError,
    },
    /// The job's value could not be stored or read back as the run's input.
    #[error("run `{run}`: its input {what}: {error}")]
    Input {
        /// The run's id.
        run: String,
        /// What went wrong with it.
        what: &'static str,
        /// serde_json's error.
        #[source]
        error: serde_json::Error,
    },
}

impl<S: JobStep, P> std::fmt::Debug for DurableError<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurableError::Job(error) => f.debug_tuple("Job").field(error).finish(),
            other => write!(f, "{other}"),
        }
    }
}

impl<S: JobStep, P> DurableError<S, P> {
    /// The run's error, if it ran and a step failed.
    pub fn job_error(&self) -> Option<&crate::JobError<S, P>> {
        match self {
            DurableError::Job(error) => Some(error),
            _ => None,
        }
    }
}

/// The error of a durable run of `J`.
pub type DurableErrorOf<J> = DurableError<<J as Job>::Step, <J as Job>::Partial>;

/// What a run that checkpoints needs: where, which run, and the lease it holds.
pub(crate) struct Durable {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) run_id: Arc<str>,
    pub(crate) owner: Arc<str>,
}

/// Turns a step's output into the JSON stored for it.
pub type Encode<T> = fn(&T) -> Result<String, serde_json::Error>;

/// Decodes the stored output of `step` with `codec`, if it completed.
#[doc(hidden)]
pub fn decode<T>(
    run: &StoredRun,
    step: &'static str,
    codec: Codec<T>,
) -> Result<Option<T>, DecodeError> {
    let Some(stored) = run.steps.iter().find(|s| s.name == step) else {
        return Ok(None);
    };
    if stored.state != crate::store::StepStatus::Completed {
        return Ok(None);
    }
    match &stored.output {
        None => Ok(None),
        Some(json) => (codec.decode)(json)
            .map(Some)
            .map_err(|error| DecodeError::new(step, error)),
    }
}

/// The outputs of stored run `run`, which succeeded, from its decoded outputs `seed`.
///
/// A step of `J` the run holds no output of (the job gained the step after the run succeeded)
/// is [`StoreError::NoSuchStep`] naming it ([`every_output`]).
pub(crate) fn succeeded_outputs<J: DurableJob>(
    run: &StoredRun,
    seed: J::Partial,
) -> Result<J::Outputs, DurableErrorOf<J>> {
    every_output::<J>(run).map_err(|error| DurableError::Store {
        run: run.id.clone(),
        error,
    })?;
    Ok(J::__outputs(seed))
}

/// Whether stored run `run` holds the output of every step of `J`, as `J::__outputs` needs
/// (it panics without one): else [`StoreError::NoSuchStep`] naming the first step without, a
/// step the job gained after the run succeeded, or rows that say a run succeeded before all of
/// its steps completed.
pub(crate) fn every_output<J: DurableJob>(run: &StoredRun) -> Result<(), StoreError> {
    let missing = J::Step::ALL.iter().map(|s| s.name()).find(|&name| {
        !run.step(name)
            .is_some_and(|s| s.state == crate::store::StepStatus::Completed && s.output.is_some())
    });
    match missing {
        None => Ok(()),
        Some(step) => Err(StoreError::NoSuchStep {
            run: run.id.clone(),
            step: step.to_owned(),
        }),
    }
}

/// Unix milliseconds of a moment `nanos` after the run started.
fn unix_ms<S: JobStep>(run: &RunCore<S>, nanos: u64) -> i64 {
    let at = run.started_at() + Duration::from_nanos(nanos);
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Stores how `step` of a durable run ended, before anything learns of it: its output (encoded
/// with `encode`) if it completed, else its error and the steps it skips. A failed commit fails
/// the step ([`StepError::Checkpoint`]). Does nothing outside a durable run.
pub(crate) async fn checkpoint<S: JobStep, T>(
    run: &RunCore<S>,
    step: S,
    attempts: u32,
    first_start: u64,
    outcome: Result<T, StepError>,
    encode: Option<Encode<T>>,
) -> Result<T, StepError> {
    let (Some(durable), Some(encode)) = (run.durable(), encode) else {
        return outcome;
    };
    let started_at = Some(unix_ms(run, first_start));
    let ended_at = now_ms();
    match outcome {
        Ok(value) => {
            let json = encode(&value).map_err(|e| StepError::Checkpoint(Box::new(e)))?;
            let outcome = StepOutcome {
                step: step.name(),
                attempts,
                output: Some(&json),
                error: None,
                started_at,
                ended_at,
            };
            durable
                .store
                .step_completed(&durable.run_id, &durable.owner, outcome)
                .await
                .map_err(|e| StepError::Checkpoint(Box::new(e)))?;
            Ok(value)
        }
        Err(error) => {
            if error.is_cancelled() {
                return Err(error);
            }
            let text = error.to_string();
            // The steps the run is about to record as skipped: the same rule, before it does.
            let skipped: Vec<&str> = run
                .to_skip(step)
                .iter()
                .map(|&i| S::ALL[i].name())
                .collect();
            let outcome = StepOutcome {
                step: step.name(),
                attempts,
                output: None,
                error: Some(&text),
                started_at,
                ended_at,
            };
            if let Err(store_error) = durable
                .store
                .step_failed(&durable.run_id, &durable.owner, outcome, &skipped)
                .await
            {
                tracing::error!(step = step.name(), error = %store_error, "a step's failure could not be stored");
            }
            Err(error)
        }
    }
}

/// The graph of `J` as the store keeps it, so the run's report, DOT and redrive work from the
/// store alone.
pub fn graph_spec<J: Job>() -> GraphSpec {
    GraphSpec {
        steps: J::STEPS
            .iter()
            .map(|info| StepSpec {
                name: info.name().to_owned(),
                parents: info.parent_indices().to_vec(),
                after: info.after_indices().to_vec(),
            })
            .collect(),
    }
}

/// A run of a `#[job(durable)]` job that checkpoints into a [`Store`]:
/// `job.runner().store(&store).job_id("import-7").run()`.
#[must_use = "a runner does nothing until `run` is awaited"]
pub struct DurableRunner<'j, J: DurableJob> {
    runner: Runner<'j, J>,
    store: Arc<dyn Store>,
    batch: Option<String>,
    lease: Duration,
}

impl<'j, J: DurableJob> DurableRunner<'j, J> {
    pub(crate) fn new(runner: Runner<'j, J>, store: Arc<dyn Store>) -> Self {
        DurableRunner {
            runner,
            store,
            batch: None,
            lease: LEASE,
        }
    }

    /// Sets how long the run's lease lasts without renewal ([`LEASE`] unless set): how long
    /// a runner that died keeps its run from other runners. It is renewed every third of it.
    ///
    /// # Panics
    ///
    /// If `lease` is zero.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            !lease.is_zero(),
            "DurableRunner::lease: a lease must not be zero"
        );
        self.lease = lease;
        self
    }

    /// Sets the run's id: the key of the run in the store. Running an id again resumes it.
    ///
    /// # Panics
    ///
    /// If `id` is empty.
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        self.runner = self.runner.job_id(id);
        self
    }

    /// Records the run as part of the named batch (for listing and counting).
    pub fn batch(mut self, name: impl Into<String>) -> Self {
        self.batch = Some(name.into());
        self
    }

    /// Runs the job, or resumes its run: the outputs already stored are not computed again, and
    /// a run that completed returns its stored outputs without running anything.
    pub async fn run(self) -> Result<J::Outputs, DurableErrorOf<J>> {
        let DurableRunner {
            runner,
            store,
            batch,
            lease,
        } = self;
        let run_id: Arc<str> = match runner.job_id_option() {
            Some(id) => Arc::clone(id),
            None => Arc::from(format!("{}-{}", J::NAME, owner_id())),
        };
        let id = run_id.to_string();
        let input = (J::__input().encode)(runner.job()).map_err(|error| DurableError::Input {
            run: id.clone(),
            what: "could not be encoded",
            error,
        })?;
        let graph = graph_spec::<J>();
        let owner: Arc<str> = Arc::from(owner_id());
        let spec = RunSpec {
            id: &id,
            job: J::NAME,
            input: &input,
            graph: &graph,
            batch: batch.as_deref(),
        };
        let stored =
            store
                .open_run(spec, &owner, lease)
                .await
                .map_err(|error| DurableError::Store {
                    run: id.clone(),
                    error,
                })?;
        let seed = match J::__decode(&stored) {
            Ok(seed) => seed,
            Err(error) => {
                // Nothing ran: give the lease back, the run paused until the step is reset.
                let text = error.to_string();
                let _ = store
                    .finish_run(&id, &owner, RunState::Cancelled, Some(&text))
                    .await;
                return Err(DurableError::Decode { run: id, error });
            }
        };
        if stored.state == RunState::Succeeded {
            let finish = store
                .finish_run(&id, &owner, RunState::Succeeded, None)
                .await;
            finish.map_err(|error| DurableError::Store {
                run: id.clone(),
                error,
            })?;
            return succeeded_outputs::<J>(&stored, seed);
        }
        let durable = Durable {
            store: Arc::clone(&store),
            run_id: Arc::clone(&run_id),
            owner: Arc::clone(&owner),
        };
        let (job, run, seed) = runner.job_id(id.clone()).seed(seed).durable(durable);
        let result = {
            let heartbeat = heartbeat(&*store, &id, &owner, lease);
            let drive = drive(job, &run, seed);
            futures::pin_mut!(heartbeat);
            futures::pin_mut!(drive);
            match futures::future::select(drive, heartbeat).await {
                futures::future::Either::Left((result, _)) => result,
                futures::future::Either::Right((error, _)) => {
                    // The lease is lost: another runner may run this run now. Stop: returning
                    // drops the run's future (pinned in this scope) and its steps.
                    return Err(DurableError::Store {
                        run: id.clone(),
                        error,
                    });
                }
            }
        };
        let (state, error) = match &result {
            Ok(_) => (RunState::Succeeded, None),
            Err(error) if error.is_cancelled() => (RunState::Cancelled, Some(error.to_string())),
            Err(error) => (RunState::Failed, Some(error.to_string())),
        };
        store
            .finish_run(&id, &owner, state, error.as_deref())
            .await
            .map_err(|error| DurableError::Store {
                run: id.clone(),
                error,
            })?;
        result.map(J::__outputs).map_err(DurableError::Job)
    }
}

/// Renews the run's lease every third of `lease`; returns only if the lease is lost.
async fn heartbeat(store: &dyn Store, run_id: &str, owner: &str, lease: Duration) -> StoreError {
    loop {
        tokio::time::sleep(lease / 3).await;
        if let Err(error) = store.renew_lease(run_id, owner, lease).await {
            return error;
        }
    }
}

/// An owner id unique to this runner: the process, and a counter.
pub(crate) fn owner_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "pid-{}-{}-{}",
        std::process::id(),
        now_ms(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Resumes stored run `id` of `J` from its stored input alone: runs what did not complete, and
/// returns the outputs (a completed run's stored outputs, without running anything). For a job
/// that declares resources, [`resume_with`].
pub async fn resume<J: DurableJob<Resources = ()>>(
    store: &(impl Store + Clone),
    id: &str,
) -> Result<J::Outputs, DurableErrorOf<J>> {
    resume_with::<J>(store, id, &()).await
}

/// [`resume`] for a job that declares resources (`#[job(durable, resources = T)]`): its steps
/// borrow `resources`, which the store does not hold.
pub async fn resume_with<J: DurableJob>(
    store: &(impl Store + Clone),
    id: &str,
    resources: &J::Resources,
) -> Result<J::Outputs, DurableErrorOf<J>> {
    let stored = store
        .load_run(id)
        .await
        .map_err(|error| DurableError::Store {
            run: id.to_owned(),
            error,
        })?
        .ok_or_else(|| DurableError::Store {
            run: id.to_owned(),
            error: StoreError::NoSuchRun { run: id.to_owned() },
        })?;
    let job: J = (J::__input().decode)(&stored.input).map_err(|error| DurableError::Input {
        run: id.to_owned(),
        what: "does not decode as the job's type",
        error,
    })?;
    let runner = Runner::with_resources(&job, resources).job_id(id);
    DurableRunner::new(runner, Arc::new(store.clone()))
        .run()
        .await
}

/// Resumes durable batch `name` of `J` from the store alone: a [`DurableBatch`] of every run the
/// store holds for the batch (runs `name/0`, `name/1`..., in that order), which, when run, runs
/// from their stored inputs those that did not succeed, and loads the outputs of those that did.
/// Set its concurrency, status listener and other options before running it:
/// `resume_batch::<Import>(&store, "nightly").concurrency(8).run().await`. For a job that
/// declares resources, [`resume_batch_with`].
///
/// # Panics
///
/// If `name` is empty.
pub fn resume_batch<J: DurableJob<Resources = ()>>(
    store: &(impl Store + Clone),
    name: impl Into<String>,
) -> DurableBatch<J> {
    resume_batch_with(store, name, Arc::new(()))
}

/// [`resume_batch`] for a job that declares resources (`#[job(durable, resources = T)]`): every
/// run's steps borrow `resources`.
///
/// # Panics
///
/// If `name` is empty.
pub fn resume_batch_with<J: DurableJob>(
    store: &(impl Store + Clone),
    name: impl Into<String>,
    resources: Arc<J::Resources>,
) -> DurableBatch<J> {
    DurableBatch::new(
        Arc::new(store.clone()),
        name.into(),
        None,
        crate::batch::BatchOptions::new(resources),
    )
}
