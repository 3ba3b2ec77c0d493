#![doc = include_str!("../../README.md")]

mod context;
mod error;
mod exec;
mod job;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod __private;

pub use context::StepContext;
pub use error::{BoxError, JobError, StepError, StepFailure, StepPanic};
pub use job::{Job, JobStep, StepInfo};
pub use jobgraph_macros::job;
