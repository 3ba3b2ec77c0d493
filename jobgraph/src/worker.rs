//! [`Worker`]: claims ready steps of submitted runs from a [`Queue`] and runs them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::job::SendJob;
use futures::stream::{FuturesUnordered, StreamExt as _};

use crate::client::step_named;
use crate::durable::DurableJob;
use crate::store::queue::{Claim, ClaimId, Failed, Held, Queue};
use crate::store::{GraphSpec, RunState, StepStatus, StoreError, StoredRun, StoredStep};
use crate::store::{now_ms, plus};
use crate::{CancellationToken, RetryPolicy, Runner, StepError};

/// How long a claim lasts without a heartbeat, unless [`Worker::lease`] says otherwise: a worker
/// that died holds its steps this long at most. Heartbeats renew it every third of that.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// What a registered job's step turned into.
enum Execution {
    /// The step's output, JSON.
    Completed(String),
    /// The step's error (its chain, as text), and when to try again if its retry policy asks.
    Failed {
        error: String,
        retry_at: Option<i64>,
    },
    /// The claim was cancelled (lost, aborted, or the worker shut down): nothing to store.
    Cancelled,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A step that ended: its claim, when it started (Unix ms), and how it ended.
type Ended = (ClaimId, i64, Execution);

/// Runs one claimed step of one job type.
type Handler = Arc<dyn Fn(Claim, CancellationToken) -> BoxFuture<Execution> + Send + Sync>;

/// Executes the ready steps of submitted runs: claims them from the queue (highest priority
/// first, each under a lease renewed by heartbeats), runs each from its parents' stored outputs,
/// and commits its output, which makes its children ready for any worker. Any number of
/// workers, in any number of processes, may share a store.
///
/// A step's retry policy is applied by the queue, not in the worker: a failed attempt is put
/// back, ready after the policy's delay, and any worker may take it. A worker whose lease on a
/// step was lost (it stalled past its lease and another worker claimed the step) cancels the
/// step, and could not commit it anyway: every write is fenced by the claim's number.
pub struct Worker {
    queue: Arc<dyn Queue>,
    name: String,
    jobs: HashMap<&'static str, Handler>,
    concurrency: usize,
    lease: Duration,
    poll: Duration,
    drain: Duration,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.name)
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// What a worker did: [`Worker::run`], [`Worker::run_once`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Steps claimed.
    pub claimed: usize,
    /// Steps completed and committed.
    pub completed: usize,
    /// Steps that failed for good.
    pub failed: usize,
    /// Failed attempts put back to be tried again.
    pub retried: usize,
    /// Results refused because the claim was lost (fenced).
    pub fenced: usize,
    /// Steps cancelled: aborted runs, lost claims, shutdown.
    pub cancelled: usize,
}

impl Worker {
    /// A worker of `queue` with no jobs yet: register them with [`job`](Worker::job) or
    /// [`job_with`](Worker::job_with).
    pub fn new(queue: &(impl Queue + Clone)) -> Self {
        Worker {
            queue: Arc::new(queue.clone()),
            name: crate::durable::owner_id(),
            jobs: HashMap::new(),
            concurrency: 8,
            lease: CLAIM_LEASE,
            poll: Duration::from_millis(200),
            drain: Duration::from_secs(30),
        }
    }

    /// Runs the steps of `J`, a job without resources.
    pub fn job<J>(self) -> Self
    where
        J: DurableJob<Resources = ()> + SendJob + Send + Sync + 'static,
        J::Partial: Send,
    {
        self.job_with::<J>(Arc::new(()))
    }

    /// Runs the steps of `J`, lending them `resources` (`#[job(durable, resources = T)]`).
    pub fn job_with<J>(mut self, resources: Arc<J::Resources>) -> Self
    where
        J: DurableJob + SendJob + Send + Sync + 'static,
        J::Resources: Send + Sync,
        J::Partial: Send,
    {
        let handler: Handler = Arc::new(move |claim, token| {
            let resources = Arc::clone(&resources);
            Box::pin(async move { execute::<J>(claim, &resources, token).await })
        });
        self.jobs.insert(J::NAME, handler);
        self
    }

    /// The worker's name in the store (who holds which claim): unique per process unless set.
    ///
    /// # Panics
    ///
    /// If `name` is empty.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        assert!(
            !name.is_empty(),
            "Worker::name: a worker's name must not be empty"
        );
        self.name = name;
        self
    }

    /// Runs at most `steps` steps at once (8 unless set).
    ///
    /// # Panics
    ///
    /// If `steps` is zero.
    pub fn concurrency(mut self, steps: usize) -> Self {
        assert!(steps > 0, "Worker::concurrency: must be at least 1, got 0");
        self.concurrency = steps;
        self
    }

    /// How long each claim lasts without a heartbeat ([`CLAIM_LEASE`] unless set).
    ///
    /// # Panics
    ///
    /// If `lease` is zero.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(!lease.is_zero(), "Worker::lease: a lease must not be zero");
        self.lease = lease;
        self
    }

    /// How often an idle worker looks for ready steps (200 ms unless set).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// How long [`run`](Worker::run) lets running steps finish after shutdown is asked, before
    /// it cancels them (30 s unless set); their claims then expire and other workers take them.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain = timeout;
        self
    }

    /// The worker's name.
    pub fn worker_name(&self) -> &str {
        &self.name
    }

    /// Claims the ready steps there are (up to the concurrency), runs them, commits each, and
    /// returns: for tests and one-shot tools. Steps that become ready meanwhile wait for the next
    /// call. Heartbeats run while the steps do.
    pub async fn run_once(&self) -> Result<WorkerStats, StoreError> {
        let mut pool = Pool::new(self);
        pool.claim(self.concurrency).await?;
        while pool.next().await? {}
        Ok(pool.stats)
    }

    /// Runs until `shutdown` is cancelled: claims ready steps whenever it has room, runs them,
    /// commits them, heartbeats its claims. On shutdown it stops claiming and lets the running
    /// steps finish for at most the [drain timeout](Worker::drain_timeout). Returns what it did,
    /// or the store's error if the store failed.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<WorkerStats, StoreError> {
        let mut pool = Pool::new(self);
        let jobs: Vec<&str> = self.jobs.keys().copied().collect();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let room = self.concurrency - pool.running.len();
            let claimed = if room > 0 { pool.claim(room).await? } else { 0 };
            if pool.running.is_empty() {
                if claimed == 0 {
                    // Idle: until a step is ready (the store may say so early), or a poll.
                    tokio::select! {
                        () = self.queue.wait_ready(&jobs, self.poll) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                continue;
            }
            // Only the wait is raced with shutdown: a step's result is settled to the end.
            tokio::select! {
                ended = pool.wait() => pool.settle(ended).await?,
                () = tokio::time::sleep(self.poll), if claimed == room && room > 0 => {}
                () = shutdown.cancelled() => break,
            }
        }
        // Drain: no more claims; let the running steps end, then cancel what is left.
        let deadline = tokio::time::sleep(self.drain);
        tokio::pin!(deadline);
        while !pool.running.is_empty() {
            tokio::select! {
                ended = pool.wait() => pool.settle(ended).await?,
                () = &mut deadline => {
                    for token in pool.tokens.values() {
                        token.cancel();
                    }
                    while pool.next().await? {}
                }
            }
        }
        Ok(pool.stats)
    }
}

/// The steps a worker is running, their tokens, and what it did.
struct Pool<'w> {
    worker: &'w Worker,
    running: FuturesUnordered<BoxFuture<Ended>>,
    tokens: HashMap<ClaimId, CancellationToken>,
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    stats: WorkerStats,
}

impl<'w> Pool<'w> {
    fn new(worker: &'w Worker) -> Self {
        Pool {
            worker,
            running: FuturesUnordered::new(),
            tokens: HashMap::new(),
            heartbeat: Box::pin(tokio::time::sleep(worker.lease / 3)),
            stats: WorkerStats::default(),
        }
    }

    /// Claims up to `room` steps and starts them: how many it claimed.
    async fn claim(&mut self, room: usize) -> Result<usize, StoreError> {
        let jobs: Vec<&str> = self.worker.jobs.keys().copied().collect();
        let claims = self
            .worker
            .queue
            .claim(&self.worker.name, &jobs, room, self.worker.lease)
            .await?;
        let count = claims.len();
        self.stats.claimed += count;
        for claim in claims {
            let id = claim.id.clone();
            let token = CancellationToken::new();
            self.tokens.insert(id.clone(), token.clone());
            let handler = Arc::clone(&self.worker.jobs[claim.job.as_str()]);
            let started = now_ms();
            self.running.push(Box::pin(async move {
                let execution = handler(claim, token).await;
                (id, started, execution)
            }));
        }
        Ok(count)
    }

    /// Waits for the next step to end and settles it, heartbeating meanwhile: `false` once no
    /// step runs.
    async fn next(&mut self) -> Result<bool, StoreError> {
        if self.running.is_empty() {
            return Ok(false);
        }
        let ended = self.wait().await;
        self.settle(ended).await?;
        Ok(true)
    }

    /// Waits for the next step to end, heartbeating meanwhile (a heartbeat that fails is tried
    /// again at the next beat: the claims expire only if none gets through). Cancel-safe: a step
    /// that ended is returned, never lost. Pends forever if no step runs.
    async fn wait(&mut self) -> Ended {
        loop {
            if self.running.is_empty() {
                return std::future::pending().await;
            }
            tokio::select! {
                Some(ended) = self.running.next() => {
                    self.tokens.remove(&ended.0);
                    return ended;
                }
                () = &mut self.heartbeat => {
                    if let Err(error) = self.beat().await {
                        tracing::warn!(%error, "a worker's heartbeat failed; it tries again");
                    }
                }
            }
        }
    }

    /// Renews the claims held, and cancels those lost or aborted.
    async fn beat(&mut self) -> Result<(), StoreError> {
        let lease = self.worker.lease;
        self.heartbeat
            .as_mut()
            .reset(tokio::time::Instant::now() + lease / 3);
        let ids: Vec<ClaimId> = self.tokens.keys().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let held = self
            .worker
            .queue
            .heartbeat(&self.worker.name, &ids, lease)
            .await?;
        for (id, held) in ids.iter().zip(held) {
            if held != Held::Held
                && let Some(token) = self.tokens.get(id)
            {
                token.cancel();
            }
        }
        Ok(())
    }

    /// Stores how a step ended: its output, or its error (retried or failed for good). A
    /// result the queue fences out (the claim was lost) is counted and dropped.
    async fn settle(&mut self, (id, started, execution): Ended) -> Result<(), StoreError> {
        let id = &id;
        let queue = &self.worker.queue;
        let name = &self.worker.name;
        let settled = match execution {
            Execution::Cancelled => {
                self.stats.cancelled += 1;
                return Ok(());
            }
            Execution::Completed(output) => queue
                .complete(name, id, &output, started)
                .await
                .map(|()| self.stats.completed += 1),
            Execution::Failed { error, retry_at } => {
                match queue.fail(name, id, &error, started, retry_at).await {
                    Ok(Failed::Retrying { .. }) => {
                        self.stats.retried += 1;
                        Ok(())
                    }
                    Ok(Failed::Failed) => {
                        self.stats.failed += 1;
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match settled {
            Err(StoreError::ClaimLost { .. }) => {
                self.stats.fenced += 1;
                Ok(())
            }
            other => other,
        }
    }
}

/// A retry policy that never retries: in a worker, the queue applies the step's own policy.
struct NoRetries;

impl RetryPolicy for NoRetries {
    fn should_retry(&self, _: u32, _: &StepError) -> Option<Duration> {
        None
    }
}

/// Runs step `claim` of a run of `J` from the stored input and dependencies' outputs.
async fn execute<J>(claim: Claim, resources: &J::Resources, token: CancellationToken) -> Execution
where
    J: DurableJob + SendJob + Send + Sync,
    J::Resources: Sync,
    J::Partial: Send,
{
    let fail = |error: String| Execution::Failed {
        error,
        retry_at: None,
    };
    let Some(step) = step_named::<J>(&claim.id.step) else {
        return fail(format!(
            "job `{}` has no step `{}`: the worker runs other code than the submitter's",
            J::NAME,
            claim.id.step
        ));
    };
    let job: J = match (J::__input().decode)(&claim.input) {
        Ok(job) => job,
        Err(error) => {
            return fail(format!(
                "the run's input does not decode as job `{}`: {error}",
                J::NAME
            ));
        }
    };
    let stored = dependencies(&claim);
    let seed = match J::__decode(&stored) {
        Ok(seed) => seed,
        Err(error) => return fail(error.to_string()),
    };
    let result = Runner::with_resources(&job, resources)
        .job_id(claim.id.run.clone())
        .seed(seed)
        .retry(step, NoRetries)
        .cancel_on(&token)
        .until(step)
        .run_send()
        .await;
    match result {
        Ok(partial) => match J::__encode(&partial, step) {
            Ok(Some(output)) => Execution::Completed(output),
            Ok(None) => fail(format!(
                "step `{}` ended without an output (a bug in jobgraph)",
                claim.id.step
            )),
            Err(error) => fail(format!("its output could not be encoded: {error}")),
        },
        Err(error) if error.is_cancelled() || token.is_cancelled() => Execution::Cancelled,
        Err(error) => {
            let cause = error.root_cause().error();
            let retry = job.policies(step).ok().and_then(|p| p.retry);
            let retry_at = retry
                .and_then(|policy| policy.should_retry(claim.fails + 1, cause))
                .map(|delay| plus(now_ms(), delay));
            Execution::Failed {
                error: chain(cause),
                retry_at,
            }
        }
    }
}

/// A stored run holding the claim's dependencies' outputs: what `DurableJob::__decode` reads.
fn dependencies(claim: &Claim) -> StoredRun {
    StoredRun {
        id: claim.id.run.clone(),
        job: claim.job.clone(),
        batch: None,
        input: String::new(),
        graph: GraphSpec { steps: Vec::new() },
        state: RunState::Running,
        error: None,
        created_at: 0,
        updated_at: 0,
        steps: claim
            .deps
            .iter()
            .map(|(name, output)| StoredStep {
                name: name.clone(),
                state: StepStatus::Completed,
                attempts: 1,
                output: Some(output.clone()),
                error: None,
                started_at: None,
                ended_at: None,
            })
            .collect(),
    }
}

/// `error` and its sources, joined by ": ".
fn chain(error: &StepError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
