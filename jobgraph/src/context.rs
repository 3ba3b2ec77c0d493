//! [`StepContext`]: what a step may learn about the run it is part of.

use std::sync::Arc;

/// The identity of one run of a job, shared by the contexts of all its steps.
#[derive(Debug, Clone)]
pub(crate) struct RunInfo {
    pub(crate) job_name: &'static str,
    pub(crate) job_id: Arc<str>,
}

/// The run context a step receives when it declares a `&StepContext` parameter.
///
/// ```
/// use jobgraph::{job, StepContext};
///
/// struct Greeter;
///
/// #[job]
/// impl Greeter {
///     #[step]
///     async fn hello(&self, ctx: &StepContext) -> String {
///         format!("{} of {} (attempt {})", ctx.step_name(), ctx.job_name(), ctx.attempt())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let out = Greeter.run().await.unwrap();
/// assert_eq!(out.hello, "hello of Greeter (attempt 1)");
/// # }
/// ```
#[derive(Debug)]
pub struct StepContext {
    run: RunInfo,
    step_name: &'static str,
    attempt: u32,
}

impl StepContext {
    pub(crate) fn new(run: &RunInfo, step_name: &'static str, attempt: u32) -> Self {
        StepContext {
            run: run.clone(),
            step_name,
            attempt,
        }
    }

    /// The job's name (`#[job(name = "...")]`, or the type's name).
    pub fn job_name(&self) -> &'static str {
        self.run.job_name
    }

    /// The id of this run of the job, unique within the process.
    pub fn job_id(&self) -> &str {
        &self.run.job_id
    }

    /// The step's name, as written in the `impl` block.
    pub fn step_name(&self) -> &'static str {
        self.step_name
    }

    /// Which attempt of the step this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}
