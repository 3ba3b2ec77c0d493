//! Retry policies: when a failed attempt is tried again, and after how long.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::StepError;

/// Decides whether a failed attempt of a step is tried again.
///
/// Implement it for policies [`Retry`] cannot express. A policy is shared by every run of the
/// job, so it holds no per-run state: everything it needs is in the arguments.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a retry policy",
    label = "expected a `jobgraph::RetryPolicy`",
    note = "use `Retry::fixed(max_attempts, delay)`, `Retry::exponential(max_attempts, base)`, or a type implementing `RetryPolicy`"
)]
pub trait RetryPolicy: Send + Sync + 'static {
    /// Called after attempt number `attempt` (1-based) failed with `error`: `Some(delay)` to try
    /// again after `delay`, `None` to give up, making `error` the step's failure.
    fn should_retry(&self, attempt: u32, error: &StepError) -> Option<Duration>;
}

impl<P: RetryPolicy + ?Sized> RetryPolicy for Arc<P> {
    fn should_retry(&self, attempt: u32, error: &StepError) -> Option<Duration> {
        (**self).should_retry(attempt, error)
    }
}

/// The error predicate of [`Retry::when`].
type Predicate = Arc<dyn Fn(&StepError) -> bool + Send + Sync>;

/// The built-in [`RetryPolicy`]: a number of attempts, fixed or exponential back-off, an optional
/// cap and jitter, and an optional predicate on the error.
///
/// ```
/// use std::time::Duration;
/// use jobgraph::Retry;
///
/// // At most 5 calls; waits 100ms, 200ms, 400ms, 800ms (each at most 500ms) between them.
/// let policy = Retry::exponential(5, Duration::from_millis(100))
///     .max_delay(Duration::from_millis(500))
///     .when(|err| !err.is_panic());
/// assert_eq!(policy.delay(3), Duration::from_millis(400));
/// assert_eq!(policy.delay(4), Duration::from_millis(500));
/// ```
///
/// # Default
///
/// Without [`when`](Retry::when), every failure is retried except a panic, which is a bug rather
/// than a transient condition. Without [`jitter`](Retry::jitter), delays are exact.
#[derive(Clone)]
pub struct Retry {
    max_attempts: u32,
    base: Duration,
    exponential: bool,
    max_delay: Option<Duration>,
    jitter: bool,
    when: Option<Predicate>,
}

impl Retry {
    /// At most `max_attempts` calls in all (the first try counts), `delay` apart.
    ///
    /// # Panics
    ///
    /// If `max_attempts` is 0: a step runs at least once. (`#[step(retry = ..)]` rejects a literal
    /// 0 at compile time.)
    pub fn fixed(max_attempts: u32, delay: Duration) -> Self {
        Self::new("fixed", max_attempts, delay, false)
    }

    /// At most `max_attempts` calls in all; the n-th retry waits `base * 2^(n-1)`.
    ///
    /// # Panics
    ///
    /// If `max_attempts` is 0: a step runs at least once.
    pub fn exponential(max_attempts: u32, base: Duration) -> Self {
        Self::new("exponential", max_attempts, base, true)
    }

    fn new(kind: &str, max_attempts: u32, base: Duration, exponential: bool) -> Self {
        assert!(
            max_attempts >= 1,
            "Retry::{kind}: max_attempts counts the first try, so it must be at least 1 (got 0)"
        );
        Retry {
            max_attempts,
            base,
            exponential,
            max_delay: None,
            jitter: false,
            when: None,
        }
    }

    /// Caps every delay at `max`.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = Some(max);
        self
    }

    /// Randomizes each delay uniformly within its upper half (`[d/2, d]`), so that runs failing
    /// together do not retry together.
    pub fn jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// Retries only the failures for which `predicate` is true (panics and timeouts included:
    /// see [`StepError::is_panic`], [`StepError::is_timeout`], [`StepError::downcast_ref`]).
    pub fn when(mut self, predicate: impl Fn(&StepError) -> bool + Send + Sync + 'static) -> Self {
        self.when = Some(Arc::new(predicate));
        self
    }

    /// The most calls this policy allows, the first try included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay before the `retry`-th retry (1-based), without jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let delay = if self.exponential {
            let factor = 1u32
                .checked_shl(retry.saturating_sub(1))
                .unwrap_or(u32::MAX);
            self.base.saturating_mul(factor)
        } else {
            self.base
        };
        match self.max_delay {
            Some(max) => delay.min(max),
            None => delay,
        }
    }
}

impl RetryPolicy for Retry {
    fn should_retry(&self, attempt: u32, error: &StepError) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let retry = match &self.when {
            Some(predicate) => predicate(error),
            None => !error.is_panic(),
        };
        if !retry {
            return None;
        }
        let delay = self.delay(attempt);
        Some(if self.jitter { jittered(delay) } else { delay })
    }
}

impl fmt::Debug for Retry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("max_attempts", &self.max_attempts)
            .field("base", &self.base)
            .field("exponential", &self.exponential)
            .field("max_delay", &self.max_delay)
            .field("jitter", &self.jitter)
            .field("when", &self.when.as_ref().map(|_| "<predicate>"))
            .finish()
    }
}

/// A uniformly random duration in `[d/2, d]`.
fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    let unit = (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64;
    delay.mul_f64(0.5 + unit / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error() -> StepError {
        StepError::Error("boom".into())
    }

    #[test]
    fn fixed_counts_the_first_try() {
        let r = Retry::fixed(3, Duration::from_millis(10));
        assert_eq!(r.should_retry(1, &error()), Some(Duration::from_millis(10)));
        assert_eq!(r.should_retry(2, &error()), Some(Duration::from_millis(10)));
        assert_eq!(r.should_retry(3, &error()), None);
        assert_eq!(
            Retry::fixed(1, Duration::ZERO).should_retry(1, &error()),
            None
        );
    }

    #[test]
    fn exponential_doubles_and_caps() {
        let r =
            Retry::exponential(10, Duration::from_millis(20)).max_delay(Duration::from_millis(100));
        let delays: Vec<_> = (1..=5)
            .map(|n| r.should_retry(n, &error()).unwrap())
            .collect();
        let ms = |m| Duration::from_millis(m);
        assert_eq!(delays, [ms(20), ms(40), ms(80), ms(100), ms(100)]);
        let huge = Retry::exponential(u32::MAX, Duration::from_secs(1));
        assert_eq!(huge.delay(200), Duration::from_secs(u64::from(u32::MAX)));
    }

    #[test]
    fn jitter_stays_within_the_upper_half() {
        let r = Retry::fixed(100, Duration::from_millis(100)).jitter();
        for n in 1..100 {
            let d = r.should_retry(n, &error()).unwrap();
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_millis(100),
                "{d:?}"
            );
        }
    }

    #[test]
    fn predicate_and_panics() {
        let panic = StepError::Panic(crate::StepPanic::new("bug".into()));
        let r = Retry::fixed(3, Duration::ZERO);
        assert_eq!(r.should_retry(1, &panic), None);
        let r = r.when(|e| e.is_timeout());
        assert_eq!(r.should_retry(1, &error()), None);
        assert!(
            r.should_retry(1, &StepError::Timeout(Duration::from_secs(1)))
                .is_some()
        );
    }

    #[test]
    #[should_panic(expected = "max_attempts counts the first try")]
    fn zero_attempts_is_a_clear_error() {
        let _ = Retry::exponential(0, Duration::from_millis(1));
    }
}
