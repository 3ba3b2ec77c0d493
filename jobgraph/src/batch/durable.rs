//! [`DurableBatch`]: a named batch of durable runs (jorb's Run). Its inputs are stored as runs
//! `NAME/0`, `NAME/1`... before any of them runs, each run checkpoints through
//! [`DurableRunner`], and running the batch again (or [`resume_batch`](crate::durable::resume_batch)
//! from the store alone) runs only what did not succeed, its status starting from what the store
//! holds.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt as _};

use super::status::{Counters, RunOutcome, RunTracker};
use super::{BatchOptions, BatchStatus, BatchSummary, BoxListener, Configure};
use crate::durable::{DurableError, DurableErrorOf, DurableJob, DurableRunner, LEASE};
use crate::store::{
    GraphSpec, RunFilter, RunSpec, RunState, RunSummary, StepStatus, Store, StoreError, StoredRun,
};
use crate::{CancellationToken, Job, JobStep, Runner};

/// What a durable run returns: its outputs, or why not.
pub type DurableResult<J> = Result<<J as Job>::Outputs, DurableErrorOf<J>>;

/// The id of the run of input `index` of batch `name`: `name/index`. A rerun of the batch maps
/// each input to the same run.
pub fn batch_run_id(name: &str, index: usize) -> String {
    format!("{name}/{index}")
}

/// The error text of a run a batch stored but has not started yet.
const NOT_STARTED: &str = "not started yet: stored with its batch; resume the batch to run it";

/// Where a durable batch's inputs come from.
enum Source<J> {
    /// Given: input `i` is run `NAME/i`.
    Inputs(Vec<J>),
    /// The runs the store holds for the batch ([`resume_batch`](crate::durable::resume_batch)).
    Stored,
}

/// A batch whose runs are durable: [`Batch::store`](super::Batch::store), or
/// [`resume_batch`](crate::durable::resume_batch).
///
/// [`run`](DurableBatch::run) first stores every input that has no run yet as run
/// [`NAME/INDEX`](batch_run_id) of the batch (resumable, not started), so that after a crash the
/// store alone knows the whole batch. Then it runs the inputs in order, at most
/// [`concurrency`](DurableBatch::concurrency) at a time, each through [`DurableRunner`] with
/// that run id and the batch's name: every step is checkpointed, and a run resumes from the
/// steps it completed. A run that already succeeded is not run again: its outputs are loaded
/// from the store. A run that failed runs again (its completed steps are loaded, its failed
/// steps run). A batch cancelled ([`cancel_on`](DurableBatch::cancel_on),
/// [`cancel_on_failure`](DurableBatch::cancel_on_failure)) leaves its runs stored and
/// resumable, those it cancelled and those it never started.
///
/// The [status](DurableBatch::status_listener) starts from the store: runs that succeeded count
/// as succeeded, and the steps that completed in the other runs as completed, before anything
/// runs; so [`ProgressBars`](crate::ProgressBars) start where the last attempt left off.
///
/// ```
/// use jobgraph::store::MemoryStore;
/// use jobgraph::{Batch, job};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Square {
///     n: u64,
/// }
///
/// #[job(durable)]
/// impl Square {
///     #[step]
///     async fn square(&self) -> u64 {
///         self.n * self.n
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let store = MemoryStore::new();
/// let done = Batch::new((1..=10).map(|n| Square { n }))
///     .store(&store, "squares")
///     .run()
///     .await
///     .unwrap();
/// assert_eq!(done.results[2].as_ref().unwrap().square, 9);
/// assert_eq!(done.run_ids[2], "squares/2");
///
/// // Again: every run succeeded, so their outputs are loaded and nothing runs.
/// let again = Batch::new((1..=10).map(|n| Square { n }))
///     .store(&store, "squares")
///     .run()
///     .await
///     .unwrap();
/// assert_eq!((again.loaded, again.summary.succeeded), (10, 10));
///
/// // Or from the store alone.
/// let resumed = jobgraph::durable::resume_batch::<Square>(&store, "squares").run().await.unwrap();
/// assert_eq!(resumed.results[9].as_ref().unwrap().square, 100);
/// # }
/// ```
#[must_use = "a batch does nothing until it is run"]
pub struct DurableBatch<J: DurableJob> {
    store: Arc<dyn Store>,
    name: String,
    source: Source<J>,
    options: BatchOptions<J>,
    lease: Duration,
}

impl<J: DurableJob> DurableBatch<J> {
    /// The batch of `inputs` named `name` in `store`.
    ///
    /// # Panics
    ///
    /// If `name` is empty.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        name: String,
        inputs: Option<Vec<J>>,
        options: BatchOptions<J>,
    ) -> Self {
        assert!(
            !name.is_empty(),
            "a durable batch's name must not be empty: its runs are named after it"
        );
        DurableBatch {
            store,
            name,
            source: match inputs {
                Some(inputs) => Source::Inputs(inputs),
                None => Source::Stored,
            },
            options,
            lease: LEASE,
        }
    }

    /// The batch's name: its runs are `NAME/0`, `NAME/1`...
    pub fn name(&self) -> &str {
        &self.name
    }

    batch_options!("DurableBatch");

    /// Sets each run's lease ([`DurableRunner::lease`]; [`LEASE`] unless set): how long a
    /// process that died keeps its runs from the next one.
    ///
    /// A run whose lease another runner holds (it is running elsewhere, or its process died
    /// less than a lease ago) is not an error: the batch waits for that lease to end, then runs
    /// it. So a batch resumed right after a crash finishes the runs that were in flight once
    /// their leases expire.
    ///
    /// # Panics
    ///
    /// If `lease` is zero.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(
            !lease.is_zero(),
            "DurableBatch::lease: a lease must not be zero"
        );
        self.lease = lease;
        self
    }

    /// Stores the inputs that have no run yet, then runs every run of the batch that has not
    /// succeeded, and loads the outputs of those that have: every run's result in input order.
    ///
    /// An error before any run starts (the store fails, a stored input no longer decodes, a run
    /// id of the batch belongs to another job) is returned as is; a run's own error is in its
    /// result.
    pub async fn run(self) -> Result<DurableBatchResults<J>, DurableErrorOf<J>> {
        let DurableBatch {
            store,
            name,
            source,
            options,
            lease,
        } = self;
        let token = options.token();
        let BatchOptions {
            resources,
            concurrency,
            cancel_on_failure,
            configure,
            listener,
            ..
        } = options;
        let plan = plan::<J>(&*store, &name, source).await?;
        let total = plan.len();
        let counters = Arc::new(Counters::new::<J::Step>(total, true));
        let mut completed = vec![0; J::Step::ALL.len()];
        let mut succeeded = 0;
        for planned in &plan {
            if planned.succeeded {
                succeeded += 1;
            } else {
                for (n, &done) in completed.iter_mut().zip(&planned.completed) {
                    *n += usize::from(done);
                }
            }
        }
        counters.preset(succeeded, &completed);
        let mut notifier = Notifier {
            listener,
            counters: Arc::clone(&counters),
            seen: None,
            scratch: BatchStatus::empty(),
        };
        notifier.notify();

        let name: Arc<str> = Arc::from(name);
        let run_ids: Vec<String> = plan.iter().map(|p| p.id.clone()).collect();
        let mut by_index: Vec<Option<DurableResult<J>>> = Vec::with_capacity(total);
        by_index.resize_with(total, || None);
        let mut pending = plan.into_iter().enumerate();
        let mut runs = FuturesUnordered::new();
        let mut taken = 0;
        loop {
            while runs.len() < concurrency && !token.is_cancelled() {
                let Some((index, planned)) = pending.next() else {
                    break;
                };
                taken += 1;
                if !planned.succeeded {
                    counters.run_started(0);
                }
                let env = Env {
                    store: Arc::clone(&store),
                    batch: Arc::clone(&name),
                    configure: configure.clone(),
                    resources: Arc::clone(&resources),
                    token: token.clone(),
                    counters: Arc::clone(&counters),
                    lease,
                };
                runs.push(run_planned::<J>(index, planned, env));
            }
            let next = futures::future::poll_fn(|cx| {
                let poll = runs.poll_next_unpin(cx);
                notifier.notify();
                poll
            })
            .await;
            let Some((index, result, ran)) = next else {
                break;
            };
            if ran {
                let outcome = match &result {
                    Ok(_) => RunOutcome::Succeeded,
                    Err(DurableError::Job(error)) if error.is_cancelled() => RunOutcome::Cancelled,
                    Err(_) => RunOutcome::Failed,
                };
                counters.run_ended(outcome);
                if cancel_on_failure && outcome == RunOutcome::Failed {
                    token.cancel();
                }
            }
            by_index[index] = Some(result);
        }
        // Cancelled: the runs not started stay stored, resumable; here they count as cancelled.
        counters.inputs_ended(taken, total - taken);
        counters.finished();
        notifier.notify();
        let results: Vec<DurableResult<J>> =
            by_index.into_iter().map_while(|result| result).collect();
        let summary = counters.summary::<J::Step>();
        let mut run_ids = run_ids;
        run_ids.truncate(results.len());
        Ok(DurableBatchResults {
            results,
            run_ids,
            summary,
            loaded: succeeded,
        })
    }
}

impl<J: DurableJob> fmt::Debug for DurableBatch<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableBatch")
            .field("job", &J::NAME)
            .field("name", &self.name)
            .field(
                "inputs",
                &match &self.source {
                    Source::Inputs(inputs) => Some(inputs.len()),
                    Source::Stored => None,
                },
            )
            .field("concurrency", &self.options.concurrency)
            .field("cancel_on_failure", &self.options.cancel_on_failure)
            .finish_non_exhaustive()
    }
}

/// How a [`DurableBatch`] ended.
pub struct DurableBatchResults<J: Job> {
    /// Each run's result, in input order (for [`resume_batch`](crate::durable::resume_batch),
    /// in the order of the runs' indices). A batch stopped early ([`cancel_on_failure`](DurableBatch::cancel_on_failure),
    /// [`cancel_on`](DurableBatch::cancel_on)) leaves out the runs it did not start.
    pub results: Vec<DurableResult<J>>,
    /// The run id of each result (`NAME/INDEX`).
    pub run_ids: Vec<String>,
    /// The counts of runs by outcome, those that had succeeded before included.
    pub summary: BatchSummary,
    /// How many runs had succeeded before this batch ran: their outputs were loaded from the
    /// store, nothing of them ran.
    pub loaded: usize,
}

impl<J: Job> DurableBatchResults<J> {
    /// True if every run of the batch succeeded.
    pub fn is_success(&self) -> bool {
        self.summary.is_success()
    }
}

impl<J: Job> fmt::Debug for DurableBatchResults<J>
where
    J::Outputs: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DurableBatchResults")
            .field("results", &self.results)
            .field("run_ids", &self.run_ids)
            .field("summary", &self.summary)
            .field("loaded", &self.loaded)
            .finish()
    }
}

/// One run of the batch, as planned from the store before anything runs.
struct Planned<J> {
    id: String,
    /// The input to run; `None` for a run that succeeded (loaded, not run).
    job: Option<J>,
    succeeded: bool,
    /// The steps (by index) already completed in the store.
    completed: Vec<bool>,
}

/// Reads what the store holds of batch `name`, stores the inputs it does not hold yet, and
/// returns every run of the batch, in order.
async fn plan<J: DurableJob>(
    store: &dyn Store,
    name: &str,
    source: Source<J>,
) -> Result<Vec<Planned<J>>, DurableErrorOf<J>> {
    let store_error = |run: &str| {
        let run = run.to_owned();
        move |error| DurableError::Store { run, error }
    };
    let filter = RunFilter {
        batch: Some(name.to_owned()),
        ..RunFilter::default()
    };
    let listed = store.list_runs(&filter).await.map_err(store_error(name))?;
    if let Some(other) = listed.iter().find(|run| run.job != J::NAME) {
        return Err(DurableError::Store {
            run: other.id.clone(),
            error: StoreError::Mismatch {
                run: other.id.clone(),
                stored_job: other.job.clone(),
                job: J::NAME.to_owned(),
            },
        });
    }
    let mut planned = Vec::new();
    match source {
        Source::Inputs(inputs) => {
            let stored: HashMap<&str, &RunSummary> =
                listed.iter().map(|run| (run.id.as_str(), run)).collect();
            // The inputs without a run: (id, input JSON), stored below.
            let mut new = Vec::new();
            for (index, job) in inputs.into_iter().enumerate() {
                let id = batch_run_id(name, index);
                let Some(summary) = stored.get(id.as_str()) else {
                    let input =
                        (J::__input().encode)(&job).map_err(|error| DurableError::Input {
                            run: id.clone(),
                            what: "could not be encoded",
                            error,
                        })?;
                    new.push((id.clone(), input));
                    planned.push(Planned {
                        id,
                        job: Some(job),
                        succeeded: false,
                        completed: vec![false; J::Step::ALL.len()],
                    });
                    continue;
                };
                let succeeded = summary.state == RunState::Succeeded;
                let completed = if !succeeded && summary.steps.completed > 0 {
                    let run = load::<J>(store, &id).await?;
                    completed_steps::<J>(&run)
                } else {
                    vec![succeeded; J::Step::ALL.len()]
                };
                planned.push(Planned {
                    id,
                    job: (!succeeded).then_some(job),
                    succeeded,
                    completed,
                });
            }
            // Many at once: a store that commits concurrent writes together (`SqliteStore`)
            // stores the batch in a few transactions, not two per input.
            let graph = crate::durable::graph_spec::<J>();
            let owner = crate::durable::owner_id();
            let mut new = new.iter();
            let mut storing = FuturesUnordered::new();
            loop {
                while storing.len() < STORING_AT_ONCE
                    && let Some((id, input)) = new.next()
                {
                    storing.push(store_input::<J>(store, name, &graph, &owner, id, input));
                }
                match storing.next().await {
                    Some(stored) => stored?,
                    None => break,
                }
            }
        }
        Source::Stored => {
            let prefix = format!("{name}/");
            let mut listed = listed;
            // By index (`NAME/INDEX`), then the runs added under other ids, by id.
            listed.sort_by_cached_key(|run| {
                let index = run
                    .id
                    .strip_prefix(&prefix)
                    .and_then(|i| i.parse::<usize>().ok());
                (index.is_none(), index, run.id.clone())
            });
            for summary in listed {
                let succeeded = summary.state == RunState::Succeeded;
                if succeeded {
                    planned.push(Planned {
                        id: summary.id,
                        job: None,
                        succeeded,
                        completed: vec![true; J::Step::ALL.len()],
                    });
                    continue;
                }
                let run = load::<J>(store, &summary.id).await?;
                let job =
                    (J::__input().decode)(&run.input).map_err(|error| DurableError::Input {
                        run: summary.id.clone(),
                        what: "does not decode as the job's type",
                        error,
                    })?;
                planned.push(Planned {
                    completed: completed_steps::<J>(&run),
                    id: summary.id,
                    job: Some(job),
                    succeeded,
                });
            }
        }
    }
    Ok(planned)
}

/// How many inputs [`plan`] stores at once.
const STORING_AT_ONCE: usize = 256;

/// Stores run `id` of batch `name` with `input`, not started: resumable, its lease released.
async fn store_input<J: DurableJob>(
    store: &dyn Store,
    name: &str,
    graph: &GraphSpec,
    owner: &str,
    id: &str,
    input: &str,
) -> Result<(), DurableErrorOf<J>> {
    let store_error = |error| DurableError::Store {
        run: id.to_owned(),
        error,
    };
    let spec = RunSpec {
        id,
        job: J::NAME,
        input,
        graph,
        batch: Some(name),
    };
    store
        .open_run(spec, owner, LEASE)
        .await
        .map_err(store_error)?;
    store
        .finish_run(id, owner, RunState::Cancelled, Some(NOT_STARTED))
        .await
        .map_err(store_error)
}

/// Loads run `id`, which the store listed.
async fn load<J: DurableJob>(store: &dyn Store, id: &str) -> Result<StoredRun, DurableErrorOf<J>> {
    let store_error = |error| DurableError::Store {
        run: id.to_owned(),
        error,
    };
    store
        .load_run(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| store_error(StoreError::NoSuchRun { run: id.to_owned() }))
}

/// Which steps of `J` completed in `run`, by index.
fn completed_steps<J: Job>(run: &StoredRun) -> Vec<bool> {
    J::Step::ALL
        .iter()
        .map(|step| {
            run.step(step.name())
                .is_some_and(|s| s.state == StepStatus::Completed)
        })
        .collect()
}

/// What each run's future needs besides its plan.
struct Env<J: Job> {
    store: Arc<dyn Store>,
    batch: Arc<str>,
    configure: Option<Configure<J>>,
    resources: Arc<J::Resources>,
    token: CancellationToken,
    counters: Arc<Counters>,
    lease: Duration,
}

/// Runs (or, if it succeeded, loads) the planned run at `index`: its result, and whether it ran.
async fn run_planned<J: DurableJob>(
    index: usize,
    planned: Planned<J>,
    env: Env<J>,
) -> (usize, DurableResult<J>, bool) {
    let Env {
        store,
        batch,
        configure,
        resources,
        token,
        counters,
        lease,
    } = env;
    let Planned {
        id, job, completed, ..
    } = planned;
    let Some(job) = job else {
        return (index, load_outputs::<J>(&*store, &id).await, false);
    };
    let tracker = Arc::new(RunTracker::with_completed(counters, &completed));
    loop {
        let mut runner = Runner::with_resources(&job, &*resources);
        if let Some(configure) = &configure {
            runner = configure(index, runner);
        }
        let tracker = Arc::clone(&tracker);
        let runner = runner
            .cancel_on(&token)
            .listener(move |event| tracker.on_event(event));
        let result = DurableRunner::new(runner, Arc::clone(&store))
            .lease(lease)
            .job_id(id.clone())
            .batch(&*batch)
            .run()
            .await;
        // Another runner holds the run: it runs elsewhere, or its process died. Wait for its
        // lease to end, then try again (the batch's cancellation ends the wait).
        let Err(DurableError::Store {
            error: StoreError::Busy { until, .. },
            ..
        }) = &result
        else {
            return (index, result, true);
        };
        let wait = u64::try_from(until.saturating_sub(crate::store::now_ms())).unwrap_or(0) + 50;
        let sleep = std::pin::pin!(tokio::time::sleep(Duration::from_millis(wait)));
        let cancelled = std::pin::pin!(token.cancelled());
        if let futures::future::Either::Right(_) = futures::future::select(sleep, cancelled).await {
            return (index, result, true);
        }
    }
}

/// The stored outputs of run `id`, which succeeded.
async fn load_outputs<J: DurableJob>(store: &dyn Store, id: &str) -> DurableResult<J> {
    let run = load::<J>(store, id).await?;
    let seed = J::__decode(&run).map_err(|error| DurableError::Decode {
        run: id.to_owned(),
        error,
    })?;
    crate::durable::succeeded_outputs::<J>(&run, seed)
}

/// Calls the status listener when the counts changed since its last call.
struct Notifier<S> {
    listener: Option<BoxListener<S>>,
    counters: Arc<Counters>,
    seen: Option<usize>,
    scratch: BatchStatus<S>,
}

impl<S: JobStep> Notifier<S> {
    fn notify(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let version = self.counters.version();
        if self.seen == Some(version) {
            return;
        }
        self.seen = Some(version);
        let _ = self.counters.read_into(&mut self.scratch);
        listener.on_status(&self.scratch);
    }
}
