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

/// A DOT quoted string.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
