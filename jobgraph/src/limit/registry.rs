//! [`Limits`]: the registry of step limiters that runs share, and its overrides.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use super::{LimitError, Rate, StepLimiter, StepLimits};
use crate::JobStep;

/// A step's place in a registry: its enum's type and its index.
type Key = (TypeId, usize);

/// What a registry knows of one step.
#[derive(Debug, Default)]
struct Entry {
    /// Overrides set through [`Limits`]; each replaces the declared limit of its kind.
    concurrency: Option<NonZeroU32>,
    rate: Option<Rate>,
    /// The limiter of the effective limits, created on first use.
    limiter: Option<Arc<StepLimiter>>,
}

impl Entry {
    fn effective(&self, declared: &StepLimits) -> StepLimits {
        StepLimits {
            concurrency: self.concurrency.or(declared.concurrency),
            rate: self.rate.or(declared.rate),
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    steps: Mutex<HashMap<Key, Entry>>,
    /// Set once any override was made: until then a step without declared limits needs no lock.
    overridden: AtomicBool,
}

/// The registry of step limiters shared by runs: one limiter per step of each job type.
///
/// Runs use [`Limits::global`] unless told otherwise, so the limits of a step hold across every
/// run of its job in the process. [`Limits::new`] makes an independent registry, for tests or for
/// a subsystem whose runs should not share limits with the rest. Clones share their state.
///
/// # Overrides
///
/// [`set_concurrency`](Limits::set_concurrency) and [`set_rate`](Limits::set_rate) replace the
/// step's `#[step(..)]` limit of that kind (or add one it did not declare) for every run using
/// this registry; [`clear`](Limits::clear) returns to the declared limits. A change applies to
/// permits asked for after it: they come from a new limiter. Permits already held or waited for
/// under the old limits stay valid and do not count against the new ones, so just after a change,
/// attempts of both may be in flight together.
///
/// ```
/// use jobgraph::{Limits, Rate};
/// # #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
/// # enum ReportStep { Fetch }
/// # impl std::fmt::Display for ReportStep {
/// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("fetch") }
/// # }
/// # impl jobgraph::JobStep for ReportStep {
/// #     const ALL: &'static [Self] = &[ReportStep::Fetch];
/// #     const STEPS: &'static [jobgraph::StepInfo] = &[];
/// #     fn name(self) -> &'static str { "fetch" }
/// #     fn index(self) -> usize { 0 }
/// # }
///
/// let limits = Limits::new();
/// limits.set_concurrency(ReportStep::Fetch, 2).unwrap();
/// limits.set_rate(ReportStep::Fetch, "5/s".parse().unwrap());
/// assert_eq!(
///     limits.set_concurrency(ReportStep::Fetch, 0).unwrap_err().to_string(),
///     "concurrency limit of step `fetch` is zero: at least 1 attempt must be allowed in flight, or the step never runs",
/// );
/// limits.clear(ReportStep::Fetch);
/// ```
#[derive(Clone, Default)]
pub struct Limits {
    inner: Arc<Registry>,
}

impl Limits {
    /// A new registry, independent of every other.
    pub fn new() -> Self {
        Limits::default()
    }

    /// The process-wide registry, which runs use unless given another.
    pub fn global() -> &'static Limits {
        static GLOBAL: OnceLock<Limits> = OnceLock::new();
        GLOBAL.get_or_init(Limits::new)
    }

    /// Allows at most `n` attempts of `step` in flight at once, whatever its `#[step]` declares.
    ///
    /// Applies to permits asked for after the call (see [Overrides](Limits#overrides)). Returns
    /// an error, changing nothing, if `n` is 0.
    pub fn set_concurrency<S: JobStep>(&self, step: S, n: u32) -> Result<(), LimitError> {
        let n = NonZeroU32::new(n).ok_or(LimitError::ZeroConcurrency { step: step.name() })?;
        self.entry(step, |entry| entry.concurrency = Some(n));
        Ok(())
    }

    /// Lets attempts of `step` start no faster than `rate`, whatever its `#[step]` declares.
    ///
    /// Applies to permits asked for after the call (see [Overrides](Limits#overrides)).
    pub fn set_rate<S: JobStep>(&self, step: S, rate: Rate) {
        self.entry(step, |entry| entry.rate = Some(rate));
    }

    /// Removes the overrides of `step`: its declared limits apply again to permits asked for
    /// after the call.
    pub fn clear<S: JobStep>(&self, step: S) {
        let mut steps = self.lock();
        if let Some(entry) = steps.get_mut(&key(step)) {
            entry.concurrency = None;
            entry.rate = None;
        }
    }

    /// The limiter enforcing `step`'s limits: the overrides of this registry, else `declared`.
    /// `None` if the step has neither. Created on first use, and again after an override changed
    /// the effective limits.
    #[inline]
    pub(crate) fn limiter<S: JobStep>(
        &self,
        step: S,
        declared: &StepLimits,
    ) -> Option<Arc<StepLimiter>> {
        if declared.is_none() && !self.overridden() {
            return None;
        }
        self.lookup(step, declared)
    }

    /// True once an override was set in this registry: every step's limits must be looked up.
    #[inline]
    pub(crate) fn overridden(&self) -> bool {
        self.inner.overridden.load(Ordering::Acquire)
    }

    #[inline(never)]
    fn lookup<S: JobStep>(&self, step: S, declared: &StepLimits) -> Option<Arc<StepLimiter>> {
        let key = key(step);
        let mut steps = self.lock();
        let effective = match steps.get(&key) {
            Some(entry) => entry.effective(declared),
            None => *declared,
        };
        if effective.is_none() {
            if let Some(entry) = steps.get_mut(&key) {
                entry.limiter = None;
            }
            return None;
        }
        let entry = steps.entry(key).or_default();
        match &entry.limiter {
            Some(limiter) if limiter.limits() == effective => Some(Arc::clone(limiter)),
            _ => {
                let limiter = Arc::new(StepLimiter::new(effective));
                entry.limiter = Some(Arc::clone(&limiter));
                Some(limiter)
            }
        }
    }

    /// Applies `change` to the overrides of `step`.
    fn entry<S: JobStep>(&self, step: S, change: impl FnOnce(&mut Entry)) {
        let mut steps = self.lock();
        change(steps.entry(key(step)).or_default());
        self.inner.overridden.store(true, Ordering::Release);
    }

    /// The steps' entries. Nothing panics while they are locked, but a poisoned lock is not
    /// worth a panic either.
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Entry>> {
        lock(&self.inner.steps)
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = self.lock();
        let overrides = steps
            .values()
            .filter(|e| e.concurrency.is_some() || e.rate.is_some())
            .count();
        let limiters = steps.values().filter(|e| e.limiter.is_some()).count();
        f.debug_struct("Limits")
            .field("limiters", &limiters)
            .field("overrides", &overrides)
            .finish()
    }
}

/// The registry key of `step`.
fn key<S: JobStep>(step: S) -> Key {
    (TypeId::of::<S>(), step.index())
}

/// Locks `mutex`, ignoring poisoning: no critical section in this module can leave the data
/// inconsistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;
    use crate::StepInfo;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Step {
        Fetch,
        Parse,
    }

    impl fmt::Display for Step {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.name())
        }
    }

    impl JobStep for Step {
        const ALL: &'static [Self] = &[Step::Fetch, Step::Parse];
        const STEPS: &'static [StepInfo] = &[
            StepInfo::__new("fetch", &[], &[], ""),
            StepInfo::__new("parse", &["fetch"], &[], ""),
        ];
        fn name(self) -> &'static str {
            match self {
                Step::Fetch => "fetch",
                Step::Parse => "parse",
            }
        }
        fn index(self) -> usize {
            self as usize
        }
    }

    /// Another job's steps: same indices, different type.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum OtherStep {
        Fetch,
    }

    impl fmt::Display for OtherStep {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fetch")
        }
    }

    impl JobStep for OtherStep {
        const ALL: &'static [Self] = &[OtherStep::Fetch];
        const STEPS: &'static [StepInfo] = &[StepInfo::__new("fetch", &[], &[], "")];
        fn name(self) -> &'static str {
            "fetch"
        }
        fn index(self) -> usize {
            0
        }
    }

    const CONCURRENCY_2: StepLimits = StepLimits::NONE.with_concurrency(2);

    #[test]
    fn registry_shares_one_limiter_per_step() {
        let limits = Limits::new();
        let a = limits.limiter(Step::Fetch, &CONCURRENCY_2).unwrap();
        let b = limits.limiter(Step::Fetch, &CONCURRENCY_2).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(
            &a,
            &limits.clone().limiter(Step::Fetch, &CONCURRENCY_2).unwrap()
        ));

        // Another step, or the same index of another job, has its own.
        let parse = limits.limiter(Step::Parse, &CONCURRENCY_2).unwrap();
        let other = limits.limiter(OtherStep::Fetch, &CONCURRENCY_2).unwrap();
        assert!(!Arc::ptr_eq(&a, &parse));
        assert!(!Arc::ptr_eq(&a, &other));
        assert!(!Arc::ptr_eq(&parse, &other));

        // No limits, no limiter.
        assert!(limits.limiter(Step::Parse, &StepLimits::NONE).is_none());

        // Another registry is independent.
        let fresh = Limits::new();
        assert!(!Arc::ptr_eq(
            &a,
            &fresh.limiter(Step::Fetch, &CONCURRENCY_2).unwrap()
        ));
        assert!(std::ptr::eq(Limits::global(), Limits::global()));
        assert_eq!(
            format!("{limits:?}"),
            "Limits { limiters: 3, overrides: 0 }"
        );
    }

    #[test]
    fn overrides_win() {
        let limits = Limits::new();
        let declared = StepLimits::NONE.with_concurrency(4);
        let old = limits.limiter(Step::Fetch, &declared).unwrap();
        let held = old.acquire().now_or_never().unwrap();

        limits.set_concurrency(Step::Fetch, 1).unwrap();
        let new = limits.limiter(Step::Fetch, &declared).unwrap();
        assert!(!Arc::ptr_eq(&old, &new));
        assert_eq!(new.limits(), StepLimits::NONE.with_concurrency(1));
        // The old permit stays valid, and is not counted by the new limiter.
        assert_eq!((old.in_flight(), new.in_flight()), (Some(1), Some(0)));
        drop(held);
        assert_eq!(old.available(), Some(4));

        // Overrides of the other kind combine with the declared limit.
        limits.set_rate(Step::Fetch, Rate::per_second(5));
        assert_eq!(
            limits.limiter(Step::Fetch, &declared).unwrap().limits(),
            StepLimits::new(Some(1), Some(Rate::per_second(5)))
        );

        // Overrides apply to steps that declare nothing, and not to other registries.
        limits.set_rate(Step::Parse, Rate::per_minute(1));
        let parse = limits.limiter(Step::Parse, &StepLimits::NONE).unwrap();
        assert_eq!(
            parse.limits(),
            StepLimits::NONE.with_rate(Rate::per_minute(1))
        );
        assert!(
            Limits::new()
                .limiter(Step::Parse, &StepLimits::NONE)
                .is_none()
        );

        // Zero is refused, changing nothing.
        assert_eq!(
            limits.set_concurrency(Step::Fetch, 0),
            Err(LimitError::ZeroConcurrency { step: "fetch" })
        );
        assert_eq!(
            limits.limiter(Step::Fetch, &declared).unwrap().limits(),
            StepLimits::new(Some(1), Some(Rate::per_second(5)))
        );

        // Clearing returns to the declared limits.
        limits.clear(Step::Fetch);
        assert_eq!(
            limits.limiter(Step::Fetch, &declared).unwrap().limits(),
            declared
        );
        limits.clear(Step::Parse);
        assert!(limits.limiter(Step::Parse, &StepLimits::NONE).is_none());

        // Setting the same limit again keeps the limiter.
        limits.set_concurrency(Step::Fetch, 4).unwrap();
        let same = limits.limiter(Step::Fetch, &declared).unwrap();
        assert!(Arc::ptr_eq(
            &same,
            &limits.limiter(Step::Fetch, &declared).unwrap()
        ));
        assert_eq!(same.limits(), declared);
    }
}
