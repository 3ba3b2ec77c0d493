//! Generates the benchmark graphs from one description of each shape.
//!
//! Writes two files to `$OUT_DIR`:
//!
//! - `jobs.rs`: per shape, the jobgraph job (`#[job] impl<M: Mode> Chain100<M>`, a step per
//!   node), its `JobShape` impl and the shape's data (`PARENTS`, `EXPECTED`, ...). Included by
//!   `benches/shapes/mod.rs`, which the `graphs` and `alloc_report` benches and the
//!   `allocations` test use.
//! - `peers.rs`: per shape, the hand-written tokio version and the spawn-per-step version, as
//!   `PeerShape` impls. Included by `benches/shapes/peers.rs` (benches only). dagrs and
//!   async_dag are wired at run time from `PARENTS`, so they need no generated code.
//!
//! Every node outputs a `u64`: the sum of its parents' outputs, passed through `M::step`
//! (which adds one, either at once or after one `yield_now`). A source gets 0.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// How the hand-written version of a shape is written: what a careful engineer would write
/// for that shape, starting every step as soon as its parents finish, without spawning.
#[derive(Clone, Copy)]
enum Handwritten {
    /// A chain: one `let x = step(prev).await;` after the other.
    Sequential,
    /// One source, a middle layer that only reads the source, one sink reading the whole
    /// layer: `join_all` of the middle steps.
    FanJoinAll,
    /// Any DAG: every node is a future that `tokio::join!`s its parents' futures, wrapped
    /// in `futures::future::Shared` when several children await it.
    SharedDag,
}

/// One benchmark graph.
struct Shape {
    /// snake_case name: the criterion group prefix and the prefix of generated functions.
    name: &'static str,
    /// The job type's name.
    ty: &'static str,
    /// The doc comment of the job type.
    doc: String,
    /// Step names, in a topological order (every parent before its children); the last
    /// step is the only sink.
    steps: Vec<String>,
    /// `parents[i]`: the indices of step `i`'s parents, in parameter order.
    parents: Vec<Vec<usize>>,
    /// How the hand-written version is written.
    handwritten: Handwritten,
}

impl Shape {
    /// Adds a step reading `parents` (given by name); returns its index.
    fn add(&mut self, name: impl Into<String>, parents: &[&str]) -> usize {
        let parents = parents
            .iter()
            .map(|p| {
                self.steps
                    .iter()
                    .position(|s| s == p)
                    .expect("parent added first")
            })
            .collect();
        self.steps.push(name.into());
        self.parents.push(parents);
        self.steps.len() - 1
    }

    /// `children[i]`: the steps that read step `i`, in step order.
    fn children(&self) -> Vec<Vec<usize>> {
        let mut children = vec![Vec::new(); self.steps.len()];
        for (child, parents) in self.parents.iter().enumerate() {
            for &p in parents {
                children[p].push(child);
            }
        }
        children
    }

    /// The sink's output: what every implementation must return.
    fn expected(&self) -> u64 {
        let mut out = Vec::with_capacity(self.steps.len());
        for parents in &self.parents {
            out.push(parents.iter().map(|&p| out[p]).sum::<u64>() + 1);
        }
        *out.last().unwrap()
    }

    /// The sum of step `i`'s parents' outputs, each a `&u64` parameter or `u64` local named
    /// as the parent; `0` for a source.
    fn sum(&self, i: usize, deref: bool) -> String {
        if self.parents[i].is_empty() {
            return "0".into();
        }
        let star = if deref { "*" } else { "" };
        let terms: Vec<String> = self.parents[i]
            .iter()
            .map(|&p| format!("{star}{}", self.steps[p]))
            .collect();
        terms.join(" + ")
    }
}

fn new_shape(name: &'static str, ty: &'static str, doc: String, hw: Handwritten) -> Shape {
    Shape {
        name,
        ty,
        doc,
        steps: Vec::new(),
        parents: Vec::new(),
        handwritten: hw,
    }
}

/// The 8-step SQL-summary-like diamond, with fan-out and fan-in:
///
/// ```text
/// conn -> orders, customers
/// orders -> revenue, count
/// customers + revenue -> by_customer
/// count + revenue -> average
/// by_customer + average -> summary
/// ```
fn diamond() -> Shape {
    let doc = "The 8-step diamond: `conn -> (orders, customers)`, `orders -> (revenue, count)`, \
               `(customers, revenue) -> by_customer`, `(count, revenue) -> average`, \
               `(by_customer, average) -> summary`."
        .to_string();
    let mut s = new_shape("diamond", "Diamond", doc, Handwritten::SharedDag);
    s.add("conn", &[]);
    s.add("orders", &["conn"]);
    s.add("customers", &["conn"]);
    s.add("revenue", &["orders"]);
    s.add("count", &["orders"]);
    s.add("by_customer", &["customers", "revenue"]);
    s.add("average", &["count", "revenue"]);
    s.add("summary", &["by_customer", "average"]);
    s
}

/// `s0 -> s1 -> ... -> s99`.
fn chain100() -> Shape {
    let doc = "A chain of 100 steps, `s0 -> s1 -> ... -> s99`.".to_string();
    let mut s = new_shape("chain100", "Chain100", doc, Handwritten::Sequential);
    s.add("s0", &[]);
    for i in 1..100 {
        let prev = format!("s{}", i - 1);
        s.add(format!("s{i}"), &[&prev]);
    }
    s
}

/// `source -> m0..m99 -> sink`.
fn fan100() -> Shape {
    let doc =
        "1 -> 100 -> 1: `source`, 100 steps `m0..m99` reading it, `sink` reading all of them."
            .to_string();
    let mut s = new_shape("fan100", "Fan100", doc, Handwritten::FanJoinAll);
    s.add("source", &[]);
    let middle: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    for m in &middle {
        s.add(m.clone(), &["source"]);
    }
    let middle: Vec<&str> = middle.iter().map(String::as_str).collect();
    s.add("sink", &middle);
    s
}

/// 10x10 cells `g{row}_{col}`, each reading its left and upper neighbours.
fn grid10x10() -> Shape {
    let doc = "A 10x10 grid: step `g{row}_{col}` reads `g{row}_{col-1}` (left) and \
               `g{row-1}_{col}` (up); `g0_0` is the source, `g9_9` the sink."
        .to_string();
    let mut s = new_shape("grid10x10", "Grid10x10", doc, Handwritten::SharedDag);
    for r in 0..10 {
        for c in 0..10 {
            let mut parents = Vec::new();
            if c > 0 {
                parents.push(format!("g{r}_{}", c - 1));
            }
            if r > 0 {
                parents.push(format!("g{}_{c}", r - 1));
            }
            let parents: Vec<&str> = parents.iter().map(String::as_str).collect();
            s.add(format!("g{r}_{c}"), &parents);
        }
    }
    s
}

/// The jobgraph job, its `JobShape` impl and the shape's data.
fn emit_job(out: &mut String, s: &Shape) {
    let (ty, upper) = (s.ty, s.name.to_uppercase());
    let n = s.steps.len();
    let sink = s.steps.last().unwrap();
    let parents: Vec<String> = s.parents.iter().map(|ps| format!("&{ps:?}")).collect();
    let names: Vec<String> = s.steps.iter().map(|n| format!("{n:?}")).collect();
    let expected = s.expected();
    writeln!(
        out,
        r#"
/// {doc}
///
/// Generic over the step body (`Mode`).
pub(crate) struct {ty}<M>(PhantomData<M>);

/// Marker for the {name} shape.
pub(crate) struct {ty}Shape;

/// The parents of each step of {name}, by index, in a topological order.
pub(crate) const {upper}_PARENTS: &[&[usize]] = &[{parents}];

/// The step names of {name}, in the order of `{upper}_PARENTS`.
pub(crate) const {upper}_NAMES: &[&str] = &[{names}];

impl JobShape for {ty}Shape {{
    const NAME: &'static str = "{name}";
    const STEPS: usize = {n};
    const EXPECTED: u64 = {expected};
    const PARENTS: &'static [&'static [usize]] = {upper}_PARENTS;
    const NAMES: &'static [&'static str] = {upper}_NAMES;
    type Job<M: Mode> = {ty}<M>;

    fn job<M: Mode>() -> {ty}<M> {{
        {ty}(PhantomData)
    }}

    async fn run_jobgraph<M: Mode>(job: &{ty}<M>) -> u64 {{
        job.run().await.expect("benchmark steps cannot fail").{sink}
    }}

    fn run_future_size<M: Mode>(job: &{ty}<M>) -> usize {{
        std::mem::size_of_val(&job.run())
    }}
}}

#[job]
impl<M: Mode> {ty}<M> {{"#,
        doc = s.doc,
        name = s.name,
        parents = parents.join(", "),
        names = names.join(", "),
    )
    .unwrap();
    for (i, step) in s.steps.iter().enumerate() {
        let params: String = s.parents[i]
            .iter()
            .map(|&p| format!(", {}: &u64", s.steps[p]))
            .collect();
        writeln!(
            out,
            "    #[step]\n    async fn {step}(&self{params}) -> u64 {{\n        M::step({}).await\n    }}",
            s.sum(i, true)
        )
        .unwrap();
    }
    out.push_str("}\n");
}

/// The hand-written and spawn versions, as the shape's `PeerShape` impl.
fn emit_peers(out: &mut String, s: &Shape) {
    writeln!(out, "\nimpl PeerShape for {}Shape {{", s.ty).unwrap();
    out.push_str("    async fn handwritten<M: Mode>() -> u64 {\n");
    match s.handwritten {
        Handwritten::Sequential => emit_sequential(out, s),
        Handwritten::FanJoinAll => emit_fan_join_all(out, s),
        Handwritten::SharedDag => emit_shared_dag(out, s),
    }
    out.push_str("    }\n\n");
    out.push_str("    async fn spawn<M: Mode>() -> u64 {\n");
    emit_spawn(out, s);
    out.push_str("    }\n}\n");
}

const BODY: &str = "        ";

/// `let s1 = M::step(s0).await;` for every step, in order; the last one is returned.
fn emit_sequential(out: &mut String, s: &Shape) {
    let last = s.steps.len() - 1;
    for (i, step) in s.steps.iter().enumerate() {
        assert!(s.parents[i].len() <= 1 && s.parents[i].iter().all(|&p| p + 1 == i));
        let call = format!("M::step({}).await", s.sum(i, false));
        if i == last {
            writeln!(out, "{BODY}{call}").unwrap();
        } else {
            writeln!(out, "{BODY}let {step} = {call};").unwrap();
        }
    }
}

/// `source`, then `join_all` of the middle layer, then the sink.
fn emit_fan_join_all(out: &mut String, s: &Shape) {
    let n = s.steps.len();
    let middle = n - 2;
    assert!(s.parents[1..n - 1].iter().all(|ps| ps == &[0]));
    assert_eq!(s.parents[n - 1], (1..n - 1).collect::<Vec<_>>());
    writeln!(
        out,
        "{BODY}let source = M::step(0).await;\n\
         {BODY}let middle = futures::future::join_all((0..{middle}).map(|_| M::step(source))).await;\n\
         {BODY}M::step(middle.iter().sum()).await"
    )
    .unwrap();
}

/// Every step a future joining its parents' futures; `Shared` where several children await
/// it. Each child takes a clone of a shared parent, the last child takes the original.
/// Nothing runs until the sink is awaited; from then on a step is polled (started) in the
/// same poll in which its last parent completes.
fn emit_shared_dag(out: &mut String, s: &Shape) {
    let children = s.children();
    let mut uses_left: Vec<usize> = children.iter().map(Vec::len).collect();
    for (i, step) in s.steps.iter().enumerate() {
        let shared = children[i].len() > 1;
        let ps = &s.parents[i];
        let mut captures = String::new();
        for &p in ps {
            uses_left[p] -= 1;
            // The last child moves the parent's future in (`async move`); the others clone it.
            if uses_left[p] > 0 {
                write!(captures, "let {0} = {0}.clone(); ", s.steps[p]).unwrap();
            }
        }
        let body = match ps.len() {
            0 => "M::step(0).await".to_string(),
            1 => format!("M::step({}.await).await", s.steps[ps[0]]),
            _ => {
                let names: Vec<&str> = ps.iter().map(|&p| s.steps[p].as_str()).collect();
                format!(
                    "let ({0}) = tokio::join!({0}); M::step({1}).await",
                    names.join(", "),
                    s.sum(i, false)
                )
            }
        };
        let shared = if shared { ".shared()" } else { "" };
        writeln!(
            out,
            "{BODY}let {step} = {{ {captures}async move {{ {body} }}{shared} }};"
        )
        .unwrap();
    }
    writeln!(out, "{BODY}{}.await", s.steps.last().unwrap()).unwrap();
}

/// One `tokio::spawn` per step, parents first, through `spawn_step` (in
/// `benches/shapes/peers.rs`). Every edge is its own oneshot channel `{parent}_to_{child}`: a
/// step's task awaits one receiver per parent and sends its output to one sender per child.
/// The sink's task returns the result; every task is awaited at the end.
fn emit_spawn(out: &mut String, s: &Shape) {
    let children = s.children();
    let n = s.steps.len();
    for (p, cs) in children.iter().enumerate() {
        for &c in cs {
            let edge = format!("{}_to_{}", s.steps[p], s.steps[c]);
            writeln!(
                out,
                "{BODY}let ({edge}_tx, {edge}_rx) = tokio::sync::oneshot::channel::<u64>();"
            )
            .unwrap();
        }
    }
    writeln!(out, "{BODY}let tasks = [").unwrap();
    for (i, step) in s.steps.iter().enumerate() {
        let rx: Vec<String> = s.parents[i]
            .iter()
            .map(|&p| format!("{}_to_{step}_rx", s.steps[p]))
            .collect();
        let tx: Vec<String> = children[i]
            .iter()
            .map(|&c| format!("{step}_to_{}_tx", s.steps[c]))
            .collect();
        let call = format!(
            "spawn_step::<M, _, _>([{}], [{}])",
            rx.join(", "),
            tx.join(", ")
        );
        if i + 1 == n {
            writeln!(out, "{BODY}];\n{BODY}let sink = {call};").unwrap();
        } else {
            writeln!(out, "{BODY}    {call},").unwrap();
        }
    }
    writeln!(
        out,
        "{BODY}let out = sink.await.expect(\"sink task\");\n\
         {BODY}for task in tasks {{\n\
         {BODY}    task.await.expect(\"step task\");\n\
         {BODY}}}\n\
         {BODY}out"
    )
    .unwrap();
}

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    let shapes = [diamond(), chain100(), fan100(), grid10x10()];
    // Step names double as parameter names: they must be unique within a shape.
    for s in &shapes {
        let mut seen = BTreeMap::new();
        for name in &s.steps {
            assert!(seen.insert(name, ()).is_none(), "duplicate step {name}");
        }
    }

    let header = "// @generated by benches/build.rs: do not edit.\n";
    let mut jobs = String::from(header);
    let mut peers = String::from(header);
    for s in &shapes {
        emit_job(&mut jobs, s);
        emit_peers(&mut peers, s);
    }

    let out_dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
    let out_dir = Path::new(&out_dir);
    std::fs::write(out_dir.join("jobs.rs"), jobs).unwrap();
    std::fs::write(out_dir.join("peers.rs"), peers).unwrap();
}
