//! [`LimitRegistry`]: the step limiters that runs share, keyed by job and step name, and their
//! overrides.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use super::{Rate, StepLimiter, StepLimits, ZeroLimit};
use crate::JobStep;

/// The registry of step limiters shared by runs: one limiter per step of each job.
///
/// A step is known by its job's name ([`Job::NAME`](crate::Job::NAME)) and its own, as a store
/// would know it, so two job types given the same `#[job(name = "..")]` share their limits.
///
/// Runs use [`LimitRegistry::global`] unless told otherwise, so the limits of a step hold across
/// every run of its job in the process. [`LimitRegistry::new`] makes an independent registry, for
/// tests or for a subsystem whose runs should not share limits with the rest. Clones share their
/// state.
///
/// # Overrides
///
/// [`set_concurrency`](LimitRegistry::set_concurrency) and
/// [`set_rate`](LimitRegistry::set_rate) replace the step's `#[step(..)]` limit of that kind (or
/// add one it did not declare) for every run using this registry;
/// [`clear`](LimitRegistry::clear) returns to the declared limits. A change applies to permits
/// asked for after it: they come from a new limiter. Permits already held or waited for under the
/// old limits stay valid and do not count against the new ones, so just after a change, attempts
/// of both may be in flight together.
///
/// ```
/// use jobgraph::{job, LimitRegistry};
///
/// struct Report;
///
/// #[job]
/// impl Report {
///     #[step(concurrency = 4)]
///     async fn fetch(&self) {}
/// }
///
/// let limits = LimitRegistry::new();
/// limits.set_concurrency(ReportStep::Fetch, 2).unwrap();
/// limits.set_rate(ReportStep::Fetch, "5/s".parse().unwrap());
/// assert_eq!(
///     limits.set_concurrency(ReportStep::Fetch, 0).unwrap_err().to_string(),
///     "concurrency limit of step `fetch` is zero: at least 1 attempt must be allowed in flight, or the step never runs",
/// );
/// limits.clear(ReportStep::Fetch);
/// ```
#[derive(Clone, Default)]
pub struct LimitRegistry {
    inner: Arc<Shared>,
}

impl LimitRegistry {
    /// A new registry, independent of every other.
    pub fn new() -> Self {
        LimitRegistry::default()
    }

    /// The process-wide registry, which runs use unless given another.
    pub fn global() -> &'static LimitRegistry {
        static GLOBAL: OnceLock<LimitRegistry> = OnceLock::new();
        GLOBAL.get_or_init(LimitRegistry::new)
    }

    /// Allows at most `n` attempts of `step` in flight at once, whatever its `#[step]` declares.
    ///
    /// Applies to permits asked for after the call (see [Overrides](LimitRegistry#overrides)). Returns
    /// an error, changing nothing, if `n` is 0.
    pub fn set_concurrency<S: JobStep>(&self, step: S, n: u32) -> Result<(), ZeroLimit> {
        let n = NonZeroU32::new(n).ok_or(ZeroLimit::StepConcurrency { step: step.name() })?;
        self.entry(step, |entry| entry.concurrency = Some(n));
        Ok(())
    }

    /// Lets attempts of `step` start no faster than `rate`, whatever its `#[step]` declares.
    ///
    /// Applies to permits asked for after the call (see [Overrides](LimitRegistry#overrides)).
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

impl fmt::Debug for LimitRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = self.lock();
        let overrides = steps
            .values()
            .filter(|e| e.concurrency.is_some() || e.rate.is_some())
            .count();
        let limiters = steps.values().filter(|e| e.limiter.is_some()).count();
        f.debug_struct("LimitRegistry")
            .field("limiters", &limiters)
            .field("overrides", &overrides)
            .finish()
    }
}

/// A step's place in a registry: its job's name and its own, which a store can keep.
type Key = (&'static str, &'static str);

/// What a registry knows of one step.
#[derive(Debug, Default)]
struct Entry {
    /// Overrides set through [`LimitRegistry`]; each replaces the declared limit of its kind.
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

/// The state that a registry's clones share.
#[derive(Debug, Default)]
struct Shared {
    steps: Mutex<HashMap<Key, Entry>>,
    /// Set once any override was made: until then a step without declared limits needs no lock.
    overridden: AtomicBool,
}

/// The registry key of `step`.
fn key<S: JobStep>(step: S) -> Key {
    (S::JOB, step.name())
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
        const JOB: &'static str = "crawl";
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

    /// A step `fetch` of the job named `JOB`: another type for each name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum FetchOf<const JOB: char> {
        Fetch,
    }

    impl<const JOB: char> fmt::Display for FetchOf<JOB> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("fetch")
        }
    }

    impl<const JOB: char> JobStep for FetchOf<JOB> {
        const JOB: &'static str = match JOB {
            'c' => "crawl",
            _ => "other",
        };
        const ALL: &'static [Self] = &[FetchOf::Fetch];
        const STEPS: &'static [StepInfo] = &[StepInfo::__new("fetch", &[], &[], "")];
        fn name(self) -> &'static str {
            "fetch"
        }
        fn index(self) -> usize {
            0
        }
    }

    /// `fetch` of another job, `other`.
    type OtherStep = FetchOf<'o'>;

    const CONCURRENCY_2: StepLimits = StepLimits::NONE.with_concurrency(2);

    #[test]
    fn registry_shares_one_limiter_per_step() {
        let limits = LimitRegistry::new();
        let a = limits.limiter(Step::Fetch, &CONCURRENCY_2).unwrap();
        let b = limits.limiter(Step::Fetch, &CONCURRENCY_2).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(
            &a,
            &limits.clone().limiter(Step::Fetch, &CONCURRENCY_2).unwrap()
        ));

        // Another step, or the step of the same name of another job, has its own.
        let parse = limits.limiter(Step::Parse, &CONCURRENCY_2).unwrap();
        let other = limits.limiter(OtherStep::Fetch, &CONCURRENCY_2).unwrap();
        assert!(!Arc::ptr_eq(&a, &parse));
        assert!(!Arc::ptr_eq(&a, &other));
        assert!(!Arc::ptr_eq(&parse, &other));

        // No limits, no limiter.
        assert!(limits.limiter(Step::Parse, &StepLimits::NONE).is_none());

        // Another registry is independent.
        let fresh = LimitRegistry::new();
        assert!(!Arc::ptr_eq(
            &a,
            &fresh.limiter(Step::Fetch, &CONCURRENCY_2).unwrap()
        ));
        assert!(std::ptr::eq(
            LimitRegistry::global(),
            LimitRegistry::global()
        ));
        assert_eq!(
            format!("{limits:?}"),
            "LimitRegistry { limiters: 3, overrides: 0 }"
        );
    }

    #[test]
    fn overrides_win() {
        let limits = LimitRegistry::new();
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
            LimitRegistry::new()
                .limiter(Step::Parse, &StepLimits::NONE)
                .is_none()
        );

        // Zero is refused, changing nothing.
        assert_eq!(
            limits.set_concurrency(Step::Fetch, 0),
            Err(ZeroLimit::StepConcurrency { step: "fetch" })
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

    /// A step is known by its job's name and its own, as a store would know it, not by the type
    /// of its enum: the same names share a limiter and its overrides.
    #[test]
    fn steps_are_keyed_by_job_and_step_name() {
        type SameNames = FetchOf<'c'>;
        let limits = LimitRegistry::new();
        let fetch = limits.limiter(Step::Fetch, &CONCURRENCY_2).unwrap();
        let same = limits.limiter(SameNames::Fetch, &CONCURRENCY_2).unwrap();
        assert!(Arc::ptr_eq(&fetch, &same));

        limits.set_concurrency(SameNames::Fetch, 1).unwrap();
        assert_eq!(
            limits
                .limiter(Step::Fetch, &CONCURRENCY_2)
                .unwrap()
                .limits(),
            StepLimits::NONE.with_concurrency(1)
        );
        let other = limits.limiter(OtherStep::Fetch, &CONCURRENCY_2).unwrap();
        assert_eq!(other.limits(), CONCURRENCY_2);
    }
}
