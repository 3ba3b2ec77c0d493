//! The in-process engine: what the scheduler generated for each job runs on. A run's output
//! cells, the step masks (ready, running, done) in topological order, each step's turn in a pass
//! (start it from its function when it is ready, poll it, record how it ended), what stops a run
//! early, and the suspension between passes.

use std::cell::OnceCell;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio_util::sync::WaitForCancellationFuture;

use crate::durable::{ElementsCodec, Encode};
use crate::error::{BoxError, StepFailure, StepPanic};
use crate::exec::{
    AttemptContext, Policies, StepFuture, StepFutureProj, for_each_future, report_completed,
    report_failed, start_step,
};
use crate::limit::StepLimits;
use crate::run::RunCore;
use crate::{JobError, JobStep, RetryPolicy, StepError};

/// The output of step `step` in a run where every step completed.
#[inline]
pub fn completed<T>(output: Option<T>) -> T {
    match output {
        Some(output) => output,
        None => unreachable!("jobgraph: a completed run is missing a step's output"),
    }
}

/// The output of one step, written once by the scheduler, then lent to the children.
///
/// A `OnceCell`, not a `OnceLock`: every access happens in the run's own task, so the write
/// needs no atomic read-modify-write, which cost a third of a suspending step's overhead. The
/// cell is not `Sync`, so the run future holds the cells themselves and never a reference to one
/// across an `.await`: a started step holds the `&T` its parent's cell lent it, which is `Send`
/// when `T` is `Sync`, as before.
pub struct OutputCell<T>(OnceCell<T>);

impl<T> OutputCell<T> {
    /// A cell holding `seed`, the output given before the run started, if any.
    #[inline]
    pub fn seeded(seed: Option<T>) -> Self {
        match seed {
            None => OutputCell(OnceCell::new()),
            Some(value) => OutputCell(OnceCell::from(value)),
        }
    }

    /// True if the cell holds its step's output.
    #[inline]
    pub fn is_set(&self) -> bool {
        self.0.get().is_some()
    }

    #[inline]
    /// Writes the output of a step that completed: once.
    pub fn set(&self, value: T) {
        if self.0.set(value).is_err() {
            unreachable!("jobgraph: a step's output was written twice");
        }
    }

    #[inline]
    /// The output, lent to a child that starts.
    pub fn get(&self) -> &T {
        match self.0.get() {
            Some(value) => value,
            None => unreachable!("jobgraph: a step started before its parent's output existed"),
        }
    }

    /// The output, if the step completed (or was seeded).
    #[inline]
    pub fn into_inner(self) -> Option<T> {
        self.0.into_inner()
    }
}

pin_project_lite::pin_project! {
    /// The places of sixteen steps' futures (the steps at sixteen consecutive positions of the
    /// topological order), pinned where the run's future is; a last chunk's unused places are
    /// `()`.
    ///
    /// The run's future holds one chunk per sixteen steps, not a local per step: rustc's layout
    /// of an `async` block compares the locals it holds across an `.await` with each other at
    /// every statement, so with a local per step a job's compile time grew with the cube of its
    /// number of steps.
    #[project = ChunkProj]
    #[allow(missing_docs, clippy::type_complexity)]
    pub struct Chunk<F0, F1, F2, F3, F4, F5, F6, F7, F8, F9, F10, F11, F12, F13, F14, F15> {
        #[pin] pub f0: F0,
        #[pin] pub f1: F1,
        #[pin] pub f2: F2,
        #[pin] pub f3: F3,
        #[pin] pub f4: F4,
        #[pin] pub f5: F5,
        #[pin] pub f6: F6,
        #[pin] pub f7: F7,
        #[pin] pub f8: F8,
        #[pin] pub f9: F9,
        #[pin] pub f10: F10,
        #[pin] pub f11: F11,
        #[pin] pub f12: F12,
        #[pin] pub f13: F13,
        #[pin] pub f14: F14,
        #[pin] pub f15: F15,
    }
}

impl<F0, F1, F2, F3, F4, F5, F6, F7, F8, F9, F10, F11, F12, F13, F14, F15>
    Chunk<F0, F1, F2, F3, F4, F5, F6, F7, F8, F9, F10, F11, F12, F13, F14, F15>
{
    /// A chunk of these places.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        f0: F0,
        f1: F1,
        f2: F2,
        f3: F3,
        f4: F4,
        f5: F5,
        f6: F6,
        f7: F7,
        f8: F8,
        f9: F9,
        f10: F10,
        f11: F11,
        f12: F12,
        f13: F13,
        f14: F14,
        f15: F15,
    ) -> Self {
        Chunk {
            f0,
            f1,
            f2,
            f3,
            f4,
            f5,
            f6,
            f7,
            f8,
            f9,
            f10,
            f11,
            f12,
            f13,
            f14,
            f15,
        }
    }

    /// Every place, pinned.
    #[inline]
    #[allow(clippy::type_complexity)]
    pub fn places(
        self: Pin<&mut Self>,
    ) -> (
        Pin<&mut F0>,
        Pin<&mut F1>,
        Pin<&mut F2>,
        Pin<&mut F3>,
        Pin<&mut F4>,
        Pin<&mut F5>,
        Pin<&mut F6>,
        Pin<&mut F7>,
        Pin<&mut F8>,
        Pin<&mut F9>,
        Pin<&mut F10>,
        Pin<&mut F11>,
        Pin<&mut F12>,
        Pin<&mut F13>,
        Pin<&mut F14>,
        Pin<&mut F15>,
    ) {
        let ChunkProj {
            f0,
            f1,
            f2,
            f3,
            f4,
            f5,
            f6,
            f7,
            f8,
            f9,
            f10,
            f11,
            f12,
            f13,
            f14,
            f15,
        } = self.project();
        (
            f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15,
        )
    }
}

/// What a [`ChunkOf`] needs of its places: to drop the futures of the steps that run.
pub trait DropRunning {
    /// Drops the futures of the chunk's steps that run (the chunk's first step is at position
    /// `first`): the run stopped.
    fn drop_running<const W: usize>(self: Pin<&mut Self>, first: usize, sched: &Sched<W>);
}

impl<F0, F1, F2, F3, F4, F5, F6, F7, F8, F9, F10, F11, F12, F13, F14, F15> DropRunning
    for Chunk<F0, F1, F2, F3, F4, F5, F6, F7, F8, F9, F10, F11, F12, F13, F14, F15>
where
    F0: Place,
    F1: Place,
    F2: Place,
    F3: Place,
    F4: Place,
    F5: Place,
    F6: Place,
    F7: Place,
    F8: Place,
    F9: Place,
    F10: Place,
    F11: Place,
    F12: Place,
    F13: Place,
    F14: Place,
    F15: Place,
{
    fn drop_running<const W: usize>(self: Pin<&mut Self>, first: usize, sched: &Sched<W>) {
        let (f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15) = self.places();
        let places: [Pin<&mut dyn Place>; CHUNK] = [
            f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, f10, f11, f12, f13, f14, f15,
        ];
        for (j, place) in places.into_iter().enumerate() {
            if sched.is_running(first + j) {
                place.clear();
            }
        }
    }
}

/// How many steps a [`Chunk`] holds.
const CHUNK: usize = 16;

/// A step's place in a [`Chunk`]: its future once started, or `()` in a last chunk's unused
/// places.
pub trait Place {
    /// Drops the future, if any.
    fn clear(self: Pin<&mut Self>);
}

impl<Fut, G> Place for Option<StepFuture<Fut, G>> {
    fn clear(mut self: Pin<&mut Self>) {
        self.set(None);
    }
}

impl Place for () {
    fn clear(self: Pin<&mut Self>) {}
}

/// The type of a job's output cells: a tuple of one [`OutputCell`] per step, in declaration
/// order. Implemented by `#[job]`, so the functions it generates per [`Chunk`] can name it.
pub trait JobCells {
    /// `(OutputCell<A>, OutputCell<B>, ..)`.
    type Cells;
}

/// Sixteen steps of a run: their futures, and each one's turn in a pass of the scheduler.
///
/// `#[job]` generates a function per chunk that returns one (`impl ChunkTurn<..>`), typed and
/// checked in that function: the run's future holds an opaque value per sixteen steps, not the
/// types of their futures. With the futures' types in the run's `async` block, checking it grew
/// with the square of its number of steps (they added 2.6 s to `cargo check` of a 1,000-step
/// chain, 0.07 s to that of a 100-step one).
pub trait ChunkTurn<'j, C, const W: usize, const N: usize, S: JobStep> {
    /// The turn of the step at position `k`, one of this chunk's: see [`turn`].
    #[allow(clippy::too_many_arguments)]
    fn turn(
        self: Pin<&mut Self>,
        k: usize,
        sched: &mut Sched<W>,
        graph: &TopoGraph<W, N>,
        cells: &'j C,
        failures: &mut Failures<S>,
        cx: &mut Context<'_>,
    );

    /// Drops the futures of this chunk's steps that run: the run stopped.
    fn drop_running(self: Pin<&mut Self>, sched: &Sched<W>);
}

pin_project_lite::pin_project! {
    /// A [`ChunkTurn`]: the chunk's places, the position of its first step, and the function
    /// taking a turn of one of its steps (a closure of the function that made the chunk).
    pub struct ChunkOf<P, F> {
        #[pin]
        places: P,
        first: usize,
        turn: F,
    }
}

impl<P, F> ChunkOf<P, F> {
    /// The chunk whose first step is at position `first`.
    #[inline(always)]
    pub fn new(first: usize, places: P, turn: F) -> Self {
        ChunkOf {
            places,
            first,
            turn,
        }
    }
}

impl<'j, C, const W: usize, const N: usize, S: JobStep, P: DropRunning, F> ChunkTurn<'j, C, W, N, S>
    for ChunkOf<P, F>
where
    F: Fn(
        Pin<&mut P>,
        usize,
        &mut Sched<W>,
        &TopoGraph<W, N>,
        &'j C,
        &mut Failures<S>,
        &mut Context<'_>,
    ),
{
    #[inline(always)]
    fn turn(
        self: Pin<&mut Self>,
        k: usize,
        sched: &mut Sched<W>,
        graph: &TopoGraph<W, N>,
        cells: &'j C,
        failures: &mut Failures<S>,
        cx: &mut Context<'_>,
    ) {
        let this = self.project();
        (this.turn)(this.places, k, sched, graph, cells, failures, cx);
    }

    fn drop_running(self: Pin<&mut Self>, sched: &Sched<W>) {
        let this = self.project();
        this.places.drop_running(*this.first, sched);
    }
}

/// A fixed-size set of step positions, `W` words of 64 steps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Mask<const W: usize>(pub [u64; W]);

impl<const W: usize> Mask<W> {
    /// No position.
    pub const EMPTY: Self = Mask([0; W]);

    #[inline]
    /// True if position `index` is in the set.
    pub const fn contains(&self, index: usize) -> bool {
        self.0[index / 64] & (1 << (index % 64)) != 0
    }

    #[inline]
    /// Adds position `index`.
    pub const fn insert(&mut self, index: usize) {
        self.0[index / 64] |= 1 << (index % 64);
    }

    #[inline]
    /// Removes position `index`.
    pub fn remove(&mut self, index: usize) {
        self.0[index / 64] &= !(1 << (index % 64));
    }

    #[inline]
    /// True if no position is in the set.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    #[inline]
    /// True if every position of `other` is in the set.
    pub fn is_superset(&self, other: &Self) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| a & b == *b)
    }

    /// The lowest position at or after `from` in `self` or `other`.
    #[inline]
    fn first_from(&self, other: &Self, from: usize) -> Option<usize> {
        let mut word = from / 64;
        if word >= W {
            return None;
        }
        let mut bits = (self.0[word] | other.0[word]) & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(word * 64 + bits.trailing_zeros() as usize);
            }
            word += 1;
            if word == W {
                return None;
            }
            bits = self.0[word] | other.0[word];
        }
    }
}

/// A job's graph as the scheduler sees it, built at compile time: for each step, by its position
/// in a topological order (not its index in `ALL`, as the macro's graph and `StepInfo` have it),
/// the positions of the steps it waits for and of the steps that wait for it.
pub struct TopoGraph<const W: usize, const N: usize> {
    /// Each step's position in the topological order, by its index in `ALL`.
    pub positions: [usize; N],
    /// The steps each step waits for.
    pub deps: [Mask<W>; N],
    /// The steps that wait for each step.
    pub children: [Mask<W>; N],
    /// The children that wait for this step alone: ready the moment it completes, with no
    /// check of their other dependencies.
    pub sole_children: [Mask<W>; N],
}

impl<const W: usize, const N: usize> TopoGraph<W, N> {
    /// The graph whose step at index `i` (in `ALL`) has position `positions[i]`, and whose step
    /// at position `k` waits for the steps at positions `deps[ends[k - 1]..ends[k]]` (from 0 for
    /// the first): the masks built at compile time from the edges, so the generated code grows
    /// with the number of edges, not with the number of steps times the masks' width.
    pub const fn new(positions: [usize; N], deps: &[usize], ends: [usize; N]) -> Self {
        let mut graph = TopoGraph {
            positions,
            deps: [Mask::EMPTY; N],
            children: [Mask::EMPTY; N],
            sole_children: [Mask::EMPTY; N],
        };
        let (mut k, mut start) = (0, 0);
        while k < N {
            let end = ends[k];
            let mut e = start;
            while e < end {
                graph.deps[k].insert(deps[e]);
                graph.children[deps[e]].insert(k);
                e += 1;
            }
            // A step's dependencies hold no step twice (naming one twice is an error), so a
            // step with one dependency waits for it alone.
            if end == start + 1 {
                graph.sole_children[deps[start]].insert(k);
            }
            start = end;
            k += 1;
        }
        graph
    }
}

/// The scheduler's bookkeeping for one run, by topological position: which steps may start,
/// which run, which completed.
pub struct Sched<const W: usize> {
    ready: Mask<W>,
    running: Mask<W>,
    done: Mask<W>,
    /// The steps this run may start: all of them but the seeded ones, and in a run
    /// [`until`](crate::Runner::until) a step, only that step and the ancestors it needs.
    wanted: Mask<W>,
    sequential: bool,
}

impl<const W: usize> Sched<W> {
    /// The next step at or after position `from` to start or to poll.
    #[inline]
    pub fn next(&self, from: usize) -> Option<usize> {
        if self.sequential && !self.running.is_empty() {
            return self.running.first_from(&Mask::EMPTY, from);
        }
        self.running.first_from(&self.ready, from)
    }

    /// If step `k` is ready, marks it running: the caller starts it.
    #[inline]
    pub fn take_ready(&mut self, k: usize) -> bool {
        if !self.ready.contains(k) {
            return false;
        }
        self.ready.remove(k);
        self.running.insert(k);
        true
    }

    /// Records that step `k` completed: each child whose dependencies all completed is ready.
    #[inline]
    pub fn complete<const N: usize>(&mut self, k: usize, graph: &TopoGraph<W, N>) {
        self.running.remove(k);
        self.done.insert(k);
        // This runs once per step: a child that waits for this step alone (every step of a
        // chain) is ready without a check; the others are checked word by word.
        let sole = &graph.sole_children[k];
        for ((ready, sole), wanted) in self.ready.0.iter_mut().zip(&sole.0).zip(&self.wanted.0) {
            *ready |= sole & wanted;
        }
        for (word, (&children, &sole)) in graph.children[k].0.iter().zip(&sole.0).enumerate() {
            let mut bits = children & !sole;
            while bits != 0 {
                let child = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if self.done.is_superset(&graph.deps[child]) && self.wanted.contains(child) {
                    self.ready.insert(child);
                }
            }
        }
    }

    /// Records that step `k` failed: its children never become ready.
    #[inline]
    pub fn fail(&mut self, k: usize) {
        self.running.remove(k);
    }

    /// True when nothing runs and a step is ready: only in a sequential run, after a step
    /// completed in the poll that started it.
    #[inline]
    pub fn more_to_start(&self) -> bool {
        self.running.is_empty() && !self.ready.is_empty()
    }

    /// True if step `k` runs.
    #[inline]
    pub fn is_running(&self, k: usize) -> bool {
        self.running.contains(k)
    }

    /// True when nothing runs: every step either completed or can never start.
    #[inline]
    pub fn idle(&self) -> bool {
        self.running.is_empty()
    }
}

/// Step `k`'s turn in a pass of the scheduler: starts it if it is ready, polls it if it runs,
/// and records how it ended.
///
/// Never inlined: each step's turn is a small function of its own, so the scheduler's poll keeps
/// a small stack frame (it is called on every wake) and the optimizer's time grows with the
/// number of steps, not with its square. Everything that does not depend on the step's future
/// (planning, reporting, the scheduler's bookkeeping) is a call to code shared by every step of
/// the job: a 100-step chain runs a different turn per step, and the fewer bytes each turn
/// holds, the fewer the processor fetches per step.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
pub fn turn<
    'a,
    const W: usize,
    const N: usize,
    J: ?Sized + 'a,
    R: ?Sized + 'a,
    S: JobStep,
    P,
    T,
    Fut,
    G,
>(
    job: &'a J,
    res: &'a R,
    run: &'a RunCore<S>,
    sched: &mut Sched<W>,
    graph: &TopoGraph<W, N>,
    k: usize,
    step: S,
    mut future: Pin<&mut Option<StepFuture<Fut, G>>>,
    start: impl FnOnce(&'a J, &'a R, &'a RunCore<S>, P) -> Result<StepFuture<Fut, G>, StepError>,
    parents: P,
    cell: &OutputCell<T>,
    failures: &mut Failures<S>,
    cx: &mut Context<'_>,
) where
    Fut: Future<Output = Result<T, BoxError>>,
    G: Future<Output = Result<T, StepError>> + Unpin,
{
    if sched.take_ready(k) {
        // Starting runs the user's code too: the attribute's policy expressions and
        // enrichment. Whatever goes wrong there is the step's failure.
        match std::panic::catch_unwind(AssertUnwindSafe(|| start(job, res, run, parents))) {
            Ok(Ok(started)) => future.set(Some(started)),
            Ok(Err(error)) => return start_failed(run, sched, k, step, error, failures),
            Err(payload) => {
                let error = StepError::Panic(StepPanic::from_payload(payload));
                return start_failed(run, sched, k, step, error, failures);
            }
        }
    }
    let Some(running) = future.as_mut().as_pin_mut() else {
        return;
    };
    // The ended future stays in its place until the run ends (its step is no longer running, so
    // it is never polled again): dropping it here would cost a drop per step, for nothing it
    // still holds but references and the step's context.
    match running.project() {
        StepFutureProj::Lean { attempt, started } => {
            run.stale();
            match std::panic::catch_unwind(AssertUnwindSafe(|| attempt.poll(cx))) {
                Ok(Poll::Pending) => {}
                Ok(Poll::Ready(Ok(value))) => {
                    lean_completed(run, sched, graph, k, step, *started);
                    cell.set(value);
                }
                Ok(Poll::Ready(Err(error))) => {
                    let error = StepError::Error(error);
                    lean_failed(run, sched, k, step, *started, error, failures);
                }
                Err(payload) => {
                    let error = StepError::Panic(StepPanic::from_payload(payload));
                    lean_failed(run, sched, k, step, *started, error, failures);
                }
            }
        }
        StepFutureProj::GeneralFuture { future } => match Pin::new(future).poll(cx) {
            Poll::Pending => {}
            Poll::Ready(Ok(value)) => {
                sched.complete(k, graph);
                cell.set(value);
            }
            Poll::Ready(Err(error)) => {
                sched.fail(k);
                failures.push(step, error);
            }
        },
    }
}

/// A step on the lean path, started at `started`, completed: reports it and marks its children
/// that can start ready.
#[inline(never)]
fn lean_completed<const W: usize, const N: usize, S: JobStep>(
    run: &RunCore<S>,
    sched: &mut Sched<W>,
    graph: &TopoGraph<W, N>,
    k: usize,
    step: S,
    started: u64,
) {
    report_completed(run, step, 1, started);
    sched.complete(k, graph);
}

/// A step on the lean path, started at `started`, failed with `error`: reports it and records
/// the failure.
#[cold]
#[inline(never)]
fn lean_failed<const W: usize, S: JobStep>(
    run: &RunCore<S>,
    sched: &mut Sched<W>,
    k: usize,
    step: S,
    started: u64,
    error: StepError,
    failures: &mut Failures<S>,
) {
    report_failed(run, step, 1, started, &error);
    sched.fail(k);
    failures.push(step, error);
}

/// Step `k` could not start: its policies are invalid, or evaluating them (or enriching its
/// context) panicked. It fails without running.
#[cold]
#[inline(never)]
fn start_failed<const W: usize, S: JobStep>(
    run: &RunCore<S>,
    sched: &mut Sched<W>,
    k: usize,
    step: S,
    error: StepError,
    failures: &mut Failures<S>,
) {
    let started = run.now();
    report_failed(run, step, 0, started, &error);
    sched.fail(k);
    failures.push(step, error);
}

/// The waker of the task polling the run: the scheduler polls its steps with a context made from
/// it.
#[inline]
pub fn waker() -> impl Future<Output = Waker> {
    poll_fn(|cx| Poll::Ready(cx.waker().clone()))
}

/// Suspends the run until a step wakes it: pending once, then ready, with `waker` updated to the
/// waker of the task polling it (if it changed) for the next pass.
pub struct Suspend<'a> {
    waker: &'a mut Waker,
    suspended: bool,
}

impl<'a> Suspend<'a> {
    #[inline]
    /// Suspends once; `waker` is the pass's waker, updated on wake-up.
    pub fn new(waker: &'a mut Waker) -> Self {
        Suspend {
            waker,
            suspended: false,
        }
    }
}

impl Future for Suspend<'_> {
    type Output = ();

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.suspended {
            // The steps just polled hold this poll's waker: one of them wakes the task.
            self.suspended = true;
            return Poll::Pending;
        }
        if !same_waker(self.waker, cx.waker()) {
            self.waker.clone_from(cx.waker());
        }
        Poll::Ready(())
    }
}

/// True if waking `a` does what waking `b` does: the same data, the same functions.
///
/// `Waker::will_wake` compares the vtables' addresses, and a runtime's vtable is a constant its
/// compiler may duplicate, one per codegen unit: tokio's `block_on` waker and its clones compare
/// unequal, so every pass of the scheduler cloned the waker again and dropped the old one, two
/// atomic read-modify-writes. This compares the vtables' contents, the functions themselves
/// (equal whenever their addresses are).
#[inline]
fn same_waker(a: &Waker, b: &Waker) -> bool {
    a.data() == b.data() && a.vtable() == b.vtable()
}

/// The scheduler met a position outside its graph: a bug in jobgraph, never in the user's code.
#[cold]
#[inline(never)]
pub fn unreachable_step() -> ! {
    unreachable!("jobgraph: the scheduler visited a step position outside its graph")
}

/// The failed steps of a run, in the order they failed.
pub struct Failures<S>(Vec<StepFailure<S>>);

impl<S: JobStep> Failures<S> {
    #[inline]
    #[allow(clippy::new_without_default)]
    /// No failure yet.
    pub const fn new() -> Self {
        Failures(Vec::new())
    }

    /// Records a failed step.
    #[cold]
    pub fn push(&mut self, step: S, error: StepError) {
        self.0.push(StepFailure::new(step, error));
    }
}

/// Why a run stops early: its handle cancelled it, or a step failed under `fail_fast`. Dropping
/// it (the run ended, or its future was dropped) cancels the run's token, so steps' own
/// background work sees the end of the run.
pub struct Stop<'a, S: JobStep> {
    run: &'a RunCore<S>,
    cancelled: Option<Pin<Box<WaitForCancellationFuture<'a>>>>,
}

impl<S: JobStep> Stop<'_, S> {
    /// True once the run's handle cancelled it.
    #[inline]
    pub fn cancelled(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.cancelled {
            Some(cancelled) => cancelled.as_mut().poll(cx).is_ready(),
            None => false,
        }
    }

    /// True if the run must stop because a step failed and the run is `fail_fast`.
    #[inline]
    pub fn failed_fast(&self, failures: &Failures<S>) -> bool {
        self.run.options.fail_fast && !failures.0.is_empty()
    }
}

impl<S: JobStep> Drop for Stop<'_, S> {
    fn drop(&mut self) {
        self.run.info.cancel();
    }
}

impl<S: JobStep> RunCore<S> {
    /// The scheduler's bookkeeping for this run: the steps with no dependencies are ready.
    ///
    /// In a run given outputs ([`Runner::seed`](crate::Runner::seed)), `seeded` says which
    /// steps (by index) have one: they are done, and their children may start at once. A run
    /// [`until`](crate::Runner::until) a step starts only that step and the ancestors it needs.
    #[inline]
    pub fn sched<const W: usize, const N: usize>(
        &self,
        graph: &TopoGraph<W, N>,
        seeded: impl FnOnce() -> [bool; N],
    ) -> Sched<W> {
        let mut sched = Sched {
            ready: Mask::EMPTY,
            running: Mask::EMPTY,
            done: Mask::EMPTY,
            wanted: Mask([!0; W]),
            sequential: self.options.sequential,
        };
        if self.options.seeded || self.options.until.is_some() {
            self.plan_partial(graph, &mut sched, seeded());
        }
        for (k, deps) in graph.deps.iter().enumerate() {
            if !sched.done.contains(k) && sched.wanted.contains(k) && sched.done.is_superset(deps) {
                sched.ready.insert(k);
            }
        }
        sched
    }

    /// Marks the seeded steps done and limits the run to what `until` needs.
    #[cold]
    #[inline(never)]
    fn plan_partial<const W: usize, const N: usize>(
        &self,
        graph: &TopoGraph<W, N>,
        sched: &mut Sched<W>,
        seeded: [bool; N],
    ) {
        for (index, _) in seeded.iter().enumerate().filter(|(_, seeded)| **seeded) {
            sched.done.insert(graph.positions[index]);
            self.step_seeded(S::ALL[index]);
        }
        if let Some(needed) = self.needed() {
            sched.wanted = Mask::EMPTY;
            for (index, _) in needed.iter().enumerate().filter(|(_, needed)| **needed) {
                sched.wanted.insert(graph.positions[index]);
            }
        }
        // A seeded step never starts: its output is there already.
        for (wanted, done) in sched.wanted.0.iter_mut().zip(&sched.done.0) {
            *wanted &= !done;
        }
    }

    /// Called as a pass of the scheduler begins after a suspension: time passed since the run's
    /// latest clock reading.
    #[inline]
    pub fn woken(&self) {
        self.stale();
    }

    /// What stops this run early.
    #[inline]
    pub fn stop(&self) -> Stop<'_, S> {
        Stop {
            run: self,
            cancelled: self
                .cancellable
                .then(|| Box::pin(self.info.token().cancelled())),
        }
    }

    /// Starts one step with its attribute's policies: see [`crate::exec::start_step`].
    #[inline]
    #[allow(clippy::type_complexity)]
    pub fn step<'a, R, C, T, F, Fut>(
        &'a self,
        step: S,
        retry: Option<R>,
        timeout: Option<Duration>,
        limits: &'a StepLimits,
        encode: Option<Encode<T>>,
        attempt: F,
    ) -> StepFuture<
        Fut,
        impl Future<Output = Result<T, StepError>> + Unpin + use<'a, S, R, C, T, F, Fut>,
    >
    where
        R: RetryPolicy,
        C: AttemptContext,
        F: FnMut(C) -> Fut + 'a,
        Fut: Future<Output = Result<T, BoxError>> + 'a,
    {
        let policies = Policies {
            retry,
            timeout,
            limits,
            encode,
        };
        start_step(self, step, policies, attempt)
    }

    /// Runs a `#[step(for_each(..))]` step: see [`crate::exec::run_for_each`].
    #[inline]
    #[allow(clippy::type_complexity)]
    #[allow(clippy::too_many_arguments)]
    pub fn for_each<'a, R, C, E, T, F, Fut>(
        &'a self,
        step: S,
        retry: Option<R>,
        timeout: Option<Duration>,
        limits: &'a StepLimits,
        codec: Option<ElementsCodec<T>>,
        bound: Option<u32>,
        elements: &'a [E],
        attempt: F,
    ) -> StepFuture<
        core::future::Pending<Result<Vec<T>, BoxError>>,
        impl Future<Output = Result<Vec<T>, StepError>> + Unpin + use<'a, S, R, C, E, T, F, Fut>,
    >
    where
        R: RetryPolicy,
        C: AttemptContext + 'a,
        F: Fn(C, &'a E) -> Fut + 'a,
        Fut: Future<Output = Result<T, BoxError>> + 'a,
        T: 'a,
    {
        let bound = bound.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        StepFuture::GeneralFuture {
            future: for_each_future(
                self, step, retry, timeout, limits, codec, bound, elements, attempt,
            ),
        }
    }

    /// Records that the run stopped while `step` ran.
    #[cold]
    pub fn stopped_step(&self, step: S, failures: &mut Failures<S>) {
        self.record_cancelled(step);
        failures.push(step, StepError::Cancelled);
    }

    /// Concludes the run as its last step ended: `Ok(())` if every step completed, else the
    /// run's error.
    pub fn conclude(&self, failures: Failures<S>) -> Result<(), JobError<S>> {
        // The run ends in the poll its last step ended in (or was cancelled in): that poll's
        // latest reading, if any, is its end.
        self.finish(self.now(), failures.0)
    }
}
