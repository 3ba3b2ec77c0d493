//! The live status of a batch: how many runs, and how many runs' instances of each step, are
//! waiting, running or done; kept in atomics that the runs' listeners update and readers
//! snapshot.

use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering, fence};

use crate::{JobStep, StepEvent};

use super::BatchSummary;

/// A snapshot of a batch: its runs, and each step across its runs.
///
/// Every count adds up to [`total`](BatchStatus::total): for [`runs`](BatchStatus::runs),
/// `waiting + running + succeeded + failed + cancelled == total`, and for each step,
/// `waiting + running + completed + failed + skipped + cancelled == total`, where a run not
/// started yet counts as waiting at every step.
///
/// `total` is the number of inputs when it is known: when the inputs' iterator reports an exact
/// [`size_hint`](Iterator::size_hint) (a `Vec`, a range, `map` of either...), or once the
/// iterator is exhausted. Before then ([`total_known`](BatchStatus::total_known) false), it is
/// the number of inputs taken so far, and grows as the batch takes more.
///
/// Inputs never taken because the batch was aborted count as cancelled runs, whose every step is
/// cancelled, when their number is known (an exact `size_hint` at the abort); otherwise they are
/// not counted at all, and `total` is the inputs taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStatus<S> {
    /// The batch's runs: see above for which.
    pub total: usize,
    /// Whether `total` is the batch's final number of runs.
    pub total_known: bool,
    /// True in the status of a batch whose stream has ended: every run has ended.
    pub finished: bool,
    /// How many runs are waiting, running, succeeded, failed, cancelled.
    pub runs: RunCounts,
    /// Each step's counts across the runs, in declaration order (indexed like
    /// [`JobStep::index`]).
    pub steps: Vec<StepCounts<S>>,
}

impl<S: JobStep> BatchStatus<S> {
    /// The counts of `step`.
    pub fn step(&self, step: S) -> &StepCounts<S> {
        &self.steps[step.index()]
    }

    /// A status with no run, every step listed.
    pub(crate) fn empty() -> Self {
        BatchStatus {
            total: 0,
            total_known: false,
            finished: false,
            runs: RunCounts::default(),
            steps: S::ALL.iter().map(|&step| StepCounts::zero(step)).collect(),
        }
    }
}

/// How many runs of a batch are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RunCounts {
    /// Not started yet (inputs not taken from the iterator yet included).
    pub waiting: usize,
    /// Started and not ended.
    pub running: usize,
    /// Ended with every step completed.
    pub succeeded: usize,
    /// Ended with an error that is not a cancellation.
    pub failed: usize,
    /// Ended cancelled ([`JobError::is_cancelled`](crate::JobError::is_cancelled)), or never
    /// started because the batch was aborted.
    pub cancelled: usize,
}

impl RunCounts {
    /// Runs that ended: `succeeded + failed + cancelled`.
    pub fn done(&self) -> usize {
        self.succeeded + self.failed + self.cancelled
    }

    /// Every run counted: `waiting + running + done()`.
    pub fn total(&self) -> usize {
        self.waiting + self.running + self.done()
    }
}

/// How many runs of a batch have one step in each [`StepState`](crate::StepState).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepCounts<S> {
    /// The step.
    pub step: S,
    /// Runs in which the step has not started: it waits for its dependencies, or the run has not
    /// started.
    pub waiting: usize,
    /// Runs in which it runs (possibly between retries).
    pub running: usize,
    /// Runs in which it completed.
    pub completed: usize,
    /// Runs in which it failed after its last attempt.
    pub failed: usize,
    /// Runs in which it was skipped because a step it depends on failed.
    pub skipped: usize,
    /// Runs in which it was cancelled while it ran or waited, and runs never started because the
    /// batch was aborted.
    pub cancelled: usize,
}

impl<S> StepCounts<S> {
    pub(crate) fn zero(step: S) -> Self {
        StepCounts {
            step,
            waiting: 0,
            running: 0,
            completed: 0,
            failed: 0,
            skipped: 0,
            cancelled: 0,
        }
    }

    /// Runs in which the step will not change any more: `completed + failed + skipped +
    /// cancelled`.
    pub fn done(&self) -> usize {
        self.completed + self.failed + self.skipped + self.cancelled
    }

    /// Every run counted: `waiting + running + done()`.
    pub fn total(&self) -> usize {
        self.waiting + self.running + self.done()
    }
}

/// Told the status of a batch as it changes: see [`Batch::status_listener`](super::Batch::status_listener).
///
/// It is called by the task that drives the batch, at most once per poll of the batch's stream
/// and only if something changed since the last call, and once more when the stream ends (with
/// [`finished`](BatchStatus::finished) set): the last call always sees the final status. A
/// batch of many short runs thus calls it about once per run that ends, not once per step
/// event. Keep it short: the batch's runs wait while it runs.
///
/// Any `Fn(&BatchStatus<S>) + Send` is a listener; a closure needs its parameter's type
/// written out: `|status: &BatchStatus<ReportStep>| ..`.
pub trait StatusListener<S> {
    /// Called with the batch's status after it changed.
    fn on_status(&self, status: &BatchStatus<S>);
}

impl<S, F: Fn(&BatchStatus<S>)> StatusListener<S> for F {
    fn on_status(&self, status: &BatchStatus<S>) {
        self(status)
    }
}

/// A cloneable, `Send + Sync` view of a batch's status, for another task or thread to poll:
/// [`BatchRun::status_handle`](super::BatchRun::status_handle).
///
/// Each [`status`](StatusHandle::status) is a consistent snapshot (every count adds up to the
/// total), taken without blocking the batch.
pub struct StatusHandle<S> {
    counters: Arc<Counters>,
    step: PhantomData<fn() -> S>,
}

impl<S: JobStep> StatusHandle<S> {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        StatusHandle {
            counters,
            step: PhantomData,
        }
    }

    /// The batch's status now.
    pub fn status(&self) -> BatchStatus<S> {
        let mut status = BatchStatus::empty();
        let _ = self.counters.read_into(&mut status);
        status
    }
}

impl<S> Clone for StatusHandle<S> {
    fn clone(&self) -> Self {
        StatusHandle {
            counters: Arc::clone(&self.counters),
            step: PhantomData,
        }
    }
}

impl<S> std::fmt::Debug for StatusHandle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHandle").finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// The counters

/// Indices into [`Counters::runs`].
const RUN_RUNNING: usize = 0;
const RUN_SUCCEEDED: usize = 1;
const RUN_FAILED: usize = 2;
const RUN_CANCELLED: usize = 3;

/// A step's state in one run, as its run's tracker knows it. `WAITING` has no counter (it is
/// what the others leave of the total); each other state `s` is counted in `steps[i][s - 1]`.
const WAITING: u8 = 0;
const RUNNING: u8 = 1;
const COMPLETED: u8 = 2;
const FAILED: u8 = 3;
const SKIPPED: u8 = 4;
const CANCELLED: u8 = 5;

const FLAG_TOTAL_KNOWN: usize = 1;
const FLAG_FINISHED: usize = 2;

/// How a run ended, for the run counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

/// The counts of a batch, shared by the batch, its runs' listeners and its status handles.
///
/// # One writer, any readers
///
/// Every write happens in the task that polls the batch's stream: the batch's own bookkeeping,
/// and the runs' listeners, which a run calls only from its own future, polled by the batch.
/// So writes never overlap, and are plain load-and-store updates. Readers on other threads get
/// consistent snapshots through a sequence lock: `seq` is odd while a write is under way, and
/// changes with every write, so a reader retries until it read every count between two equal,
/// even values of `seq`. No lock, no `unsafe`: the counts are atomics, read and written relaxed,
/// ordered by the fences around them.
pub(crate) struct Counters {
    seq: AtomicUsize,
    total: AtomicUsize,
    flags: AtomicUsize,
    not_started: AtomicUsize,
    runs: [AtomicUsize; 4],
    steps: Box<[[AtomicUsize; 5]]>,
}

fn add(cell: &AtomicUsize, n: usize) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

fn sub(cell: &AtomicUsize, n: usize) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_sub(n),
        Ordering::Relaxed,
    );
}

impl Counters {
    /// The counters of a batch of `S`'s job with `total` inputs, known or not.
    pub(crate) fn new<S: JobStep>(total: usize, total_known: bool) -> Self {
        Counters {
            seq: AtomicUsize::new(0),
            total: AtomicUsize::new(total),
            flags: AtomicUsize::new(if total_known { FLAG_TOTAL_KNOWN } else { 0 }),
            not_started: AtomicUsize::new(0),
            runs: Default::default(),
            steps: S::ALL.iter().map(|_| Default::default()).collect(),
        }
    }

    /// Changes the counts: the one writer's critical section.
    fn write(&self, f: impl FnOnce(&Self)) {
        let seq = self.seq.load(Ordering::Relaxed);
        debug_assert!(
            seq.is_multiple_of(2),
            "jobgraph: two writers of a batch's status"
        );
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        f(self);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Changes with every write: the batch compares it to decide whether to call its listener.
    pub(crate) fn version(&self) -> usize {
        self.seq.load(Ordering::Relaxed)
    }

    /// Copies a consistent snapshot into `out` (whose `steps` lists every step, or none).
    /// Returns the number of inputs not started.
    pub(crate) fn read_into<S: JobStep>(&self, out: &mut BatchStatus<S>) -> usize {
        let mut tries = 0u32;
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq.is_multiple_of(2) {
                self.copy_into(out);
                let not_started = self.not_started.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    return not_started;
                }
            }
            // A write takes a few nanoseconds; spin a little, then let the writer's thread run.
            tries += 1;
            if tries < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn copy_into<S: JobStep>(&self, out: &mut BatchStatus<S>) {
        let load = |cell: &AtomicUsize| cell.load(Ordering::Relaxed);
        let total = load(&self.total);
        let flags = load(&self.flags);
        out.total = total;
        out.total_known = flags & FLAG_TOTAL_KNOWN != 0;
        out.finished = flags & FLAG_FINISHED != 0;
        let [running, succeeded, failed, cancelled] = self.runs.each_ref().map(load);
        out.runs = RunCounts {
            // Wrapping: a torn read (retried) must not panic in debug builds.
            waiting: total
                .wrapping_sub(running)
                .wrapping_sub(succeeded)
                .wrapping_sub(failed)
                .wrapping_sub(cancelled),
            running,
            succeeded,
            failed,
            cancelled,
        };
        for (counts, cells) in out.steps.iter_mut().zip(self.steps.iter()) {
            let [running, completed, failed, skipped, cancelled] = cells.each_ref().map(load);
            *counts = StepCounts {
                step: counts.step,
                waiting: total
                    .wrapping_sub(running)
                    .wrapping_sub(completed)
                    .wrapping_sub(failed)
                    .wrapping_sub(skipped)
                    .wrapping_sub(cancelled),
                running,
                completed,
                failed,
                skipped,
                cancelled,
            };
        }
    }

    /// The batch took its `taken`th input and starts its run.
    pub(crate) fn run_started(&self, taken: usize) {
        self.write(|c| {
            add(&c.runs[RUN_RUNNING], 1);
            if c.total.load(Ordering::Relaxed) < taken {
                c.total.store(taken, Ordering::Relaxed);
            }
        });
    }

    /// A run ended.
    pub(crate) fn run_ended(&self, outcome: RunOutcome) {
        let cell = match outcome {
            RunOutcome::Succeeded => RUN_SUCCEEDED,
            RunOutcome::Failed => RUN_FAILED,
            RunOutcome::Cancelled => RUN_CANCELLED,
        };
        self.write(|c| {
            sub(&c.runs[RUN_RUNNING], 1);
            add(&c.runs[cell], 1);
        });
    }

    /// The batch takes no more inputs: it took `taken` of them, and `not_started` more are
    /// known to remain (the batch was aborted; they count as cancelled).
    pub(crate) fn inputs_ended(&self, taken: usize, not_started: usize) {
        let total = taken + not_started;
        let known = self.flags.load(Ordering::Relaxed) & FLAG_TOTAL_KNOWN != 0;
        if known && not_started == 0 && self.total.load(Ordering::Relaxed) == total {
            // The exact size hint was right: nothing changes, so listeners hear of nothing.
            return;
        }
        self.write(|c| {
            c.total.store(total, Ordering::Relaxed);
            c.flags.fetch_or(FLAG_TOTAL_KNOWN, Ordering::Relaxed);
            if not_started > 0 {
                add(&c.not_started, not_started);
                add(&c.runs[RUN_CANCELLED], not_started);
                for cells in c.steps.iter() {
                    add(&cells[usize::from(CANCELLED - 1)], not_started);
                }
            }
        });
    }

    /// What a durable batch finds in its store before it runs anything: `succeeded` runs that
    /// already succeeded (every step completed), and, for each step, `completed[i]` more runs
    /// (not succeeded) in which step `i` already completed.
    pub(crate) fn preset(&self, succeeded: usize, completed: &[usize]) {
        if succeeded == 0 && completed.iter().all(|&n| n == 0) {
            return;
        }
        self.write(|c| {
            add(&c.runs[RUN_SUCCEEDED], succeeded);
            for (cells, &more) in c.steps.iter().zip(completed) {
                add(&cells[usize::from(COMPLETED - 1)], succeeded + more);
            }
        });
    }

    /// The batch's stream ended.
    pub(crate) fn finished(&self) {
        self.write(|c| {
            c.flags.fetch_or(FLAG_FINISHED, Ordering::Relaxed);
        });
    }

    /// The run counts as a summary.
    pub(crate) fn summary<S: JobStep>(&self) -> BatchSummary {
        // Only the run counts are needed: no step is copied.
        let mut status = BatchStatus::<S> {
            total: 0,
            total_known: false,
            finished: false,
            runs: RunCounts::default(),
            steps: Vec::new(),
        };
        let not_started = self.read_into(&mut status);
        BatchSummary {
            total: status.total,
            succeeded: status.runs.succeeded,
            failed: status.runs.failed,
            cancelled: status.runs.cancelled,
            not_started,
        }
    }
}

/// One run's listener: moves the run's steps between the batch's step counts as its events
/// arrive. It remembers each step's state, since a `Cancelled` event comes both for steps that
/// ran and for steps that waited.
pub(crate) struct RunTracker {
    counters: Arc<Counters>,
    states: Box<[AtomicU8]>,
}

impl RunTracker {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        let states = counters
            .steps
            .iter()
            .map(|_| AtomicU8::new(WAITING))
            .collect();
        RunTracker { counters, states }
    }

    /// The tracker of a run whose steps marked in `completed` (indexed like
    /// [`JobStep::index`]) completed before it started, as [`Counters::preset`] counted them:
    /// their events change nothing.
    pub(crate) fn with_completed(counters: Arc<Counters>, completed: &[bool]) -> Self {
        let tracker = RunTracker::new(counters);
        for (state, &done) in tracker.states.iter().zip(completed) {
            if done {
                state.store(COMPLETED, Ordering::Relaxed);
            }
        }
        tracker
    }

    pub(crate) fn on_event<S: JobStep>(&self, event: &StepEvent<'_, S>) {
        let (step, to) = match *event {
            StepEvent::Started { step, .. } => (step, RUNNING),
            StepEvent::Completed { step, .. } => (step, COMPLETED),
            StepEvent::Failed { step, .. } => (step, FAILED),
            StepEvent::Skipped { step, .. } => (step, SKIPPED),
            StepEvent::Cancelled { step, .. } => (step, CANCELLED),
            // Retrying: the step is still running.
            _ => return,
        };
        let index = step.index();
        let Some(state) = self.states.get(index) else {
            return;
        };
        let from = state.load(Ordering::Relaxed);
        // A later attempt's `Started` changes nothing; a step that ended never changes again.
        if from == to || from >= COMPLETED {
            return;
        }
        state.store(to, Ordering::Relaxed);
        let cells = &self.counters.steps[index];
        self.counters.write(|_| {
            if from != WAITING {
                sub(&cells[usize::from(from - 1)], 1);
            }
            add(&cells[usize::from(to - 1)], 1);
        });
    }
}
