//! One step of one run, every attempt of it: context and enrichment, span, limits, timeout,
//! panic capture, retry with back-off, and what the report and the listener learn.
//!
//! A step with no retry policy, no timeout and no limits, whose span no subscriber wants (the
//! common case), takes a lean path: its one attempt's future is the scheduler's to poll, with no
//! timer, no wrapper future and nothing allocated. The others take the general path, boxed so
//! its timers and back-off state do not make every step's future larger, and running the step's
//! attempts through trait objects so it is compiled once per output type, not once per step
//! (see [`general_future`]).

use std::future::Future;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::FutureExt as _;
use tracing::{Instrument as _, Span};

use crate::durable::{Codec, ElementsCodec, Encode, checkpoint};
use crate::error::{BoxError, StepError, StepPanic};
use crate::limit::{StepLimiter, StepLimits};
use crate::report::StepEvent;
use crate::run::RunCore;
use crate::{JobStep, RetryPolicy, StepContext};

/// The policies a step's attribute gives it, evaluated as the step starts; a
/// [`Runner`](crate::Runner) may override each.
pub(crate) struct Policies<'a, R, T> {
    pub(crate) retry: Option<R>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) limits: &'a StepLimits,
    /// How a durable job stores the step's output; `None` for other jobs.
    pub(crate) encode: Option<Encode<T>>,
}

/// The retry policy of a step whose attribute declares none: never retries.
#[derive(Debug, Clone, Copy)]
pub struct NoRetry;

impl RetryPolicy for NoRetry {
    #[inline]
    fn should_retry(&self, _: u32, _: &StepError) -> Option<Duration> {
        None
    }
}

pin_project_lite::pin_project! {
    /// A started step, in the place the scheduler polls it from.
    ///
    /// On the lean path it is the attempt's own future: the scheduler's turn polls it, catches a
    /// panic and reports the step's end through calls shared by every step, so the code generic
    /// over each step is little more than the poll of the user's future. On the general path it
    /// is a boxed future that runs, and reports, every attempt itself.
    #[project = StepFutureProj]
    // pin-project-lite takes no doc comments on fields: the variants' docs say what they hold.
    #[allow(missing_docs)]
    pub enum StepFuture<Fut, G> {
        /// The step's one attempt (the user's code), and when the step started (nanoseconds
        /// since the run started).
        Lean { #[pin] attempt: QuietDrop<Fut>, started: u64 },
        /// A future running and reporting the whole step.
        GeneralFuture { future: G },
    }
}

/// The boxed future of a step on the general path (or of a `for_each` step), `Send` when `M` is.
///
/// Dropped out of line: the scheduler's turn of each step holds a step's future, and the drop
/// glue of a general path's future (its timer, its spans, its limiter's permit) would otherwise
/// be copied into every step's turn, making the code the scheduler runs per step several times
/// larger than what it runs, and the processor's instruction cache miss on every step.
///
/// `G` runs the step's code through trait objects that do not say `Send` (so it is compiled
/// once per output type, not once per step: see [`general_future`]); `M` holds the types those
/// objects erase, and decides whether the future may move to another thread.
pub(crate) struct GeneralFuture<G, M>(Option<Pin<Box<G>>>, PhantomData<fn() -> M>);

// SAFETY: `GeneralFuture::new` is called by `general_future` and `for_each_future` only. The first
// holds the future of `run_general` over trait objects erasing an `F` and the `Fut`s it makes,
// with `M = (F, Fut, C, T)`: those objects are `Send` when `F` and `Fut` are, and the rest of
// that future is `Send` when `C` and `T` are, which `general_path_is_send` checks at compile
// time for every step type. The second holds `run_for_each`'s over an erased `F` (shared by its
// elements' attempts) and its `Fut`s, with `M = (F, &F, Fut, C, T, &E)`: `for_each_is_send`
// checks the same with `F` also `Sync` and `E` `Sync`.
#[allow(unsafe_code)]
unsafe impl<G, M: Send> Send for GeneralFuture<G, M> {}

// SAFETY: nothing reaches the future through a shared reference (it is polled through
// `Pin<&mut Self>` and dropped through `&mut self`), so sharing a `&GeneralFuture` between
// threads shares nothing.
#[allow(unsafe_code)]
unsafe impl<G, M> Sync for GeneralFuture<G, M> {}

impl<G, M> GeneralFuture<G, M> {
    /// `future`, boxed, `Send` when `M` is (see the `Send` impl's safety comment for what
    /// `future` and `M` must be).
    fn new(future: G) -> Self {
        GeneralFuture(Some(Box::pin(future)), PhantomData)
    }
}

/// A step's own retry policy, boxed: the general path is compiled once, not per policy type.
fn erase_retry<R: RetryPolicy>(retry: Option<R>) -> Option<Box<dyn RetryPolicy>> {
    retry.map(|retry| Box::new(retry) as Box<dyn RetryPolicy>)
}

impl<T, G: Future<Output = Result<T, StepError>>, M> Future for GeneralFuture<G, M> {
    type Output = Result<T, StepError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Some(future) => poll_general(future.as_mut(), cx),
            None => unreachable!("jobgraph: a step's future was polled after it was dropped"),
        }
    }
}

/// Polls the future of a step on the general path: out of line, like its drop.
#[inline(never)]
fn poll_general<G: Future>(future: Pin<&mut G>, cx: &mut Context<'_>) -> Poll<G::Output> {
    future.poll(cx)
}

impl<G, M> Drop for GeneralFuture<G, M> {
    #[inline]
    fn drop(&mut self) {
        drop_general(self.0.take());
    }
}

/// Drops the future of a step on the general path: out of line (see [`GeneralFuture`]).
#[inline(never)]
fn drop_general<G>(future: Option<Pin<Box<G>>>) {
    drop(future);
}

pin_project_lite::pin_project! {
    /// A step's attempt (the user's future), whose drop never panics.
    ///
    /// The library drops an attempt that has not ended when it times out, when the run is
    /// cancelled or stops under `fail_fast`, and when the run's future is dropped. A value the
    /// attempt holds (a guard) may panic in its `Drop`: that panic is caught here and logged,
    /// and the step ends as it was going to (timed out, cancelled), so it never reaches the
    /// scheduler, the run's task or a batch. Costs a branch per poll, and nothing while dropping
    /// does not panic.
    pub struct QuietDrop<F> {
        // `None` once dropped in place.
        #[pin]
        future: Option<F>,
    }

    impl<F> PinnedDrop for QuietDrop<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut future = this.project().future;
            if future.is_some() {
                drop_quietly(&mut || future.set(None));
            }
        }
    }
}

impl<F> QuietDrop<F> {
    #[inline]
    pub(crate) fn new(future: F) -> Self {
        QuietDrop {
            future: Some(future),
        }
    }
}

impl<F: Future> Future for QuietDrop<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project().future.as_pin_mut() {
            Some(future) => future.poll(cx),
            None => unreachable!("jobgraph: a step's attempt was polled after it was dropped"),
        }
    }
}

/// Runs `drop` (the drop of an attempt's future), catching and logging a panic: out of line, one
/// copy for every step, called only by [`QuietDrop`]'s drop.
#[inline(never)]
fn drop_quietly(drop: &mut dyn FnMut()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(drop)) {
        let panic = StepPanic::from_payload(payload);
        tracing::error!(
            panic = %panic,
            "a step's future panicked when dropped (timed out, cancelled, or its run dropped); the step ends as it would have"
        );
    }
}

/// Starts `step`: the one runtime function the generated scheduler calls when a step's
/// dependencies completed.
///
/// `attempt` builds one attempt's future from a fresh context; the general path calls it again
/// for each retry. Its back-off sleeps are part of the returned future, so cancelling the run
/// (dropping it) ends them at once.
#[inline]
#[allow(clippy::type_complexity)]
pub(crate) fn start_step<'a, S, R, C, T, F, Fut>(
    run: &'a RunCore<S>,
    step: S,
    policies: Policies<'a, R, T>,
    mut attempt: F,
) -> StepFuture<Fut, impl Future<Output = Result<T, StepError>> + Unpin + use<'a, S, R, C, T, F, Fut>>
where
    S: JobStep,
    R: RetryPolicy,
    C: AttemptContext,
    F: FnMut(C) -> Fut + 'a,
    Fut: Future<Output = Result<T, BoxError>> + 'a,
{
    let own = policies.retry;
    let plan = plan(run, step, own.is_some(), policies.timeout, policies.limits);
    match plan {
        Plan::Lean { started } => StepFuture::Lean {
            attempt: QuietDrop::new(attempt(C::new(run, step, 1, None, None))),
            started,
        },
        Plan::General(general) => StepFuture::GeneralFuture {
            future: general_future(run, step, general, own, policies.encode, attempt),
        },
    }
}

/// An attempt's future on the general path: the step's own, boxed.
type ErasedAttempt<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + 'a>>;

/// What makes each attempt of a step on the general path: the step's own function, boxed.
type ErasedAttempts<'a, C, T> = Box<dyn FnMut(C) -> ErasedAttempt<'a, T> + 'a>;

/// The future of a step on the general path, boxed: out of line, so the scheduler's code for each
/// step keeps only what the lean path runs.
///
/// The general path (limits, timeouts, spans, retries, checkpoints) is compiled once per output
/// and context type, not once per step: it runs the step's attempts through trait objects (one
/// allocation per attempt, on a path that allocates its span and its timer anyway). Generic over
/// every step's future, it was most of the code a job generated, and a 1,000-step job took
/// several times longer to build than the steps' own code explains.
#[inline(never)]
#[allow(clippy::type_complexity)]
fn general_future<'a, S, R, C, T, F, Fut>(
    run: &'a RunCore<S>,
    step: S,
    general: General<'a>,
    own_retry: Option<R>,
    encode: Option<Encode<T>>,
    mut attempt: F,
) -> GeneralFuture<
    impl Future<Output = Result<T, StepError>> + use<'a, S, R, C, T, F, Fut>,
    (F, Fut, C, T),
>
where
    S: JobStep,
    R: RetryPolicy,
    C: AttemptContext,
    F: FnMut(C) -> Fut + 'a,
    Fut: Future<Output = Result<T, BoxError>> + 'a,
{
    let attempts: ErasedAttempts<'a, C, T> =
        Box::new(move |ctx| -> ErasedAttempt<'a, T> { Box::pin(attempt(ctx)) });
    GeneralFuture::new(run_general(
        run,
        step,
        general,
        erase_retry(own_retry),
        encode,
        attempts,
    ))
}

/// Compiles only if the general path's future is `Send` for every step type when its attempts
/// and their futures, its context and its output are: what [`GeneralFuture`]'s `Send` stands on.
#[allow(dead_code, clippy::type_complexity)]
fn general_path_is_send<'a, S: JobStep, C: AttemptContext + Send + 'a, T: Send + 'a>(
    run: &'a RunCore<S>,
    step: S,
    general: General<'a>,
    encode: Option<Encode<T>>,
    attempts: Box<
        dyn FnMut(C) -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>> + Send + 'a,
    >,
) {
    fn send(_: &impl Send) {}
    send(&run_general(run, step, general, None, encode, attempts));
}

/// What makes each attempt of an element of a `for_each` step: the step's own function, boxed.
type ErasedElementAttempts<'a, C, E, T> = Box<dyn Fn(C, &'a E) -> ErasedAttempt<'a, T> + 'a>;

/// The future of a `for_each` step, boxed: like the general path, compiled once per element,
/// output and context type, not once per step (see [`general_future`]).
#[inline(never)]
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn for_each_future<'a, S, R, C, E, T, F, Fut>(
    run: &'a RunCore<S>,
    step: S,
    retry: Option<R>,
    timeout: Option<Duration>,
    limits: &'a StepLimits,
    codec: Option<ElementsCodec<T>>,
    bound: Option<usize>,
    elements: &'a [E],
    attempt: F,
) -> GeneralFuture<
    impl Future<Output = Result<Vec<T>, StepError>> + use<'a, S, R, C, E, T, F, Fut>,
    (F, &'a F, Fut, C, T, &'a E),
>
where
    S: JobStep,
    R: RetryPolicy,
    C: AttemptContext + 'a,
    F: Fn(C, &'a E) -> Fut + 'a,
    Fut: Future<Output = Result<T, BoxError>> + 'a,
    T: 'a,
{
    let attempts: ErasedElementAttempts<'a, C, E, T> =
        Box::new(move |ctx, element| -> ErasedAttempt<'a, T> { Box::pin(attempt(ctx, element)) });
    let policies = Policies {
        retry: erase_retry(retry),
        timeout,
        limits,
        encode: codec.as_ref().map(|codec| codec.all.encode),
    };
    GeneralFuture::new(run_for_each(
        run,
        step,
        policies,
        codec.map(|codec| codec.element),
        elements,
        bound,
        attempts,
    ))
}

/// Compiles only if a `for_each` step's future is `Send` for every step type when its attempts
/// and their futures, its context and its output are, and its elements are `Sync`: what
/// [`GeneralFuture`]'s `Send` stands on for [`for_each_future`].
#[allow(dead_code, clippy::type_complexity)]
fn for_each_is_send<'a, S: JobStep, C: AttemptContext + Send + 'a, E: Sync, T: Send + 'a>(
    run: &'a RunCore<S>,
    step: S,
    policies: Policies<'a, Box<dyn RetryPolicy>, Vec<T>>,
    codec: Option<Codec<T>>,
    elements: &'a [E],
    attempts: Box<
        dyn Fn(C, &'a E) -> Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>
            + Send
            + Sync
            + 'a,
    >,
) {
    fn send(_: &impl Send) {}
    send(&run_for_each(
        run, step, policies, codec, elements, None, attempts,
    ));
}

/// How a step runs: see [`plan`].
enum Plan<'a> {
    /// One attempt, polled by the scheduler, started at `started`.
    Lean { started: u64 },
    /// Every attempt in a future of its own.
    General(General<'a>),
}

/// What the general path runs a step with.
struct General<'a> {
    /// The run's override of the step's retry policy; without one, the step's own (if any).
    retry_override: Option<&'a dyn RetryPolicy>,
    timeout: Option<Duration>,
    limiter: Option<Arc<StepLimiter>>,
    /// The first attempt's span, when a subscriber wants it.
    span: Option<Span>,
}

/// Decides how `step` runs. A step with no retry policy, no timeout and no limits, whose span
/// no subscriber wants (the common case), takes the lean path: it starts now, with no timer and
/// nothing allocated.
///
/// Inline, so a step whose attribute declares no policy (known where the scheduler calls this)
/// checks only what a run may override; the rest is out of line in [`plan_general`].
#[inline]
fn plan<'a, S: JobStep>(
    run: &'a RunCore<S>,
    step: S,
    own_retry: bool,
    timeout: Option<Duration>,
    limits: &'a StepLimits,
) -> Plan<'a> {
    if !own_retry
        && timeout.is_none()
        && limits.is_none()
        && let Some(started) = start_if_lean(run, step)
    {
        return Plan::Lean { started };
    }
    plan_general(run, step, own_retry, timeout, limits)
}

/// [`plan`] for a step that declares a policy, or whose run overrides one, or whose span a
/// subscriber may want. Not generic over the step's future, so one copy serves every step of a
/// job.
#[inline(never)]
fn plan_general<'a, S: JobStep>(
    run: &'a RunCore<S>,
    step: S,
    own_retry: bool,
    timeout: Option<Duration>,
    limits: &'a StepLimits,
) -> Plan<'a> {
    let retry_override = run.retry_override(step);
    let timeout = run.timeout_override(step).or(timeout);
    let limiter = run.limits().limiter(step, limits);
    let mut span = None;
    if retry_override.is_none()
        && !own_retry
        && timeout.is_none()
        && limiter.is_none()
        && run.durable().is_none()
    {
        // Entering a span no subscriber wants costs more than the rest of a trivial step. No
        // subscriber wants any when none takes `INFO` (the span's level): then none is made.
        let first = if tracing::level_enabled!(tracing::Level::INFO) {
            new_span(step, 1, None)
        } else {
            Span::none()
        };
        if first.is_disabled() {
            return Plan::Lean {
                started: record_lean_start(run, step),
            };
        }
        span = Some(first);
    }
    Plan::General(General {
        retry_override,
        timeout,
        limiter,
        span,
    })
}

/// If a step that declares no policy may take the lean path in this run (no retry policy or
/// timeout overridden, no limit overridden, no subscriber taking `INFO` spans), starts it and
/// returns when; else `None`, and [`plan_general`] decides. Out of line, one copy per job: the
/// scheduler's code for each step holds only the call.
#[inline(never)]
fn start_if_lean<S: JobStep>(run: &RunCore<S>, step: S) -> Option<u64> {
    if !run.no_overrides
        || run.limits().overridden()
        || tracing::level_enabled!(tracing::Level::INFO)
    {
        return None;
    }
    Some(record_lean_start(run, step))
}

/// Starts the one attempt of a step on the lean path: returns when it started. Inline in
/// [`start_if_lean`], which every step's start calls, so that call is the only one.
#[inline(always)]
fn record_lean_start<S: JobStep>(run: &RunCore<S>, step: S) -> u64 {
    let started = run.now();
    run.attempt_started(step, 1, started);
    tracing::debug!(step = step.name(), "step started");
    started
}

/// Every attempt of a step on the general path.
async fn run_general<S, C, T, F, Fut>(
    run: &RunCore<S>,
    step: S,
    general: General<'_>,
    own_retry: Option<Box<dyn RetryPolicy>>,
    encode: Option<Encode<T>>,
    attempt: F,
) -> Result<T, StepError>
where
    S: JobStep,
    C: AttemptContext,
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    let mut first_start = None;
    let policies = AttemptPolicies {
        retry: general.retry_override.or(own_retry.as_deref()),
        timeout: general.timeout,
        limiter: general.limiter.as_deref(),
    };
    let on_start = |n: u32| {
        // Time spent waiting for a limit is not part of the step's run.
        let started = *first_start.get_or_insert_with(|| run.now());
        run.attempt_started(step, n, started);
    };
    let (outcome, n, span) =
        attempts(run, step, None, policies, general.span, on_start, attempt).await;
    let started = first_start.unwrap_or_else(|| run.now());
    // A durable run's output is stored before its children (or the report) learn of it.
    let outcome = checkpoint(run, step, n, started, outcome, encode).await;
    span.in_scope(|| report_outcome(run, step, n, started, outcome))
}

/// What every attempt of a step (or of one element of a `for_each` step) runs under.
#[derive(Clone, Copy)]
struct AttemptPolicies<'a> {
    retry: Option<&'a dyn RetryPolicy>,
    timeout: Option<Duration>,
    limiter: Option<&'a StepLimiter>,
}

/// Runs attempts until one succeeds or the retry policy gives up: each waits for the limits,
/// calls `on_start` with its number, and gets a fresh context and span (`first_span`, if given,
/// for the first). Returns the last attempt's outcome, its number and its span.
#[allow(clippy::too_many_arguments)]
async fn attempts<S, C, T, F, Fut>(
    run: &RunCore<S>,
    step: S,
    element: Option<usize>,
    policies: AttemptPolicies<'_>,
    mut first_span: Option<Span>,
    mut on_start: impl FnMut(u32),
    mut attempt: F,
) -> (Result<T, StepError>, u32, Span)
where
    S: JobStep,
    C: AttemptContext,
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    let mut n: u32 = 0;
    loop {
        n += 1;
        let permit = match policies.limiter {
            Some(limiter) => Some(limiter.acquire().await),
            None => None,
        };
        on_start(n);
        let span = first_span
            .take()
            .unwrap_or_else(|| new_span(step, n, element));
        let outcome = async {
            // Enrichment runs as the context is made: a panic there is the attempt's failure.
            let made = catch_unwind(AssertUnwindSafe(|| {
                attempt(C::new(run, step, n, element, Some(&span)))
            }));
            let attempt = match made {
                Ok(attempt) => stale(run, guarded(attempt)),
                Err(payload) => return Err(StepError::Panic(StepPanic::from_payload(payload))),
            };
            match policies.timeout {
                None => attempt.await,
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(StepError::Timeout(limit)),
                },
            }
        }
        .instrument(span.clone())
        .await;
        drop(permit);
        let error = match outcome {
            Ok(output) => return (Ok(output), n, span),
            Err(error) => error,
        };
        let Some(policy) = policies.retry else {
            return (Err(error), n, span);
        };
        let delay = match catch_unwind(AssertUnwindSafe(|| policy.should_retry(n, &error))) {
            Ok(Some(delay)) => delay,
            Ok(None) => return (Err(error), n, span),
            Err(payload) => return (Err(policy_panicked(n, &error, payload)), n, span),
        };
        span.in_scope(|| tracing::warn!(?delay, error = %error, "step attempt failed; retrying"));
        run.emit(&StepEvent::Retrying {
            step,
            attempt: n,
            delay,
            error: &error,
        });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// The failure of a step whose retry policy (or its `when` predicate) panicked when asked about
/// attempt `n`, which failed with `error`: says both, as the policy's panic ends the step.
#[cold]
#[inline(never)]
fn policy_panicked(n: u32, error: &StepError, payload: Box<dyn std::any::Any + Send>) -> StepError {
    let panic = StepPanic::from_payload(payload);
    StepError::Policy(format!(
        "its retry policy panicked ({panic}) when attempt {n} failed: {error}"
    ))
}

/// Runs a `#[step(for_each(..))]` step: `attempt` once per element of `elements` (again for
/// each retry of that element), at most `bound` elements at once (one in a sequential run), each
/// under the step's retry policy, timeout and limits. The output is every element's, in the
/// elements' order; the first element that fails fails the step, and the others still running
/// are dropped.
async fn run_for_each<'e, S, C, E, T, F, Fut>(
    run: &RunCore<S>,
    step: S,
    policies: Policies<'_, Box<dyn RetryPolicy>, Vec<T>>,
    element_codec: Option<Codec<T>>,
    elements: &'e [E],
    bound: Option<usize>,
    attempt: F,
) -> Result<Vec<T>, StepError>
where
    S: JobStep,
    C: AttemptContext,
    F: Fn(C, &'e E) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    use futures::StreamExt as _;
    use futures::stream::FuturesUnordered;

    let limiter = run.limits().limiter(step, policies.limits);
    let encode = policies.encode;
    let policies = AttemptPolicies {
        retry: run.retry_override(step).or(policies.retry.as_deref()),
        timeout: run.timeout_override(step).or(policies.timeout),
        limiter: limiter.as_deref(),
    };
    let first_start = run.now();
    run.attempt_started(step, 1, first_start);
    // Attempts count those of every element, as they start: none yet.
    run.set_attempts(step, 0);
    let total = AtomicU32::new(0);
    // `slot`: where the element is in `elements`; `index`: its index in the parent's output (the
    // same, but for a worker's claim of one element).
    let element = |slot: usize, index: usize, value: &'e E| {
        let attempt = &attempt;
        let total = &total;
        async move {
            let on_start = |_| {
                let attempts = total.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                run.set_attempts(step, attempts);
            };
            let make = |ctx| attempt(ctx, value);
            let (outcome, _, _) =
                attempts(run, step, Some(index), policies, None, on_start, make).await;
            // A durable run stores each element as it completes: a crash mid fan-out redoes
            // only the elements that did not.
            let outcome = match (outcome, element_codec) {
                (Ok(output), Some(codec)) => {
                    checkpoint_element(run, step, index, output, codec).await
                }
                (outcome, _) => outcome,
            };
            (slot, index, outcome)
        }
    };
    let mut outputs: Vec<Option<T>> = elements.iter().map(|_| None).collect();
    if let Some(codec) = element_codec {
        stored_elements(run, step, codec, &mut outputs).await;
    }
    let done: Vec<bool> = match element_codec {
        Some(_) => outputs.iter().map(Option::is_some).collect(),
        None => Vec::new(),
    };
    // A worker's claim of one element (`RunOptions::only_element`): the parent's output it was
    // given holds that element only.
    let only = run
        .options
        .only_element
        .filter(|_| run.options.until == Some(step));
    if let Some(index) = only
        && elements.len() != 1
    {
        let error = StepError::Element {
            index,
            error: Box::new(StepError::Error(
                format!(
                    "the claim of element {index} carries {} elements, not the one",
                    elements.len()
                )
                .into(),
            )),
        };
        return report_outcome(run, step, 0, first_start, Err(error));
    }
    let mut pending = elements
        .iter()
        .enumerate()
        .filter(|(slot, _)| !done.get(*slot).copied().unwrap_or(false))
        .map(|(slot, value)| (slot, only.unwrap_or(slot), value));
    let mut running = FuturesUnordered::new();
    // A sequential run runs one thing at a time: one element, too.
    let bound = if run.options.sequential {
        1
    } else {
        bound.unwrap_or(usize::MAX).max(1)
    };
    let failed = loop {
        while running.len() < bound {
            match pending.next() {
                Some((slot, index, value)) => running.push(element(slot, index, value)),
                None => break,
            }
        }
        match running.next().await {
            None => break None,
            Some((slot, _, Ok(output))) => outputs[slot] = Some(output),
            Some((_, index, Err(error))) => {
                break Some(StepError::Element {
                    index,
                    error: Box::new(error),
                });
            }
        }
    };
    drop(running);
    let attempts = total.into_inner();
    let outcome = match failed {
        // Every element completed, so every element has its output.
        None => Ok(outputs.into_iter().flatten().collect()),
        Some(error) => Err(error),
    };
    let outcome = checkpoint(run, step, attempts, first_start, outcome, encode).await;
    report_outcome(run, step, attempts, first_start, outcome)
}

/// Stores element `index` of `step`'s fan-out in a durable run; a failed commit fails the
/// element.
async fn checkpoint_element<S: JobStep, T>(
    run: &RunCore<S>,
    step: S,
    index: usize,
    output: T,
    codec: Codec<T>,
) -> Result<T, StepError> {
    let Some(durable) = run.durable() else {
        return Ok(output);
    };
    let json = (codec.encode)(&output).map_err(|e| StepError::Checkpoint(Box::new(e)))?;
    durable
        .store
        .element_completed(&durable.run_id, &durable.owner, step.name(), index, &json)
        .await
        .map_err(|e| StepError::Checkpoint(Box::new(e)))?;
    Ok(output)
}

/// Fills `outputs` with the elements of `step` an earlier attempt of a durable run stored. An
/// element that no longer decodes, or a store that cannot be read, runs the elements again.
async fn stored_elements<S: JobStep, T>(
    run: &RunCore<S>,
    step: S,
    codec: Codec<T>,
    outputs: &mut [Option<T>],
) {
    let Some(durable) = run.durable() else {
        return;
    };
    match durable.store.elements(&durable.run_id, step.name()).await {
        Ok(stored) => {
            for (index, json) in stored {
                if let (Some(kept), Ok(output)) = (outputs.get_mut(index), (codec.decode)(&json)) {
                    *kept = Some(output);
                }
            }
        }
        Err(error) => {
            tracing::warn!(step = step.name(), %error, "stored elements could not be read; running them again");
        }
    }
}

/// The span of attempt `n` of a step (of one of its elements, for a `for_each` step).
fn new_span<S: JobStep>(step: S, n: u32, element: Option<usize>) -> Span {
    let span = tracing::info_span!(
        "step",
        step = step.name(),
        attempt = n,
        element = tracing::field::Empty,
        fields = tracing::field::Empty
    );
    if let Some(element) = element {
        span.record("element", element);
    }
    span
}

/// What an attempt of a step is given: a [`StepContext`] if the step takes one, else
/// [`NoContext`]. Either way enrichment runs, and the span gets the fields it records.
pub trait AttemptContext: Sized {
    /// The argument of attempt `n` (of `element`, for a `for_each` step) of `step`, whose span is
    /// `span` (`None` for a span no subscriber wants).
    fn new<S: JobStep>(
        run: &RunCore<S>,
        step: S,
        n: u32,
        element: Option<usize>,
        span: Option<&Span>,
    ) -> Self;
}

impl AttemptContext for StepContext {
    #[inline]
    fn new<S: JobStep>(
        run: &RunCore<S>,
        step: S,
        n: u32,
        element: Option<usize>,
        span: Option<&Span>,
    ) -> Self {
        let mut ctx = run.context(step, n);
        ctx.set_element(element);
        if let Some(span) = span.filter(|span| !span.is_disabled())
            && ctx.fields().next().is_some()
        {
            let fields: Vec<String> = ctx.fields().map(|(k, v)| format!("{k}={v}")).collect();
            span.record("fields", fields.join(" "));
        }
        ctx
    }
}

/// The argument of an attempt of a step that takes no [`StepContext`]: a context is built only
/// for enrichment to run on, and only if the job has enrichment.
#[derive(Debug)]
pub struct NoContext;

impl AttemptContext for NoContext {
    #[inline]
    fn new<S: JobStep>(
        run: &RunCore<S>,
        step: S,
        n: u32,
        element: Option<usize>,
        span: Option<&Span>,
    ) -> Self {
        if run.enriches() {
            enrich_only(run, step, n, element, span);
        }
        NoContext
    }
}

/// Builds and drops the context of an attempt that takes none, for enrichment to run on. Out of
/// line: one copy serves every step of a job, and a job without enrichment never calls it.
#[cold]
#[inline(never)]
fn enrich_only<S: JobStep>(
    run: &RunCore<S>,
    step: S,
    n: u32,
    element: Option<usize>,
    span: Option<&Span>,
) {
    drop(<StepContext as AttemptContext>::new(
        run, step, n, element, span,
    ));
}

/// One attempt's future, with a panic turned into the step's error.
async fn guarded<T, Fut>(attempt: Fut) -> Result<T, StepError>
where
    Fut: Future<Output = Result<T, BoxError>>,
{
    tracing::debug!("step started");
    match AssertUnwindSafe(QuietDrop::new(attempt))
        .catch_unwind()
        .await
    {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(error)) => Err(StepError::Error(error)),
        Err(payload) => Err(StepError::Panic(StepPanic::from_payload(payload))),
    }
}

/// Reports how a step ended after its last attempt, `n` (inside that attempt's span), and
/// passes its outcome on.
fn report_outcome<S: JobStep, T>(
    run: &RunCore<S>,
    step: S,
    n: u32,
    first_start: u64,
    outcome: Result<T, StepError>,
) -> Result<T, StepError> {
    report_end(run, step, n, first_start, outcome.as_ref().err());
    outcome
}

/// Reports how a step ended (failed with `error`, else completed) after `n` attempts: the
/// report, the trace and the listener. Out of line: one copy serves every step of a job.
#[inline(never)]
pub(crate) fn report_end<S: JobStep>(
    run: &RunCore<S>,
    step: S,
    n: u32,
    first_start: u64,
    error: Option<&StepError>,
) {
    match error {
        None => report_completed(run, step, n, first_start),
        Some(error) => report_failed(run, step, n, first_start, error),
    }
}

/// Reports that a step started at `first_start` completed after `n` attempts. Inline: the lean
/// path's end of every step calls it, in one function shared by every step of a job.
#[inline]
pub(crate) fn report_completed<S: JobStep>(run: &RunCore<S>, step: S, n: u32, first_start: u64) {
    let nanos = run.read_clock().saturating_sub(first_start);
    run.step_completed(step, nanos);
    // The `Duration` is built only for a subscriber that takes the event, or a listener.
    tracing::info!(duration = ?Duration::from_nanos(nanos), attempts = n, "step completed");
    if run.listens() {
        run.emit(&StepEvent::Completed {
            step,
            attempts: n,
            duration: Duration::from_nanos(nanos),
        });
    }
}

/// Reports that a step started at `first_start` failed with `error` after `n` attempts.
#[cold]
#[inline(never)]
pub(crate) fn report_failed<S: JobStep>(
    run: &RunCore<S>,
    step: S,
    n: u32,
    first_start: u64,
    error: &StepError,
) {
    let nanos = run.read_clock().saturating_sub(first_start);
    run.step_failed(step, nanos, error.to_string());
    tracing::error!(error = %error, attempts = n, "step failed");
    run.emit(&StepEvent::Failed {
        step,
        attempts: n,
        error,
    });
    run.skip_descendants(step);
}

/// Runs `attempt`, marking the run's latest clock reading stale whenever it runs user code.
async fn stale<S: JobStep, F: Future>(run: &RunCore<S>, attempt: F) -> F::Output {
    let mut attempt = std::pin::pin!(attempt);
    std::future::poll_fn(|cx| {
        run.stale();
        attempt.as_mut().poll(cx)
    })
    .await
}
