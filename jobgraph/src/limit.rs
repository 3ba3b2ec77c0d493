//! Per-step concurrency and rate limits, shared by every run of a job type.
//!
//! `#[step(concurrency = 4)]` allows at most 4 attempts of the step in flight at once, across all
//! runs of the job in the process; `#[step(rate = "10/s", burst = 5)]` lets attempts start no
//! faster than 10 per second, up to 5 at once after a quiet spell. The limits live in a
//! [`Limits`] registry ([`Limits::global`] by default), which can also override them at run time.
//!
//! Before each attempt the runtime takes a permit: first a concurrency slot (waiters are served
//! in order), then, while holding it, the attempt's start time under the rate. The permit is held
//! until the attempt ends.
//!
//! The rate is enforced with the generic cell rate algorithm (GCRA): the limiter keeps the
//! theoretical arrival time of the next start, and a start conforms if it is no earlier than
//! that time minus the burst's tolerance. Waiters queue in order; the first one sleeps until its
//! start would conform, checks again with the clock it wakes to, starts, and lets the next one
//! through. As each start is checked when it happens, no window ever holds more than the rate
//! plus the burst, even when the executor falls behind and polls late, and a waiter that goes
//! away has reserved nothing: those behind it move up.

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::JobStep;

/// Why a limit could not be built or set: a zero where at least 1 is needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// [`Limits::set_concurrency`] was given 0.
    #[error(
        "concurrency limit of step `{step}` is zero: at least 1 attempt must be allowed in flight, or the step never runs"
    )]
    ZeroConcurrency {
        /// The step's name.
        step: &'static str,
    },
    /// [`Rate::try_new`] was given a count of 0.
    #[error(
        "rate of 0 per {period:?} is zero: at least 1 start per period must be allowed, or the step never runs"
    )]
    ZeroCount {
        /// The period the count was given for.
        period: Duration,
    },
    /// [`Rate::try_new`] was given a zero period.
    #[error("rate of {count} per 0s has a zero period: the period must be longer than zero")]
    ZeroPeriod {
        /// The count that was given.
        count: u32,
    },
    /// [`Rate::try_burst`] was given 0.
    #[error(
        "burst of 0: the burst is how many attempts may start at once after a quiet spell, at least 1"
    )]
    ZeroBurst,
}

/// A rate limit: at most `count` starts per `period`, with an optional burst.
///
/// Starts are spaced evenly, [`interval`](Rate::interval) (`period / count`) apart. With a burst
/// of `n`, up to `n` starts may happen at once after a quiet spell, and the long-run rate is
/// still `count` per `period`. The default burst is 1: starts are strictly spaced.
///
/// ```
/// use std::time::Duration;
/// use jobgraph::Rate;
///
/// const API: Rate = Rate::per_second(10).burst(5);
/// assert_eq!(API.interval(), Duration::from_millis(100));
/// assert_eq!(API.to_string(), "10/s burst 5");
/// assert_eq!("10/s burst 5".parse::<Rate>(), Ok(API));
/// assert_eq!("100 / hour".parse::<Rate>(), Ok(Rate::per_hour(100)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Rate {
    /// `count` starts per second.
    ///
    /// # Panics
    ///
    /// If `count` is 0 (a compile error in a `const`). Use [`Rate::try_new`] for values only
    /// known at run time.
    pub const fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` starts per minute.
    ///
    /// # Panics
    ///
    /// If `count` is 0. Use [`Rate::try_new`] for values only known at run time.
    pub const fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` starts per hour.
    ///
    /// # Panics
    ///
    /// If `count` is 0. Use [`Rate::try_new`] for values only known at run time.
    pub const fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// `count` starts per `period`, strictly spaced (burst 1).
    ///
    /// # Panics
    ///
    /// If `count` is 0 or `period` is zero. Use [`Rate::try_new`] for values only known at run
    /// time.
    pub const fn new(count: u32, period: Duration) -> Self {
        match Self::try_new(count, period) {
            Ok(rate) => rate,
            Err(LimitError::ZeroCount { .. }) => {
                panic!("Rate: the count is zero; at least 1 start per period must be allowed")
            }
            Err(_) => panic!("Rate: the period is zero; it must be longer than zero"),
        }
    }

    /// `count` starts per `period`, strictly spaced (burst 1), or an error if either is zero.
    pub const fn try_new(count: u32, period: Duration) -> Result<Self, LimitError> {
        if count == 0 {
            return Err(LimitError::ZeroCount { period });
        }
        if period.is_zero() {
            return Err(LimitError::ZeroPeriod { count });
        }
        Ok(Rate {
            count,
            period,
            burst: 1,
        })
    }

    /// Allows up to `n` starts at once after a quiet spell (1: strictly spaced).
    ///
    /// # Panics
    ///
    /// If `n` is 0. Use [`Rate::try_burst`] for values only known at run time.
    pub const fn burst(self, n: u32) -> Self {
        match self.try_burst(n) {
            Ok(rate) => rate,
            Err(_) => panic!("Rate::burst: the burst is zero; it must be at least 1"),
        }
    }

    /// Like [`burst`](Rate::burst), but returns an error for 0.
    pub const fn try_burst(self, n: u32) -> Result<Self, LimitError> {
        if n == 0 {
            return Err(LimitError::ZeroBurst);
        }
        Ok(Rate { burst: n, ..self })
    }

    /// How many starts each [`period`](Rate::period) allows.
    pub const fn count(&self) -> u32 {
        self.count
    }

    /// The period the [`count`](Rate::count) is given for.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// How many starts may happen at once after a quiet spell; 1 when starts are strictly spaced.
    pub const fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The spacing of starts: `period / count`, rounded up to the nanosecond so that the rate is
    /// never exceeded.
    pub fn interval(&self) -> Duration {
        let nanos = self.period.as_nanos().div_ceil(u128::from(self.count));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Prints `10/s`, `5/m` or `100/h`, followed by ` burst 5` when the burst is above 1: the format
/// [`FromStr`] reads. Any other period is printed as `3 per 500ms`, which does not parse back.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 | 60 | 3600 if self.period.subsec_nanos() == 0 => {
                let unit = match self.period.as_secs() {
                    1 => "s",
                    60 => "m",
                    _ => "h",
                };
                write!(f, "{}/{unit}", self.count)?;
            }
            _ => write!(f, "{} per {:?}", self.count, self.period)?,
        }
        if self.burst > 1 {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// The error of parsing a [`Rate`]: says what is wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct RateParseError(#[from] ParseErrorKind);

/// What is wrong with a rate string; private so variants can change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ParseErrorKind {
    #[error("rate is empty; expected `<count>/<unit>`, as in `10/s`")]
    Empty,
    #[error("rate `{input}`: expected `<count>/<unit>`, as in `10/s`")]
    NoSlash { input: String },
    #[error("rate `{input}`: the count before `/` is missing, as in `10/s`")]
    MissingCount { input: String },
    #[error(
        "rate `{input}`: `{number}` is not a whole number; expected a {what}, as in `{example}`"
    )]
    NotANumber {
        input: String,
        number: String,
        what: &'static str,
        example: &'static str,
    },
    #[error("rate `{input}`: {what} `{number}` is too large; the most is 4294967295")]
    TooLarge {
        input: String,
        number: String,
        what: &'static str,
    },
    #[error(
        "rate `{input}` is zero: at least 1 start per period must be allowed, as in `1/s`; to remove the limit, leave the rate out"
    )]
    ZeroCount { input: String },
    #[error(
        "rate `{input}`: the unit after `/` is missing; expected `s`, `m` or `h`, as in `10/s`"
    )]
    MissingUnit { input: String },
    #[error("rate `{input}`: unknown unit `{unit}`; expected `s`, `m` or `h`, as in `10/s`")]
    UnknownUnit { input: String, unit: String },
    #[error(
        "rate `{input}` has a burst of 0: the burst is how many attempts may start at once, at least 1"
    )]
    ZeroBurst { input: String },
    #[error(
        "rate `{input}`: unexpected `{rest}` after the unit; expected nothing or `burst <n>`, as in `10/s burst 5`"
    )]
    Trailing { input: String, rest: String },
}

/// Reads `<count>/<unit>`, optionally followed by `burst <n>`: `10/s`, `5/m`, `100/h`,
/// `10/s burst 5`.
///
/// The unit is `s`, `m` or `h`; `sec`, `second`, `min`, `minute` and `hour` are accepted too.
/// Whitespace around the whole string and around `/` is ignored. The count and the burst are
/// whole numbers of at least 1.
impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let owned = || input.to_owned();
        if input.is_empty() {
            return Err(ParseErrorKind::Empty.into());
        }
        let Some((count, rest)) = input.split_once('/') else {
            return Err(ParseErrorKind::NoSlash { input: owned() }.into());
        };
        let count = count.trim_end();
        if count.is_empty() {
            return Err(ParseErrorKind::MissingCount { input: owned() }.into());
        }
        let count = parse_number(input, count, "count", "10/s")?;
        if count == 0 {
            return Err(ParseErrorKind::ZeroCount { input: owned() }.into());
        }
        let rest = rest.trim_start();
        let (unit, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        let period = match unit {
            "" => return Err(ParseErrorKind::MissingUnit { input: owned() }.into()),
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => {
                return Err(ParseErrorKind::UnknownUnit {
                    input: owned(),
                    unit: unit.to_owned(),
                }
                .into());
            }
        };
        let rate = Rate::new(count, period);
        let tail = tail.trim();
        if tail.is_empty() {
            return Ok(rate);
        }
        let mut words = tail.split_whitespace();
        let (Some("burst"), Some(burst), None) = (words.next(), words.next(), words.next()) else {
            return Err(ParseErrorKind::Trailing {
                input: owned(),
                rest: tail.to_owned(),
            }
            .into());
        };
        let burst = parse_number(input, burst, "burst size", "10/s burst 5")?;
        rate.try_burst(burst)
            .map_err(|_| ParseErrorKind::ZeroBurst { input: owned() }.into())
    }
}

/// Parses a whole number of a rate string, `what` and `example` naming it in errors.
fn parse_number(
    input: &str,
    number: &str,
    what: &'static str,
    example: &'static str,
) -> Result<u32, RateParseError> {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseErrorKind::NotANumber {
            input: input.to_owned(),
            number: number.to_owned(),
            what,
            example,
        }
        .into());
    }
    // Only digits: the one possible failure is overflow.
    number.parse().map_err(|_| {
        ParseErrorKind::TooLarge {
            input: input.to_owned(),
            number: number.to_owned(),
            what,
        }
        .into()
    })
}

/// The limits of one step: a concurrency limit, a rate limit, both or neither.
///
/// `#[step(concurrency = .., rate = .., burst = ..)]` compiles into a `const` of this type; it is
/// also what [`Limits`] overrides are combined into.
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
    /// [`Limits::set_concurrency`], which returns an error instead.
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

/// Enforces the [`StepLimits`] of one step for every run sharing a [`Limits`] registry.
#[derive(Debug)]
pub(crate) struct StepLimiter {
    limits: StepLimits,
    /// The concurrency slots, and how many there are.
    concurrency: Option<(Arc<Semaphore>, usize)>,
    rate: Option<RateState>,
}

/// The state of a rate limit: the generic cell rate algorithm, checked when a start happens.
#[derive(Debug)]
struct RateState {
    /// The spacing of starts.
    interval: Duration,
    /// How far ahead of its theoretical time a start may happen: `interval * (burst - 1)`.
    tolerance: Duration,
    /// The queue of waiters, served in order; its holder alone reads and moves the theoretical
    /// arrival time: when the next start would happen if starts were strictly spaced. `None`
    /// until the first start.
    tat: tokio::sync::Mutex<Option<Instant>>,
}

impl RateState {
    fn new(rate: Rate) -> Self {
        let interval = rate.interval();
        RateState {
            interval,
            tolerance: interval.saturating_mul(rate.burst - 1),
            tat: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits for the caller's turn in the queue, then until a start conforms to the rate, and
    /// records the start. The check is made with the clock read at the start, never with a time
    /// reserved earlier, so starts conform however late the executor polls the waiters.
    ///
    /// Cancel safe: a waiter that goes away, wherever it is in the queue, has reserved nothing.
    async fn start(&self) {
        let mut tat = self.tat.lock().await;
        loop {
            let now = Instant::now();
            match self.conforms(*tat, now) {
                Ok(next) => {
                    *tat = Some(next);
                    return;
                }
                Err(earliest) => tokio::time::sleep_until(earliest).await,
            }
        }
    }

    /// Whether a start at `now` conforms, given the theoretical arrival time `tat`: if so, the
    /// theoretical arrival time after it; if not, the earliest time one would.
    ///
    /// With `n` starts at `t_1 <= .. <= t_n`, each conforming, `t_n - t_1 >= (n - burst) *
    /// interval`: in any window `w`, at most `burst + w / interval` starts.
    fn conforms(&self, tat: Option<Instant>, now: Instant) -> Result<Instant, Instant> {
        let theoretical = tat.map_or(now, |t| t.max(now));
        match theoretical.checked_sub(self.tolerance) {
            Some(earliest) if earliest > now => Err(earliest),
            _ => Ok(saturating_add(theoretical, self.interval)),
        }
    }
}

impl StepLimiter {
    pub(crate) fn new(limits: StepLimits) -> Self {
        let concurrency = limits.concurrency.map(|n| {
            let permits = usize::try_from(n.get())
                .unwrap_or(usize::MAX)
                .min(Semaphore::MAX_PERMITS);
            (Arc::new(Semaphore::new(permits)), permits)
        });
        StepLimiter {
            limits,
            concurrency,
            rate: limits.rate.map(RateState::new),
        }
    }

    #[cfg(test)]
    /// The limits this limiter enforces.
    pub(crate) fn limits(&self) -> StepLimits {
        self.limits
    }

    /// Waits until an attempt may start under both limits; the attempt holds the returned permit
    /// until it ends.
    ///
    /// Takes a concurrency slot first (callers are served in order), then, holding it, waits for
    /// its turn under the rate (in order too) and starts when the rate allows.
    ///
    /// Cancel safe: dropping the future while it waits releases its concurrency slot and its place
    /// in the rate's queue; the callers behind it move up.
    pub(crate) async fn acquire(&self) -> LimitPermit {
        let permit = match &self.concurrency {
            // The semaphore is never closed, so `Err` cannot happen; it would mean no slot.
            Some((semaphore, _)) => semaphore.clone().acquire_owned().await.ok(),
            None => None,
        };
        if let Some(rate) = &self.rate {
            rate.start().await;
        }
        LimitPermit { _slot: permit }
    }

    #[cfg(test)]
    /// How many permits are held now; `None` without a concurrency limit.
    pub(crate) fn in_flight(&self) -> Option<usize> {
        self.concurrency
            .as_ref()
            .map(|(semaphore, permits)| permits.saturating_sub(semaphore.available_permits()))
    }

    #[cfg(test)]
    /// How many permits could be taken now without waiting for a slot; `None` without a
    /// concurrency limit.
    pub(crate) fn available(&self) -> Option<usize> {
        self.concurrency
            .as_ref()
            .map(|(semaphore, _)| semaphore.available_permits())
    }
}

/// The right of one attempt to run, from [`StepLimiter::acquire`]: dropping it frees the
/// attempt's concurrency slot.
#[derive(Debug)]
#[must_use = "the attempt's concurrency slot is released as soon as the permit is dropped"]
pub(crate) struct LimitPermit {
    _slot: Option<OwnedSemaphorePermit>,
}

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
            Some(limiter) if limiter.limits == effective => Some(Arc::clone(limiter)),
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

/// `t + d`, or as far after `t` as an `Instant` goes (at most about 30 years).
fn saturating_add(t: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    t.checked_add(d)
        .or_else(|| t.checked_add(d.min(FAR)))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

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

    fn parse_err(s: &str) -> String {
        s.parse::<Rate>().unwrap_err().to_string()
    }

    #[test]
    fn parses_units_and_whitespace() {
        let cases = [
            ("10/s", Rate::per_second(10)),
            ("5/m", Rate::per_minute(5)),
            ("100/h", Rate::per_hour(100)),
            ("10/sec", Rate::per_second(10)),
            ("10/second", Rate::per_second(10)),
            ("5/min", Rate::per_minute(5)),
            ("5/minute", Rate::per_minute(5)),
            ("100/hour", Rate::per_hour(100)),
            ("  10 / s  ", Rate::per_second(10)),
            ("10/s burst 5", Rate::per_second(10).burst(5)),
            (" 10/s   burst  5 ", Rate::per_second(10).burst(5)),
            ("10/s burst 1", Rate::per_second(10)),
            ("4294967295/h", Rate::per_hour(u32::MAX)),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<Rate>(), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let cases = [
            ("", "rate is empty; expected `<count>/<unit>`, as in `10/s`"),
            (
                "   ",
                "rate is empty; expected `<count>/<unit>`, as in `10/s`",
            ),
            ("10", "rate `10`: expected `<count>/<unit>`, as in `10/s`"),
            (
                "/s",
                "rate `/s`: the count before `/` is missing, as in `10/s`",
            ),
            (
                "10/x",
                "rate `10/x`: unknown unit `x`; expected `s`, `m` or `h`, as in `10/s`",
            ),
            (
                "10/S",
                "rate `10/S`: unknown unit `S`; expected `s`, `m` or `h`, as in `10/s`",
            ),
            (
                "10/",
                "rate `10/`: the unit after `/` is missing; expected `s`, `m` or `h`, as in `10/s`",
            ),
            (
                "0/s",
                "rate `0/s` is zero: at least 1 start per period must be allowed, as in `1/s`; to remove the limit, leave the rate out",
            ),
            (
                "ten/s",
                "rate `ten/s`: `ten` is not a whole number; expected a count, as in `10/s`",
            ),
            (
                "1.5/s",
                "rate `1.5/s`: `1.5` is not a whole number; expected a count, as in `10/s`",
            ),
            (
                "-1/s",
                "rate `-1/s`: `-1` is not a whole number; expected a count, as in `10/s`",
            ),
            (
                "4294967296/s",
                "rate `4294967296/s`: count `4294967296` is too large; the most is 4294967295",
            ),
            (
                "10/s burst 0",
                "rate `10/s burst 0` has a burst of 0: the burst is how many attempts may start at once, at least 1",
            ),
            (
                "10/s burst many",
                "rate `10/s burst many`: `many` is not a whole number; expected a burst size, as in `10/s burst 5`",
            ),
            (
                "10/s burst",
                "rate `10/s burst`: unexpected `burst` after the unit; expected nothing or `burst <n>`, as in `10/s burst 5`",
            ),
            (
                "10/s x",
                "rate `10/s x`: unexpected `x` after the unit; expected nothing or `burst <n>`, as in `10/s burst 5`",
            ),
            (
                "10/s burst 5 6",
                "rate `10/s burst 5 6`: unexpected `burst 5 6` after the unit; expected nothing or `burst <n>`, as in `10/s burst 5`",
            ),
            (
                "10/s/m",
                "rate `10/s/m`: unknown unit `s/m`; expected `s`, `m` or `h`, as in `10/s`",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_err(input), expected, "{input:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for rate in [
            Rate::per_second(10),
            Rate::per_minute(5),
            Rate::per_hour(100),
            Rate::per_second(10).burst(5),
            Rate::new(7, Duration::from_secs(60)).burst(2),
        ] {
            let text = rate.to_string();
            assert_eq!(text.parse::<Rate>(), Ok(rate), "{text}");
        }
        assert_eq!(Rate::per_second(10).to_string(), "10/s");
        assert_eq!(Rate::per_hour(100).burst(5).to_string(), "100/h burst 5");
        assert_eq!(
            Rate::new(3, Duration::from_millis(500)).to_string(),
            "3 per 500ms"
        );
    }

    #[test]
    fn constructors() {
        const RATE: Rate = Rate::per_minute(30).burst(3);
        assert_eq!(RATE.count(), 30);
        assert_eq!(RATE.period(), Duration::from_secs(60));
        assert_eq!(RATE.burst_size(), 3);
        assert_eq!(RATE.interval(), Duration::from_secs(2));
        // Rounded up: never faster than asked.
        assert_eq!(
            Rate::per_second(3).interval(),
            Duration::from_nanos(333_333_334)
        );
        assert_eq!(
            Rate::try_new(0, Duration::from_secs(1)),
            Err(LimitError::ZeroCount {
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(
            Rate::try_new(5, Duration::ZERO).unwrap_err().to_string(),
            "rate of 5 per 0s has a zero period: the period must be longer than zero"
        );
        assert_eq!(Rate::per_second(1).try_burst(0), Err(LimitError::ZeroBurst));
        assert!(std::panic::catch_unwind(|| Rate::per_second(0)).is_err());
        assert!(std::panic::catch_unwind(|| StepLimits::new(Some(0), None)).is_err());

        const LIMITS: StepLimits = StepLimits::new(Some(4), Some(Rate::per_second(10)));
        assert_eq!(LIMITS.concurrency(), Some(4));
        assert_eq!(LIMITS.rate(), Some(Rate::per_second(10)));
        assert!(!LIMITS.is_none());
        assert!(StepLimits::default().is_none());
        assert_eq!(StepLimits::NONE.to_string(), "no limits");
        assert_eq!(CONCURRENCY_2.to_string(), "concurrency 2");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrency_is_never_exceeded() {
        let limiter = Arc::new(StepLimiter::new(StepLimits::NONE.with_concurrency(3)));
        let running = Arc::new(AtomicUsize::new(0));
        let max = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (limiter, running, max) = (limiter.clone(), running.clone(), max.clone());
                tokio::spawn(async move {
                    let _permit = limiter.acquire().await;
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(now, Ordering::SeqCst);
                    assert!(limiter.in_flight().unwrap() <= 3);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(max.load(Ordering::SeqCst), 3);
        assert_eq!(limiter.in_flight(), Some(0));
        assert_eq!(limiter.available(), Some(3));
    }

    /// Acquires `n` permits one after the other, each held for `hold`; returns when each started,
    /// relative to the call.
    async fn start_times(limiter: &StepLimiter, n: usize) -> Vec<Duration> {
        let t0 = Instant::now();
        let mut times = Vec::new();
        for _ in 0..n {
            let _permit = limiter.acquire().await;
            times.push(t0.elapsed());
        }
        times
    }

    fn millis(ms: &[u64]) -> Vec<Duration> {
        ms.iter().copied().map(Duration::from_millis).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn rate_spaces_starts() {
        let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(10)));
        assert_eq!(limiter.in_flight(), None);
        let expected: Vec<u64> = (0..20).map(|i| i * 100).collect();
        assert_eq!(start_times(&limiter, 20).await, millis(&expected));

        // After a quiet spell longer than the interval, the next start is immediate again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(start_times(&limiter, 2).await, millis(&[0, 100]));
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_spaced() {
        let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(10).burst(5)));
        assert_eq!(
            start_times(&limiter, 8).await,
            millis(&[0, 0, 0, 0, 0, 100, 200, 300])
        );
        // A quiet spell of 250ms earns back 2.5 starts: 2 at once, then spaced.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(start_times(&limiter, 4).await, millis(&[0, 0, 50, 150]));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_are_served_in_order() {
        let limiter = Arc::new(StepLimiter::new(
            StepLimits::NONE.with_rate(Rate::per_second(10)),
        ));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let _permit = limiter.acquire().await;
                    t0.elapsed()
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        let expected: Vec<u64> = (0..10).map(|i| i * 100).collect();
        assert_eq!(times, millis(&expected));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_applies_while_holding_the_slot() {
        // One slot, 10/s: each attempt runs 30ms, yet starts stay 100ms apart, and the slot is
        // taken before waiting for the rate.
        let limiter = Arc::new(StepLimiter::new(
            StepLimits::NONE
                .with_concurrency(1)
                .with_rate(Rate::per_second(10)),
        ));
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move {
                    let _permit = limiter.acquire().await;
                    let started = t0.elapsed();
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    started
                })
            })
            .collect();
        let mut times = Vec::new();
        for task in tasks {
            times.push(task.await.unwrap());
        }
        assert_eq!(times, millis(&[0, 100, 200, 300, 400]));
        assert_eq!(limiter.available(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_leak_nothing() {
        // Waiting for a concurrency slot.
        let limiter = StepLimiter::new(CONCURRENCY_2);
        let a = limiter.acquire().await;
        let b = limiter.acquire().await;
        assert_eq!(limiter.acquire().now_or_never().map(drop), None);
        assert_eq!(
            (limiter.in_flight(), limiter.available()),
            (Some(2), Some(0))
        );
        drop(a);
        assert_eq!(limiter.available(), Some(1));
        let c = limiter.acquire().now_or_never().expect("a slot is free");
        drop((b, c));
        assert_eq!(limiter.available(), Some(2));

        // Waiting for the rate while holding a slot: the slot is released.
        let limiter = StepLimiter::new(
            StepLimits::NONE
                .with_concurrency(1)
                .with_rate(Rate::per_second(1)),
        );
        drop(limiter.acquire().await);
        assert_eq!(limiter.acquire().now_or_never().map(drop), None);
        assert_eq!(limiter.available(), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_rate_waiters_give_their_place_back() {
        let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(10)));
        let t0 = Instant::now();
        drop(limiter.acquire().await);

        // The last waiter going away...
        assert_eq!(limiter.acquire().now_or_never().map(drop), None);
        // ...and one in the middle of the queue: those behind it move up.
        let mut first = Box::pin(limiter.acquire());
        let mut middle = Box::pin(limiter.acquire());
        let mut last = Box::pin(limiter.acquire());
        for waiter in [&mut first, &mut middle, &mut last] {
            assert!(waiter.now_or_never().is_none());
        }
        drop(middle);
        let _permit = first.await;
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        let _permit = last.await;
        assert_eq!(t0.elapsed(), Duration::from_millis(200));
        let _permit = limiter.acquire().await;
        assert_eq!(t0.elapsed(), Duration::from_millis(300));
    }

    #[test]
    fn a_start_conforms_within_the_burst_and_no_earlier() {
        let rate = RateState::new(Rate::per_second(10).burst(3));
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // The first start sets the theoretical arrival time one interval on.
        assert_eq!(rate.conforms(None, t0), Ok(at(100)));
        // Up to `tolerance` (200ms) ahead of it conforms, and moves it on by one interval.
        assert_eq!(rate.conforms(Some(at(200)), t0), Ok(at(300)));
        assert_eq!(rate.conforms(Some(at(300)), t0), Err(at(100)));
        assert_eq!(rate.conforms(Some(at(300)), at(100)), Ok(at(400)));
        // After a quiet spell, the time of the start counts, not the old theoretical one.
        assert_eq!(rate.conforms(Some(at(300)), at(5000)), Ok(at(5100)));
    }

    /// The most of `starts` (sorted) that fall in any closed window `width` long.
    fn most_in_any_window(starts: &[std::time::Instant], width: Duration) -> usize {
        (0..starts.len())
            .map(|i| {
                starts[i..]
                    .iter()
                    .take_while(|t| t.duration_since(starts[i]) <= width)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// On the real clock, a stall of the executor (here a blocking sleep inside one task of a
    /// current-thread runtime) must not release at once every waiter whose time passed during it:
    /// in any window `w`, at most `burst + w / interval` starts.
    #[test]
    fn a_stalled_executor_does_not_release_a_crowd() {
        const WAITERS: usize = 100;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        // 1000/s burst 5: any window of 5ms holds at most 5 + 5 starts.
        let limiter = Arc::new(StepLimiter::new(
            StepLimits::NONE.with_rate(Rate::per_second(1000).burst(5)),
        ));
        let starts = Arc::new(Mutex::new(Vec::new()));
        runtime.block_on(async {
            let tasks: Vec<_> = (0..WAITERS)
                .map(|i| {
                    let (limiter, starts) = (limiter.clone(), starts.clone());
                    tokio::spawn(async move {
                        let _permit = limiter.acquire().await;
                        lock(&starts).push(std::time::Instant::now());
                        if i == 10 {
                            // Blocks the only thread: every timer due meanwhile fires late.
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        let mut starts = lock(&starts).clone();
        assert_eq!(starts.len(), WAITERS);
        starts.sort();
        // The bound is 10. The slack of 5 absorbs a start measured late because the OS
        // preempted this thread between the start and its measurement; a crowd released after
        // the stall is about 50.
        let most = most_in_any_window(&starts, Duration::from_millis(5));
        assert!(most <= 15, "{most} starts within 5ms, at most 10 allowed");
    }

    /// On the real clock, a waiter in the middle of the queue that goes away gives its place
    /// back: the waiter behind it starts one interval earlier.
    #[test]
    fn a_cancelled_waiter_in_the_middle_gives_its_place_back_on_the_real_clock() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            // 2/s: starts 500ms apart.
            let limiter = StepLimiter::new(StepLimits::NONE.with_rate(Rate::per_second(2)));
            let t0 = std::time::Instant::now();
            drop(limiter.acquire().await);
            let mut first = Box::pin(limiter.acquire());
            let mut middle = Box::pin(limiter.acquire());
            let mut last = Box::pin(limiter.acquire());
            for waiter in [&mut first, &mut middle, &mut last] {
                assert!(waiter.now_or_never().is_none());
            }
            drop(middle);
            let (first, last) = tokio::join!(
                async {
                    drop(first.await);
                    t0.elapsed()
                },
                async {
                    drop(last.await);
                    t0.elapsed()
                },
            );
            // `first` at 500ms, `last` in `middle`'s place at 1s, not 1.5s. The upper bounds
            // leave 400ms for a loaded machine.
            assert!(first >= Duration::from_millis(500), "{first:?}");
            assert!(first < Duration::from_millis(900), "{first:?}");
            assert!(last >= Duration::from_millis(1000), "{last:?}");
            assert!(last < Duration::from_millis(1400), "{last:?}");
        });
    }

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
