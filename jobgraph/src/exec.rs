//! One step of one run: build its context, run it, catch its panic, type its error.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt as _;

use crate::context::{RunInfo, StepContext};
use crate::error::{BoxError, StepError, StepPanic};

/// Runs one step to its end: the only runtime code the generated scheduler calls per step.
///
/// `attempt` builds the step's future from a fresh context; it is a factory (not a future) so that
/// policies which run a step more than once have something to call again.
pub(crate) async fn run_step<T, E, F, Fut>(
    run: &RunInfo,
    step_name: &'static str,
    mut attempt: F,
) -> Result<T, StepError>
where
    F: FnMut(StepContext) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let ctx = StepContext::new(run, step_name, 1);
    match AssertUnwindSafe(attempt(ctx)).catch_unwind().await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(error)) => Err(StepError::Error(error.into())),
        Err(payload) => Err(StepError::Panic(StepPanic::from_payload(payload))),
    }
}
