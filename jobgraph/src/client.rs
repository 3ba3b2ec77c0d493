//! [`Client`]: submit runs of durable jobs to a [`Queue`] and follow them, from any process.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::durable::{DecodeError, DurableJob, graph_spec};
use crate::store::queue::{Queue, Submission, Submitted};
use crate::store::{RunState, StoreError, StoredRun, now_ms, plus};
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
        Submit {
            client: self,
            job,
            id: None,
            key: None,
            batch: None,
            priority: 0,
            run_at: None,
            ttl: None,
            max_attempts: Submit::<J>::DEFAULT_MAX_ATTEMPTS,
            max_fails: None,
        }
    }

    /// The run as stored now: its state and each step's.
    pub async fn status(&self, id: &str) -> Result<StoredRun, ClientError> {
        self.queue
            .load_run(id)
            .await?
            .ok_or_else(|| StoreError::NoSuchRun { run: id.to_owned() }.into())
    }

    /// The outputs of run `id` of `J` if it succeeded, `None` while it runs, or why it ended
    /// without them ([`ClientError::Ended`]).
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

/// A run about to be submitted: [`Client::submit`]. `.await` it to submit.
#[must_use = "a submit does nothing until awaited"]
pub struct Submit<'c, J: DurableJob> {
    client: &'c Client,
    job: &'c J,
    id: Option<String>,
    key: Option<String>,
    batch: Option<String>,
    priority: i32,
    run_at: Option<SystemTime>,
    ttl: Option<Duration>,
    max_attempts: u32,
    max_fails: Option<u32>,
}

impl<J: DurableJob> std::fmt::Debug for Submit<'_, J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submit")
            .field("job", &J::NAME)
            .field("id", &self.id)
            .field("key", &self.key)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl<'c, J: DurableJob> Submit<'c, J> {
    /// How many claims of one step may expire (its worker died or stalled past its lease)
    /// before the step fails, unless set.
    pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

    /// The run's id (a new unique one unless set).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// The idempotency key: submitting `J` again with the same key returns the first run
    /// ([`Submitted::created`] is `false`), also when both submits race.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Records the run as part of the named batch.
    pub fn batch(mut self, name: impl Into<String>) -> Self {
        self.batch = Some(name.into());
        self
    }

    /// Steps of higher-priority runs are claimed first (0 unless set; may be negative).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The run's first steps become ready at `at`, not now.
    pub fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = Some(at);
        self
    }

    /// The run fails if it has not ended `ttl` after it is submitted (its time to live).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How many claims of one step may expire before the step fails
    /// ([`DEFAULT_MAX_ATTEMPTS`](Self::DEFAULT_MAX_ATTEMPTS) unless set).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// How many errors one step may return before it fails for good, even if its retry policy
    /// asks for more (its retry policy alone decides unless set).
    pub fn max_fails(mut self, fails: u32) -> Self {
        self.max_fails = Some(fails);
        self
    }

    async fn send(self) -> Result<Submitted, ClientError> {
        let invalid = |why: String| {
            ClientError::Store(StoreError::InvalidSubmission {
                job: J::NAME.to_owned(),
                why,
            })
        };
        if self.max_attempts == 0 {
            return Err(invalid("`max_attempts` must be at least 1".to_owned()));
        }
        if self.max_fails == Some(0) {
            return Err(invalid("`max_fails` must be at least 1".to_owned()));
        }
        if self.ttl.is_some_and(|ttl| ttl.is_zero()) {
            return Err(invalid(
                "a time to live must be longer than zero: the run would expire at once".to_owned(),
            ));
        }
        if self.id.as_deref() == Some("") {
            return Err(invalid("a run id must not be empty".to_owned()));
        }
        let input = (J::__input().encode)(self.job).map_err(|error| ClientError::Encode {
            job: J::NAME,
            error,
        })?;
        let now = now_ms();
        let run_at = self.run_at.map_or(now, unix_ms);
        let id = self.id.unwrap_or_else(|| new_run_id(J::NAME));
        let graph = graph_spec::<J>();
        let submission = Submission {
            id: &id,
            job: J::NAME,
            input: &input,
            graph: &graph,
            batch: self.batch.as_deref(),
            key: self.key.as_deref(),
            priority: self.priority,
            run_at,
            expires_at: self.ttl.map(|ttl| plus(now, ttl)),
            max_attempts: self.max_attempts,
            max_fails: self.max_fails,
        };
        Ok(self.client.queue.submit(submission).await?)
    }
}

impl<'c, J: DurableJob + Sync> IntoFuture for Submit<'c, J> {
    type Output = Result<Submitted, ClientError>;
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
