//! [`Rate`]: at most a count of starts per period, with a burst; built by constants or parsed
//! from the attribute's syntax.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

use super::ZeroLimit;
use super::grammar::{self, RateSyntax, RateSyntaxError, UNITS};

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
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
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
            Err(ZeroLimit::RateCount { .. }) => {
                panic!("Rate: the count is zero; at least 1 start per period must be allowed")
            }
            Err(_) => panic!("Rate: the period is zero; it must be longer than zero"),
        }
    }

    /// `count` starts per `period`, strictly spaced (burst 1), or an error if either is zero.
    pub const fn try_new(count: u32, period: Duration) -> Result<Self, ZeroLimit> {
        let Some(count) = NonZeroU32::new(count) else {
            return Err(ZeroLimit::RateCount { period });
        };
        if period.is_zero() {
            return Err(ZeroLimit::RatePeriod { count: count.get() });
        }
        Ok(Rate {
            count,
            period,
            burst: NonZeroU32::MIN,
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
    pub const fn try_burst(self, n: u32) -> Result<Self, ZeroLimit> {
        match NonZeroU32::new(n) {
            Some(burst) => Ok(Rate { burst, ..self }),
            None => Err(ZeroLimit::Burst),
        }
    }

    /// How many starts each [`period`](Rate::period) allows.
    pub const fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period the [`count`](Rate::count) is given for.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// How many starts may happen at once after a quiet spell; 1 when starts are strictly spaced.
    pub const fn burst_size(&self) -> u32 {
        self.burst.get()
    }

    /// The spacing of starts: `period / count`, rounded up to the nanosecond so that the rate is
    /// never exceeded.
    pub fn interval(&self) -> Duration {
        let nanos = self
            .period
            .as_nanos()
            .div_ceil(u128::from(self.count.get()));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

/// Prints `10/s`, `5/m` or `100/h`, followed by ` burst 5` when the burst is above 1: the format
/// [`FromStr`] reads. Any other period is printed as `3 per 500ms`, which does not parse back.
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = UNITS
            .iter()
            .find(|unit| Duration::from_secs(unit.secs) == self.period);
        match unit {
            Some(unit) => write!(f, "{}/{}", self.count, unit.symbol)?,
            None => write!(f, "{} per {:?}", self.count, self.period)?,
        }
        if self.burst.get() > 1 {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

/// The error of parsing a [`Rate`]: says what is wrong and what is accepted. The `#[job]` macro
/// reports the same message on a malformed `#[step(rate = "...")]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
pub struct RateParseError(#[from] RateSyntaxError);

/// Reads `<count>/<unit>`, optionally followed by `burst <n>`: `10/s`, `5/m`, `100/h`,
/// `10/s burst 5`, the syntax of `#[step(rate = "...")]`.
///
/// The unit is `s`, `m` or `h`; `sec`, `second`, `min`, `minute` and `hour` are accepted too.
/// Whitespace around the whole string and around `/` is ignored. The count and the burst are
/// whole numbers of at least 1.
impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let RateSyntax {
            count,
            period_secs,
            burst,
        } = grammar::parse(s)?;
        Ok(Rate {
            count,
            period: Duration::from_secs(period_secs),
            burst: burst.unwrap_or(NonZeroU32::MIN),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grammar has its own tests (`grammar.rs`); these check that `Rate` reads what it
    /// says.
    #[test]
    fn parses_with_the_grammar() {
        let cases = [
            ("10/s", Rate::per_second(10)),
            ("5/minute", Rate::per_minute(5)),
            (" 100 / h ", Rate::per_hour(100)),
            ("10/s burst 5", Rate::per_second(10).burst(5)),
            ("10/s burst 1", Rate::per_second(10)),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<Rate>(), Ok(expected), "{input:?}");
        }
        assert_eq!(
            "0/s".parse::<Rate>().unwrap_err().to_string(),
            grammar::parse("0/s").unwrap_err().to_string()
        );
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
            Err(ZeroLimit::RateCount {
                period: Duration::from_secs(1)
            })
        );
        assert_eq!(
            Rate::try_new(5, Duration::ZERO).unwrap_err().to_string(),
            "rate of 5 per 0s has a zero period: the period must be longer than zero"
        );
        assert_eq!(Rate::per_second(1).try_burst(0), Err(ZeroLimit::Burst));
        assert!(std::panic::catch_unwind(|| Rate::per_second(0)).is_err());
    }
}
