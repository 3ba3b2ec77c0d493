//! The Graphviz text of a job's graph, built at compile time.

use std::fmt::Write as _;

use crate::model::Job;
use crate::validate::Graph;

/// `digraph` text: a box per step, a solid edge per data dependency, a dashed one per `after`.
pub(crate) fn dot(job: &Job<'_>, graph: &Graph) -> String {
    let mut out = String::new();
    let name = |i: usize| quoted(&job.steps[i].name);
    let _ = writeln!(out, "digraph {} {{", quoted(&job.name));
    out.push_str("    rankdir=TB;\n");
    out.push_str("    node [shape=box, style=rounded, fontname=\"Helvetica\"];\n");
    for &i in &graph.topo {
        let _ = writeln!(out, "    {};", name(i));
    }
    for &child in &graph.topo {
        for &parent in &graph.parents[child] {
            let _ = writeln!(out, "    {} -> {};", name(parent), name(child));
        }
        for &parent in &graph.after[child] {
            let _ = writeln!(
                out,
                "    {} -> {} [style=dashed];",
                name(parent),
                name(child)
            );
        }
    }
    out.push_str("}\n");
    out
}

/// The most characters of the job's name written into the DOT text; Graphviz rejects a quoted
/// string of 16,384 bytes or more.
const MAX_CHARS: usize = 2_000;

/// `s` as a DOT quoted string, by the rules of the runtime's `dot_text`
/// (`jobgraph/src/report.rs`), so `Job::DOT` and a run's DOT name the job alike: `"` and `\`
/// escaped, a line break as `\n`, a tab as a space, other control characters (NUL included) as
/// the text `\u{..}`, at most [`MAX_CHARS`] characters and then `… (N characters)`.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_CHARS) + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    let mut written = 0;
    while let Some(c) = chars.next() {
        if written == MAX_CHARS {
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
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn quoted_escapes_quotes_backslashes_and_control_characters() {
        assert_eq!(quoted("a\"b\\"), r#""a\"b\\""#);
        assert_eq!(quoted("x\0y\r\nz\tw"), r#""x\\u{0}y\nz w""#);
    }

    #[test]
    fn quoted_cuts_long_names() {
        let q = quoted(&"n".repeat(20_000));
        assert!(q.len() < 16_384, "{}", q.len());
        assert!(
            q.ends_with("n… (20000 characters)\""),
            "{}",
            &q[q.len() - 40..]
        );
    }
}
