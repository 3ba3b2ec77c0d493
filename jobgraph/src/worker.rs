//! [`Worker`]: claims ready steps of submitted runs from a [`Queue`] and runs them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::job::SendJob;
use foldhash::HashMap;
use futures::stream::{FuturesUnordered, StreamExt as _};

use crate::client::step_named;
use crate::durable::DurableJob;
use crate::store::now_ms;
use crate::store::queue::{Claim, ClaimId, Completion, Failed, Held, Queue};
use crate::store::{GraphSpec, RunState, StepStatus, StoreError, StoredRun, StoredStep};
use crate::{CancellationToken, RetryPolicy, Runner, StepError};

/// How long a claim of a step without a timeout lasts without a heartbeat, unless
/// [`Worker::lease`] says otherwise: a worker that died holds such steps this long at most.
/// Heartbeats renew it every third of that.
pub const CLAIM_LEASE: Duration = Duration::from_secs(30);

/// The shortest time to run (TTR) a claim's lease has: a step's TTR is `max(timeout, MIN_TTR)`.
/// A step with `#[step(timeout = 10ms)]` is leased for 1 s, so its worker heartbeats every 333
/// ms, not every 3 ms.
pub const MIN_TTR: Duration = Duration::from_secs(1);

/// What a registered job's step turned into.
enum Execution {
    /// The step's output, JSON.
    Completed(String),
    /// The step's error (its chain, as text), and how long to wait before trying again if its
    /// retry policy asks (the store adds it to its own clock).
    Failed {
        error: String,
        retry_in: Option<Duration>,
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
/// workers, in any number of processes, may share a store. The elements of a `for_each` step
/// are claimed one by one, like steps: a worker runs the elements it claimed, and other workers
/// run the others (see the [queue's docs](crate::store::queue)).
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
    prefetch: usize,
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
            .field("prefetch", &self.prefetch)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// What a worker did: [`Worker::run`], [`Worker::run_once`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Steps claimed (an element of a `for_each` step counts as one).
    pub claimed: usize,
    /// Claims the store answered, those that found nothing included (`claimed / claims` steps
    /// each on average: see [`Worker::prefetch`]).
    pub claims: usize,
    /// Steps completed and committed (an element counts as one).
    pub completed: usize,
    /// Steps that failed for good.
    pub failed: usize,
    /// Failed attempts put back to be tried again.
    pub retried: usize,
    /// Results refused because the claim was lost (fenced).
    pub fenced: usize,
    /// Steps cancelled: aborted runs, lost claims, shutdown.
    pub cancelled: usize,
    /// Store calls that failed and were tried again (claims, commits, heartbeats).
    pub store_errors: usize,
    /// Of the steps claimed, those a commit handed over: made ready by this worker's
    /// completions and claimed for it in the same transaction ([`Queue::complete_and_claim`]).
    pub handed: usize,
}

impl Worker {
    /// A worker of `queue` with no jobs yet: register them with [`job`](Worker::job) or
    /// [`job_with`](Worker::job_with).
    pub fn new(queue: &(impl Queue + Clone)) -> Self {
        Worker {
            queue: Arc::new(queue.clone()),
            name: crate::durable::owner_id(),
            jobs: HashMap::default(),
            concurrency: 8,
            prefetch: 0,
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

    /// Claims up to `steps` more steps than it runs at once, which wait in the worker for a
    /// free slot (0 unless set): bigger claims, and a step to start the moment one ends. For
    /// many short steps this is throughput (fewer, larger claims and commits); for long steps it
    /// is steps waiting in one worker while another may be idle, so leave it at 0 there. While
    /// steps wait, the worker claims again once it has room for half its concurrency and
    /// prefetch (or when none is left waiting), not a step at a time as each ends. The
    /// waiting steps' leases are renewed like the running ones'; a waiting step whose lease may
    /// have lapsed (the worker was stopped, or its heartbeats failed, for longer than the
    /// lease) is not started: it ends cancelled, for the store to give it again.
    pub fn prefetch(mut self, steps: usize) -> Self {
        self.prefetch = steps;
        self
    }

    /// How long a claim of a step without a timeout lasts without a heartbeat ([`CLAIM_LEASE`]
    /// unless set).
    ///
    /// A claim of a step with a `#[step(timeout = ..)]` is a lease of the step's own *time to
    /// run* (TTR) instead: its timeout, at least [`MIN_TTR`] (the client stores each step's at
    /// submit; a `for_each` element takes its step's). A worker that dies holding a step with a
    /// 2 s timeout frees it in about 2 s, not after this lease. Heartbeats renew each claim by
    /// its own TTR, and the worker heartbeats every third of the shortest lease it holds.
    ///
    /// # Panics
    ///
    /// If `lease` is zero.
    pub fn lease(mut self, lease: Duration) -> Self {
        assert!(!lease.is_zero(), "Worker::lease: a lease must not be zero");
        self.lease = lease;
        self
    }

    /// How often an idle worker looks for ready steps (200 ms unless set). News wakes it
    /// sooner ([`Queue::wait_ready`]): on PostgreSQL a `NOTIFY` from any process, on SQLite a
    /// commit of its own process.
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

    /// Claims the ready steps there are (up to the concurrency), runs them, commits them, and
    /// returns: for tests and one-shot tools. Steps that become ready meanwhile wait for the next
    /// call. Heartbeats run while the steps do. A store error is returned, not retried.
    pub async fn run_once(&self) -> Result<WorkerStats, StoreError> {
        let mut pool = Pool::new(self, true);
        pool.serve(&CancellationToken::new()).await?;
        Ok(pool.stats)
    }

    /// Runs until `shutdown` is cancelled: claims ready steps whenever it has room (many at a
    /// time), runs them, commits the ones that ended meanwhile together, heartbeats its claims;
    /// claims, commits and heartbeats overlap with each other and with the steps. On shutdown it
    /// stops claiming and lets the running steps finish and commit for at most the [drain
    /// timeout](Worker::drain_timeout), then cancels the rest (their claims expire and other
    /// workers take them).
    ///
    /// A store that fails (a lost connection, a restarted server, a locked database) does not
    /// end the worker: the call is logged (`tracing`, warn) and tried again after a backoff
    /// (100 ms doubling to 5 s), and results wait for it; [`WorkerStats::store_errors`] counts
    /// them. So this returns `Ok` with what it did.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<WorkerStats, StoreError> {
        let mut pool = Pool::new(self, false);
        pool.serve(&shutdown).await?;
        Ok(pool.stats)
    }
}

/// The most claims a worker holds, per step it may run or prefetch: the steps it ran whose
/// results wait for a commit count too, so claiming goes on while a commit is slow, up to this.
/// With two, a worker of graphs' steps held that many with nothing left to run (each step
/// ended and waiting in a commit's batch), and claimed a few roots at a time as each commit
/// came back (four to 171, 42 on average, each claim walking the queue's index for so few);
/// with four, bigger claims and commits, and the queue bench's diamond 7-19% more steps per
/// second on PostgreSQL (single-step jobs the same).
const HELD_PER_SLOT: usize = 4;

/// Commits a worker has in flight at most, each of the steps of some of the runs (`lane_of`):
/// one commit's transaction writes the next while the other's statements run. A commit of a
/// graph's steps makes their children ready and hands them over, so with one commit in
/// flight a graph's steps went from that one commit to the next, and the server idled while
/// the worker ran the children it handed over.
pub(crate) const LANES: usize = 2;

/// The lane of a run's commits: every step of a run commits in one, in order. Runs of one
/// step all commit in the first: their commits hand nothing over, and split in two they cost
/// the server more per step (each commit's statements for half as many steps).
fn lane_of(id: &ClaimId) -> usize {
    if id.only_step {
        return 0;
    }
    let hash = id.run.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    hash % LANES
}

/// The first wait after a store error; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A claim's answer: how many steps it asked for, when it was sent, and what it got.
type Claimed = (usize, tokio::time::Instant, Result<Vec<Claim>, StoreError>);

/// A heartbeat's answer: the claims it renewed, when it was sent, and whether each is still
/// held.
type Beaten = (
    Vec<ClaimId>,
    tokio::time::Instant,
    Result<Vec<Held>, StoreError>,
);

/// How a step's result was settled.
enum Outcome {
    Completed,
    Retried,
    Failed,
    Fenced,
    Cancelled,
}

/// A claim a worker holds.
struct Holding {
    /// Cancelled when the claim is lost or its run aborted, or at the drain's deadline.
    token: CancellationToken,
    /// [`Claim::lease`]: what each heartbeat renews it by.
    lease: Duration,
    /// Until when the worker is sure it holds the claim: its lease counted from when the claim
    /// (or the last heartbeat that renewed it) was sent, before the store started it. A queued
    /// step is not started past it ([`Pool::fill`]).
    sure_until: tokio::time::Instant,
}

/// What settling some results did: the outcome of each settled, the results left unsettled
/// (the store failed), and its error; and the steps the commit handed over (claimed for this
/// worker as it made them ready), with when it was sent.
struct Settled {
    done: Vec<(ClaimId, Outcome)>,
    left: Vec<Ended>,
    error: Option<StoreError>,
    claims: Vec<Claim>,
    sent: tokio::time::Instant,
}

/// A worker's loop: the steps it runs, the claims it holds, and the store calls in flight
/// (at most one claim, one commit and one heartbeat at a time, each its own future, so they
/// overlap).
struct Pool<'w> {
    worker: &'w Worker,
    /// `run_once`: one claim, then finish; store errors are returned.
    once: bool,
    jobs: Arc<[&'static str]>,
    running: FuturesUnordered<BoxFuture<Ended>>,
    /// Claimed steps waiting for a free slot (`prefetch`).
    queued: std::collections::VecDeque<Claim>,
    /// Every claim held (queued, running, or ended and waiting for its commit).
    holdings: HashMap<ClaimId, Holding>,
    /// Steps that ended, not yet settled, by the lane they commit in (`lane_of`).
    ended: [Vec<Ended>; LANES],
    stats: WorkerStats,
}

impl<'w> Pool<'w> {
    fn new(worker: &'w Worker, once: bool) -> Self {
        Pool {
            worker,
            once,
            jobs: worker.jobs.keys().copied().collect(),
            running: FuturesUnordered::new(),
            queued: std::collections::VecDeque::new(),
            holdings: HashMap::default(),
            ended: std::array::from_fn(|_| Vec::new()),
            stats: WorkerStats::default(),
        }
    }

    /// How many steps the worker runs or keeps queued at most.
    fn wanted(&self) -> usize {
        self.worker.concurrency + self.worker.prefetch
    }

    /// The most claims the worker holds ([`HELD_PER_SLOT`]).
    fn most_held(&self) -> usize {
        self.wanted() * HELD_PER_SLOT
    }

    /// How many more steps to claim now.
    fn room(&self) -> usize {
        let free = self
            .wanted()
            .saturating_sub(self.running.len() + self.queued.len());
        let held = self.most_held().saturating_sub(self.holdings.len());
        free.min(held)
    }

    /// How often to heartbeat: a third of the shortest lease held (the worker's own lease if
    /// none), so that each claim is renewed twice before it could expire.
    fn beat_every(&self) -> Duration {
        let shortest = self.holdings.values().map(|held| held.lease).min();
        shortest.unwrap_or(self.worker.lease) / 3
    }

    /// The loop of [`Worker::run`] and [`Worker::run_once`]: returns when shut down and
    /// drained (or, `once`, when its one claim is settled).
    async fn serve(&mut self, shutdown: &CancellationToken) -> Result<(), StoreError> {
        let worker = self.worker;
        let queue = &worker.queue;
        let name: Arc<str> = worker.name.as_str().into();
        let mut claiming: Option<BoxFuture<Claimed>> = None;
        // A commit in flight per lane (`LANES`; a run's steps always commit in one lane, so that
        // two commits never wait for each other's run locks).
        let mut settling: [Option<BoxFuture<Settled>>; LANES] = std::array::from_fn(|_| None);
        let mut beating: Option<BoxFuture<Beaten>> = None;
        let mut waiting: Option<BoxFuture<()>> = None;
        let mut backoff: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut delay = FIRST_BACKOFF;
        let mut heartbeat = Box::pin(tokio::time::sleep(self.beat_every()));
        // The last claim found fewer steps than it asked for: wait for news before the next.
        let mut idle = false;
        let mut stopping = false;
        let mut claimed_once = false;
        let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut drained = false;
        loop {
            let can_claim = !(stopping || self.once && claimed_once) && backoff.is_none();
            let room = self.room();
            // While steps wait in the worker, a claim waits for room for half of what it runs
            // and queues: on PostgreSQL each claim walks the queue's index past every step held
            // (claimed steps stay in it, so that a claim is a HOT update), and a claim of a step
            // or two, one as each step ends, walked it as often as there were steps.
            let worth = room > 0 && (self.queued.is_empty() || room * 2 >= self.wanted());
            if can_claim && claiming.is_none() && !idle && worth {
                let (queue, name, jobs) =
                    (Arc::clone(queue), Arc::clone(&name), Arc::clone(&self.jobs));
                let lease = worker.lease;
                claiming = Some(Box::pin(async move {
                    let sent = tokio::time::Instant::now();
                    (room, sent, queue.claim(&name, &jobs, room, lease).await)
                }));
                claimed_once = true;
            }
            if can_claim && idle && waiting.is_none() {
                let (queue, jobs, poll) = (Arc::clone(queue), Arc::clone(&self.jobs), worker.poll);
                waiting = Some(Box::pin(async move { queue.wait_ready(&jobs, poll).await }));
            }
            let most_held = self.most_held();
            for (settling, ended) in settling.iter_mut().zip(&mut self.ended) {
                if settling.is_some() || backoff.is_some() || ended.is_empty() {
                    continue;
                }
                let ended = std::mem::take(ended);
                // The children the commit makes ready are handed over up to the claims this
                // worker may hold besides the ones it commits, and not while it stops or runs
                // one claim. Each lane's commit counts what the worker holds when it is sent,
                // not what the other lane's commit in flight may hand over: with both in
                // flight, a worker may hold up to twice `most_held`.
                let hand = if stopping || self.once {
                    0
                } else {
                    most_held.saturating_sub(self.holdings.len().saturating_sub(ended.len()))
                };
                let (queue, name, lease) = (Arc::clone(queue), Arc::clone(&name), worker.lease);
                *settling = Some(Box::pin(async move {
                    settle(&*queue, &name, ended, hand, lease).await
                }));
            }
            let committing = settling.iter().any(Option::is_some);
            let busy = claiming.is_some() || committing || !self.running.is_empty();
            let unsettled = self.ended.iter().any(|ended| !ended.is_empty());
            if !busy && !unsettled && (stopping || (self.once && claimed_once)) {
                return Ok(());
            }
            tokio::select! {
                Some(ended) = self.running.next(), if !self.running.is_empty() => {
                    self.ended[lane_of(&ended.0)].push(ended);
                    self.fill();
                }
                (asked, sent, claimed) = async { claiming.as_mut().expect("guarded").await },
                    if claiming.is_some() =>
                {
                    claiming = None;
                    match claimed {
                        Ok(claims) => {
                            delay = FIRST_BACKOFF;
                            idle = claims.len() < asked;
                            // A claim whose lease is shorter than the beat's wait: beat sooner,
                            // a third of it after the claim was sent (its leases count from its
                            // statement, so one that came back late is beaten at once).
                            if let Some(shortest) = claims.iter().map(|c| c.lease).min() {
                                let due = sent + shortest / 3;
                                if due < heartbeat.deadline() {
                                    heartbeat.as_mut().reset(due);
                                }
                            }
                            self.start(claims, sent);
                        }
                        Err(error) if self.once => return Err(error),
                        Err(error) => {
                            self.stats.store_errors += 1;
                            tracing::warn!(%error, "a worker's claim failed; it tries again");
                            backoff = Some(Box::pin(tokio::time::sleep(delay)));
                            delay = (delay * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                (lane, settled) = std::future::poll_fn(|cx| {
                    for (lane, settling) in settling.iter_mut().enumerate() {
                        if let Some(Poll::Ready(settled)) =
                            settling.as_mut().map(|f| f.as_mut().poll(cx))
                        {
                            return Poll::Ready((lane, settled));
                        }
                    }
                    Poll::Pending
                }), if committing =>
                {
                    settling[lane] = None;
                    // Children of what it committed may be ready now: look again.
                    idle = idle && settled.done.is_empty();
                    self.apply(settled.done);
                    self.hand_over(settled.claims, settled.sent);
                    if let Some(error) = settled.error {
                        if self.once {
                            return Err(error);
                        }
                        self.stats.store_errors += 1;
                        if drained {
                            // Past the drain deadline: the claims will expire and other
                            // workers redo these steps.
                            tracing::warn!(%error, "a worker's commit failed after its drain \
                                deadline; its results are dropped");
                            for (id, _, _) in &settled.left {
                                self.holdings.remove(id);
                            }
                        } else {
                            tracing::warn!(%error, "a worker's commit failed; it tries again");
                            let mut left = settled.left;
                            left.append(&mut self.ended[lane]);
                            self.ended[lane] = left;
                            backoff = Some(Box::pin(tokio::time::sleep(delay)));
                            delay = (delay * 2).min(MAX_BACKOFF);
                        }
                    } else {
                        delay = FIRST_BACKOFF;
                    }
                }
                () = async { waiting.as_mut().expect("guarded").await }, if waiting.is_some() => {
                    waiting = None;
                    idle = false;
                }
                () = async { backoff.as_mut().expect("guarded").await }, if backoff.is_some() => {
                    backoff = None;
                    idle = false;
                }
                () = &mut heartbeat, if beating.is_none() => {
                    heartbeat.as_mut().reset(tokio::time::Instant::now() + self.beat_every());
                    // Not the claims given up (lost, aborted, lapsed, past the drain).
                    let ids: Vec<ClaimId> = self
                        .holdings
                        .iter()
                        .filter(|(_, held)| !held.token.is_cancelled())
                        .map(|(id, _)| id.clone())
                        .collect();
                    if !ids.is_empty() {
                        let (queue, name, lease) = (Arc::clone(queue), Arc::clone(&name), worker.lease);
                        beating = Some(Box::pin(async move {
                            let sent = tokio::time::Instant::now();
                            let held = queue.heartbeat(&name, &ids, lease).await;
                            (ids, sent, held)
                        }));
                    }
                }
                (ids, sent, held) = async { beating.as_mut().expect("guarded").await },
                    if beating.is_some() =>
                {
                    beating = None;
                    match held {
                        Ok(held) => {
                            for (id, held) in ids.iter().zip(held) {
                                let Some(holding) = self.holdings.get_mut(id) else {
                                    continue;
                                };
                                if held == Held::Held {
                                    holding.sure_until = sent + holding.lease;
                                } else {
                                    holding.token.cancel();
                                }
                            }
                        }
                        // Tried again at the next beat: the claims expire only if none gets
                        // through.
                        Err(error) => {
                            self.stats.store_errors += 1;
                            tracing::warn!(%error, "a worker's heartbeat failed; it tries again");
                        }
                    }
                }
                () = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    waiting = None;
                    deadline = Some(Box::pin(tokio::time::sleep(worker.drain)));
                }
                () = async { deadline.as_mut().expect("guarded").await },
                    if deadline.is_some() && !drained =>
                {
                    drained = true;
                    for held in self.holdings.values() {
                        held.token.cancel();
                    }
                }
            }
        }
    }

    /// Takes the steps `claims`, asked for at `sent`, and starts as many as there are free
    /// slots.
    fn start(&mut self, claims: Vec<Claim>, sent: tokio::time::Instant) {
        self.stats.claimed += claims.len();
        self.stats.claims += 1;
        for claim in claims {
            let claim = self.hold(claim, sent);
            self.queued.push_back(claim);
        }
        self.fill();
    }

    /// Takes the steps `claims` a commit sent at `sent` handed over: they run before the steps
    /// queued (a run's steps go on where its last step ran), in the queue's order.
    fn hand_over(&mut self, claims: Vec<Claim>, sent: tokio::time::Instant) {
        if claims.is_empty() {
            return;
        }
        self.stats.claimed += claims.len();
        self.stats.handed += claims.len();
        for claim in claims.into_iter().rev() {
            let claim = self.hold(claim, sent);
            self.queued.push_front(claim);
        }
        self.fill();
    }

    /// Holds `claim`, which a call sent at `sent` took: its lease counts from then.
    fn hold(&mut self, claim: Claim, sent: tokio::time::Instant) -> Claim {
        let holding = Holding {
            token: CancellationToken::new(),
            lease: claim.lease,
            sure_until: sent + claim.lease,
        };
        self.holdings.insert(claim.id.clone(), holding);
        claim
    }

    /// Starts queued steps while there are free slots. A step whose claim was cancelled while
    /// it waited (lost, aborted, the drain's deadline) ends cancelled without running, and so
    /// does one whose lease may have lapsed meanwhile (the worker was stopped, or its
    /// heartbeats failed, for longer than the lease): another worker may have claimed the step
    /// since, and running it here too would run it twice.
    fn fill(&mut self) {
        let now = tokio::time::Instant::now();
        while self.running.len() < self.worker.concurrency
            && let Some(claim) = self.queued.pop_front()
        {
            let id = claim.id.clone();
            let token = match self.holdings.get(&id) {
                Some(held) => {
                    if held.sure_until <= now {
                        held.token.cancel();
                    }
                    held.token.clone()
                }
                None => CancellationToken::default(),
            };
            let handler = Arc::clone(&self.worker.jobs[claim.job.as_str()]);
            let started = now_ms();
            self.running.push(Box::pin(async move {
                if token.is_cancelled() {
                    return (id, started, Execution::Cancelled);
                }
                let execution = handler(claim, token).await;
                (id, started, execution)
            }));
        }
    }

    /// Counts what was settled; its claims are no longer held.
    fn apply(&mut self, done: Vec<(ClaimId, Outcome)>) {
        for (id, outcome) in done {
            self.holdings.remove(&id);
            match outcome {
                Outcome::Completed => self.stats.completed += 1,
                Outcome::Retried => self.stats.retried += 1,
                Outcome::Failed => self.stats.failed += 1,
                Outcome::Fenced => self.stats.fenced += 1,
                Outcome::Cancelled => self.stats.cancelled += 1,
            }
        }
    }
}

/// Stores how steps ended: the outputs of those that completed, together, with up to `hand`
/// of the steps they made ready claimed for `worker` under `lease`
/// ([`Queue::complete_and_claim`]), then each error (retried or failed for good). Cancelled
/// steps store nothing. A result the queue fences out (the claim was lost) is counted and
/// dropped.
async fn settle(
    queue: &dyn Queue,
    worker: &str,
    ended: Vec<Ended>,
    hand: usize,
    lease: Duration,
) -> Settled {
    let mut settled = Settled {
        done: Vec::with_capacity(ended.len()),
        left: Vec::new(),
        error: None,
        claims: Vec::new(),
        sent: tokio::time::Instant::now(),
    };
    let (mut completed, mut failed) = (Vec::new(), Vec::new());
    for ended in ended {
        match ended.2 {
            Execution::Cancelled => settled.done.push((ended.0, Outcome::Cancelled)),
            Execution::Completed(_) => completed.push(ended),
            Execution::Failed { .. } => failed.push(ended),
        }
    }
    if !completed.is_empty() {
        let batch: Vec<Completion<'_>> = completed
            .iter()
            .filter_map(|(id, started, execution)| match execution {
                Execution::Completed(output) => Some(Completion {
                    claim: id,
                    output,
                    started_at: *started,
                }),
                _ => None,
            })
            .collect();
        let result = queue.complete_and_claim(worker, &batch, hand, lease).await;
        drop(batch);
        match result {
            Ok(committed) => {
                settled.claims = committed.claims;
                for ((id, _, _), stored) in completed.into_iter().zip(committed.stored) {
                    let outcome = if stored {
                        Outcome::Completed
                    } else {
                        Outcome::Fenced
                    };
                    settled.done.push((id, outcome));
                }
            }
            Err(error) => {
                settled.error = Some(error);
                settled.left = completed;
            }
        }
    }
    let mut failed = failed.into_iter();
    if settled.error.is_none() {
        for ended in failed.by_ref() {
            let (id, started, Execution::Failed { error, retry_in }) = &ended else {
                continue;
            };
            match queue.fail(worker, id, error, *started, *retry_in).await {
                Ok(Failed::Retrying { .. }) => settled.done.push((ended.0, Outcome::Retried)),
                Ok(Failed::Failed) => settled.done.push((ended.0, Outcome::Failed)),
                Err(StoreError::ClaimLost { .. }) => settled.done.push((ended.0, Outcome::Fenced)),
                Err(e) => {
                    settled.error = Some(e);
                    settled.left.push(ended);
                    break;
                }
            }
        }
    }
    settled.left.extend(failed);
    settled
}

/// A retry policy that never retries: in a worker, the queue applies the step's own policy.
struct NoRetries;

impl RetryPolicy for NoRetries {
    fn should_retry(&self, _: u32, _: &StepError) -> Option<Duration> {
        None
    }
}

/// Runs step `claim` of a run of `J` from the stored input and dependencies' outputs.
async fn execute<J>(
    mut claim: Claim,
    resources: &J::Resources,
    token: CancellationToken,
) -> Execution
where
    J: DurableJob + SendJob + Send + Sync,
    J::Resources: Sync,
    J::Partial: Send,
{
    let fail = |error: String| Execution::Failed {
        error,
        retry_in: None,
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
    let stored = dependencies(std::mem::take(&mut claim.deps));
    let seed = match J::__decode(&stored) {
        Ok(seed) => seed,
        Err(error) => return fail(error.to_string()),
    };
    let mut runner = Runner::with_resources(&job, resources)
        .job_id(claim.id.run.clone())
        .seed(seed)
        .retry(step, NoRetries)
        .cancel_on(&token);
    if let Some(element) = claim.id.element {
        runner = runner.only_element(element);
    }
    let result = runner.until(step).run_send().await;
    match result {
        Ok(partial) => match J::__encode(&partial, step) {
            Ok(Some(output)) => match claim.id.element {
                None => Execution::Completed(output),
                Some(element) => match only_item(&output) {
                    Some(item) => Execution::Completed(item.to_owned()),
                    None => fail(format!(
                        "element {element} ran, but its step's output `{output}` is not a \
                         list of one (a bug in jobgraph)"
                    )),
                },
            },
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
            // An element's policy is asked about the element's error, as in a local run.
            let asked = match cause {
                StepError::Element { error, .. } if claim.id.element.is_some() => error,
                cause => cause,
            };
            let retry_in = retry.and_then(|policy| policy.should_retry(claim.fails + 1, asked));
            Execution::Failed {
                error: chain(cause),
                retry_in,
            }
        }
    }
}

/// The one item of a JSON list of one (`[x]`: `x`, as written), if `json` is one.
fn only_item(json: &str) -> Option<&str> {
    serde_json::from_str::<[serde::de::IgnoredAny; 1]>(json).ok()?;
    let inner = json.trim().strip_prefix('[')?.strip_suffix(']')?.trim();
    (!inner.is_empty()).then_some(inner)
}

/// A stored run holding a claim's dependencies' outputs, `deps` (name, JSON): what
/// `DurableJob::__decode` reads.
fn dependencies(deps: Vec<(String, String)>) -> StoredRun {
    StoredRun {
        id: String::new(),
        job: String::new(),
        batch: None,
        input: String::new(),
        graph: GraphSpec { steps: Vec::new() },
        state: RunState::Running,
        error: None,
        created_at: 0,
        updated_at: 0,
        steps: deps
            .into_iter()
            .map(|(name, output)| StoredStep {
                name,
                state: StepStatus::Completed,
                attempts: 1,
                output: Some(output),
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
