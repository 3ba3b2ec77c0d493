//! Real worker processes share one store: a batch submitted by this process is run by three
//! worker processes (`src/bin/queue_worker.rs`) claiming its steps, and the elements of its
//! fan-outs one by one; every run succeeds with the outputs a pure evaluation gives, and every
//! step and element is committed once.

use std::process::{Command, Stdio};
use std::time::Duration;

use jobgraph::Client;
use jobgraph::store::queue::Queue;
use jobgraph::store::{PgStore, RunState, SqliteStore, StepStatus};
use jobgraph_tests::queue_jobs::{BATCH, Fan, expected_merge};

const RUNS: u64 = 150;
const WORKERS: usize = 3;
/// Steps per run claimed whole: load, north, south, east, merge (and `parts`, one claim per
/// element: [`elements`]).
const STEPS: u64 = 5;

/// The elements of run `n`'s fan-out `parts` (`load`'s output).
fn elements(n: u64) -> u64 {
    n % 4 + 1
}

#[tokio::test(flavor = "multi_thread")]
async fn three_worker_processes_run_a_batch_to_the_end_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.db");
    let path = path.to_str().unwrap().to_owned();
    let store = SqliteStore::open(&path).await.unwrap();
    fleet(store, &path).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_worker_processes_run_a_batch_to_the_end_on_postgres() {
    let Some(db) = jobgraph_tests::pg::database().await else {
        return;
    };
    let store = PgStore::connect(db.url()).await.unwrap();
    fleet(store, db.url()).await;
}

/// Submits the batch held to `store` (at `url`), runs three worker processes on it, checks.
async fn fleet(store: impl Queue + Clone, url: &str) {
    let path = url.to_owned();
    let client = Client::new(&store);
    let ids = client
        .submit_batch(BATCH, (0..RUNS).map(|n| Fan { n }))
        .held()
        .await
        .unwrap();
    assert_eq!(ids.len() as u64, RUNS);

    let children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(env!("CARGO_BIN_EXE_queue_worker"))
                .args([path.as_str(), &format!("worker-{w}")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Every worker is up and polling before any step is ready.
    client.release(BATCH).await.unwrap();

    let outputs = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| child.wait_with_output().unwrap())
            .collect::<Vec<_>>()
    });
    let outputs = tokio::time::timeout(Duration::from_secs(120), outputs)
        .await
        .expect("the workers finish the batch")
        .unwrap();
    let mut completed = Vec::new();
    for output in &outputs {
        assert!(output.status.success(), "a worker failed: {output:?}");
        let line = String::from_utf8_lossy(&output.stdout);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], "done", "{line}");
        let numbers: Vec<u64> = fields[2..].iter().map(|f| f.parse().unwrap()).collect();
        // claimed, completed, failed, retried, fenced, cancelled
        assert_eq!(numbers[0], numbers[1], "{line}");
        assert_eq!(&numbers[2..], [0, 0, 0, 0], "{line}");
        completed.push(numbers[1]);
    }
    println!("steps completed per worker: {completed:?}");
    let claims = RUNS * STEPS + (0..RUNS).map(elements).sum::<u64>();
    assert_eq!(completed.iter().sum::<u64>(), claims);

    let counts = client.batch_counts(BATCH).await.unwrap();
    assert_eq!((counts.succeeded, counts.total()), (RUNS, RUNS));
    for (n, id) in ids.iter().enumerate() {
        let out = client.result::<Fan>(id).await.unwrap().unwrap();
        assert_eq!(out.merge, expected_merge(n as u64), "run {id}");
        let run = store.load_run(id).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Succeeded);
        // A fan-out's attempts are its elements' claims.
        let once = |s: &jobgraph::store::StoredStep| match s.name.as_str() {
            "parts" => elements(n as u64),
            _ => 1,
        };
        assert!(
            run.steps
                .iter()
                .all(|s| s.state == StepStatus::Completed && u64::from(s.attempts) == once(s)),
            "run {id}: each step and element claimed and committed once"
        );
    }
}
