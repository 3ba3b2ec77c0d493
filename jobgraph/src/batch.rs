//! [`Batch`]: many runs of one job type, a bounded number at a time, inside the caller's task;
//! [`BatchRun`], the stream of their results, with its cancel handle and live status.

/// The setters of the options every batch takes ([`BatchOptions`]), for [`Batch`] and
/// [`DurableBatch`](durable::DurableBatch): one definition each. `$batch` names the type in
/// panic messages; the type has a field `options: BatchOptions<J>`.
macro_rules! batch_options {
    ($batch:literal) => {
        /// Runs at most `runs` runs at once ([`DEFAULT_CONCURRENCY`](crate::Batch::DEFAULT_CONCURRENCY)
        /// unless set).
        ///
        /// # Panics
        ///
        /// If `runs` is zero, as no run could ever start. [`try_concurrency`](Self::try_concurrency)
        /// returns an error instead, for a value that comes from configuration.
        pub fn concurrency(self, runs: usize) -> Self {
            match self.try_concurrency(runs) {
                Ok(batch) => batch,
                Err(_) => panic!(concat!(
                    $batch,
                    "::concurrency: the concurrency must be at least 1, got 0"
                )),
            }
        }

        /// Runs at most `runs` runs at once, or returns [`ZeroLimit::BatchConcurrency`] if `runs`
        /// is zero.
        pub fn try_concurrency(mut self, runs: usize) -> Result<Self, crate::ZeroLimit> {
            if runs == 0 {
                return Err(crate::ZeroLimit::BatchConcurrency);
            }
            self.options.concurrency = runs;
            Ok(self)
        }

        /// Cancels the batch as soon as one run fails, that is, ends with an error that is not a
        /// cancellation: no run starts after it, and the runs going are cancelled.
        ///
        /// To stop each run at its own first failed step
        /// ([`Runner::fail_fast`](crate::Runner::fail_fast)), set that through
        /// [`configure`](Self::configure).
        pub fn cancel_on_failure(mut self) -> Self {
            self.options.cancel_on_failure = true;
            self
        }

        /// Cancels the batch when `token` is cancelled: no run starts after it, and the runs
        /// going are cancelled.
        pub fn cancel_on(mut self, token: &crate::CancellationToken) -> Self {
            self.options.cancel_on = Some(token.clone());
            self
        }

        /// Configures each run: `configure` is called with the run's index and its
        /// [`Runner`](crate::Runner), when the run starts, and returns the runner to run:
        /// `.configure(|index, runner| runner.job_id(format!("row-{index}")))`.
        ///
        /// Any option applies, but the batch then adds its own
        /// [`cancel_on`](crate::Runner::cancel_on) (the batch's cancellation), replacing one set
        /// here, and its own [`listener`](crate::Runner::listener) (for the status), beside one
        /// set here. A durable batch also sets each run's id (`NAME/INDEX`).
        ///
        /// If `configure` panics, that input's run fails without starting: its error names the
        /// job's first step, [`panicked`](crate::StepError::is_panic), with a message that says
        /// `configure` panicked for which input; the other runs go on.
        pub fn configure(
            mut self,
            configure: impl for<'j> Fn(usize, crate::Runner<'j, J>) -> crate::Runner<'j, J>
            + Send
            + Sync
            + 'static,
        ) -> Self {
            self.options.configure = Some(std::sync::Arc::new(configure));
            self
        }

        /// Tells `listener` the batch's [`BatchStatus`](crate::BatchStatus) as it changes: at
        /// most once per poll of the batch, when something changed, and once when the batch
        /// ends. See [`StatusListener`](crate::StatusListener); `ProgressBars` (feature
        /// `progress`) is one. A durable batch's first call, before any run starts, has the
        /// counts the store already holds.
        ///
        /// A listener that panics misses that status (a `tracing::error!` says so), and the
        /// batch goes on.
        pub fn status_listener(
            mut self,
            listener: impl crate::StatusListener<J::Step> + Send + 'static,
        ) -> Self {
            self.options.listener = Some(Box::new(listener));
            self
        }
    };
}

pub(crate) mod durable;
#[cfg(feature = "progress")]
mod progress;
mod status;

#[cfg(feature = "progress")]
pub use progress::ProgressBars;
pub use status::{BatchStatus, RunCounts, StatusHandle, StatusListener, StepCounts};

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::panic::{AssertUnwindSafe, catch_unwind};

use futures::stream::{FusedStream, FuturesUnordered, Stream, StreamExt as _};

use crate::runner::unstarted;
use crate::{CancellationToken, Job, JobErrorOf, JobResult, Runner, StepError, StepPanic};
use status::{Counters, RunOutcome, RunTracker};

/// What [`Batch::configure`] stores: applied to each run's [`Runner`].
type Configure<J> = Arc<dyn for<'j> Fn(usize, Runner<'j, J>) -> Runner<'j, J> + Send + Sync>;

/// What [`Batch::status_listener`] stores.
type BoxListener<S> = Box<dyn StatusListener<S> + Send>;

/// Runs one job type over many inputs, at most [`concurrency`](Batch::concurrency) runs at a
/// time.
///
/// Each input is a value of the job type (`Report { region }`): the batch runs each one's graph
/// as [`Runner::run`] would. The runs are futures polled by the batch itself, inside the task
/// that polls it: nothing is spawned, so any job runs in a batch, `Send` or not, borrowing or
/// not. To run a batch on another thread, spawn the whole batch (`tokio::spawn(batch.run())`),
/// which works when the job's runs are `Send`, as for [`start`](crate::JobHandle).
///
/// Inputs are taken from the iterator lazily, one as each run ends, so a batch of a
/// million inputs never holds more than `concurrency` of them. An iterator that panics gives no
/// more: the input it failed to give counts as a failed run (its error names the job's first
/// step, [`panicked`](crate::StepError::is_panic), with the iterator's panic message), and the
/// batch ends when the runs going have ended.
///
/// ```
/// use jobgraph::{Batch, job};
///
/// struct Square {
///     n: u64,
/// }
///
/// #[job]
/// impl Square {
///     #[step]
///     async fn load(&self) -> u64 {
///         self.n
///     }
///
///     #[step]
///     async fn square(&self, load: &u64) -> Result<u64, std::num::TryFromIntError> {
///         Ok(u64::from(u32::try_from(*load)?).pow(2))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let inputs = [3, 4, u64::MAX].map(|n| Square { n });
/// let batch = Batch::new(inputs)
///     .concurrency(2)
///     .configure(|index, runner| runner.job_id(format!("square-{index}")))
///     .run()
///     .await;
/// // Results are in input order.
/// assert_eq!(batch.results[0].as_ref().unwrap().square, 9);
/// assert_eq!(batch.results[1].as_ref().unwrap().square, 16);
/// let err = batch.results[2].as_ref().unwrap_err();
/// assert_eq!(err.step(), SquareStep::Square);
/// assert_eq!(err.job_id(), "square-2");
/// assert_eq!((batch.summary.total, batch.summary.succeeded, batch.summary.failed), (3, 2, 1));
/// # }
/// ```
#[must_use = "a batch does nothing until it is run, or streamed and polled"]
pub struct Batch<J: Job, I> {
    inputs: I,
    options: BatchOptions<J>,
}

/// What every batch takes besides its inputs: a [`Batch`]'s options, which the
/// [`DurableBatch`](durable::DurableBatch) it becomes keeps. Set through the setters
/// `batch_options!` defines on both.
pub(crate) struct BatchOptions<J: Job> {
    pub(crate) resources: Arc<J::Resources>,
    pub(crate) concurrency: usize,
    pub(crate) cancel_on_failure: bool,
    pub(crate) cancel_on: Option<CancellationToken>,
    pub(crate) configure: Option<Configure<J>>,
    pub(crate) listener: Option<BoxListener<J::Step>>,
}

impl<J: Job> BatchOptions<J> {
    /// The batch's own cancellation: a child of [`cancel_on`](Batch::cancel_on)'s token if one
    /// was given, so cancelling the batch does not cancel it.
    pub(crate) fn token(&self) -> CancellationToken {
        match &self.cancel_on {
            Some(parent) => parent.child_token(),
            None => CancellationToken::new(),
        }
    }

    /// The defaults: [`Batch::DEFAULT_CONCURRENCY`] runs at once, nothing else set.
    pub(crate) fn new(resources: Arc<J::Resources>) -> Self {
        BatchOptions {
            resources,
            concurrency: DEFAULT_CONCURRENCY,
            cancel_on_failure: false,
            cancel_on: None,
            configure: None,
            listener: None,
        }
    }
}

/// See [`Batch::DEFAULT_CONCURRENCY`].
const DEFAULT_CONCURRENCY: usize = 16;

impl<J: Job<Resources = ()>, I: Iterator<Item = J>> Batch<J, I> {
    /// A batch of one run per input, in the iterator's order: the index of a run, in its
    /// [`BatchItem`] and in [`BatchResults::results`], is its input's position. For a job that
    /// declares resources, [`with_resources`](Batch::with_resources).
    pub fn new(inputs: impl IntoIterator<Item = J, IntoIter = I>) -> Self {
        Batch::with_resources(inputs, Arc::new(()))
    }
}

impl<J: Job, I: Iterator<Item = J>> Batch<J, I> {
    /// How many runs a batch runs at once unless [`concurrency`](Batch::concurrency) says
    /// otherwise.
    pub const DEFAULT_CONCURRENCY: usize = DEFAULT_CONCURRENCY;

    /// [`new`](Batch::new) for a job that declares resources (`#[job(resources = T)]`): the
    /// steps of every run borrow `resources`.
    pub fn with_resources(
        inputs: impl IntoIterator<Item = J, IntoIter = I>,
        resources: Arc<J::Resources>,
    ) -> Self {
        Batch {
            inputs: inputs.into_iter(),
            options: BatchOptions::new(resources),
        }
    }

    batch_options!("Batch");

    /// Makes the batch durable: a [`DurableBatch`](crate::durable::DurableBatch) named `name`
    /// in `store`, with this batch's options. Input `i` becomes run `name/i` (see
    /// [`batch_run_id`](crate::durable::batch_run_id)): every input is stored before any runs,
    /// every step is checkpointed, and running the batch again runs only what did not succeed.
    /// Only for `#[job(durable)]` jobs. The inputs are collected: the whole batch is stored.
    ///
    /// # Panics
    ///
    /// If `name` is empty.
    pub fn store(
        self,
        store: &(impl crate::store::Store + Clone),
        name: impl Into<String>,
    ) -> crate::durable::DurableBatch<J>
    where
        J: crate::durable::DurableJob,
    {
        let Batch { inputs, options } = self;
        durable::DurableBatch::new(
            Arc::new(store.clone()),
            name.into(),
            Some(inputs.collect()),
            options,
        )
    }

    /// The batch as a [`BatchRun`]: a stream of the runs' results as they end. Nothing is
    /// spawned (unlike a job's `start()`, which spawns its run and returns a
    /// [`JobHandle`](crate::JobHandle)): the runs make progress only while the
    /// stream is polled.
    pub fn stream(self) -> BatchRun<J, I, impl Future<Output = (usize, JobResult<J>)>> {
        let Batch { inputs, options } = self;
        let token = options.token();
        let (low, high) = inputs.size_hint();
        let known = high == Some(low);
        let counters = Arc::new(Counters::new::<J::Step>(if known { low } else { 0 }, known));
        BatchRun {
            inputs: Some(inputs),
            taken: 0,
            concurrency: options.concurrency,
            cancel_on_failure: options.cancel_on_failure,
            runs: FuturesUnordered::new(),
            make: run_one::<J>,
            resources: options.resources,
            configure: options.configure,
            token,
            cancel_seen: false,
            counters,
            notified: None,
            scratch: options.listener.as_ref().map(|_| BatchStatus::empty()),
            listener: options.listener,
            ended: false,
        }
    }

    /// Runs the batch to its end: every run's result, in input order, and the summary. The same
    /// as `batch.stream().wait()`.
    pub async fn run(self) -> BatchResults<J> {
        self.stream().wait().await
    }
}

impl<J: Job, I> fmt::Debug for Batch<J, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("job", &J::NAME)
            .field("concurrency", &self.options.concurrency)
            .field("cancel_on_failure", &self.options.cancel_on_failure)
            .field("configured", &self.options.configure.is_some())
            .field("status_listener", &self.options.listener.is_some())
            .finish_non_exhaustive()
    }
}

/// What each run's future needs besides its input.
struct RunEnv<J: Job> {
    resources: Arc<J::Resources>,
    configure: Option<Configure<J>>,
    token: CancellationToken,
    tracker: RunTracker,
}

/// The future of the run of input `index`: owns the input, so the batch needs no `Send` of it.
/// `Err` holds the panic of the input iterator that should have given it: the run fails without
/// starting (see [`unstarted`]), as it does when `configure` panics.
async fn run_one<J: Job>(
    index: usize,
    job: Result<J, StepPanic>,
    env: RunEnv<J>,
) -> (usize, JobResult<J>) {
    let RunEnv {
        resources,
        configure,
        token,
        tracker,
    } = env;
    let job = match job {
        Ok(job) => job,
        Err(panic) => {
            let message =
                format!("the batch's input iterator panicked giving input {index}: {panic}");
            return (index, Err(unstarted_run::<J>(message, tracker)));
        }
    };
    let mut runner = Runner::with_resources(&job, &*resources);
    if let Some(configure) = &configure {
        match catch_unwind(AssertUnwindSafe(|| configure(index, runner))) {
            Ok(configured) => runner = configured,
            Err(payload) => {
                let panic = StepPanic::from_payload(payload);
                let message =
                    format!("the batch's `configure` panicked for input {index}: {panic}");
                return (index, Err(unstarted_run::<J>(message, tracker)));
            }
        }
    }
    let result = runner
        .cancel_on(&token)
        .listener(move |event| tracker.on_event(event))
        .run()
        .await;
    (index, result)
}

/// The error of a run that could not start because the batch's own callbacks panicked: its
/// first step carries the panic (`message` says whose), and the batch's status hears of it.
#[cold]
#[inline(never)]
fn unstarted_run<J: Job>(message: String, tracker: RunTracker) -> JobErrorOf<J> {
    tracing::error!(job = J::NAME, "{message}");
    let error = StepError::Panic(StepPanic::new(message));
    unstarted::<J>(error, move |event| tracker.on_event(event))
}

/// A [`Batch`] as a [`Stream`] ([`Batch::stream`]): a stream of [`BatchItem`]s, one per input taken, in the order the
/// runs end. The runs make progress only while it is polled.
///
/// [`wait`](BatchRun::wait) drives it to the end and returns the results in input order;
/// [`cancel`](BatchRun::cancel) (or a [`BatchCancelHandle`] handle) stops it early;
/// [`status`](BatchRun::status) and [`status_handle`](BatchRun::status_handle) tell how far it
/// got.
///
/// `F` is the type of one run's future, which has no name: keep a `BatchRun` in a local
/// variable, or pass it on as `impl Stream<Item = BatchItem<J>>`. It is `Send` when the inputs'
/// iterator and the job's runs are.
#[must_use = "streams do nothing unless polled"]
pub struct BatchRun<J: Job, I, F> {
    /// `None` once exhausted or cancelled: no input is taken any more.
    inputs: Option<I>,
    /// How many inputs were taken: the next input's index.
    taken: usize,
    concurrency: usize,
    cancel_on_failure: bool,
    runs: FuturesUnordered<F>,
    make: fn(usize, Result<J, StepPanic>, RunEnv<J>) -> F,
    /// What every run's steps borrow.
    resources: Arc<J::Resources>,
    configure: Option<Configure<J>>,
    /// The batch's token: every run is cancelled with it (`Runner::cancel_on`).
    token: CancellationToken,
    /// Whether the cancellation was seen and the inputs dropped.
    cancel_seen: bool,
    counters: Arc<Counters>,
    listener: Option<BoxListener<J::Step>>,
    /// The counters' version at the listener's last call.
    notified: Option<usize>,
    /// The status handed to the listener, refilled in place for each call.
    scratch: Option<BatchStatus<J::Step>>,
    /// The stream has ended.
    ended: bool,
}

// No field is ever pinned: the run futures are pinned inside `FuturesUnordered`'s own
// allocations.
impl<J: Job, I, F> Unpin for BatchRun<J, I, F> {}

impl<J: Job, I, F> BatchRun<J, I, F> {
    /// Cancels the batch: no new run starts, runs still going are cancelled (their steps dropped
    /// and recorded as cancelled, as [`JobHandle::cancel`](crate::JobHandle::cancel) would). The
    /// stream then yields the results of the runs that were going, cancelled (or finished, for a
    /// run that ended at that very moment), and ends.
    ///
    /// Inputs not taken yet are never taken: they have no item in the stream nor result in
    /// [`BatchResults`], and count in [`BatchSummary::not_started`] (and as cancelled) when their
    /// number is known (the iterator's `size_hint` is exact). No effect once the stream ended.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// A handle that cancels the batch from anywhere: cloneable, `Send` and `Sync`.
    pub fn cancel_handle(&self) -> BatchCancelHandle {
        BatchCancelHandle {
            token: self.token.clone(),
        }
    }

    /// True once the batch was cancelled (by [`cancel`](BatchRun::cancel), a [`BatchCancelHandle`],
    /// [`Batch::cancel_on`] or [`Batch::cancel_on_failure`]).
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The batch's status now.
    pub fn status(&self) -> BatchStatus<J::Step> {
        let mut status = BatchStatus::empty();
        let _ = self.counters.read_into(&mut status);
        status
    }

    /// A cloneable, `Send + Sync` handle on the batch's status, for another task or thread.
    pub fn status_handle(&self) -> StatusHandle<J::Step> {
        StatusHandle::new(Arc::clone(&self.counters))
    }

    /// The summary of the runs so far; final once the stream has ended.
    pub fn summary(&self) -> BatchSummary {
        self.counters.summary::<J::Step>()
    }
}

impl<J, I, F> BatchRun<J, I, F>
where
    J: Job,
    I: Iterator<Item = J>,
    F: Future<Output = (usize, JobResult<J>)>,
{
    /// Runs the batch to its end: every started run's result, in input order, and the summary.
    pub async fn wait(mut self) -> BatchResults<J> {
        // The size hint is the iterator's: trust it only so far.
        let mut by_index: Vec<Option<JobResult<J>>> =
            Vec::with_capacity(self.size_hint().0.min(4096));
        while let Some(BatchItem { index, result }) = self.next().await {
            if by_index.len() <= index {
                by_index.resize_with(index + 1, || None);
            }
            by_index[index] = Some(result);
        }
        let results = by_index
            .into_iter()
            .map(|result| result.expect("jobgraph: a batch yields one result per input it takes"))
            .collect();
        BatchResults {
            results,
            summary: self.summary(),
        }
    }

    /// Takes inputs and starts their runs until `concurrency` run, unless the batch is cancelled.
    fn fill(&mut self) {
        if !self.cancel_seen && self.token.is_cancelled() {
            self.cancel_seen = true;
            if let Some(inputs) = self.inputs.take() {
                let (low, high) = inputs.size_hint();
                let not_started = if high == Some(low) { low } else { 0 };
                drop(inputs);
                self.counters.inputs_ended(self.taken, not_started);
            }
        }
        while self.runs.len() < self.concurrency {
            let Some(inputs) = &mut self.inputs else {
                return;
            };
            let job = match catch_unwind(AssertUnwindSafe(|| inputs.next())) {
                Ok(Some(job)) => Ok(job),
                Ok(None) => {
                    self.inputs = None;
                    self.counters.inputs_ended(self.taken, 0);
                    return;
                }
                // A panicking iterator gives no more inputs: the input it failed to give is a
                // failed run, and the batch ends once the runs going have ended.
                Err(payload) => Err(StepPanic::from_payload(payload)),
            };
            let failed = job.is_err();
            let index = self.taken;
            self.taken += 1;
            self.counters.run_started(self.taken);
            let env = RunEnv {
                resources: Arc::clone(&self.resources),
                configure: self.configure.clone(),
                token: self.token.clone(),
                tracker: RunTracker::new(Arc::clone(&self.counters)),
            };
            self.runs.push((self.make)(index, job, env));
            if failed {
                self.drop_inputs();
                return;
            }
        }
    }

    /// Drops the inputs after their iterator panicked (catching a panic of its drop, too): the
    /// batch's total is the inputs taken, the failed one included.
    #[cold]
    #[inline(never)]
    fn drop_inputs(&mut self) {
        if let Some(inputs) = self.inputs.take()
            && let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(inputs)))
        {
            let panic = StepPanic::from_payload(payload);
            tracing::error!(job = J::NAME, panic = %panic, "a batch's input iterator panicked when dropped");
        }
        self.counters.inputs_ended(self.taken, 0);
    }

    fn poll_runs(&mut self, cx: &mut Context<'_>) -> Poll<Option<BatchItem<J>>> {
        self.fill();
        match self.runs.poll_next_unpin(cx) {
            Poll::Ready(Some((index, result))) => {
                let outcome = match &result {
                    Ok(_) => RunOutcome::Succeeded,
                    Err(error) if error.is_cancelled() => RunOutcome::Cancelled,
                    Err(_) => RunOutcome::Failed,
                };
                self.counters.run_ended(outcome);
                if self.cancel_on_failure && outcome == RunOutcome::Failed {
                    self.token.cancel();
                }
                Poll::Ready(Some(BatchItem { index, result }))
            }
            // Nothing runs, and `fill` started nothing: the inputs are exhausted or cancelled.
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Calls the status listener if the counts changed since its last call.
    fn notify(&mut self) {
        let (Some(listener), Some(status)) = (&self.listener, &mut self.scratch) else {
            return;
        };
        let version = self.counters.version();
        if self.notified == Some(version) {
            return;
        }
        self.notified = Some(version);
        let _ = self.counters.read_into(status);
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| listener.on_status(status))) {
            let panic = StepPanic::from_payload(payload);
            tracing::error!(
                job = J::NAME,
                panic = %panic,
                "a batch's status listener panicked: it misses this status, and the batch goes on"
            );
        }
    }
}

impl<J, I, F> Stream for BatchRun<J, I, F>
where
    J: Job,
    I: Iterator<Item = J>,
    F: Future<Output = (usize, JobResult<J>)>,
{
    type Item = BatchItem<J>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let poll = this.poll_runs(cx);
        if let Poll::Ready(None) = poll {
            this.ended = true;
            // Drop what the runs shared; the counters stay for `status`.
            this.configure = None;
            this.counters.finished();
        }
        this.notify();
        poll
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let running = self.runs.len();
        match &self.inputs {
            None => (running, Some(running)),
            Some(_) if self.token.is_cancelled() => (running, Some(running)),
            Some(inputs) => {
                let (low, high) = inputs.size_hint();
                (
                    running.saturating_add(low),
                    high.and_then(|high| high.checked_add(running)),
                )
            }
        }
    }
}

impl<J, I, F> FusedStream for BatchRun<J, I, F>
where
    J: Job,
    I: Iterator<Item = J>,
    F: Future<Output = (usize, JobResult<J>)>,
{
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl<J: Job, I, F> fmt::Debug for BatchRun<J, I, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchRun")
            .field("job", &J::NAME)
            .field("concurrency", &self.concurrency)
            .field("taken", &self.taken)
            .field("running", &self.runs.len())
            .field("cancelled", &self.is_cancelled())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Cancels a batch from anywhere: see [`BatchRun::cancel`]. Cloneable, `Send` and `Sync`.
#[derive(Debug, Clone)]
pub struct BatchCancelHandle {
    token: CancellationToken,
}

impl BatchCancelHandle {
    /// Cancels the batch: no new run starts, runs still going are cancelled.
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// True once the batch was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// One run's result, as the [`BatchRun`] stream yields it.
pub struct BatchItem<J: Job> {
    /// The input's position in the batch's inputs.
    pub index: usize,
    /// What [`Runner::run`] returned for it. A run cancelled with the batch is an error
    /// whose [`is_cancelled`](crate::JobError::is_cancelled) is true.
    pub result: JobResult<J>,
}

impl<J: Job> fmt::Debug for BatchItem<J>
where
    J::Outputs: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchItem")
            .field("index", &self.index)
            .field("result", &self.result)
            .finish()
    }
}

/// How a batch ended: [`Batch::run`], [`BatchRun::wait`].
pub struct BatchResults<J: Job> {
    /// Each started run's result, by input index: `results[i]` is input `i`'s. Inputs are
    /// started in order, so these are the first `results.len()` inputs; a cancelled batch leaves
    /// the rest out (see [`BatchSummary::not_started`]).
    pub results: Vec<JobResult<J>>,
    /// The counts of runs by outcome.
    pub summary: BatchSummary,
}

impl<J: Job> BatchResults<J> {
    /// True if every input ran and succeeded.
    pub fn is_success(&self) -> bool {
        self.summary.is_success()
    }
}

impl<J: Job> fmt::Debug for BatchResults<J>
where
    J::Outputs: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchResults")
            .field("results", &self.results)
            .field("summary", &self.summary)
            .finish()
    }
}

/// The runs of a batch by outcome: `total == succeeded + failed + cancelled`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct BatchSummary {
    /// Every input counted: the runs started, plus the inputs never started when their number is
    /// known.
    pub total: usize,
    /// Runs that succeeded.
    pub succeeded: usize,
    /// Runs that failed with an error that is not a cancellation.
    pub failed: usize,
    /// Runs whose error [`is_cancelled`](crate::JobError::is_cancelled), and inputs never started
    /// because the batch was cancelled (`not_started`).
    pub cancelled: usize,
    /// Inputs never taken from the iterator because the batch was cancelled, counted when the
    /// iterator's `size_hint` was exact (otherwise 0: they are unknown). They are part of
    /// `cancelled` and `total`, but have no result: `results.len() == total - not_started`.
    pub not_started: usize,
}

impl BatchSummary {
    /// True if every input ran and succeeded.
    pub fn is_success(&self) -> bool {
        self.succeeded == self.total
    }
}
