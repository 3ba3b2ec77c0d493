//! The grammar of a rate: `<count>/<unit>`, optionally followed by `burst <n>` (`10/s`, `5/m`,
//! `100/h`, `10/s burst 5`).
//!
//! Written once for both crates. The runtime parses `Rate` from a string with it
//! (a rate read from configuration), and the `#[job]` macro includes this very file with
//! `#[path]` (`jobgraph-macros/src/parse/mod.rs`) to check `#[step(rate = "...")]` at compile
//! time, so a rate reads the same, and is refused with the same message, in both places. Hence
//! this file uses `std` alone and names nothing of either crate; its tests run in both.
//!
//! A count and a burst are at least 1 by their type, [`NonZeroU32`]: a zero is refused here,
//! with a message on the string, and cannot reach the rest of either crate.

use std::fmt;
use std::num::NonZeroU32;

/// A rate as written: `count` starts per `period_secs` seconds, with a burst if one was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateSyntax {
    /// How many starts each period allows.
    pub(crate) count: NonZeroU32,
    /// The period, in seconds: 1, 60 or 3600.
    pub(crate) period_secs: u64,
    /// How many starts may happen at once, if `burst <n>` was given.
    pub(crate) burst: Option<NonZeroU32>,
}

/// A unit a rate may be given in.
pub(crate) struct Unit {
    /// The short name, which `Rate`'s `Display` prints.
    pub(crate) symbol: &'static str,
    /// The other names accepted.
    pub(crate) names: &'static [&'static str],
    /// The period, in seconds.
    pub(crate) secs: u64,
}

/// Every unit, shortest period first.
pub(crate) const UNITS: [Unit; 3] = [
    Unit {
        symbol: "s",
        names: &["sec", "second"],
        secs: 1,
    },
    Unit {
        symbol: "m",
        names: &["min", "minute"],
        secs: 60,
    },
    Unit {
        symbol: "h",
        names: &["hour"],
        secs: 3600,
    },
];

/// Reads `<count>/<unit>`, optionally followed by `burst <n>`.
///
/// The unit is `s`, `m` or `h`; `sec`, `second`, `min`, `minute` and `hour` are accepted too.
/// Whitespace around the whole string and around `/` is ignored. The count and the burst are
/// whole numbers of at least 1.
pub(crate) fn parse(text: &str) -> Result<RateSyntax, RateSyntaxError> {
    let input = text.trim();
    let error = |kind| RateSyntaxError {
        input: input.to_owned(),
        kind,
    };
    if input.is_empty() {
        return Err(error(ErrorKind::Empty));
    }
    let Some((count, rest)) = input.split_once('/') else {
        return Err(error(ErrorKind::NoSlash));
    };
    let count = count.trim_end();
    if count.is_empty() {
        return Err(error(ErrorKind::MissingCount));
    }
    let count = whole_number(count, Number::Count).map_err(error)?;
    let count = NonZeroU32::new(count).ok_or_else(|| error(ErrorKind::ZeroCount))?;

    let rest = rest.trim_start();
    let (unit, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    if unit.is_empty() {
        return Err(error(ErrorKind::MissingUnit));
    }
    let Some(unit) = UNITS
        .iter()
        .find(|u| u.symbol == unit || u.names.contains(&unit))
    else {
        return Err(error(ErrorKind::UnknownUnit(unit.to_owned())));
    };
    let mut rate = RateSyntax {
        count,
        period_secs: unit.secs,
        burst: None,
    };

    let tail = tail.trim();
    if tail.is_empty() {
        return Ok(rate);
    }
    let mut words = tail.split_whitespace();
    let (Some("burst"), Some(burst), None) = (words.next(), words.next(), words.next()) else {
        return Err(error(ErrorKind::Trailing(tail.to_owned())));
    };
    let burst = whole_number(burst, Number::Burst).map_err(error)?;
    rate.burst = Some(NonZeroU32::new(burst).ok_or_else(|| error(ErrorKind::ZeroBurst))?);
    Ok(rate)
}

/// Which number of a rate string is read, for the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Number {
    Count,
    Burst,
}

impl Number {
    /// What the number is called.
    fn what(self) -> &'static str {
        match self {
            Number::Count => "count",
            Number::Burst => "burst size",
        }
    }

    /// A rate string that gives it.
    fn example(self) -> &'static str {
        match self {
            Number::Count => "10/s",
            Number::Burst => "10/s burst 5",
        }
    }
}

/// A whole number of a rate string: digits only, at most `u32::MAX`.
fn whole_number(number: &str, which: Number) -> Result<u32, ErrorKind> {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ErrorKind::NotANumber(number.to_owned(), which));
    }
    // Only digits: the one possible failure is overflow.
    number
        .parse()
        .map_err(|_| ErrorKind::TooLarge(number.to_owned(), which))
}

/// What is wrong with a rate string: its `Display` says what, and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RateSyntaxError {
    /// The string, trimmed.
    input: String,
    kind: ErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ErrorKind {
    Empty,
    NoSlash,
    MissingCount,
    NotANumber(String, Number),
    TooLarge(String, Number),
    ZeroCount,
    MissingUnit,
    UnknownUnit(String),
    ZeroBurst,
    Trailing(String),
}

impl fmt::Display for RateSyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let input = &self.input;
        match &self.kind {
            ErrorKind::Empty => write!(f, "rate is empty; expected `<count>/<unit>`, as in `10/s`"),
            ErrorKind::NoSlash => {
                write!(f, "rate `{input}`: expected `<count>/<unit>`, as in `10/s`")
            }
            ErrorKind::MissingCount => write!(
                f,
                "rate `{input}`: the count before `/` is missing, as in `10/s`"
            ),
            ErrorKind::NotANumber(number, which) => write!(
                f,
                "rate `{input}`: `{number}` is not a whole number; expected a {}, as in `{}`",
                which.what(),
                which.example()
            ),
            ErrorKind::TooLarge(number, which) => write!(
                f,
                "rate `{input}`: {} `{number}` is too large; the most is {}",
                which.what(),
                u32::MAX
            ),
            ErrorKind::ZeroCount => write!(
                f,
                "rate `{input}` is zero: at least 1 start per period must be allowed, as in \
                 `1/s`; to remove the limit, leave the rate out"
            ),
            ErrorKind::MissingUnit => write!(
                f,
                "rate `{input}`: the unit after `/` is missing; expected `s`, `m` or `h`, as in \
                 `10/s`"
            ),
            ErrorKind::UnknownUnit(unit) => write!(
                f,
                "rate `{input}`: unknown unit `{unit}`; expected `s`, `m` or `h`, as in `10/s`"
            ),
            ErrorKind::ZeroBurst => write!(
                f,
                "rate `{input}` has a burst of 0: the burst is how many attempts may start at \
                 once, at least 1"
            ),
            ErrorKind::Trailing(rest) => write!(
                f,
                "rate `{input}`: unexpected `{rest}` after the unit; expected nothing or \
                 `burst <n>`, as in `10/s burst 5`"
            ),
        }
    }
}

impl std::error::Error for RateSyntaxError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, period_secs: u64, burst: Option<u32>) -> RateSyntax {
        RateSyntax {
            count: NonZeroU32::new(count).unwrap(),
            period_secs,
            burst: burst.map(|b| NonZeroU32::new(b).unwrap()),
        }
    }

    #[test]
    fn parses_units_and_whitespace() {
        let cases = [
            ("10/s", rate(10, 1, None)),
            ("5/m", rate(5, 60, None)),
            ("100/h", rate(100, 3600, None)),
            ("10/sec", rate(10, 1, None)),
            ("10/second", rate(10, 1, None)),
            ("5/min", rate(5, 60, None)),
            ("5/minute", rate(5, 60, None)),
            ("100/hour", rate(100, 3600, None)),
            ("  10 / s  ", rate(10, 1, None)),
            ("10/s burst 5", rate(10, 1, Some(5))),
            (" 10/s   burst  5 ", rate(10, 1, Some(5))),
            ("10/s burst 1", rate(10, 1, Some(1))),
            ("4294967295/h", rate(u32::MAX, 3600, None)),
        ];
        for (input, expected) in cases {
            assert_eq!(parse(input), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
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
                "10/s burst 4294967296",
                "rate `10/s burst 4294967296`: burst size `4294967296` is too large; the most is 4294967295",
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
            let error = parse(input).expect_err(input);
            assert_eq!(error.to_string(), expected, "{input:?}");
        }
    }

    #[test]
    fn every_unit_is_read_by_its_symbol_and_its_names() {
        for unit in &UNITS {
            for name in std::iter::once(&unit.symbol).chain(unit.names) {
                assert_eq!(
                    parse(&format!("3/{name}")).map(|r| r.period_secs),
                    Ok(unit.secs),
                    "{name}"
                );
            }
        }
    }
}
