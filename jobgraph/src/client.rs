//! [`Client`]: submit runs of durable jobs to a [`Queue`] and follow them, from any process.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::durable::{DecodeError, DurableJob, graph_spec};
use crate::store::queue::{BatchCounts, FanOut, Queue, Submission, Submitted};
use crate::store::{RunState, StoreError, StoredRun, now_ms};
use crate::{BatchStatus, RunCounts, StepCounts};
use crate::{Job, JobStep};

/// Submits runs of `#[job(durable)]` jobs for [`Worker`](crate::Worker)s to execute, and reads
/// their status and results; any number of processes may hold one on the same store.
///
/// ```
/// use std::time::Duration;
/// use jobgraph::store::SqliteStore;
/// use jobgraph::{Client, Worker, job};
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
/// let store = SqliteStore::open("sqlite::memory:").await.unwrap();
/// let client = Client::new(&store);
/// let run = client.submit(&Square { n: 7 }).key("square-7").await.unwrap();
///
/// // Usually in other processes: a worker claims the run's ready steps and runs them.
/// let worker = Worker::new(&store).job::<Square>();
/// worker.run_once().await.unwrap();
///
/// let out = client.wait::<Square>(&run.id, Duration::from_secs(5)).await.unwrap();
/// assert_eq!(out.square, 49);
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    queue: Arc<dyn Queue>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client of `queue` (a `SqliteStore`; a `PgStore` across machines).
    pub fn new(queue: &(impl Queue + Clone)) -> Self {
        Client {
            queue: Arc::new(queue.clone()),
        }
    }

    /// Submits a run of `job` (its value is the run's input): set its options on the returned
    /// [`Submit`], then `.await` it.
    pub fn submit<'c, J: DurableJob>(&'c self, job: &'c J) -> Submit<'c, J> {
        Submit::new(
            self,
            One {
                job,
                id: None,
                key: None,
                batch: None,
            },
        )
    }

    /// Submits a run per input as batch `name`, in one transaction: runs `name/0`, `name/1`...,
    /// numbered on after the batch's runs already stored, so submitting to a batch again appends
    /// to it. Set their options (`held`, priority, TTL...) on the returned [`Submit`], then
    /// `.await` it for the new runs' ids.
    pub fn submit_batch<J: DurableJob>(
        &self,
        name: impl Into<String>,
        inputs: impl IntoIterator<Item = J>,
    ) -> Submit<'_, J, Many<J>> {
        Submit::new(
            self,
            Many {
                name: name.into(),
                inputs: inputs.into_iter().collect(),
                held: false,
            },
        )
    }

    /// Releases the held runs of batch `name`: their first steps become ready now. How many.
    pub async fn release(&self, name: &str) -> Result<u64, ClientError> {
        Ok(self.queue.release(name).await?)
    }

    /// Aborts every run of batch `name` that has not ended: how many.
    pub async fn abort_batch(&self, name: &str) -> Result<u64, ClientError> {
        Ok(self.queue.abort_batch(name).await?)
    }

    /// The runs of batch `name` by state, and each step's counts across them (Alya's
    /// BatchDone).
    pub async fn batch_counts(&self, name: &str) -> Result<BatchCounts, ClientError> {
        Ok(self.queue.batch_counts(name).await?)
    }

    /// The status of batch `name` as a local [`Batch`](crate::Batch) reports it, for the same
    /// [`ProgressBars`](crate::ProgressBars) and status listeners.
    pub async fn batch_status<J: Job>(
        &self,
        name: &str,
    ) -> Result<BatchStatus<J::Step>, ClientError> {
        let counts = self.queue.batch_counts(name).await?;
        Ok(status_of::<J>(&counts))
    }

    /// The status of batch `name` every `every`, until every run has ended (the last status is
    /// `finished`): what drives [`ProgressBars`](crate::ProgressBars) from the database.
    pub fn watch_batch<J: Job>(
        &self,
        name: impl Into<String>,
        every: Duration,
    ) -> impl futures::Stream<Item = Result<BatchStatus<J::Step>, ClientError>> + '_ {
        let name = name.into();
        futures::stream::unfold(Some(true), move |state| {
            let name = name.clone();
            async move {
                let first = state?;
                if !first {
                    tokio::time::sleep(every).await;
                }
                match self.batch_status::<J>(&name).await {
                    Ok(status) => {
                        let next = (!status.finished).then_some(false);
                        Some((Ok(status), next))
                    }
                    Err(error) => Some((Err(error), None)),
                }
            }
        })
    }

    /// The run as stored now: its state and each step's.
    pub async fn status(&self, id: &str) -> Result<StoredRun, ClientError> {
        self.queue
            .load_run(id)
            .await?
            .ok_or_else(|| StoreError::NoSuchRun { run: id.to_owned() }.into())
    }

    /// The outputs of run `id` of `J` if it succeeded, `None` while it runs, or why it ended
    /// without them ([`ClientError::Ended`]). A run stored as succeeded without the output of
    /// one of `J`'s steps (a step the job gained since, or rows written by hand) is
    /// [`StoreError::NoSuchStep`] naming it.
    pub async fn result<J: DurableJob>(&self, id: &str) -> Result<Option<J::Outputs>, ClientError> {
        let run = self.status(id).await?;
        if run.job != J::NAME {
            return Err(ClientError::Store(StoreError::Mismatch {
                run: run.id,
                stored_job: run.job,
                job: J::NAME.to_owned(),
            }));
        }
        match run.state {
            RunState::Succeeded => {
                let partial = J::__decode(&run).map_err(|error| ClientError::Decode {
                    run: run.id.clone(),
                    error,
                })?;
                crate::durable::every_output::<J>(&run)?;
                Ok(Some(J::__outputs(partial)))
            }
            RunState::Pending | RunState::Running => Ok(None),
            state @ (RunState::Failed | RunState::Cancelled) => Err(ClientError::Ended {
                run: run.id,
                state,
                error: run.error,
            }),
        }
    }

    /// Waits at most `timeout` for run `id` of `J` to end: its outputs, or why not
    /// ([`ClientError::Timeout`] if it is still running). The queue's synchronous run.
    pub async fn wait<J: DurableJob>(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<J::Outputs, ClientError> {
        let poll = async {
            let mut delay = Duration::from_millis(2);
            loop {
                if let Some(outputs) = self.result::<J>(id).await? {
                    return Ok(outputs);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(100));
            }
        };
        match tokio::time::timeout(timeout, poll).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                run: id.to_owned(),
                waited: timeout,
            }),
        }
    }

    /// Aborts run `id`: its steps not started never start, and its running steps are cancelled
    /// at their worker's next heartbeat. `false` if it had already ended.
    pub async fn abort(&self, id: &str) -> Result<bool, ClientError> {
        Ok(self.queue.abort(id).await?)
    }
}

/// Runs about to be submitted: one ([`Client::submit`]) or a batch ([`Client::submit_batch`]).
/// Set their options, then `.await` it.
#[must_use = "a submit does nothing until awaited"]
pub struct Submit<'c, J: DurableJob, W = One<'c, J>> {
    client: &'c Client,
    what: W,
    options: Options,
    job: std::marker::PhantomData<fn() -> J>,
}

/// What [`Client::submit`] submits: one run, with its own id and idempotency key.
#[derive(Debug)]
pub struct One<'c, J> {
    job: &'c J,
    id: Option<String>,
    key: Option<String>,
    batch: Option<String>,
}

/// What [`Client::submit_batch`] submits: a run per input, in a named batch.
#[derive(Debug)]
pub struct Many<J> {
    name: String,
    inputs: Vec<J>,
    held: bool,
}

/// The options every submitted run has.
#[derive(Debug, Clone, Copy)]
struct Options {
    priority: i32,
    run_at: Option<SystemTime>,
    ttl: Option<Duration>,
    max_attempts: u32,
    max_fails: Option<u32>,
}

impl<J: DurableJob, W: std::fmt::Debug> std::fmt::Debug for Submit<'_, J, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submit")
            .field("job", &J::NAME)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<'c, J: DurableJob, W> Submit<'c, J, W> {
    /// How many claims of one step may expire (its worker died or stalled past its lease)
    /// before the step fails, unless set.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

    fn new(client: &'c Client, what: W) -> Self {
        Submit {
            client,
            what,
            options: Options {
                priority: 0,
                run_at: None,
                ttl: None,
                max_attempts: Self::DEFAULT_MAX_ATTEMPTS,
                max_fails: None,
            },
            job: std::marker::PhantomData,
        }
    }

    /// Steps of higher-priority runs are claimed first (0 unless set; may be negative).
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = priority;
        self
    }

    /// The runs' first steps become ready at `at`, not now.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.options.run_at = Some(at);
        self
    }

    /// A run fails if it has not ended `ttl` after it is submitted (its time to live).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = Some(ttl);
        self
    }

    /// How many claims of one step may expire before the step fails
    /// ([`DEFAULT_MAX_ATTEMPTS`](Self::DEFAULT_MAX_ATTEMPTS) unless set).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.max_attempts = attempts;
        self
    }

    /// How many errors one step may return before it fails for good, even if its retry policy
    /// asks for more (its retry policy alone decides unless set).
    pub fn max_fails(mut self, fails: u32) -> Self {
        self.options.max_fails = Some(fails);
        self
    }

    /// The submission every run shares, once its options are checked.
    fn template<'s>(
        &self,
        graph: &'s crate::store::GraphSpec,
        limits: &'s Limits,
    ) -> Result<Submission<'s>, ClientError> {
        let o = &self.options;
        let invalid = |why: &str| {
            ClientError::Store(StoreError::InvalidSubmission {
                job: J::NAME.to_owned(),
                why: why.to_owned(),
            })
        };
        if o.max_attempts == 0 {
            return Err(invalid("`max_attempts` must be at least 1"));
        }
        if o.max_fails == Some(0) {
            return Err(invalid("`max_fails` must be at least 1"));
        }
        if o.ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(invalid(
                "a time to live must be longer than zero: the run would expire at once",
            ));
        }
        Ok(Submission {
            id: "",
            job: J::NAME,
            input: "",
            graph,
            batch: None,
            key: None,
            held: false,
            limits: &limits.limits,
            fan_outs: &limits.fan_outs,
            priority: o.priority,
            run_at: o.run_at.map(unix_ms),
            ttl: o.ttl,
            max_attempts: o.max_attempts,
            max_fails: o.max_fails,
            ttrs: &[],
        })
    }
}

/// What a submission says of a job's steps beyond its graph: their limits, and its `for_each`
/// steps (claimed element by element); and the time to run of each step of the value they were
/// evaluated on ([`ttrs_of`]).
struct Limits {
    limits: Vec<(&'static str, crate::StepLimits)>,
    fan_outs: Vec<FanOut>,
    ttrs: Vec<Option<Duration>>,
}

/// The limits `job`'s steps declare (evaluated on this value: they are shared by every run of
/// the job), for the steps that have some, and its `for_each` steps with their bounds; and
/// each step's time to run in this value, as [`ttrs_of`] (its policies are evaluated once).
fn limits_of<J: DurableJob>(job: &J) -> Result<Limits, ClientError> {
    let mut limits = Vec::new();
    let mut fan_outs = Vec::new();
    let mut ttrs = Vec::with_capacity(J::Step::ALL.len());
    for &step in J::Step::ALL {
        let policies = job.policies(step).map_err(|error| {
            ClientError::Store(StoreError::InvalidSubmission {
                job: J::NAME.to_owned(),
                why: format!("the policies of step `{step}` cannot be evaluated: {error}"),
            })
        })?;
        let l = policies.limits;
        if l.concurrency().is_some() || l.rate().is_some() {
            limits.push((step.name(), l));
        }
        if let Some(over) = J::STEPS[step.index()].for_each() {
            fan_outs.push(FanOut {
                step: step.index(),
                over,
                bound: policies.for_each_bound,
            });
        }
        ttrs.push(policies.timeout);
    }
    Ok(Limits {
        limits,
        fan_outs,
        ttrs,
    })
}

/// Each step's time to run for a run of `job`, in graph order: its `#[step(timeout = ..)]`,
/// evaluated on this value (what a claim of the step is leased for). A step whose policies
/// cannot be evaluated (an expression panics, a timeout of zero) has none: the worker's lease
/// (and the step fails when it runs, with that error, as it would in a local run).
fn ttrs_of<J: DurableJob>(job: &J) -> Vec<Option<Duration>> {
    J::Step::ALL
        .iter()
        .map(|&step| job.policies(step).ok().and_then(|p| p.timeout))
        .collect()
}

fn encode<J: DurableJob>(job: &J) -> Result<String, ClientError> {
    (J::__input().encode)(job).map_err(|error| ClientError::Encode {
        job: J::NAME,
        error,
    })
}

impl<'c, J: DurableJob> Submit<'c, J, One<'c, J>> {
    /// The run's id (a new unique one unless set).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.what.id = Some(id.into());
        self
    }

    /// The idempotency key: submitting `J` again with the same key returns the first run
    /// ([`Submitted::created`] is `false`), also when both submits race.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.what.key = Some(key.into());
        self
    }

    /// Records the run as part of the named batch.
    pub fn batch(mut self, name: impl Into<String>) -> Self {
        self.what.batch = Some(name.into());
        self
    }

    async fn send(self) -> Result<Submitted, ClientError> {
        let graph = graph_spec::<J>();
        let limits = limits_of(self.what.job)?;
        let template = self.template(&graph, &limits)?;
        let One {
            job,
            id,
            key,
            batch,
        } = self.what;
        if id.as_deref() == Some("") {
            return Err(ClientError::Store(StoreError::InvalidSubmission {
                job: J::NAME.to_owned(),
                why: "a run id must not be empty".to_owned(),
            }));
        }
        let input = encode(job)?;
        let id = id.unwrap_or_else(|| new_run_id(J::NAME));
        let submission = Submission {
            id: &id,
            input: &input,
            batch: batch.as_deref(),
            key: key.as_deref(),
            ttrs: &limits.ttrs,
            ..template
        };
        Ok(self.client.queue.submit(submission).await?)
    }
}

impl<'c, J: DurableJob> Submit<'c, J, Many<J>> {
    /// Holds the runs: none starts until [`Client::release`] releases the batch (Alya's
    /// waitabit).
    pub fn held(mut self) -> Self {
        self.what.held = true;
        self
    }

    async fn send(self) -> Result<Vec<String>, ClientError> {
        if self.what.name.is_empty() {
            return Err(ClientError::Store(StoreError::InvalidSubmission {
                job: J::NAME.to_owned(),
                why: "a batch's name must not be empty: its runs are named after it".to_owned(),
            }));
        }
        let graph = graph_spec::<J>();
        let limits = match self.what.inputs.first() {
            Some(first) => limits_of(first)?,
            None => return Ok(Vec::new()),
        };
        // Each input's steps' TTRs (the first's evaluated with its limits); one per step if
        // every input has the same (the usual case).
        let each: Vec<Vec<Option<Duration>>> = std::iter::once(limits.ttrs.clone())
            .chain(self.what.inputs.iter().skip(1).map(ttrs_of))
            .collect();
        let ttrs: Vec<Option<Duration>> = if each.windows(2).all(|w| w[0] == w[1]) {
            each.into_iter().next().unwrap_or_default()
        } else {
            each.concat()
        };
        let template = Submission {
            held: self.what.held,
            ttrs: &ttrs,
            ..self.template(&graph, &limits)?
        };
        let inputs = self
            .what
            .inputs
            .iter()
            .map(encode)
            .collect::<Result<Vec<String>, _>>()?;
        Ok(self
            .client
            .queue
            .submit_batch(&self.what.name, template, &inputs)
            .await?)
    }
}

impl<'c, J: DurableJob + Sync> IntoFuture for Submit<'c, J, One<'c, J>> {
    type Output = Result<Submitted, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

impl<'c, J: DurableJob + Send + Sync + 'c> IntoFuture for Submit<'c, J, Many<J>> {
    type Output = Result<Vec<String>, ClientError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'c>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// Why a [`Client`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The store failed, or refused (no such run, an invalid submission...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run ended without outputs.
    #[error("run `{run}` {state}{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Ended {
        /// The run.
        run: String,
        /// How it ended: failed or cancelled.
        state: RunState,
        /// Its error, as stored.
        error: Option<String>,
    },
    /// [`Client::wait`] gave up.
    #[error("run `{run}` did not end within {waited:?}; it goes on: wait again, or abort it")]
    Timeout {
        /// The run.
        run: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// A stored output of the run does not decode as the job's type (the code changed).
    #[error("run `{run}`: {error}")]
    Decode {
        /// The run.
        run: String,
        /// Which step's output, and why.
        #[source]
        error: DecodeError,
    },
    /// The job's value could not be encoded as the run's input.
    #[error("the input of job `{job}` could not be encoded: {error}")]
    Encode {
        /// The job.
        job: &'static str,
        /// Why.
        #[source]
        error: serde_json::Error,
    },
}

/// A batch's counts as a local batch's status.
fn status_of<J: Job>(counts: &BatchCounts) -> BatchStatus<J::Step> {
    let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let steps = J::Step::ALL
        .iter()
        .map(|&step| {
            let mut c = StepCounts::zero(step);
            if let Some(found) = counts.steps.iter().find(|s| s.name == step.name()) {
                c.waiting = n(found.waiting);
                c.running = n(found.running);
                c.completed = n(found.completed);
                c.failed = n(found.failed);
                c.skipped = n(found.skipped);
                c.cancelled = n(found.cancelled);
            }
            c
        })
        .collect();
    BatchStatus {
        total: n(counts.total()),
        total_known: true,
        finished: counts.is_finished(),
        runs: RunCounts {
            waiting: n(counts.pending),
            running: n(counts.running),
            succeeded: n(counts.succeeded),
            failed: n(counts.failed),
            cancelled: n(counts.cancelled),
        },
        steps,
    }
}

/// A new run id: the job's name and a part unique to this process and moment.
fn new_run_id(job: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    format!("{job}-{:x}-{:016x}", now_ms(), hasher.finish())
}

fn unix_ms(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// The step of `J` named `name`.
pub(crate) fn step_named<J: Job>(name: &str) -> Option<J::Step> {
    J::Step::ALL.iter().copied().find(|s| s.name() == name)
}
