//! A worker process of the chaos suite (`tests/chaos.rs`, [`jobgraph_tests::chaos`]): runs the
//! steps of the chaos jobs from the store at `STORE` until its standard input closes, through a
//! [`Flaky`](jobgraph_tests::chaos::flaky::Flaky) store that records every answer and makes some
//! commits ambiguous; prints `started` once it works, and at the end one line,
//! `done CLAIMED COMPLETED FAILED RETRIED FENCED CANCELLED STORE_ERRORS INJECTED`.
//!
//! `chaos_worker STORE NAME`: `STORE` is a SQLite file, or a `postgres://` URL. The environment
//! sets the rest (see [`jobgraph_tests::chaos::WorkerEnv`]).

use std::io::Read as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jobgraph::store::queue::Queue;
use jobgraph::store::{PgOptions, PgStore, SqliteStore, StoreError};
use jobgraph::{CancellationToken, Worker};
use jobgraph_tests::chaos::WorkerEnv;
use jobgraph_tests::chaos::flaky::Flaky;
use jobgraph_tests::chaos::jobs::{Chain, Diamond, Fan, Long, Single};
use jobgraph_tests::chaos::witness::Witness;

/// How long a worker tries to reach its store at start (the database may be down).
const CONNECT_FOR: Duration = Duration::from_secs(120);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: chaos_worker STORE NAME (a SQLite file or a postgres:// URL)");
        std::process::exit(2);
    };
    let env = match WorkerEnv::from_env() {
        Ok(env) => env,
        Err(why) => {
            eprintln!("chaos_worker: {why}");
            std::process::exit(2);
        }
    };
    if url.starts_with("postgres") {
        // The store's sessions carry the worker's name: the audit trigger records who commits.
        let named = format!("{url}&application_name={name}");
        let options = PgOptions::new()
            .with_max_connections(4)
            .with_acquire_timeout(Duration::from_secs(5));
        let store = retry(|| PgStore::connect_with(&named, options)).await;
        work(store, &url, &name, env).await;
    } else {
        let store = retry(|| SqliteStore::open(&url)).await;
        work(store, &url, &name, env).await;
    }
}

/// `open()` until it succeeds, for [`CONNECT_FOR`] at most.
async fn retry<S, F: Future<Output = Result<S, StoreError>>>(open: impl Fn() -> F) -> S {
    let began = Instant::now();
    loop {
        match open().await {
            Ok(store) => return store,
            Err(error) if began.elapsed() < CONNECT_FOR => {
                eprintln!("chaos_worker: cannot open the store yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("chaos_worker: cannot open the store: {error}"),
        }
    }
}

async fn work(store: impl Queue + Clone, url: &str, name: &str, env: WorkerEnv) {
    let witness = loop {
        match Witness::connect(url, name).await {
            Ok(witness) => break Arc::new(witness),
            Err(error) => {
                eprintln!("chaos_worker: cannot open the witness yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let flaky = Flaky::new(
        store,
        Arc::clone(&witness),
        env.ambiguous_permille,
        env.seed,
    );
    let worker = Worker::new(&flaky)
        .job_with::<Chain>(Arc::clone(&witness))
        .job_with::<Diamond>(Arc::clone(&witness))
        .job_with::<Fan>(Arc::clone(&witness))
        .job_with::<Long>(Arc::clone(&witness))
        .job_with::<Single>(Arc::clone(&witness))
        .name(name)
        .concurrency(env.concurrency)
        .lease(env.lease)
        .poll_interval(Duration::from_millis(25))
        .drain_timeout(Duration::from_secs(5));
    // Shut down when the harness closes our standard input (or dies).
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            shutdown.cancel();
        });
    }
    println!("started");
    let stats = worker.run(shutdown).await.expect("a worker's run ends Ok");
    println!(
        "done {} {} {} {} {} {} {} {}",
        stats.claimed,
        stats.completed,
        stats.failed,
        stats.retried,
        stats.fenced,
        stats.cancelled,
        stats.store_errors,
        flaky.injected.load(Ordering::Relaxed),
    );
}
