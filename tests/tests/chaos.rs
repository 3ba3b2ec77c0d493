//! The chaos suite ([`jobgraph_tests::chaos`]): real worker processes under a seeded nemesis,
//! then a checker of the promise ("steps run at least once; each step's output and each run's
//! outcome are committed exactly once; nothing is lost").
//!
//! - `cargo test -p jobgraph-tests --test chaos`: the short profile on PostgreSQL and SQLite,
//!   fixed seed (CI runs it).
//! - `cargo test -p jobgraph-tests --release --test chaos -- --ignored --nocapture`: the full
//!   profile, every fault profile on both backends, printing the README's table
//!   (`JOBGRAPH_CHAOS_PROFILE` picks one profile, `JOBGRAPH_CHAOS_BACKEND` one backend).
//!
//! Any run prints its seed; `JOBGRAPH_CHAOS_SEED` replays it.

use std::path::Path;
use std::sync::Mutex;

use jobgraph_tests::chaos::check::Outcome;
use jobgraph_tests::chaos::{self, Backend, PROFILE_ENV, Profile};

/// One chaos run at a time in this binary: they share the machine's cores, and a run's
/// PostgreSQL restarts the cluster every PostgreSQL test of the binary uses.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn worker_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_chaos_worker"))
}

/// Runs one profile; `None` if skipped (no PostgreSQL).
fn run(backend: Backend, profile: &Profile, seed: u64) -> Option<Outcome> {
    println!(
        "chaos: {} profile `{}`, seed {seed:#x} (replay: {}={seed:#x})",
        backend.name(),
        profile.name,
        chaos::SEED_ENV
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(chaos::harness::run(backend, profile, seed, worker_bin()))
        .unwrap_or_else(|why| panic!("the chaos harness failed (seed {seed:#x}): {why}"))?;
    println!("{}\n{}", Outcome::HEADER, outcome.row());
    Some(outcome)
}

fn short(backend: Backend) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let seed = chaos::seed_from_env(chaos::CI_SEED).unwrap_or_else(|why| panic!("{why}"));
    if let Some(outcome) = run(backend, &Profile::ci(backend), seed)
        && let Some(failure) = outcome.failure()
    {
        panic!("{failure}");
    }
}

#[test]
fn the_short_chaos_profile_keeps_the_promise_on_postgres() {
    short(Backend::Postgres);
}

#[test]
fn the_short_chaos_profile_keeps_the_promise_on_sqlite() {
    short(Backend::Sqlite);
}

/// The full profile: `full` (the default) or one profile of [`Profile::NAMES`], on the backends
/// of `JOBGRAPH_CHAOS_BACKEND`; prints the README's table, then fails if any run broke the
/// promise.
#[test]
#[ignore = "the full chaos profile takes about 15 minutes; see README, Reliability"]
fn the_full_chaos_profile_keeps_the_promise() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let fail = |why: String| -> ! { panic!("{why}") };
    let seed = chaos::seed_from_env(0x05EE_D0FC_4A05).unwrap_or_else(|w| fail(w));
    let backends = Backend::from_env().unwrap_or_else(|w| fail(w));
    let names: Vec<String> = match std::env::var(PROFILE_ENV).as_deref().map(str::trim) {
        Err(_) | Ok("" | "full") => Profile::NAMES.iter().map(|n| (*n).to_owned()).collect(),
        Ok(one) => vec![one.to_owned()],
    };
    let mut outcomes = Vec::new();
    for backend in backends {
        for name in &names {
            let Some(profile) = Profile::full(name, backend).unwrap_or_else(|w| fail(w)) else {
                println!(
                    "chaos: profile `{name}` has no fault on {}: skipped",
                    backend.name()
                );
                continue;
            };
            if let Some(outcome) = run(backend, &profile, seed) {
                outcomes.push(outcome);
            }
        }
    }
    println!("\nchaos: seed {seed:#x}\n{}", Outcome::HEADER);
    for outcome in &outcomes {
        println!("{}", outcome.row());
    }
    let failures: Vec<String> = outcomes.iter().filter_map(Outcome::failure).collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
