//! Allocations and run-future size of one `run()` of each benchmark job, as JSON lines.
//!
//! `cargo bench -p jobgraph-benches --bench alloc_report` (`benches/benches/report.sh` runs it and
//! puts the numbers in its table). For every shape, with immediate steps, on a current_thread
//! runtime, after one warm-up run: the allocations of one `run()` of the jobgraph job (a
//! thread-local counting allocator) and the size of its run future
//! (`size_of_val(&job.run())`), one line per shape:
//!
//! ```text
//! {"shape":"chain100","mode":"immediate","impl":"jobgraph","steps":100,"allocs":7,"bytes":512,"future_bytes":4096}
//! ```
//!
//! Only the jobgraph jobs, and only with immediate steps: every 100-step graph instantiated
//! here costs release compile time, and the peers are not what this measures.

#[allow(dead_code)]
#[path = "../shapes/mod.rs"]
mod shapes;

#[path = "../shapes/counting.rs"]
mod counting;

use tokio::runtime::{Builder, Runtime};

use counting::{Counts, count};
use shapes::{Chain100Shape, DiamondShape, Fan100Shape, Grid10x10Shape, Immediate, JobShape};

/// Runs `S`'s job twice (a warm-up, then counted) and prints one JSON line.
fn measure<S: JobShape>(rt: &Runtime) {
    let job = S::job::<Immediate>();
    let future_bytes = S::run_future_size(&job);
    assert_eq!(rt.block_on(S::run_jobgraph(&job)), S::EXPECTED, "warm-up");
    let (result, Counts { allocs, bytes }) = rt.block_on(count(S::run_jobgraph(&job)));
    assert_eq!(result, S::EXPECTED);
    println!(
        r#"{{"shape":"{}","mode":"immediate","impl":"jobgraph","steps":{},"allocs":{allocs},"bytes":{bytes},"future_bytes":{future_bytes}}}"#,
        S::NAME,
        S::STEPS,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to configure.
    let rt = Builder::new_current_thread().enable_all().build().unwrap();
    measure::<DiamondShape>(&rt);
    measure::<Chain100Shape>(&rt);
    measure::<Fan100Shape>(&rt);
    measure::<Grid10x10Shape>(&rt);
}
