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

/// The escaping of DOT text, written once for both crates: the very file the runtime escapes
/// its reports' and stored runs' DOT with.
#[path = "../../../jobgraph/src/dot_text.rs"]
mod dot_text;

/// `s` as a DOT quoted string, by the runtime's rules, so `Job::DOT` and a run's DOT name the job
/// alike.
fn quoted(s: &str) -> String {
    format!("\"{}\"", dot_text::dot_text(s))
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
