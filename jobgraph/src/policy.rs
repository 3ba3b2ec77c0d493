//! A step's policies evaluated as it starts, or as data ([`Job::policies`](crate::Job::policies)):
//! the expressions of its attribute run inside its failure boundary, so a panic or a timeout of
//! zero is the step's error, never the run's.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::error::StepPanic;
use crate::job::StepPolicies;
use crate::limit::StepLimits;
use crate::{RetryPolicy, StepError};

/// Checks a `#[step(timeout = ..)]` value computed at run time (literals are checked at compile
/// time): zero fails the step, which could never finish an attempt.
#[inline]
pub fn timeout(timeout: Duration) -> Result<Duration, StepError> {
    if timeout.is_zero() {
        return Err(zero_timeout());
    }
    Ok(timeout)
}

#[cold]
#[inline(never)]
fn zero_timeout() -> StepError {
    StepError::Policy(
        "its `#[step(timeout = ..)]` is zero: a timeout must be greater than zero".to_owned(),
    )
}

/// The policies of one step as data, for [`Job::policies`]: evaluates `policies`, turning a
/// panic into the step's error.
pub fn policies(
    policies: impl FnOnce() -> Result<StepPolicies, StepError>,
) -> Result<StepPolicies, StepError> {
    match std::panic::catch_unwind(AssertUnwindSafe(policies)) {
        Ok(policies) => policies,
        Err(payload) => Err(StepError::Panic(StepPanic::from_payload(payload))),
    }
}

/// [`StepPolicies`] from the attribute's values.
pub fn step_policies(
    retry: Option<Arc<dyn RetryPolicy>>,
    timeout: Option<Duration>,
    limits: &StepLimits,
    for_each_bound: Option<u32>,
) -> StepPolicies {
    StepPolicies {
        retry,
        timeout,
        limits: *limits,
        for_each_bound,
    }
}

/// A retry policy as data.
pub fn shared_retry<P: RetryPolicy>(policy: P) -> Arc<dyn RetryPolicy> {
    Arc::new(policy)
}
