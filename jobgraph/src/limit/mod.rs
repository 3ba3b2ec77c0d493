//! Per-step concurrency and rate limits, shared by every run of a job type.
//!
//! `#[step(concurrency = 4)]` allows at most 4 attempts of the step in flight at once, across all
//! runs of the job in the process; `#[step(rate = "10/s", burst = 5)]` lets attempts start no
//! faster than 10 per second, up to 5 at once after a quiet spell. The limits live in a
//! [`LimitRegistry`] ([`LimitRegistry::global`] by default), keyed by job and step name, which
//! can also override them at run time.
//!
//! Before each attempt the runtime takes a permit: first a concurrency slot (waiters are served
//! in order), then, while holding it, its start under the rate. The permit is held until the
//! attempt ends.
//!
//! The files: `rate.rs` ([`Rate`]) reads rates with `grammar.rs`, which the `#[job]` macro
//! shares; `limiter.rs` enforces one step's [`StepLimits`]; `registry.rs` holds the limiters
//! and the overrides.
//!
//! The rate is enforced with the generic cell rate algorithm (GCRA): the limiter keeps the
//! theoretical arrival time of the next start, and a start conforms if it is no earlier than
//! that time minus the burst's tolerance. Waiters queue in order; the first one sleeps until its
//! start would conform, checks again with the clock it wakes to, starts, and lets the next one
//! through. As each start is checked when it happens, a window `w` never holds more than
//! `burst + 1 + w / interval` starts (the one more: a sleeper that the timer wakes late keeps up
//! to one interval of its turn), even when the executor falls behind and polls late, and a waiter
//! that goes away has reserved nothing: those behind it move up.
//!
//! The files: `rate.rs` ([`Rate`]) reads rates with `grammar.rs`, which the `#[job]` macro
//! shares; `limiter.rs` enforces one step's [`StepLimits`]; `registry.rs` holds the limiters
//! and the overrides.
//!
//! The rate is enforced with the generic cell rate algorithm (GCRA): the limiter keeps the
//! theoretical arrival time of the next start, and a start conforms if it is no earlier than
//! that time minus the burst's tolerance. Waiters queue in order; the first one sleeps until its
//! start would conform, checks again with the clock it wakes to, starts, and lets the next one
//! through. As each start is checked when it happens, no window ever holds more than the rate
//! plus the burst, even when the executor falls behind and polls late, and a waiter that goes
//! away has reserved nothing: those behind it move up.

mod grammar;
mod limiter;
mod rate;
mod registry;

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

pub(crate) use limiter::StepLimiter;
pub use rate::{Rate, RateParseError};
pub use registry::LimitRegistry;

/// A limit of zero where at least 1 is needed: under it, nothing could ever run.
///
/// The one error of a zero limit, given at run time: a step's concurrency
/// ([`LimitRegistry::set_concurrency`]), a rate's count, period or burst ([`Rate::try_new`],
/// [`Rate::try_burst`]) or a batch's concurrency
/// ([`Batch::try_concurrency`](crate::Batch::try_concurrency)). A zero written in
/// `#[step(..)]` is a compile error instead, and a zero in a rate string a [`RateParseError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZeroLimit {
    /// A step's concurrency limit of 0.
    #[error(
        "concurrency limit of step `{step}` is zero: at least 1 attempt must be allowed in flight, or the step never runs"
    )]
    StepConcurrency {
        /// The step's name.
        step: &'static str,
    },
    /// A batch's concurrency of 0.
    #[error("a batch's concurrency must be at least 1: with 0, no run could ever start")]
    BatchConcurrency,
    /// A rate's count of 0.
    #[error(
        "rate of 0 per {period:?} is zero: at least 1 start per period must be allowed, or the step never runs"
    )]
    RateCount {
        /// The period the count was given for.
        period: Duration,
    },
    /// A rate's period of zero.
    #[error("rate of {count} per 0s has a zero period: the period must be longer than zero")]
    RatePeriod {
        /// The count that was given.
        count: u32,
    },
    /// A rate's burst of 0.
    #[error(
        "burst of 0: the burst is how many attempts may start at once after a quiet spell, at least 1"
    )]
    Burst,
}

/// The limits of one step: a concurrency limit, a rate limit, both or neither.
///
/// `#[step(concurrency = .., rate = .., burst = ..)]` compiles into a `const` of this type; it is
/// also what [`LimitRegistry`] overrides are combined into.
///
/// ```
/// use jobgraph::{Rate, StepLimits};
///
/// const LIMITS: StepLimits = StepLimits::NONE
///     .with_concurrency(4)
///     .with_rate(Rate::per_second(10).burst(5));
/// assert_eq!(LIMITS, StepLimits::new(Some(4), Some(Rate::per_second(10).burst(5))));
/// assert_eq!(LIMITS.to_string(), "concurrency 4, rate 10/s burst 5");
/// assert!(StepLimits::NONE.is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StepLimits {
    concurrency: Option<NonZeroU32>,
    rate: Option<Rate>,
}

impl StepLimits {
    /// No limits: the step runs as soon as its parents are done.
    pub const NONE: StepLimits = StepLimits {
        concurrency: None,
        rate: None,
    };

    /// At most `concurrency` attempts in flight (`None`: any number), starting no faster than
    /// `rate` (`None`: any rate).
    ///
    /// # Panics
    ///
    /// If `concurrency` is `Some(0)` (a compile error in a `const`).
    pub const fn new(concurrency: Option<u32>, rate: Option<Rate>) -> Self {
        let limits = StepLimits {
            concurrency: None,
            rate,
        };
        match concurrency {
            Some(n) => limits.with_concurrency(n),
            None => limits,
        }
    }

    /// These limits with at most `n` attempts in flight.
    ///
    /// # Panics
    ///
    /// If `n` is 0 (a compile error in a `const`). At run time, use
    /// [`LimitRegistry::set_concurrency`], which returns an error instead.
    pub const fn with_concurrency(self, n: u32) -> Self {
        match NonZeroU32::new(n) {
            Some(n) => StepLimits {
                concurrency: Some(n),
                ..self
            },
            None => panic!(
                "StepLimits: the concurrency limit is zero; at least 1 attempt must be allowed in flight"
            ),
        }
    }

    /// These limits with starts no faster than `rate`.
    pub const fn with_rate(self, rate: Rate) -> Self {
        StepLimits {
            rate: Some(rate),
            ..self
        }
    }

    /// The most attempts in flight at once, if limited.
    pub const fn concurrency(&self) -> Option<u32> {
        match self.concurrency {
            Some(n) => Some(n.get()),
            None => None,
        }
    }

    /// The rate attempts start at, if limited.
    pub const fn rate(&self) -> Option<Rate> {
        self.rate
    }

    /// True if neither concurrency nor rate is limited.
    pub const fn is_none(&self) -> bool {
        self.concurrency.is_none() && self.rate.is_none()
    }
}

/// Prints `concurrency 4, rate 10/s burst 5`, leaving out what is not limited, or `no limits`.
impl fmt::Display for StepLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.concurrency, self.rate) {
            (None, None) => write!(f, "no limits"),
            (Some(n), None) => write!(f, "concurrency {n}"),
            (None, Some(rate)) => write!(f, "rate {rate}"),
            (Some(n), Some(rate)) => write!(f, "concurrency {n}, rate {rate}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONCURRENCY_2: StepLimits = StepLimits::NONE.with_concurrency(2);

    #[test]
    fn step_limits() {
        assert!(std::panic::catch_unwind(|| StepLimits::new(Some(0), None)).is_err());

        const LIMITS: StepLimits = StepLimits::new(Some(4), Some(Rate::per_second(10)));
        assert_eq!(LIMITS.concurrency(), Some(4));
        assert_eq!(LIMITS.rate(), Some(Rate::per_second(10)));
        assert!(!LIMITS.is_none());
        assert!(StepLimits::default().is_none());
        assert_eq!(StepLimits::NONE.to_string(), "no limits");
        assert_eq!(CONCURRENCY_2.to_string(), "concurrency 2");
    }
}
