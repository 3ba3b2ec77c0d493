#![doc = include_str!("../../README.md")]

mod batch;
mod client;
mod context;
mod dot_text;
pub mod durable;
mod error;
mod exec;
mod job;
mod lend;
mod limit;
mod policy;
mod report;
mod retry;
mod run;
mod runner;
mod sched;
pub mod store;
mod worker;

#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod __private;

#[cfg(feature = "progress")]
pub use batch::ProgressBars;
pub use batch::{
    Batch, BatchCancelHandle, BatchItem, BatchResults, BatchRun, BatchStatus, BatchSummary,
    RunCounts, StatusHandle, StatusListener, StepCounts,
};
pub use client::{Client, ClientError, Many, One, Submit};
pub use context::{Enrich, StepContext};
pub use error::{BoxError, JobError, StepError, StepFailure, StepPanic};
pub use job::{Job, JobStep, SendJob, StepInfo, StepPolicies};
pub use jobgraph_macros::job;
pub use limit::{LimitRegistry, Rate, RateParseError, StepLimits, ZeroLimit};
pub use report::{JobReport, Listener, StepEvent, StepReport, StepState};
pub use retry::{Retry, RetryPolicy};
pub use runner::{JobErrorOf, JobHandle, JobResult, Runner, Until};
pub use store::queue::Submitted;
pub use tokio_util::sync::CancellationToken;
pub use worker::{CLAIM_LEASE, MIN_TTR, Worker, WorkerStats};
