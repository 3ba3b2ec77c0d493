//! One step of one run, every attempt of it: context and enrichment, span, limits, timeout,
//! panic capture, retry with back-off, and what the report and the listener learn.
//!
//! A step with no retry policy, no timeout and no limits (the common case) takes a lean path:
//! one attempt, no timer, nothing allocated. The others take the general path, boxed so its
//! timers and back-off state do not make every step's future larger.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::FutureExt as _;
use tracing::{Instrument as _, Span};

use crate::error::{BoxError, StepError, StepPanic};
use crate::limit::{StepLimiter, StepLimits};
use crate::report::{StepEvent, StepState};
use crate::run::RunCore;
use crate::{JobStep, RetryPolicy, StepContext};

/// The policies a step's attribute gives it; a [`Runner`](crate::Runner) may override each.
#[derive(Clone, Copy)]
pub(crate) struct Policies<'a> {
    pub(crate) retry: Option<&'a dyn RetryPolicy>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) limits: &'a StepLimits,
}

/// Runs `step` to its end: the one runtime function the generated scheduler calls per step.
///
/// `attempt` builds one attempt's future from a fresh context; it is called again for each retry.
/// Back-off sleeps are part of this future, so cancelling the run (dropping it) ends them at once.
pub(crate) async fn run_step<S, T, F, Fut>(
    run: &RunCore<S>,
    step: S,
    policies: Policies<'_>,
    mut attempt: F,
) -> Result<T, StepError>
where
    S: JobStep,
    F: FnMut(StepContext) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    let retry = run.retry_override(step).or(policies.retry);
    let timeout = run.timeout_override(step).or(policies.timeout);
    let limiter = run.limits().limiter(step, policies.limits);
    if retry.is_none() && timeout.is_none() && limiter.is_none() {
        let first_start = run.now();
        let (ctx, span) = begin(run, step, 1, first_start);
        let once = async {
            let outcome = stale(run, guarded(attempt(ctx))).await;
            end(run, step, 1, first_start, outcome)
        };
        // Entering a span no subscriber wants costs more than the rest of a trivial step.
        return if span.is_disabled() {
            once.await
        } else {
            once.instrument(span).await
        };
    }
    let general = Box::pin(with_policies(run, step, retry, timeout, limiter, attempt));
    general.await
}

/// Every attempt of a step with a retry policy, a timeout or limits.
async fn with_policies<S, T, F, Fut>(
    run: &RunCore<S>,
    step: S,
    retry: Option<&dyn RetryPolicy>,
    timeout: Option<Duration>,
    limiter: Option<Arc<StepLimiter>>,
    attempt: F,
) -> Result<T, StepError>
where
    S: JobStep,
    F: FnMut(StepContext) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    let mut first_start = None;
    let policies = AttemptPolicies {
        retry,
        timeout,
        limiter: limiter.as_deref(),
    };
    let on_start = |n: u32| {
        // Time spent waiting for a limit is not part of the step's run.
        let started = *first_start.get_or_insert_with(|| run.now());
        run.attempt_started(step, n, started);
        run.emit(&StepEvent::Started { step, attempt: n });
    };
    let (outcome, n, span) = attempts(run, step, None, policies, on_start, attempt).await;
    let started = first_start.unwrap_or_else(|| run.now());
    span.in_scope(|| end(run, step, n, started, outcome))
}

/// What every attempt of a step (or of one element of a `for_each` step) runs under.
#[derive(Clone, Copy)]
struct AttemptPolicies<'a> {
    retry: Option<&'a dyn RetryPolicy>,
    timeout: Option<Duration>,
    limiter: Option<&'a StepLimiter>,
}

/// Runs attempts until one succeeds or the retry policy gives up: each waits for the limits,
/// calls `on_start` with its number, and gets a fresh context and span. Returns the last
/// attempt's outcome, its number and its span.
async fn attempts<S, T, F, Fut>(
    run: &RunCore<S>,
    step: S,
    element: Option<usize>,
    policies: AttemptPolicies<'_>,
    mut on_start: impl FnMut(u32),
    mut attempt: F,
) -> (Result<T, StepError>, u32, Span)
where
    S: JobStep,
    F: FnMut(StepContext) -> Fut,
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
        let mut ctx = run.context(step, n);
        ctx.set_element(element);
        let span = span(step, n, element, &ctx);
        let outcome = async {
            let attempt = stale(run, guarded(attempt(ctx)));
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
        let Some(delay) = policies
            .retry
            .and_then(|policy| policy.should_retry(n, &error))
        else {
            return (Err(error), n, span);
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

/// Runs a `#[step(for_each(..))]` step: `attempt` once per element of `elements` (again for
/// each retry of that element), at most `bound` elements at once, each under the step's retry
/// policy, timeout and limits. The output is every element's, in the elements' order; the first
/// element that fails fails the step, and the others still running are dropped.
pub(crate) async fn run_for_each<'e, S, E, T, F, Fut>(
    run: &RunCore<S>,
    step: S,
    policies: Policies<'_>,
    elements: &'e [E],
    bound: Option<usize>,
    attempt: F,
) -> Result<Vec<T>, StepError>
where
    S: JobStep,
    F: Fn(StepContext, &'e E) -> Fut,
    Fut: Future<Output = Result<T, BoxError>>,
{
    use futures::StreamExt as _;
    use futures::stream::FuturesUnordered;

    let limiter = run.limits().limiter(step, policies.limits);
    let policies = AttemptPolicies {
        retry: run.retry_override(step).or(policies.retry),
        timeout: run.timeout_override(step).or(policies.timeout),
        limiter: limiter.as_deref(),
    };
    let first_start = run.now();
    run.attempt_started(step, 1, first_start);
    // Attempts count those of every element, as they start: none yet.
    run.set_attempts(step, 0);
    run.emit(&StepEvent::Started { step, attempt: 1 });
    let total = AtomicU32::new(0);
    let element = |index: usize, value: &'e E| {
        let attempt = &attempt;
        let total = &total;
        async move {
            let on_start = |_| {
                let attempts = total.fetch_add(1, Ordering::Relaxed).saturating_add(1);
                run.set_attempts(step, attempts);
            };
            let make = |ctx| attempt(ctx, value);
            let (outcome, _, _) = attempts(run, step, Some(index), policies, on_start, make).await;
            (index, outcome)
        }
    };
    let mut outputs: Vec<Option<T>> = elements.iter().map(|_| None).collect();
    let mut pending = elements.iter().enumerate();
    let mut running = FuturesUnordered::new();
    let bound = bound.unwrap_or(usize::MAX).max(1);
    let failed = loop {
        while running.len() < bound {
            match pending.next() {
                Some((index, value)) => running.push(element(index, value)),
                None => break,
            }
        }
        match running.next().await {
            None => break None,
            Some((index, Ok(output))) => outputs[index] = Some(output),
            Some((index, Err(error))) => {
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
        // Every element completed, so every slot holds its output.
        None => Ok(outputs.into_iter().flatten().collect()),
        Some(error) => Err(error),
    };
    end(run, step, attempts, first_start, outcome)
}

/// Starts attempt `n` of a step on the lean path: its enriched context and span, the report and
/// the listener.
fn begin<S: JobStep>(run: &RunCore<S>, step: S, n: u32, first_start: u64) -> (StepContext, Span) {
    let ctx = run.context(step, n);
    let span = span(step, n, None, &ctx);
    run.attempt_started(step, n, first_start);
    run.emit(&StepEvent::Started { step, attempt: n });
    (ctx, span)
}

/// The span of one attempt, with the fields enrichment recorded.
fn span<S: JobStep>(step: S, n: u32, element: Option<usize>, ctx: &StepContext) -> Span {
    let span = tracing::info_span!(
        "step",
        step = step.name(),
        attempt = n,
        element = tracing::field::Empty,
        fields = tracing::field::Empty
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(element) = element {
        span.record("element", element);
    }
    if ctx.fields().next().is_some() {
        let fields: Vec<String> = ctx.fields().map(|(k, v)| format!("{k}={v}")).collect();
        span.record("fields", fields.join(" "));
    }
    span
}

/// One attempt's future, with a panic turned into the step's error.
async fn guarded<T, Fut>(attempt: Fut) -> Result<T, StepError>
where
    Fut: Future<Output = Result<T, BoxError>>,
{
    tracing::debug!("step started");
    match AssertUnwindSafe(attempt).catch_unwind().await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(error)) => Err(StepError::Error(error)),
        Err(payload) => Err(StepError::Panic(StepPanic::from_payload(payload))),
    }
}

/// Ends a step after its last attempt, `n`, inside that attempt's span.
fn end<S: JobStep, T>(
    run: &RunCore<S>,
    step: S,
    n: u32,
    first_start: u64,
    outcome: Result<T, StepError>,
) -> Result<T, StepError> {
    let duration = Duration::from_nanos(run.read_clock().saturating_sub(first_start));
    match &outcome {
        Ok(_) => {
            run.step_ended(step, StepState::Completed, duration, None);
            tracing::info!(?duration, attempts = n, "step completed");
            run.emit(&StepEvent::Completed {
                step,
                attempts: n,
                duration,
            });
        }
        Err(error) => {
            run.step_ended(step, StepState::Failed, duration, Some(error.to_string()));
            tracing::error!(error = %error, attempts = n, "step failed");
            run.emit(&StepEvent::Failed {
                step,
                attempts: n,
                error,
            });
        }
    }
    outcome
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
