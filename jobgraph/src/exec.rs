//! One step of one run, every attempt of it: context and enrichment, span, timeout, panic
//! capture, retry with back-off, and what the report and the listener learn.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use tokio::time::Instant;

use futures::FutureExt as _;
use tracing::Instrument as _;

use crate::error::{BoxError, StepError, StepPanic};
use crate::report::{StepEvent, StepState};
use crate::run::RunCore;
use crate::{JobStep, RetryPolicy, StepContext};

/// The policies a step's attribute gives it; a [`Runner`](crate::Runner) may override each.
#[derive(Clone, Copy, Default)]
pub(crate) struct Policies<'a> {
    pub(crate) retry: Option<&'a dyn RetryPolicy>,
    pub(crate) timeout: Option<Duration>,
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
    let first_start = Instant::now();
    let mut n: u32 = 0;
    loop {
        n += 1;
        let mut ctx = StepContext::new(&run.info, step.name(), n);
        run.enrich(&mut ctx);
        let span = tracing::info_span!(
            "step",
            step = step.name(),
            attempt = n,
            fields = tracing::field::Empty
        );
        if ctx.fields().next().is_some() {
            let fields: Vec<String> = ctx.fields().map(|(k, v)| format!("{k}={v}")).collect();
            span.record("fields", fields.join(" "));
        }
        run.update(step, |r| {
            if n == 1 {
                r.state = StepState::Running;
                r.started = Some(run.since_start(first_start));
            }
            r.attempts = n;
        });
        run.emit(&StepEvent::Started { step, attempt: n });
        let outcome = async {
            tracing::debug!("step started");
            let attempt = AssertUnwindSafe(attempt(ctx)).catch_unwind();
            let caught = match timeout {
                None => attempt.await,
                Some(limit) => match tokio::time::timeout(limit, attempt).await {
                    Ok(caught) => caught,
                    Err(_) => return Err(StepError::Timeout(limit)),
                },
            };
            match caught {
                Ok(Ok(output)) => Ok(output),
                Ok(Err(error)) => Err(StepError::Error(error)),
                Err(payload) => Err(StepError::Panic(StepPanic::from_payload(payload))),
            }
        }
        .instrument(span.clone())
        .await;
        let error = match outcome {
            Ok(output) => {
                let duration = first_start.elapsed();
                run.update(step, |r| {
                    r.state = StepState::Completed;
                    r.duration = Some(duration);
                });
                span.in_scope(|| tracing::info!(?duration, attempts = n, "step completed"));
                run.emit(&StepEvent::Completed {
                    step,
                    attempts: n,
                    duration,
                });
                return Ok(output);
            }
            Err(error) => error,
        };
        match retry.and_then(|policy| policy.should_retry(n, &error)) {
            Some(delay) => {
                span.in_scope(
                    || tracing::warn!(?delay, error = %error, "step attempt failed; retrying"),
                );
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
            None => {
                let duration = first_start.elapsed();
                run.update(step, |r| {
                    r.state = StepState::Failed;
                    r.duration = Some(duration);
                    r.error = Some(error.to_string());
                });
                span.in_scope(|| tracing::error!(error = %error, attempts = n, "step failed"));
                run.emit(&StepEvent::Failed {
                    step,
                    attempts: n,
                    error: &error,
                });
                return Err(error);
            }
        }
    }
}
