//! One implementation of one cell, run many times: a target for `perf` and callgrind.
//!
//! `cargo bench -p jobgraph-benches --bench profile -- <shape> <mode> <implementation> [runs]`
//! runs `runs` (default 10,000) runs of `shape` (`diamond`, `chain100`, `fan100`,
//! `grid10x10`) with steps in `mode` (`immediate`, `yield`) as `implementation` (`jobgraph`,
//! `handwritten`) on a current_thread runtime, and prints the time per run and per step. Under
//! `valgrind --tool=callgrind`, pass a small `runs`, then subtract a run of `0` for the setup.

#[allow(dead_code)]
#[path = "../shapes/mod.rs"]
mod shapes;

#[allow(dead_code)]
#[path = "../shapes/peers.rs"]
mod peers;

use std::hint::black_box;
use std::process::ExitCode;
use std::time::Instant;

use peers::PeerShape;
use shapes::{Chain100Shape, DiamondShape, Fan100Shape, Grid10x10Shape, Immediate, Mode, Yield};

const USAGE: &str = "usage: profile <diamond|chain100|fan100|grid10x10> <immediate|yield> \
                     <jobgraph|handwritten> [runs]";

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; everything else is ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [shape, mode, imp, rest @ ..] = &args[..] else {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    };
    let runs = match rest.first().map(|r| r.parse::<u64>()) {
        None => 10_000,
        Some(Ok(runs)) => runs,
        Some(Err(_)) => {
            eprintln!("runs must be a number\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let done = match mode.as_str() {
        "immediate" => by_shape::<Immediate>(shape, imp, runs),
        "yield" => by_shape::<Yield>(shape, imp, runs),
        _ => false,
    };
    if !done {
        eprintln!("{USAGE}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn by_shape<M: Mode>(shape: &str, imp: &str, runs: u64) -> bool {
    match shape {
        "diamond" => run::<DiamondShape, M>(imp, runs),
        "chain100" => run::<Chain100Shape, M>(imp, runs),
        "fan100" => run::<Fan100Shape, M>(imp, runs),
        "grid10x10" => run::<Grid10x10Shape, M>(imp, runs),
        _ => false,
    }
}

fn run<S: PeerShape, M: Mode>(imp: &str, runs: u64) -> bool {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let elapsed = match imp {
        "jobgraph" => rt.block_on(async {
            let job = S::job::<M>();
            let start = Instant::now();
            for _ in 0..runs {
                assert_eq!(black_box(S::run_jobgraph(&job).await), S::EXPECTED);
            }
            start.elapsed()
        }),
        "handwritten" => rt.block_on(async {
            let start = Instant::now();
            for _ in 0..runs {
                assert_eq!(black_box(S::handwritten::<M>().await), S::EXPECTED);
            }
            start.elapsed()
        }),
        _ => return false,
    };
    let per_run = elapsed.as_nanos() as f64 / runs.max(1) as f64;
    println!(
        "{} {} {imp}: {runs} runs, {per_run:.0} ns/run, {:.1} ns/step",
        S::NAME,
        M::NAME,
        per_run / S::STEPS as f64
    );
    true
}
