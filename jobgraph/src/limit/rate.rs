//! [`Rate`]: at most a count of starts per period, with a burst; built by constants or parsed
//! from the attribute's syntax.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::LimitError;

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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
