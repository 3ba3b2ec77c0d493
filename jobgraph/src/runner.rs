//! [`Runner`]: one run of a job with per-run options; [`JobHandle`]: a run spawned on tokio.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::Instrument as _;

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::StepFailure;
use crate::report::{JobReport, StepEvent};
use crate::run::{RunCore, RunOptions};
use crate::{
    CancellationToken, Job, JobError, JobStep, LimitRegistry, RetryPolicy, StepContext, StepError,
    StepPanic,
};

/// The outcome of a run: every step's output, or the error naming the step that failed first
/// (with the outputs of the steps that completed).
pub type JobResult<J> = Result<<J as Job>::Outputs, JobErrorOf<J>>;

/// The error of a run of `J`: [`JobError`] with `J`'s step enum and partial outputs.
pub type JobErrorOf<J> = JobError<<J as Job>::Step, <J as Job>::Partial>;

/// One run of a job with per-run options: `job.runner().fail_fast().run().await`.
///
/// Options given here override the step's attribute for this run only.
#[must_use = "a runner does nothing until `run` is awaited"]
pub struct Runner<'j, J: Job> {
    job: &'j J,
    resources: &'j J::Resources,
    options: RunOptions<J::Step>,
    seed: J::Partial,
}

impl<'j, J: Job<Resources = ()>> Runner<'j, J> {
    /// A runner for `job` with no options: what the generated `job.runner()` returns. For a job
    /// that declares resources, [`with_resources`](Runner::with_resources).
    pub fn new(job: &'j J) -> Self {
        Runner::with_resources(job, &())
    }
}

impl<'j, J: Job> Runner<'j, J> {
    /// A runner for `job` whose steps borrow `resources` (`#[job(resources = T)]`), with no
    /// options: what the generated `job.runner(&resources)` returns.
    pub fn with_resources(job: &'j J, resources: &'j J::Resources) -> Self {
        Runner {
            job,
            resources,
            options: RunOptions::default(),
            seed: J::Partial::default(),
        }
    }

    /// Starts the run from outputs already known: each step whose output `partial` holds is not
    /// run, counts as completed (with no attempt) in the report, and lends that output to its
    /// children, which start at once. This is how a test replaces a slow or external step with a
    /// typed stand-in, and how a failed run is tried again from what it completed
    /// ([`JobError::into_partial`]).
    ///
    /// `partial` is the generated `FooPartial`, an `Option` per step:
    /// `FooPartial { fetch: Some(page), ..Default::default() }`.
    pub fn seed(mut self, partial: J::Partial) -> Self {
        self.seed = partial;
        self.options.seeded = true;
        self
    }

    /// Runs only `step` and the steps it waits for (directly or not, and not those whose
    /// outputs were [`seed`](Runner::seed)ed): the returned [`Until`] run hands back the
    /// outputs it has, `FooPartial`, instead of `FooOutputs`.
    pub fn until(mut self, step: J::Step) -> Until<'j, J> {
        self.options.until = Some(step);
        Until { runner: self }
    }

    /// Sets the run's id (in the context, the spans, the report and the error) instead of a
    /// generated one.
    ///
    /// # Panics
    ///
    /// If `id` is empty.
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        let id = id.into();
        assert!(!id.is_empty(), "Runner::job_id: a job id must not be empty");
        self.options.job_id = Some(Arc::from(id));
        self
    }

    /// Retries `step` with `policy` in this run, instead of its `#[step(retry = ..)]`.
    pub fn retry(mut self, step: J::Step, policy: impl RetryPolicy) -> Self {
        self.options.retry.push((step, Arc::new(policy)));
        self
    }

    /// Limits each attempt of `step` to `timeout` in this run, instead of its
    /// `#[step(timeout = ..)]`.
    ///
    /// # Panics
    ///
    /// If `timeout` is zero: no attempt could ever finish.
    pub fn timeout(mut self, step: J::Step, timeout: Duration) -> Self {
        assert!(
            !timeout.is_zero(),
            "Runner::timeout: the timeout of step `{step}` must be greater than zero"
        );
        self.options.timeout.push((step, timeout));
        self
    }

    /// Calls `enrich` before every attempt of every step, after `#[job(enrich = ..)]`: it may
    /// add typed values ([`StepContext::insert`]) and span fields ([`StepContext::record`]).
    pub fn enrich(mut self, enrich: impl Fn(&mut StepContext) + Send + Sync + 'static) -> Self {
        self.options.enrich.push(Arc::new(enrich));
        self
    }

    /// Runs one step at a time, in a topological order: for debugging, and for steps that must
    /// not overlap. A `for_each` step runs one element at a time, in the elements' order.
    pub fn sequential(mut self) -> Self {
        self.options.sequential = true;
        self
    }

    /// Cancels every running step as soon as one step fails, instead of letting independent
    /// branches finish.
    pub fn fail_fast(mut self) -> Self {
        self.options.fail_fast = true;
        self
    }

    /// Calls `listener` with every step event (started, retrying, completed, failed, skipped,
    /// cancelled) as it happens. It runs inside the run's task, so keep it short.
    ///
    /// Calling it again adds a listener: each event goes to every listener, in the order they
    /// were added. (A [`Batch`](crate::Batch) adds its own beside those of its runs.)
    ///
    /// A listener that panics misses that event and nothing else does: the panic is caught,
    /// logged with `tracing::error!`, and the run, its steps and the other listeners go on.
    pub fn listener(
        mut self,
        listener: impl Fn(&StepEvent<'_, J::Step>) + Send + Sync + 'static,
    ) -> Self {
        let listener = move |event: &StepEvent<'_, J::Step>| hear(&listener, event);
        self.options.listener = Some(match self.options.listener.take() {
            None => Arc::new(listener),
            Some(first) => Arc::new(move |event: &StepEvent<'_, J::Step>| {
                first(event);
                listener(event);
            }),
        });
        self
    }

    /// Cancels the run when `token` is cancelled, as [`JobHandle::cancel`] would: running steps
    /// are dropped and recorded as cancelled, steps not started never start, and the run's
    /// error [`is_cancelled`](JobError::is_cancelled). The steps' own token
    /// ([`StepContext::cancellation_token`]) is a child of `token`.
    pub fn cancel_on(mut self, token: &CancellationToken) -> Self {
        self.options.cancel_on = Some(token.clone());
        self
    }

    /// Enforces per-step limits (`#[step(concurrency = ..)]`, `#[step(rate = ..)]`) through
    /// `limits` instead of [`LimitRegistry::global`]: runs that share a registry share their limits,
    /// so tests and separate subsystems need not share state by accident.
    pub fn limits(mut self, limits: &LimitRegistry) -> Self {
        self.options.limits = Some(limits.clone());
        self
    }

    /// Runs the job in the caller's task.
    pub async fn run(self) -> JobResult<J> {
        let (job, run, seed) = self.core(false);
        drive_to_end(job, &run, seed).await
    }

    /// Runs the job and returns its report too, whatever the outcome.
    pub async fn run_with_report(self) -> (JobResult<J>, JobReport<J::Step>) {
        let (job, run, seed) = self.core(false);
        let result = drive_to_end(job, &run, seed).await;
        (result, run.report())
    }

    /// Checkpoints the run into `store` and resumes it from what `store` holds: see
    /// [`DurableRunner`](crate::durable::DurableRunner). Only for `#[job(durable)]` jobs.
    pub fn store(
        self,
        store: &(impl crate::store::Store + Clone),
    ) -> crate::durable::DurableRunner<'j, J>
    where
        J: crate::durable::DurableJob,
    {
        crate::durable::DurableRunner::new(self, Arc::new(store.clone()))
    }

    /// The run's id, if one was given.
    pub(crate) fn job_id_option(&self) -> Option<&Arc<str>> {
        self.options.job_id.as_ref()
    }

    /// The job this runner runs.
    pub(crate) fn job(&self) -> &'j J {
        self.job
    }

    /// The job, the state of a run that checkpoints through `durable`, and its seed.
    pub(crate) fn durable(
        mut self,
        durable: crate::durable::Durable,
    ) -> (Lent<'j, J>, RunCore<J::Step>, J::Partial) {
        self.options.durable = Some(durable);
        self.core(false)
    }

    /// The [`until`](Runner::until) step, if it is a `for_each` step, runs one element, whose
    /// index in its parent's whole output is `index`, from a seeded parent's output that holds
    /// only that element: a worker's claim of one element.
    pub(crate) fn only_element(mut self, index: usize) -> Self {
        self.options.only_element = Some(index);
        self
    }

    /// The job and its resources, the run's state, made in the poll that starts the run (the
    /// clock reading the run starts at is its first step's start too), and the outputs it
    /// starts from.
    fn core(self, cancellable: bool) -> (Lent<'j, J>, RunCore<J::Step>, J::Partial) {
        let run = RunCore::for_job::<J>(self.options, cancellable);
        run.polled_now();
        let job = Lent {
            job: self.job,
            resources: self.resources,
        };
        (job, run, self.seed)
    }
}

/// What a run's steps borrow: the job value and the resources given to the run.
pub(crate) struct Lent<'j, J: Job> {
    pub(crate) job: &'j J,
    pub(crate) resources: &'j J::Resources,
}

impl<J: Job> Clone for Lent<'_, J> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<J: Job> Copy for Lent<'_, J> {}

/// Tells `listener` of `event`, catching a panic: the listener misses the event, a
/// `tracing::error!` says so, and the run goes on.
fn hear<S: JobStep>(listener: &impl Fn(&StepEvent<'_, S>), event: &StepEvent<'_, S>) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| listener(event))) {
        listener_panicked(event, StepPanic::from_payload(payload));
    }
}

#[cold]
#[inline(never)]
fn listener_panicked<S: JobStep>(event: &StepEvent<'_, S>, panic: StepPanic) {
    tracing::error!(
        ?event,
        panic = %panic,
        "a run's listener panicked: it misses this event, and the run goes on"
    );
}

/// The error of a run of `J` that could not start (a batch's input or its `configure` closure
/// panicked): its first step (in declaration order) fails with `error` before running, the steps
/// that depend on it are skipped and the others cancelled, and `listener` hears of it as it would
/// of a run.
pub(crate) fn unstarted<J: Job>(
    error: StepError,
    listener: impl Fn(&StepEvent<'_, J::Step>) + Send + Sync + 'static,
) -> JobErrorOf<J> {
    let options = RunOptions {
        listener: Some(Arc::new(move |event: &StepEvent<'_, J::Step>| {
            hear(&listener, event)
        })),
        ..RunOptions::default()
    };
    let run = RunCore::for_job::<J>(options, false);
    let step = J::Step::ALL[0];
    let now = run.read_clock();
    crate::exec::report_failed(&run, step, 0, now, &error);
    match run.finish(now, vec![StepFailure::new(step, error)]) {
        Err(error) => error.with_partial(J::Partial::default()),
        Ok(()) => unreachable!("jobgraph: a run with a failed step ended without an error"),
    }
}

/// A run that stops after one step: [`Runner::until`].
#[must_use = "a runner does nothing until `run` is awaited"]
pub struct Until<'j, J: Job> {
    runner: Runner<'j, J>,
}

impl<J: Job> Until<'_, J> {
    /// Runs the step and the steps it needs, in the caller's task: the outputs they produced (and
    /// those given to [`seed`](Runner::seed)), or the error of the step that failed first.
    pub async fn run(self) -> Result<J::Partial, JobErrorOf<J>> {
        let (job, run, seed) = self.runner.core(false);
        drive(job, &run, seed).await
    }

    /// [`run`](Until::run), and the report too: the steps the run did not need are pending.
    pub async fn run_with_report(self) -> (Result<J::Partial, JobErrorOf<J>>, JobReport<J::Step>) {
        let (job, run, seed) = self.runner.core(false);
        let result = drive(job, &run, seed).await;
        (result, run.report())
    }
}

impl<'j, J> Until<'j, J>
where
    J: crate::job::SendJob + Sync,
    J::Resources: Sync,
    J::Partial: Send,
{
    /// [`run`](Until::run), as a `Send` future: what a worker awaits.
    pub(crate) fn run_send(
        self,
    ) -> impl Future<Output = Result<J::Partial, JobErrorOf<J>>> + Send + 'j {
        let (job, run, seed) = self.runner.core(false);
        async move {
            let span = run_span::<J>(&run);
            J::__run_send(job.job, job.resources, &run, seed)
                .instrument(span)
                .await
        }
    }
}

/// The span of a run, for a subscriber that takes it.
fn run_span<J: Job>(run: &RunCore<J::Step>) -> tracing::Span {
    // Only for a subscriber that takes it: the span's fields would make the run's id (an
    // allocation) even when nothing records them, as tracing's `log` feature (which sqlx turns
    // on) evaluates them for `log` too.
    if tracing::level_enabled!(tracing::Level::INFO) {
        tracing::info_span!("job", job = J::NAME, job_id = run.job_id())
    } else {
        tracing::Span::none()
    }
}

/// Runs `job` from `seed` inside the run's span: the outputs the run has.
pub(crate) fn drive<'a, J: Job>(
    job: Lent<'a, J>,
    run: &'a RunCore<J::Step>,
    seed: J::Partial,
) -> impl Future<Output = Result<J::Partial, JobErrorOf<J>>> + 'a {
    let span = run_span::<J>(run);
    // The run future holds every step's future, so it is large: box it once per run, so that
    // moving it (into `Instrumented`, into the caller's future) copies a pointer, not the graph.
    // Writing it into a fresh allocation lets the compiler build it there rather than on the
    // stack and then copy it.
    let run = Box::write(Box::new_uninit(), job.job.__run(job.resources, run, seed));
    Box::into_pin(run).instrument(span)
}

/// Runs `job` from `seed` to its end: every step's output.
pub(crate) async fn drive_to_end<J: Job>(
    job: Lent<'_, J>,
    run: &RunCore<J::Step>,
    seed: J::Partial,
) -> JobResult<J> {
    drive(job, run, seed).await.map(J::__outputs)
}

/// A run spawned on tokio by the generated `start`: watch it, cancel it, wait for it.
///
/// # Dropping the handle
///
/// Dropping a `JobHandle` does **not** cancel the run, as dropping a tokio `JoinHandle` does
/// not: the run goes on, detached, to its end, holding what its steps hold meanwhile (a
/// `concurrency` slot, a place under a rate), and its result is lost. To stop it, call
/// [`cancel`](JobHandle::cancel) before dropping the handle.
pub struct JobHandle<J: Job> {
    run: Arc<RunCore<J::Step>>,
    task: JoinHandle<JobResult<J>>,
}

impl<J: Job> JobHandle<J> {
    /// The run state for a job about to be started with `runner`'s options, and the outputs it
    /// starts from.
    pub(crate) fn core(runner: Runner<'_, J>) -> (Arc<RunCore<J::Step>>, J::Partial) {
        let run = Arc::new(RunCore::for_job::<J>(runner.options, true));
        (run, runner.seed)
    }

    pub(crate) fn new(run: Arc<RunCore<J::Step>>, task: JoinHandle<JobResult<J>>) -> Self {
        JobHandle { run, task }
    }

    /// The run's id.
    pub fn id(&self) -> &str {
        self.run.job_id()
    }

    /// The report as it is now: steps running, done, or still waiting.
    pub fn report(&self) -> JobReport<J::Step> {
        self.run.report()
    }

    /// The report as DOT, coloured by each step's state now.
    pub fn dot(&self) -> String {
        self.report().dot()
    }

    /// True once the run has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Cancels the run: running steps are dropped (their back-off sleeps too) and recorded as
    /// cancelled; steps not started yet never start. [`wait`](JobHandle::wait) then returns a
    /// [`JobError`] whose [`is_cancelled`](JobError::is_cancelled) is true. No effect once the
    /// run has ended.
    pub fn cancel(&self) {
        self.run.info.cancel();
    }

    /// Waits for the run to end and returns what [`run`](Runner::run) would have.
    pub async fn wait(self) -> JobResult<J> {
        match self.task.await {
            Ok(result) => result,
            // The run catches the panics of the user's code it calls (steps, enrichment,
            // policies, listeners, the drop of a step's future): a panic here is one it cannot
            // (the job value's own `Drop`) or a bug in jobgraph. Pass it on as it is.
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            // The runtime shut down and dropped the run: its steps were cancelled.
            Err(_) => Err(self.run.abandon().with_partial(J::Partial::default())),
        }
    }
}

impl<J: Job> std::fmt::Debug for JobHandle<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle")
            .field("job", &J::NAME)
            .field("id", &self.id())
            .field("finished", &self.is_finished())
            .finish()
    }
}

// What the generated `runner()`, `start` and `start_with` call.

/// Spawns a started job's run: the generated `start` calls this with a future built on
/// [`drive_started`], which is `Send` when the job and its resources are (a step that is not
/// `Send` is reported by [`send_run`]).
#[inline]
pub fn start<J: Job, F>(run: Arc<RunCore<J::Step>>, future: F) -> JobHandle<J>
where
    F: Future<Output = JobResult<J>> + Send + 'static,
    J::Outputs: Send + 'static,
    J::Partial: Send + 'static,
{
    JobHandle::new(run, tokio::spawn(future))
}

/// The run state for `start_with`, with the options `runner` holds, and the outputs it starts
/// from.
#[inline]
pub fn handle_core<J: Job>(runner: Runner<'_, J>) -> (Arc<RunCore<J::Step>>, J::Partial) {
    JobHandle::<J>::core(runner)
}

/// Runs `job` with `resources` from `seed` in its span: what the spawned task of `start`
/// awaits. Its run future is [`SendJob`](crate::SendJob)'s, so a step that is not `Send` is
/// reported once, where the job implements it.
#[inline]
pub async fn drive_started<'a, J: crate::job::SendJob>(
    job: &'a J,
    resources: &'a J::Resources,
    run: &'a RunCore<J::Step>,
    seed: J::Partial,
) -> JobResult<J> {
    let span = run_span::<J>(run);
    J::__run_send(job, resources, run, seed)
        .instrument(span)
        .await
        .map(J::__outputs)
}

/// A job's run future, boxed as `Send`: what the generated `SendJob` impl returns, so that a
/// step whose future is not `Send` is reported here, once, with what to do.
#[inline]
pub fn send_run<'a, T>(
    future: impl Future<Output = T> + Send + 'a, // Not `Send`? `#[job(local)]` leaves `start` and workers out.
) -> std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(future)
}
