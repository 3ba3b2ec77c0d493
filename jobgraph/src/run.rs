//! The state of one run, shared by the scheduler, the steps and a [`JobHandle`](crate::JobHandle):
//! its identity, its options, and the live report.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::context::{Enrich, RunInfo};
use crate::limit::LimitRegistry;
use crate::report::{JobReport, Listener, StepEvent, StepReport, StepState};
use crate::{JobError, JobStep, RetryPolicy, StepContext, StepError, StepFailure};

/// Per-run options, set through [`Runner`](crate::Runner).
pub(crate) struct RunOptions<S> {
    pub(crate) job_id: Option<Arc<str>>,
    pub(crate) retry: Vec<(S, Arc<dyn RetryPolicy>)>,
    pub(crate) timeout: Vec<(S, Duration)>,
    pub(crate) job_enrich: Option<fn(&mut StepContext)>,
    pub(crate) enrich: Vec<Enrich>,
    pub(crate) sequential: bool,
    pub(crate) fail_fast: bool,
    pub(crate) listener: Option<Listener<S>>,
    /// A token whose cancellation cancels the run (the run gets a child of it).
    pub(crate) cancel_on: Option<CancellationToken>,
    /// The registry of per-step limits; `None` is [`LimitRegistry::global`].
    pub(crate) limits: Option<LimitRegistry>,
    /// True if the run starts from outputs given to it ([`Runner::seed`](crate::Runner::seed)).
    pub(crate) seeded: bool,
    /// The step the run stops after ([`Runner::until`](crate::Runner::until)).
    pub(crate) until: Option<S>,
    /// Where a durable run checkpoints its steps.
    pub(crate) durable: Option<crate::durable::Durable>,
    /// A worker's claim of one element of a `for_each` step: the [`until`](Self::until) step,
    /// if it is a `for_each` step, is given a parent's output that holds only this element (its
    /// index in the whole output), and outputs the one-element `Vec` of its output.
    pub(crate) only_element: Option<usize>,
}

impl<S> Default for RunOptions<S> {
    fn default() -> Self {
        RunOptions {
            job_id: None,
            retry: Vec::new(),
            timeout: Vec::new(),
            job_enrich: None,
            enrich: Vec::new(),
            sequential: false,
            fail_fast: false,
            listener: None,
            cancel_on: None,
            limits: None,
            seeded: false,
            until: None,
            durable: None,
            only_element: None,
        }
    }
}

/// One run's shared state. Not public API: generated code reaches it through `__private`.
#[doc(hidden)]
pub struct RunCore<S: JobStep> {
    pub(crate) info: Arc<RunInfo>,
    pub(crate) options: RunOptions<S>,
    /// Whether a [`JobHandle`](crate::JobHandle) may cancel the run, so the scheduler watches.
    pub(crate) cancellable: bool,
    /// [`LimitRegistry::global`], looked up once per run: the registry of a run whose options name none.
    global_limits: &'static LimitRegistry,
    /// True if the run overrides no step's retry policy or timeout: a step that declares none
    /// may take the lean path (see `exec::start_if_lean`).
    pub(crate) no_overrides: bool,
    /// True if the job or the run enriches contexts.
    enriches: bool,
    started: Instant,
    /// The run's latest clock reading (nanoseconds since `started`, plus one) while no user code
    /// ran since it was taken, else zero: a step that starts right after another ended takes
    /// that reading as its start, saving a read of the clock per step.
    fresh: AtomicU64,
    started_at: SystemTime,
    /// Nanoseconds from the start to the end of the run, plus one; zero while it runs.
    elapsed: AtomicU64,
    /// Each step's live state, indexed like [`JobStep::ALL`]: written by the step's own future
    /// without a lock, read whole by [`report`](RunCore::report).
    steps: Box<[StepCell<S>]>,
}

/// One step's live state in a run. Each field is written by one future at a time (the step's,
/// or the scheduler's once the step ended), so relaxed stores suffice; `state` is stored last
/// and loaded first, so a snapshot never sees a state without the fields written before it.
struct StepCell<S> {
    state: AtomicU8,
    attempts: AtomicU32,
    /// Nanoseconds from the run's start, plus one; zero when not started.
    started: AtomicU64,
    /// Nanoseconds, plus one; zero until the step ends.
    duration: AtomicU64,
    /// The error text and the skip's cause: written only when a step fails or is skipped.
    detail: Mutex<Detail<S>>,
}

struct Detail<S> {
    error: Option<String>,
    skipped_because: Option<S>,
}

const STATES: [StepState; 6] = [
    StepState::Pending,
    StepState::Running,
    StepState::Completed,
    StepState::Failed,
    StepState::Skipped,
    StepState::Cancelled,
];

fn state_code(state: StepState) -> u8 {
    match state {
        StepState::Pending => 0,
        StepState::Running => 1,
        StepState::Completed => 2,
        StepState::Failed => 3,
        StepState::Skipped => 4,
        StepState::Cancelled => 5,
    }
}

/// `d` in nanoseconds, plus one, saturating: in 64-bit arithmetic, which the clock's reading per
/// step pays for (`Duration::as_nanos` multiplies in 128 bits).
#[inline]
fn to_nanos(d: Duration) -> u64 {
    d.as_secs()
        .checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(u64::from(d.subsec_nanos()) + 1))
        .unwrap_or(u64::MAX)
}

fn from_nanos(n: u64) -> Option<Duration> {
    n.checked_sub(1).map(Duration::from_nanos)
}

impl<S: JobStep> StepCell<S> {
    fn new() -> Self {
        StepCell {
            state: AtomicU8::new(0),
            attempts: AtomicU32::new(0),
            started: AtomicU64::new(0),
            duration: AtomicU64::new(0),
            detail: Mutex::new(Detail {
                error: None,
                skipped_because: None,
            }),
        }
    }

    fn state(&self) -> StepState {
        STATES[usize::from(self.state.load(Ordering::Acquire))]
    }

    fn set_state(&self, state: StepState) {
        self.state.store(state_code(state), Ordering::Release);
    }

    /// Records that the step ended in `state` after `nanos` nanoseconds: the state last, so a
    /// snapshot that sees it sees the duration (and anything written before the call).
    #[inline]
    fn record_end(&self, nanos: u64, state: StepState) {
        self.duration
            .store(nanos.saturating_add(1), Ordering::Relaxed);
        self.set_state(state);
    }

    fn detail(&self) -> MutexGuard<'_, Detail<S>> {
        // A panic while the lock was held leaves nothing half-written we rely on.
        self.detail.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, step: S) -> StepReport<S> {
        let state = self.state();
        let detail = self.detail();
        StepReport {
            step,
            state,
            started: from_nanos(self.started.load(Ordering::Relaxed)),
            duration: from_nanos(self.duration.load(Ordering::Relaxed)),
            attempts: self.attempts.load(Ordering::Relaxed),
            error: detail.error.clone(),
            skipped_because: detail.skipped_because,
        }
    }
}

impl<S: JobStep> RunCore<S> {
    /// The state of a new run of `J`, with `J`'s own enrichment before the options' ones.
    pub(crate) fn for_job<J: crate::Job<Step = S>>(
        mut options: RunOptions<S>,
        cancellable: bool,
    ) -> Self {
        options.job_enrich = J::__ENRICH;
        Self::new(J::NAME, options, cancellable)
    }

    fn new(job_name: &'static str, mut options: RunOptions<S>, cancellable: bool) -> Self {
        // A run watched by the scheduler needs its token now; the others make one if a step
        // asks for it.
        let (cancel, cancellable) = match options.cancel_on.take() {
            Some(parent) => (Some(parent.child_token()), true),
            None => (cancellable.then(CancellationToken::new), cancellable),
        };
        // A durable run's steps take the general path, which checkpoints them.
        let no_overrides =
            options.retry.is_empty() && options.timeout.is_empty() && options.durable.is_none();
        let enriches = options.job_enrich.is_some() || !options.enrich.is_empty();
        RunCore {
            info: Arc::new(RunInfo::new(job_name, options.job_id.take(), cancel)),
            global_limits: LimitRegistry::global(),
            no_overrides,
            enriches,
            options,
            cancellable,
            started: Instant::now(),
            fresh: AtomicU64::new(0),
            started_at: SystemTime::now(),
            elapsed: AtomicU64::new(0),
            steps: S::ALL.iter().map(|_| StepCell::new()).collect(),
        }
    }

    pub(crate) fn job_id(&self) -> &str {
        self.info.job_id()
    }

    /// When the run started, on the wall clock.
    pub(crate) fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Where a durable run checkpoints its steps; `None` for other runs.
    #[inline]
    pub(crate) fn durable(&self) -> Option<&crate::durable::Durable> {
        self.options.durable.as_ref()
    }

    fn cell(&self, step: S) -> &StepCell<S> {
        &self.steps[step.index()]
    }

    /// A snapshot of the report.
    pub(crate) fn report(&self) -> JobReport<S> {
        JobReport {
            job_name: self.info.job_name,
            job_id: Arc::clone(self.info.job_id()),
            started_at: self.started_at,
            elapsed: from_nanos(self.elapsed.load(Ordering::Acquire)),
            steps: S::ALL
                .iter()
                .zip(&*self.steps)
                .map(|(&step, cell)| cell.report(step))
                .collect(),
        }
    }

    /// The time now, as nanoseconds since the run started: the latest reading if no user code
    /// ran since, else the clock's.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self.fresh.load(Ordering::Relaxed) {
            0 => self.read_clock(),
            n => n - 1,
        }
    }

    /// Reads the clock (nanoseconds since the run started) and keeps the reading as the run's
    /// latest.
    #[inline]
    pub(crate) fn read_clock(&self) -> u64 {
        let since = to_nanos(self.since_start(Instant::now()));
        self.fresh.store(since, Ordering::Relaxed);
        since - 1
    }

    /// Keeps the run's start as its latest reading: the scheduler's first pass runs in the poll
    /// that made the run, with no user code in between, so its first steps start at the run's
    /// start without reading the clock again. Not for a run made before it is spawned.
    #[inline]
    pub(crate) fn polled_now(&self) {
        self.fresh.store(1, Ordering::Relaxed);
    }

    /// Forgets the latest reading: user code is about to run, so time will have passed.
    #[inline]
    pub(crate) fn stale(&self) {
        self.fresh.store(0, Ordering::Relaxed);
    }

    /// Records that attempt `attempt` of `step`, first started at `first_start`, starts, and
    /// tells the listener.
    #[inline]
    pub(crate) fn attempt_started(&self, step: S, attempt: u32, first_start: u64) {
        let cell = self.cell(step);
        if attempt == 1 {
            cell.started
                .store(first_start.saturating_add(1), Ordering::Relaxed);
            cell.set_state(StepState::Running);
        }
        cell.attempts.store(attempt, Ordering::Relaxed);
        self.emit(&StepEvent::Started { step, attempt });
    }

    /// Sets the attempts of a `for_each` step: those of all its elements.
    pub(crate) fn set_attempts(&self, step: S, attempts: u32) {
        self.cell(step).attempts.store(attempts, Ordering::Relaxed);
    }

    /// Records that `step` completed after `nanos` nanoseconds.
    #[inline]
    pub(crate) fn step_completed(&self, step: S, nanos: u64) {
        self.cell(step).record_end(nanos, StepState::Completed);
    }

    /// Records that `step` failed with `error` after `nanos` nanoseconds.
    pub(crate) fn step_failed(&self, step: S, nanos: u64, error: String) {
        let cell = self.cell(step);
        cell.detail().error = Some(error);
        cell.record_end(nanos, StepState::Failed);
    }

    /// The steps a failure of `failed` skips, by index, in the order they are met: every step
    /// waiting for it, directly or not, that has not started. A step whose output is already
    /// there (seeded) is not skipped, nor what waits for it alone through it.
    pub(crate) fn to_skip(&self, failed: S) -> Vec<usize> {
        let mut seen = vec![false; self.steps.len()];
        let mut to_skip = Vec::new();
        let mut below: Vec<usize> = S::STEPS[failed.index()].children().to_vec();
        while let Some(index) = below.pop() {
            if std::mem::replace(&mut seen[index], true)
                || self.steps[index].state() != StepState::Pending
            {
                continue;
            }
            to_skip.push(index);
            below.extend_from_slice(S::STEPS[index].children());
        }
        to_skip
    }

    /// Records that the steps a failure of `failed` skips ([`to_skip`](Self::to_skip)) are
    /// skipped: the moment it failed, so the live report, the listener and a batch's status see
    /// it while other branches still run.
    pub(crate) fn skip_descendants(&self, failed: S) {
        for index in self.to_skip(failed) {
            let cell = &self.steps[index];
            cell.detail().skipped_because = Some(failed);
            cell.set_state(StepState::Skipped);
            let skipped = S::ALL[index];
            tracing::debug!(
                step = skipped.name(),
                because = failed.name(),
                "step skipped"
            );
            self.emit(&StepEvent::Skipped {
                step: skipped,
                because: failed,
            });
        }
    }

    /// Records that `step`'s output was given to the run: it counts as completed, with no
    /// attempt.
    pub(crate) fn step_seeded(&self, step: S) {
        self.cell(step).set_state(StepState::Completed);
    }

    /// The registry of per-step limits this run uses.
    #[inline]
    pub(crate) fn limits(&self) -> &LimitRegistry {
        self.options.limits.as_ref().unwrap_or(self.global_limits)
    }

    /// True if a listener hears this run's events.
    #[inline]
    pub(crate) fn listens(&self) -> bool {
        self.options.listener.is_some()
    }

    /// Tells the listener, if any, of `event`.
    #[inline]
    pub(crate) fn emit(&self, event: &StepEvent<'_, S>) {
        if let Some(listener) = &self.options.listener {
            listener(event);
        }
    }

    pub(crate) fn retry_override(&self, step: S) -> Option<&dyn RetryPolicy> {
        if self.options.retry.is_empty() {
            return None;
        }
        self.options
            .retry
            .iter()
            .rev()
            .find(|(s, _)| *s == step)
            .map(|(_, p)| &**p as &dyn RetryPolicy)
    }

    pub(crate) fn timeout_override(&self, step: S) -> Option<Duration> {
        if self.options.timeout.is_empty() {
            return None;
        }
        self.options
            .timeout
            .iter()
            .rev()
            .find(|(s, _)| *s == step)
            .map(|(_, d)| *d)
    }

    /// True if the job or the run enriches contexts.
    #[inline]
    pub(crate) fn enriches(&self) -> bool {
        self.enriches
    }

    /// The context of a new attempt, enriched: the job's enrichment first.
    pub(crate) fn context(&self, step: S, attempt: u32) -> StepContext {
        let mut ctx = StepContext::new(&self.info, step.name(), attempt);
        if let Some(f) = self.options.job_enrich {
            f(&mut ctx);
        }
        for f in &self.options.enrich {
            f(&mut ctx);
        }
        ctx
    }

    /// Records that `step` was running when the run stopped.
    pub(crate) fn record_cancelled(&self, step: S) {
        let cell = self.cell(step);
        let since = from_nanos(cell.started.load(Ordering::Relaxed))
            .map(|s| self.since_start(Instant::now()).saturating_sub(s));
        if let Some(duration) = since {
            cell.duration.store(to_nanos(duration), Ordering::Relaxed);
        }
        cell.detail().error = Some(StepError::Cancelled.to_string());
        cell.set_state(StepState::Cancelled);
        tracing::warn!(step = step.name(), "step cancelled");
        self.emit(&StepEvent::Cancelled { step });
    }

    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    /// The error of a run whose future was dropped before it ended.
    pub(crate) fn abandon(&self) -> JobError<S> {
        let running: Vec<S> = S::ALL
            .iter()
            .copied()
            .filter(|&s| self.cell(s).state() == StepState::Running)
            .collect();
        let failures = running
            .iter()
            .map(|&s| {
                self.record_cancelled(s);
                StepFailure::new(s, StepError::Cancelled)
            })
            .collect();
        // Dropped between polls: the latest reading is from an earlier poll.
        match self.finish(self.read_clock(), failures) {
            Err(error) => error,
            // Every step had completed: only the task's result was lost.
            Ok(()) => JobError::new(
                vec![StepFailure::new(S::ALL[0], StepError::Cancelled)],
                self.report(),
            ),
        }
    }

    /// Ends the run: needed steps that never started (and were not skipped when a step they
    /// wait for failed) are cancelled; `Ok` only if every needed step completed. A run
    /// [`until`](crate::Runner::until) a step needs that step and the ancestors it waited for;
    /// the others stay pending.
    ///
    /// `ended` is when the run ended, in nanoseconds since it started.
    pub(crate) fn finish(
        &self,
        ended: u64,
        mut failures: Vec<StepFailure<S>>,
    ) -> Result<(), JobError<S>> {
        self.elapsed
            .store(ended.saturating_add(1), Ordering::Release);
        let needed = self.needed();
        let is_needed = |index: usize| needed.as_ref().is_none_or(|needed| needed[index]);
        let completed = |(index, cell): (usize, &StepCell<S>)| {
            !is_needed(index) || cell.state() == StepState::Completed
        };
        if failures.is_empty() && self.steps.iter().enumerate().all(completed) {
            return Ok(());
        }
        // What is still pending was waiting when the run was cancelled.
        let mut cancelled = Vec::new();
        for (index, cell) in self.steps.iter().enumerate() {
            if is_needed(index) && cell.state() == StepState::Pending {
                cell.set_state(StepState::Cancelled);
                cancelled.push(S::ALL[index]);
            }
        }
        if failures.is_empty()
            && let Some(&first) = cancelled.first()
        {
            // Cancelled before any step ran: the first cancelled step stands for the run.
            failures.push(StepFailure::new(first, StepError::Cancelled));
        }
        for &step in &cancelled {
            self.emit(&StepEvent::Cancelled { step });
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(JobError::new(failures, self.report()))
        }
    }

    /// In a run [`until`](crate::Runner::until) a step, the steps it needs, by index: that step
    /// and every step it waits for, directly or not, up to the steps whose outputs were given.
    /// `None` when the run needs every step. The scheduler plans with it (after marking the
    /// seeded steps completed), and [`finish`](RunCore::finish) cancels what it left pending.
    pub(crate) fn needed(&self) -> Option<Vec<bool>> {
        let until = self.options.until?;
        let mut needed = vec![false; S::ALL.len()];
        let mut stack = vec![until.index()];
        while let Some(index) = stack.pop() {
            if std::mem::replace(&mut needed[index], true)
                || self.steps[index].state() == StepState::Completed
            {
                continue;
            }
            let info = &S::STEPS[index];
            stack.extend_from_slice(info.parent_indices());
            stack.extend_from_slice(info.after_indices());
        }
        Some(needed)
    }
}
