//! Text for people: times in UTC, durations, step tallies, and the store's strings made safe for
//! a terminal and cut to a width.

use std::time::Duration;

use jobgraph::store::StepTally;
use unicode_width::{UnicodeWidthChar as _, UnicodeWidthStr as _};

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` in UTC (no dependency for one conversion).
pub(crate) fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A duration as a person reads it: `250 ms`, `1.25 s`, `2 min 03 s`, `1 h 02 min`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.2} s", d.as_secs_f64()),
        60_000..3_600_000 => format!("{} min {:02} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {:02} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// A run's step tallies: `3/5 completed`, then each other non-zero state.
pub(crate) fn tally(t: &StepTally) -> String {
    let mut out = format!("{}/{} completed", t.completed, t.total());
    for (n, what) in [
        (t.failed, "failed"),
        (t.skipped, "skipped"),
        (t.cancelled, "cancelled"),
    ] {
        if n > 0 {
            out.push_str(&format!(", {n} {what}"));
        }
    }
    out
}

/// `s` safe to print on a terminal, on one line: line breaks and tabs become spaces, other
/// control characters (escape sequences could rewrite the operator's screen) `�`.
pub(crate) fn clean(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// The width of `s` in terminal cells.
pub(crate) fn width(s: &str) -> usize {
    s.width()
}

/// `s` cut to at most `max` terminal cells, ending with `…` if it was cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.width() <= max {
        return s.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > max {
            break;
        }
        used += w;
        out.push(c);
    }
    if max > 0 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_735_689_599_999), "2024-12-31 23:59:59");
        assert_eq!(utc(1_767_225_600_000 + 3_723_000), "2026-01-01 01:02:03");
        assert_eq!(utc(-1), "1969-12-31 23:59:59");
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(duration(ms(0)), "0 ms");
        assert_eq!(duration(ms(250)), "250 ms");
        assert_eq!(duration(ms(1_250)), "1.25 s");
        assert_eq!(duration(ms(123_000)), "2 min 03 s");
        assert_eq!(duration(ms(3_720_000)), "1 h 02 min");
    }

    #[test]
    fn tallies() {
        let mut t = StepTally {
            completed: 3,
            pending: 1,
            ..StepTally::default()
        };
        assert_eq!(tally(&t), "3/4 completed");
        t.failed = 1;
        t.skipped = 2;
        assert_eq!(tally(&t), "3/7 completed, 1 failed, 2 skipped");
    }

    #[test]
    fn cleaning_and_cutting() {
        assert_eq!(clean("a\nb\tc\u{1b}[31m"), "a b c\u{fffd}[31m");
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("日本語です", 5), "日本…");
        assert_eq!(width(&cut("日本語です", 5)), 5);
        assert_eq!(cut("abc", 0), "");
    }
}
