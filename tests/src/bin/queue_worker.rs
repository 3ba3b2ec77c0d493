//! A worker process of the multi-process queue tests (`tests/queue_processes.rs`): runs the
//! steps of [`Fan`](jobgraph_tests::queue_jobs::Fan) from the store at `STORE` until batch
//! [`BATCH`](jobgraph_tests::queue_jobs::BATCH) has ended, then prints one line,
//! `done NAME CLAIMED COMPLETED FAILED RETRIED FENCED CANCELLED`, and exits.
//!
//! `queue_worker STORE NAME`: `STORE` is a SQLite file, or a `postgres://` URL.

use std::time::Duration;

use jobgraph::store::queue::Queue;
use jobgraph::store::{PgStore, SqliteStore};
use jobgraph::{CancellationToken, Client, Worker};
use jobgraph_tests::queue_jobs::{BATCH, Fan};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(name)) = (args.next(), args.next()) else {
        eprintln!("usage: queue_worker STORE NAME");
        std::process::exit(2);
    };
    if path.starts_with("postgres") {
        let store = PgStore::connect(&path).await.expect("open the store");
        work(store, name).await;
    } else {
        let store = SqliteStore::open(&path).await.expect("open the store");
        work(store, name).await;
    }
}

/// Runs the worker on `store` until the batch has ended; prints its stats.
async fn work(store: impl Queue + Clone, name: String) {
    let worker = Worker::new(&store)
        .job::<Fan>()
        .name(name.clone())
        .concurrency(4)
        .poll_interval(Duration::from_millis(10));
    let shutdown = CancellationToken::new();
    let watch = {
        let (store, shutdown) = (store.clone(), shutdown.clone());
        tokio::spawn(async move {
            let client = Client::new(&store);
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let counts = client.batch_counts(BATCH).await.expect("batch counts");
                if counts.total() > 0 && counts.is_finished() {
                    shutdown.cancel();
                    return;
                }
            }
        })
    };
    let stats = worker
        .run(shutdown)
        .await
        .expect("the worker's store failed");
    watch.abort();
    println!(
        "done {name} {} {} {} {} {} {}",
        stats.claimed, stats.completed, stats.failed, stats.retried, stats.fenced, stats.cancelled
    );
}
