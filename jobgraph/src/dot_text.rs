//! Text inside a DOT quoted string: written once for both crates. The runtime's reports and
//! stored runs call [`dot_text`], and the `#[job]` macro includes this very file with `#[path]`
//! (`jobgraph-macros/src/codegen/dot.rs`) to write `Job::DOT`, so a job's name reads the same in
//! both. Hence this file uses `std` alone and names nothing of either crate.

use std::fmt::Write as _;

/// The most characters of a user's text (a step's error, the job's name or id) that
/// [`JobReport::dot`] writes in one quoted string, and [`JobReport::mermaid_gantt`] in its title.
/// Escaped for DOT, a character takes at most 7 bytes (`\\u{9f}` for a control character), so
/// the longest tooltip stays far below Graphviz's limit of 16,383 bytes for a quoted string.
pub(crate) const TEXT_MAX_CHARS: usize = 2_000;

/// `s` as the inside of a DOT quoted string that Graphviz reads as an escString (a label or
/// tooltip): `"` and `\` escaped, a line break (`\n`, `\r\n` or `\r`) as DOT's `\n`, a tab as a
/// space, any other control character as the text `\u{..}`, and at most
/// [`TEXT_MAX_CHARS`] characters, then `… (N characters)` if it was longer.
///
/// `Job::DOT` (the macro includes this file with `#[path]`), a run's report and a stored run's
/// DOT (`store/render.rs`) all escape with it.
pub(crate) fn dot_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(TEXT_MAX_CHARS) + 2);
    let mut chars = s.chars().peekable();
    let mut written = 0;
    while let Some(c) = chars.next() {
        if written == TEXT_MAX_CHARS {
            let _ = write!(out, "… ({} characters)", s.chars().count());
            break;
        }
        written += 1;
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\r' if chars.peek() == Some(&'\n') => written -= 1,
            '\n' | '\r' => out.push_str("\\n"),
            '\t' => out.push(' '),
            c if c.is_control() => {
                let _ = write!(out, "\\\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}
