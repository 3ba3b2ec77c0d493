//! Checks on the graph: every named step exists, no step is named twice, no cycle.

use proc_macro2::Span;
use syn::Ident;

use crate::error::{Ctxt, did_you_mean};
use crate::model::Job;

/// The sound graph of a job: edges by step index, and an order that puts parents first.
pub(crate) struct Graph {
    /// Per step, the steps whose outputs it takes, in parameter order.
    pub(crate) parents: Vec<Vec<usize>>,
    /// Per step, the steps it runs after without their outputs.
    pub(crate) after: Vec<Vec<usize>>,
    /// Per step, every step it waits for (parents and `after`), ascending.
    pub(crate) deps: Vec<Vec<usize>>,
    /// Every step, each after all the steps it waits for; ties keep declaration order.
    pub(crate) topo: Vec<usize>,
}

/// One edge as written: `child` waits for `parent`, named by `ident` in `child`'s signature.
struct Edge<'a> {
    parent: usize,
    ident: &'a Ident,
    data: bool,
}

pub(super) fn build(job: &Job<'_>, cx: &mut Ctxt) -> Option<Graph> {
    let names: Vec<String> = job.steps.iter().map(|s| s.name.clone()).collect();
    let mut sound = true;
    let mut edges: Vec<Vec<Edge<'_>>> = Vec::with_capacity(job.steps.len());
    for step in &job.steps {
        let mut mine: Vec<Edge<'_>> = Vec::new();
        let named = step
            .parents()
            .map(|ident| (ident, true))
            .chain(step.after.iter().map(|ident| (ident, false)));
        for (ident, data) in named {
            let Some(parent) = job.step_index(ident) else {
                sound = false;
                cx.error_spanned_by(ident, unknown(job, step.ident, ident, data, &names));
                continue;
            };
            if job.steps[parent].ident == step.ident {
                sound = false;
                cx.error_spanned_by(
                    ident,
                    format_args!("step `{ident}` cannot depend on itself"),
                );
                continue;
            }
            if let Some(first) = mine.iter().find(|e| e.parent == parent) {
                sound = false;
                let how = if first.data {
                    format!("it already takes its output through the parameter `{ident}`")
                } else {
                    "it is already listed in `after(..)`".to_owned()
                };
                cx.error_spanned_by(
                    ident,
                    format_args!("step `{}` names `{ident}` twice: {how}", step.ident),
                );
                continue;
            }
            mine.push(Edge {
                parent,
                ident,
                data,
            });
        }
        edges.push(mine);
    }
    let topo = order(job, &edges, cx);
    if !sound || topo.len() != job.steps.len() {
        return None;
    }
    let pick = |data: bool| -> Vec<Vec<usize>> {
        edges
            .iter()
            .map(|e| {
                e.iter()
                    .filter(|e| e.data == data)
                    .map(|e| e.parent)
                    .collect()
            })
            .collect()
    };
    let deps = edges
        .iter()
        .map(|e| {
            let mut d: Vec<usize> = e.iter().map(|e| e.parent).collect();
            d.sort_unstable();
            d
        })
        .collect();
    Some(Graph {
        parents: pick(true),
        after: pick(false),
        deps,
        topo,
    })
}

fn unknown(job: &Job<'_>, step: &Ident, ident: &Ident, data: bool, names: &[String]) -> String {
    let what = if data {
        format!(
            "step `{step}` takes the output of `{ident}`, but `impl {}` has no step `{ident}`",
            job.ident
        )
    } else {
        format!(
            "step `{step}` runs after `{ident}`, but `impl {}` has no step `{ident}`",
            job.ident
        )
    };
    let name = ident.to_string();
    match did_you_mean(&name, names.iter().map(String::as_str)) {
        Some(close) => format!("{what}; did you mean `{close}`?"),
        None if data && job.methods.iter().any(|m| m.sig.ident == *ident) => {
            format!("{what}: the method `{ident}` is not marked `#[step]`")
        }
        None if data => match &job.resources {
            Some(resources) => format!(
                "{what}; a parameter names the step whose output it takes (the steps are {}), \
                 or is a `&StepContext`, or takes the job's resources as `{ident}: &{}`",
                list(names),
                crate::model::type_text(resources)
            ),
            None => format!(
                "{what}; a parameter names the step whose output it takes (the steps are {}), \
                 or is a `&StepContext`, or takes the job's resources (declare them with \
                 `#[job(resources = T)]`)",
                list(names)
            ),
        },
        None => format!("{what} (the steps are {})", list(names)),
    }
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kahn's algorithm, preferring declaration order. Steps on a cycle never become ready: each
/// cycle among them is reported with its whole path and a span on each of its edges.
fn order(job: &Job<'_>, edges: &[Vec<Edge<'_>>], cx: &mut Ctxt) -> Vec<usize> {
    let n = edges.len();
    let mut placed = vec![false; n];
    let mut topo = Vec::with_capacity(n);
    // Steps given up on: on a reported cycle, or downstream of one.
    let mut blocked = vec![false; n];
    loop {
        // Place every step whose dependencies are all placed, repeatedly, in declaration order.
        let mut progress = true;
        while progress {
            progress = false;
            for i in 0..n {
                if !placed[i] && !blocked[i] && edges[i].iter().all(|e| placed[e.parent]) {
                    placed[i] = true;
                    topo.push(i);
                    progress = true;
                }
            }
        }
        // What is left waits on a cycle or on a blocked step.
        let Some(start) = (0..n).find(|&i| !placed[i] && !blocked[i]) else {
            return topo;
        };
        // Walk unplaced, unblocked dependencies until a step repeats (a cycle) or a step waits
        // only on blocked ones (it is downstream of a cycle: block it and look again).
        let mut path = vec![start];
        loop {
            let Some(&current) = path.last() else {
                return topo;
            };
            let next = edges[current]
                .iter()
                .map(|e| e.parent)
                .find(|&p| !placed[p] && !blocked[p]);
            let Some(next) = next else {
                blocked[current] = true;
                break;
            };
            if let Some(at) = path.iter().position(|&s| s == next) {
                let cycle = path.split_off(at);
                report_cycle(job, edges, &cycle, cx);
                for &s in &cycle {
                    blocked[s] = true;
                }
                break;
            }
            path.push(next);
        }
    }
}

/// `cycle` lists steps each waiting on the next, the last waiting on the first.
///
/// One error per edge, so each edge is marked in the user's code; only the first names the whole
/// path (a cycle through 300 steps would otherwise print the path 300 times). The others say
/// where they sit: in the middle of the cycle, or closing it.
fn report_cycle(job: &Job<'_>, edges: &[Vec<Edge<'_>>], cycle: &[usize], cx: &mut Ctxt) {
    // Present it in the direction data flows, from the first declared step.
    let mut flow: Vec<usize> = cycle.iter().rev().copied().collect();
    let lowest = (0..flow.len()).min_by_key(|&i| flow[i]).unwrap_or(0);
    flow.rotate_left(lowest);
    let name = |i: usize| &job.steps[i].name;
    let first = name(flow[0]);
    let mut path: Vec<String> = flow.iter().map(|&i| format!("`{}`", name(i))).collect();
    path.push(format!("`{first}`"));
    let path = path.join(" -> ");
    let last = flow.len() - 1;
    for (k, &parent) in flow.iter().enumerate() {
        let child = flow[(k + 1) % flow.len()];
        // Consecutive steps of a cycle share an edge; should they not, there is nothing to mark.
        let Some(edge) = edges[child].iter().find(|e| e.parent == parent) else {
            continue;
        };
        let how = if edge.data {
            format!(
                "`{}` takes the output of `{}` here",
                name(child),
                name(parent)
            )
        } else {
            format!("`{}` runs after `{}` here", name(child), name(parent))
        };
        let span: Span = edge.ident.span();
        if k == 0 {
            cx.error_at(span, format_args!("dependency cycle: {path}; {how}"));
        } else if k == last {
            cx.error_at(
                span,
                format_args!("{how}, which closes the dependency cycle through `{first}`"),
            );
        } else {
            cx.error_at(
                span,
                format_args!("{how}, part of the dependency cycle through `{first}`"),
            );
        }
    }
}
