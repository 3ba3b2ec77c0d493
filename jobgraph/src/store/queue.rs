//! The queue: runs submitted by a [`Client`](crate::Client) and executed one step at a time by
//! [`Worker`](crate::Worker)s, in any number of processes sharing one store.
//!
//! The protocol is the one PostgreSQL job queues proved (River, Oban, graphile-worker, awa), on
//! steps rather than whole jobs:
//!
//! - [`submit`](Queue::submit) stores the run, its input and its steps; a step with no
//!   dependency is *ready* at the run's `run_at`, the others wait for their dependencies
//!   (parents and `after` steps). A submit with an idempotency key that exists returns the first
//!   run.
//! - [`claim`](Queue::claim) takes up to `limit` ready steps of the given jobs, highest priority
//!   first, then oldest `ready_at`, each under a lease of its *time to run* (TTR: the step's
//!   `timeout`, [`Submission::ttrs`], or the worker's `lease` for a step without one), and returns
//!   each with the run's input and its dependencies' outputs. Each claim increments the step's claim
//!   number, which *fences* it: only the holder of the latest claim can settle the step. A step
//!   whose lease expired is ready again (its worker died or stalled); once a step's claims
//!   expired `max_attempts` times it fails instead.
//! - [`heartbeat`](Queue::heartbeat) extends the leases of the claims a worker still holds, each
//!   by its own TTR, and says which it lost and which were aborted.
//! - [`complete`](Queue::complete) stores the step's output, and in the same transaction makes
//!   each child whose last dependency this was ready, and ends the run when no step is left;
//!   [`complete_many`](Queue::complete_many) does so for many steps in one transaction, each
//!   fenced on its own, and [`complete_and_claim`](Queue::complete_and_claim) also claims the
//!   children it made ready for the committing worker in the same transaction (what a worker
//!   commits the steps that ended meanwhile with: a run's steps go on where its last step ran,
//!   each without a claim of its own).
//!   [`fail`](Queue::fail) either puts the step back, ready at `retry_at` (its retry policy
//!   asked for it and `max_fails` allows it), or fails it for good and skips its descendants.
//!   Both are fenced: a stale claim gets [`StoreError::ClaimLost`] and changes nothing.
//! - [`abort`](Queue::abort) cancels a run: its pending steps never start, and the workers running
//!   its claimed steps learn of it at their next heartbeat, which cancels them.
//!
//! Steps run at least once; each step's output and each run's outcome are committed exactly
//! once.
//!
//! # Fan-outs: `for_each` elements are claims of their own
//!
//! A `#[step(for_each(parent, concurrency = n))]` step listed in [`Submission::fan_outs`] is
//! never claimed itself; its elements are, one by one, so one fan-out spreads over the workers:
//!
//! - **Expansion.** When the step's last dependency completes (in that completion's
//!   transaction), the store counts the elements of `parent`'s stored output (a `Vec`, a
//!   `Box<[E]>` or an array serializes as a JSON list: `json_array_length` on SQLite,
//!   `jsonb_array_length` on PostgreSQL) and inserts one row per element into
//!   `jobgraph_queue_elements`, each holding its element (cut out of the parent's output once,
//!   here: `json_each`, `jsonb_array_elements`), ready at once, or, with a bound `n`, the first `n` of them, the
//!   next one becoming ready as each completes (so at most `n` elements of a run are ready or
//!   claimed at once). Over an empty list the step completes at once with `[]`, and its children
//!   become ready in the same transaction. Over an output that is not a list the step is claimed
//!   whole (its worker's decoding then fails it with a clear error).
//! - **Claims.** An element is claimed as a step is, in the same [`claim`](Queue::claim) and
//!   the same queue order (priority, ready time, run, step, then element index): under a lease
//!   of its step's TTR, fenced by its own claim number ([`ClaimId::element`] names it), renewed
//!   by heartbeats, failed after `max_attempts` expired leases, retried through the queue at
//!   `retry_at` on its own (the other elements are not run again) until `max_fails`. The step's `concurrency` and
//!   `rate` count element claims, across every run and worker. The claim carries, as the
//!   iterated parent's output, its element alone (a list of one: a claim costs the element's
//!   size, not the whole list's); the worker runs that element (`Runner`'s `only_element`, which
//!   keeps its index for `StepContext::element`) and commits its output.
//! - **Completion.** Completing the last element stores the step's output, its elements'
//!   outputs as a JSON list in index order, with attempts the sum of its elements' claims, and
//!   makes its children ready, in the same transaction, through the same code as completing a
//!   step ([`complete_many`](Queue::complete_many) settles steps and elements together).
//! - **Failure.** An element that fails for good (its retry policy gives up, `max_fails`, or
//!   `max_attempts` expired leases) fails the step with its error, which names it (`element 2:
//!   returned an error: ...`, as `StepError::Element` says it), cancels the other elements
//!   (their heartbeats say [`Held::Lost`]; their results are refused), skips the step's
//!   descendants and settles the run.
//! - **Abort and time to live** cancel pending elements with the run's pending steps: their
//!   heartbeats say [`Held::Aborted`].
//! - **Status.** A fan-out counts as running in [`batch_counts`](Queue::batch_counts) from its
//!   expansion until it ends; [`leases`](Queue::leases) lists each element's claim
//!   ([`Lease::element`]).
//!
//! A run submitted without `fan_outs` (or stored before the fan-out schema) claims its `for_each`
//! steps whole, and the worker runs every element.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{GraphSpec, Store, StoreError};
use crate::StepLimits;

/// The queue protocol of a store: see the [module docs](self).
pub trait Queue: Store {
    /// Stores a new run for workers to execute, or, if `submission.key` names a run of the same
    /// job, returns that run's id with `created: false`.
    fn submit<'a>(
        &'a self,
        submission: Submission<'a>,
    ) -> BoxFuture<'a, Result<Submitted, StoreError>>;

    /// Claims up to `limit` ready steps of the runs of `jobs` for `worker`, each until now + its
    /// step's TTR ([`Submission::ttrs`]; [`Claim::lease`]), or now + `lease` for a step without
    /// one, within each step's limits: no more live claims of a step than its
    /// `concurrency`, no more claims than its `rate` allows (a token bucket shared by every
    /// worker). Before claiming, fails the runs whose time to live expired and the steps whose
    /// claims expired `max_attempts` times.
    fn claim<'a>(
        &'a self,
        worker: &'a str,
        jobs: &'a [&'a str],
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>>;

    /// Extends each of `claims` that `worker` still holds to now + its step's TTR, or now +
    /// `lease` for a step without one (as [`claim`](Queue::claim) leased it): for each claim, in
    /// order, whether it is still held.
    fn heartbeat<'a>(
        &'a self,
        worker: &'a str,
        claims: &'a [ClaimId],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Held>, StoreError>>;

    /// Steps completed, each with its output (JSON), in one transaction: each output stored, the
    /// children whose last dependency it was made ready, and each run ended if no step is left.
    /// (PostgreSQL stores the completions of claims whose [`ClaimId::only_step`] it confirms in
    /// a statement of their own, before that transaction: each is atomic, and either one failing
    /// is as ambiguous to the worker as a commit whose answer was lost.)
    /// For each completion, in order: `true` if it was committed, `false` if `worker` no longer
    /// holds its claim (fenced: nothing of it was written). Workers settle the steps that ended
    /// meanwhile this way, so one commit carries many.
    fn complete_many<'a>(
        &'a self,
        worker: &'a str,
        done: &'a [Completion<'a>],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>>;

    /// [`complete_many`](Queue::complete_many), and up to `limit` of the steps its completions
    /// made ready claimed for `worker` in the same transaction, as [`claim`](Queue::claim)
    /// would under `lease`: a child runs where its last parent ran, without a claim of its own
    /// (which walks the queue's index and writes the step's row a second time). Steps with
    /// limits or a TTR, fan-outs and elements, and the steps of runs with a time to live, are
    /// never handed over: they stay ready for claims. What a [`Worker`](crate::Worker) commits
    /// with; PostgreSQL hands steps over (without writing their rows:
    /// [`ClaimId::handed_over`]), and the default (SQLite's) hands none.
    fn complete_and_claim<'a>(
        &'a self,
        worker: &'a str,
        done: &'a [Completion<'a>],
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Committed, StoreError>> {
        let _ = (limit, lease);
        Box::pin(async move {
            Ok(Committed {
                stored: self.complete_many(worker, done).await?,
                claims: Vec::new(),
            })
        })
    }

    /// Step `claim.step` completed with `output` (JSON): [`complete_many`](Queue::complete_many)
    /// of one. [`StoreError::ClaimLost`] if `worker` no longer holds the claim.
    fn complete<'a>(
        &'a self,
        worker: &'a str,
        claim: &'a ClaimId,
        output: &'a str,
        started_at: i64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let done = [Completion {
                claim,
                output,
                started_at,
            }];
            match self.complete_many(worker, &done).await?.first() {
                Some(true) => Ok(()),
                _ => Err(claim.lost(worker)),
            }
        })
    }

    /// Step `claim.step` returned `error`. With `retry_in` (its retry policy asks for another
    /// attempt after that delay) and fewer fails than the run's `max_fails`, it is ready again
    /// `retry_in` from now by the store's clock (not the worker's: a worker whose clock is off
    /// delays no retry); otherwise it fails, its descendants are skipped, and the run ends if no
    /// step is left. Fenced like [`complete`](Queue::complete).
    fn fail<'a>(
        &'a self,
        worker: &'a str,
        claim: &'a ClaimId,
        error: &'a str,
        started_at: i64,
        retry_in: Option<Duration>,
    ) -> BoxFuture<'a, Result<Failed, StoreError>>;

    /// Cancels run `run` if it has not ended: its pending steps are cancelled, and its claimed
    /// steps' heartbeats say [`Held::Aborted`]. `false` if the run had already ended.
    /// [`StoreError::NoSuchRun`] if there is no such run.
    fn abort<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Stores one run per input in batch `batch`, in one transaction, as runs `batch/N`
    /// numbered on from the batch's runs already stored (so a second call appends), each with
    /// `template`'s job, graph and options (its `id`, `input`, `batch` and `key` are not used).
    /// Returns the new runs' ids, in the inputs' order.
    fn submit_batch<'a>(
        &'a self,
        batch: &'a str,
        template: Submission<'a>,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// Releases the held runs of batch `batch` (submitted with [`Submission::held`]): their first
    /// steps become ready now. Returns how many runs it released.
    fn release<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// [Aborts](Queue::abort) every run of batch `batch` that has not ended: how many.
    fn abort_batch<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// How many runs of batch `batch` are in each state, and each step's counts across them.
    fn batch_counts<'a>(&'a self, batch: &'a str)
    -> BoxFuture<'a, Result<BatchCounts, StoreError>>;

    /// Every lease held now, live or expired but not yet taken over: the steps claimed by
    /// workers, and the runs held by durable runners; by holder, then run.
    fn leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>>;

    /// Waits at most `timeout` for a step of `jobs` to become ready, after a
    /// [`claim`](Queue::claim) of `jobs` found none: what an idle worker does before it claims
    /// again. A hint, not a promise: it may return early with nothing ready, and the caller
    /// claims again either way. The default sleeps `timeout` (polling); `PgStore` returns as
    /// soon as a `NOTIFY` says a step of `jobs` became ready since the last claim of `jobs`;
    /// `SqliteStore` as soon as a commit of the same process (through any clone of the store)
    /// may have made one ready: a submit, a completion, a retry due now, a release or a
    /// redrive. Workers in other processes that share the SQLite file poll.
    fn wait_ready<'a>(&'a self, jobs: &'a [&'a str], timeout: Duration) -> BoxFuture<'a, ()> {
        let _ = jobs;
        Box::pin(tokio::time::sleep(timeout))
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// How many dependencies each redriven step of a submitted run (`hits`: a step and its
/// descendants) waits for, given the run's steps that are not pending (`ended`: position and
/// state): (position, waiting), in graph order. A dependency outside `hits` that completed is
/// not waited for; one still pending is; one that failed, was skipped or was cancelled never
/// completes, so redriving below it is refused ([`StoreError::DependsOnEnded`]).
pub(crate) fn redrive_waits(
    run: &str,
    spec: &GraphSpec,
    hits: &[bool],
    ended: &[(usize, String)],
) -> Result<Vec<(usize, usize)>, StoreError> {
    let state_of = |d: usize| ended.iter().find(|(p, _)| *p == d).map(|(_, s)| s.as_str());
    let mut waits = Vec::new();
    for position in (0..spec.steps.len()).filter(|&p| hits.get(p).copied().unwrap_or(false)) {
        let mut waiting = 0;
        for d in spec.dependencies(position) {
            match (hits.get(d).copied().unwrap_or(false), state_of(d)) {
                (false, Some("completed")) => {}
                (false, Some(state)) => {
                    return Err(StoreError::DependsOnEnded {
                        run: run.to_owned(),
                        step: spec.steps[position].name.clone(),
                        on: spec.steps[d].name.clone(),
                        state: state.to_owned(),
                    });
                }
                _ => waiting += 1,
            }
        }
        waits.push((position, waiting));
    }
    Ok(waits)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// A TTR in ms as stored: at least [`MIN_TTR`](crate::MIN_TTR), at most 1,000 years.
pub(crate) fn ttr_ms(ttr: Duration) -> i64 {
    lease_ms(ttr.max(crate::MIN_TTR))
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// A lease in ms, at most 1,000 years: added to now, a longer one would overflow PostgreSQL's
/// timestamps (and SQLite's integers), and it is forever anyway.
pub(crate) fn lease_ms(lease: Duration) -> i64 {
    const MAX_LEASE_MS: i64 = 1_000 * 365 * 24 * 3_600 * 1_000;
    super::millis(lease).min(MAX_LEASE_MS)
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
/// The lease of a claim whose step's TTR is `ttr_ms` (as stored; `None`: none), claimed with the
/// worker's `lease`.
pub(crate) fn claim_lease(ttr_ms: Option<i64>, lease: Duration) -> Duration {
    match ttr_ms {
        Some(ms) => Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
        None => lease,
    }
}

/// How often a PostgreSQL store's claims sweep: fail the runs whose time to live expired (a
/// claim never takes their steps in the meantime: the sweep only records their failure), and
/// read every claimable step, those an earlier lock left marked too (`postgres_queue`'s
/// `CLAIM_UNLIMITED`). Steps whose leases expired `max_attempts` times are failed by the claim
/// that takes them instead.
#[cfg(feature = "postgres")]
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How many unfinished runs a PostgreSQL store's sweep reads the steps of, looking for the
/// steps commits handed over whose leases ended (their worker stopped answering), which are in
/// no index a claim reads (`postgres_queue`'s `READY_LAPSED_HANDOFFS`): a bounded read per
/// sweep, whatever the backlog, the next sweep going on from the run where this one stopped.
/// So a store's sweeps read every unfinished run once in (unfinished runs / this) sweeps.
#[cfg(feature = "postgres")]
pub(crate) const HANDOFF_SWEEP_RUNS: i64 = 256;

/// When a store's next sweep is due, shared by its clones: the sweeps of many claims a second
/// are one. And whether a claim may have left steps marked by its locks (it locked more than
/// it took, failed, or found fewer than it asked for): then the next claim reads them too,
/// as a sweep does, without the sweep's expiry.
#[cfg(feature = "postgres")]
#[derive(Debug, Default)]
pub(crate) struct Sweeps {
    /// Unix ms; 0: now.
    next: std::sync::atomic::AtomicI64,
    marked: std::sync::atomic::AtomicBool,
    /// The last unfinished run (its `seq`) whose steps the last sweep read for lapsed hand-offs
    /// ([`HANDOFF_SWEEP_RUNS`]); 0: the next begins with the first.
    handoffs_after: std::sync::atomic::AtomicI64,
}

#[cfg(feature = "postgres")]
impl Sweeps {
    /// Whether a sweep is due; if it is, the next one is due in [`SWEEP_EVERY`] (so only the
    /// caller that got `true` sweeps).
    pub(crate) fn due(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = super::now_ms();
        let next = self.next.load(Relaxed);
        now >= next
            && self
                .next
                .compare_exchange(next, super::plus(now, SWEEP_EVERY), Relaxed, Relaxed)
                .is_ok()
    }

    /// The next claim sweeps (time moved: `age_leases`), going on where the last sweep stopped.
    pub(crate) fn now(&self) {
        self.next.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Where the next sweep for lapsed hand-offs begins: after the run of this `seq`.
    pub(crate) fn handoffs_after(&self) -> i64 {
        self.handoffs_after
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The sweep for lapsed hand-offs read up to the run of `seq` (0: it read the last).
    pub(crate) fn handoffs_read(&self, seq: i64) {
        self.handoffs_after
            .store(seq, std::sync::atomic::Ordering::Relaxed);
    }

    /// A claim may have left steps marked: the next claim reads them.
    pub(crate) fn marked(&self) {
        self.marked
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a claim may have left steps marked since the last call (so only the caller that
    /// got `true` reads them; any claim that leaves marks again says so again).
    pub(crate) fn take_marked(&self) -> bool {
        self.marked
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }
}

/// A lease, as [`Queue::leases`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lease {
    /// The worker or runner holding it.
    pub holder: String,
    /// The run.
    pub run: String,
    /// The claimed step, for a worker's claim; `None` for a runner's lease on a whole run.
    pub step: Option<String>,
    /// The claim's number, for a worker's claim.
    pub attempt: Option<u32>,
    /// The claimed element of a `for_each` step (its index in the parent's output), for a
    /// worker's claim of one element.
    pub element: Option<usize>,
    /// When it ends unless renewed (Unix ms); in the past: expired, and free to take.
    pub until: i64,
}

/// The runs of a batch by state, and its steps' states across those runs: what
/// [`Queue::batch_counts`] returns (Alya's BatchDone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// Runs not started (held runs included).
    pub pending: u64,
    /// Of which held, waiting for [`Queue::release`].
    pub held: u64,
    /// Runs with a step claimed or completed, not ended.
    pub running: u64,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Runs that failed.
    pub failed: u64,
    /// Runs aborted.
    pub cancelled: u64,
    /// Each step (by name, in the order first seen in the job's graph) and its counts.
    pub steps: Vec<StepCount>,
}

impl BatchCounts {
    /// Every run of the batch.
    pub fn total(&self) -> u64 {
        self.pending + self.running + self.succeeded + self.failed + self.cancelled
    }

    /// Whether every run has ended.
    pub fn is_finished(&self) -> bool {
        self.pending + self.running == 0
    }
}

/// One step's states across the runs of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepCount {
    /// The step's name.
    pub name: String,
    /// Not claimed: waiting for dependencies, ready, or held.
    pub waiting: u64,
    /// Claimed under a live lease; a fan-out, from its elements' insertion until it ends.
    pub running: u64,
    /// Completed.
    pub completed: u64,
    /// Failed for good.
    pub failed: u64,
    /// Skipped: a step it depends on failed.
    pub skipped: u64,
    /// Cancelled: the run was aborted or expired.
    pub cancelled: u64,
}

/// A run to submit: what [`Queue::submit`] stores.
#[derive(Clone, Copy, Debug)]
pub struct Submission<'a> {
    /// The run's id.
    pub id: &'a str,
    /// The job's name.
    pub job: &'a str,
    /// The job's input, JSON.
    pub input: &'a str,
    /// The job's graph.
    pub graph: &'a GraphSpec,
    /// The batch the run belongs to, if any.
    pub batch: Option<&'a str>,
    /// The idempotency key: a second submit of the same job with this key returns the first run.
    pub key: Option<&'a str>,
    /// Held: no step is ready until [`Queue::release`] releases the run's batch.
    pub held: bool,
    /// The job's per-step limits (`#[step(concurrency = .., rate = ..)]`), held across every
    /// worker by the claims: (step name, limits), for the steps that have some. The latest
    /// submit's limits replace a job's earlier ones.
    pub limits: &'a [(&'a str, StepLimits)],
    /// Higher runs' steps are claimed first.
    pub priority: i32,
    /// When the run's first steps become ready (Unix ms); `None`: now, by the store's clock.
    pub run_at: Option<i64>,
    /// How long after it is stored the run fails if it has not ended, if ever: counted from the
    /// store's clock, so a client whose clock is off shortens or stretches no run's life.
    pub ttl: Option<Duration>,
    /// How many claims of one step may expire before the step fails (at least 1).
    pub max_attempts: u32,
    /// How many errors one step may return before it fails for good, if its retry policy asks
    /// for more (at least 1); `None`: the retry policy alone decides.
    pub max_fails: Option<u32>,
    /// The job's `for_each` steps, whose elements are claimed one by one (an element is a claim
    /// of its own, so a fan-out spreads over the workers). A `for_each` step not listed here is
    /// claimed whole, and its worker runs every element.
    pub fan_outs: &'a [FanOut],
    /// Each step's time to run (TTR), in graph order: a claim of the step, or of one of its
    /// elements, is a lease of this long, renewed by heartbeats, so a worker that dies holding
    /// the step frees it this long after its last heartbeat. What a [`Client`](crate::Client)
    /// puts here is each step's `#[step(timeout = ..)]`. `None`, or no entry (an empty slice):
    /// the claiming worker's lease ([`Worker::lease`](crate::Worker::lease)). A TTR shorter
    /// than [`MIN_TTR`](crate::MIN_TTR) is raised to it. For
    /// [`submit_batch`](Queue::submit_batch), either one per step (every run's) or one per step
    /// per input (input `i`'s steps at `i * steps..`).
    pub ttrs: &'a [Option<Duration>],
}

/// A `#[step(for_each(parent, concurrency = n))]` step of a submitted job: what
/// [`Submission::fan_outs`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FanOut {
    /// The step's index in the job's graph.
    pub step: usize,
    /// The index of the parent whose output's elements it runs over (one of the step's
    /// parents).
    pub over: usize,
    /// `concurrency = n`: at most `n` of a run's elements claimed at once; `None`: no bound.
    pub bound: Option<u32>,
}

impl Submission<'_> {
    /// Why no run can have these numbers or this graph, if so: what every queue checks first.
    pub fn check(&self) -> Result<(), StoreError> {
        if let Some(why) = self.graph.check() {
            return Err(StoreError::InvalidGraph {
                run: self.id.to_owned(),
                reason: why,
            });
        }
        if self.max_attempts == 0 || self.max_fails == Some(0) {
            return Err(StoreError::InvalidSubmission {
                job: self.job.to_owned(),
                why: "max_attempts and max_fails must be at least 1".to_owned(),
            });
        }
        let steps = self.graph.steps.len();
        if !self.ttrs.is_empty() && !self.ttrs.len().is_multiple_of(steps) {
            return Err(StoreError::InvalidSubmission {
                job: self.job.to_owned(),
                why: format!(
                    "{} TTRs for a graph of {steps} steps: give one per step (or none)",
                    self.ttrs.len()
                ),
            });
        }
        if let Some(why) = self.fan_out_error() {
            return Err(StoreError::InvalidSubmission {
                job: self.job.to_owned(),
                why,
            });
        }
        Ok(())
    }

    /// Why [`fan_outs`](Submission::fan_outs) does not fit the graph, if it does not.
    fn fan_out_error(&self) -> Option<String> {
        let steps = &self.graph.steps;
        for (i, fan) in self.fan_outs.iter().enumerate() {
            let Some(step) = steps.get(fan.step) else {
                return Some(format!(
                    "fan-out {i} names step {}, but the graph has {} steps",
                    fan.step,
                    steps.len()
                ));
            };
            if !step.parents.contains(&fan.over) {
                return Some(format!(
                    "step `{}` fans out over step {}, which is not one of its parents",
                    step.name, fan.over
                ));
            }
            if fan.bound == Some(0) {
                return Some(format!(
                    "step `{}`'s fan-out bound must be at least 1",
                    step.name
                ));
            }
            if self.fan_outs[..i].iter().any(|f| f.step == fan.step) {
                return Some(format!("step `{}` is listed as a fan-out twice", step.name));
            }
        }
        None
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// Why this batch template's [`ttrs`](Submission::ttrs) do not fit `inputs` runs, if they
    /// do not: none, one per step, or one per step per input.
    pub(crate) fn check_batch(&self, inputs: usize) -> Result<(), StoreError> {
        let steps = self.graph.steps.len();
        let n = self.ttrs.len();
        if n != 0 && n != steps && n != steps * inputs {
            return Err(StoreError::InvalidSubmission {
                job: self.job.to_owned(),
                why: format!(
                    "{n} TTRs for {inputs} runs of {steps} steps: give one per step, or one per \
                     step per input"
                ),
            });
        }
        Ok(())
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// The TTR of step `position` of run `run` (its index among the inputs of a batch; 0
    /// otherwise), in ms as stored: at least [`MIN_TTR`](crate::MIN_TTR), at most 1,000 years
    /// (a longer one would overflow PostgreSQL's timestamps, and is forever anyway). `None`:
    /// the worker's lease.
    pub(crate) fn ttr_ms(&self, run: usize, position: usize) -> Option<i64> {
        let steps = self.graph.steps.len();
        let ttr = if self.ttrs.len() == steps {
            self.ttrs.get(position)
        } else {
            self.ttrs.get(run * steps + position)
        };
        ttr.copied().flatten().map(ttr_ms)
    }

    #[cfg(feature = "postgres")]
    /// Whether every step of every run is plain: no TTR, and no fan-out. A claim of a plain
    /// step is leased with its worker's lease, and claims the step whole.
    pub(crate) fn plain(&self) -> bool {
        self.fan_outs.is_empty() && self.ttrs.iter().all(Option::is_none)
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// The fan-out of step `position`, if it is one.
    pub(crate) fn fan_out(&self, position: usize) -> Option<&FanOut> {
        self.fan_outs.iter().find(|f| f.step == position)
    }

    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    /// The graph as stored, JSON.
    pub(crate) fn graph_json(&self) -> Result<String, StoreError> {
        serde_json::to_string(self.graph).map_err(|e| StoreError::Corrupt {
            what: format!("the graph of job `{}` cannot be written ({e})", self.job),
        })
    }
}

impl ClaimId {
    /// The error of `worker`'s write under this claim, which it no longer holds.
    pub(crate) fn lost(&self, worker: &str) -> StoreError {
        StoreError::ClaimLost {
            run: self.run.clone(),
            step: self.step.clone(),
            attempt: self.attempt,
            worker: worker.to_owned(),
        }
    }
}

/// What [`Queue::submit`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The run's id: the new run's, or the first run's with the same key.
    pub id: String,
    /// Whether this submit created the run.
    pub created: bool,
}

/// Which claim of which step: what fences a worker's writes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimId {
    /// The run's id.
    pub run: String,
    /// The step's name.
    pub step: String,
    /// The step's index in the run's graph: how the stores find the step's row (with the
    /// run, the worker and the claim number), checked against [`step`](ClaimId::step). An id
    /// whose position is another step's matches no claim: its heartbeat says
    /// [`Held::Lost`], its completion is not stored and its failure is
    /// [`StoreError::ClaimLost`].
    pub position: usize,
    /// The claim's number: 1 for the step's (or the element's) first claim.
    pub attempt: u32,
    /// For a claim of one element of a `for_each` step: its index in the parent's output. Each
    /// element is claimed, numbered, fenced and settled on its own.
    pub element: Option<usize>,
    /// Whether the step is its run's only step (and this is not a claim of an element): its
    /// completion is the run's end. The store that made the claim says so; PostgreSQL then
    /// completes the step without taking its run's lock, and checks the step's stored row for
    /// it (an id that says so of another step is completed the usual way).
    pub only_step: bool,
    /// For a step a PostgreSQL commit handed over to its worker without writing the step's row
    /// (claim 1, [`Queue::complete_and_claim`]): how many times its run had been reset then.
    /// The claim holds while nothing writes the row and no reset (or redrive) of the run comes;
    /// its worker's first heartbeat writes the claim into the row, and after that the claim is
    /// an ordinary one. `None` for every other claim.
    pub handed_over: Option<i64>,
}

/// A step (or one element of a `for_each` step: [`ClaimId::element`]) claimed by a worker: what
/// it needs to run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The run, the step and the claim's number.
    pub id: ClaimId,
    /// The run's job.
    pub job: String,
    /// How many earlier claims of the step (of the element) returned an error.
    pub fails: u32,
    /// The run's input, JSON.
    pub input: String,
    /// The outputs of the step's parents and `after` steps: (name, JSON), in graph order. For an
    /// element's claim, the iterated parent's output is element [`ClaimId::element`] alone, as a
    /// list of one (`[x]`; re-encoded by the database, so equal as JSON, not byte for byte).
    pub deps: Vec<(String, String)>,
    /// When the claim's lease ends unless renewed (Unix ms).
    pub lease_until: i64,
    /// How long the lease lasts: the step's TTR ([`Submission::ttrs`]), or the lease the worker
    /// claimed with for a step without one. Each heartbeat renews it by as much, so its worker
    /// heartbeats at least every third of it.
    pub lease: Duration,
}

/// What [`Queue::complete_and_claim`] did.
#[derive(Debug, Default)]
pub struct Committed {
    /// For each completion, in order: whether it was committed ([`Queue::complete_many`]).
    pub stored: Vec<bool>,
    /// The steps the completions made ready that were claimed for the committing worker.
    pub claims: Vec<Claim>,
}

/// A step that completed, as [`Queue::complete_many`] takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion<'a> {
    /// Its claim.
    pub claim: &'a ClaimId,
    /// Its output, JSON.
    pub output: &'a str,
    /// When it started (Unix ms).
    pub started_at: i64,
}

/// What [`Queue::heartbeat`] found of one claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Held {
    /// Still the worker's; its lease is extended.
    Held,
    /// Another claim took the step (this one's lease expired), or the step was settled: the
    /// worker must stop it, and cannot commit it.
    Lost,
    /// Its run was aborted: the worker must cancel the step.
    Aborted,
}

/// What [`Queue::fail`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failed {
    /// The step is ready again at this time (Unix ms).
    Retrying {
        /// When.
        at: i64,
    },
    /// The step failed for good: its descendants are skipped.
    Failed,
}
