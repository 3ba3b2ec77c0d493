//! A fleet: three worker processes run a batch of 1,000 fan-out runs submitted to one store, and
//! this process draws the batch's progress from the database.
//!
//! ```text
//! cargo run -p jobgraph-examples --example distributed                       # a SQLite file
//! cargo run -p jobgraph-examples --example distributed -- --db /tmp/fleet.db
//! cargo run -p jobgraph-examples --example distributed -- --postgres         # a private server
//! DATABASE_URL=postgres://... cargo run -p jobgraph-examples --example distributed
//! ```
//!
//! `--postgres` starts a private PostgreSQL from the installed server binaries (the tests'
//! harness: a temporary directory, a unix socket, gone when this process exits).
//!
//! Each run of `Report` loads a customer, then three steps run from that output in parallel
//! (`orders`, `tickets`, `months`, each a few milliseconds of "I/O"), `invoices` runs once per
//! month `months` lists (a `for_each` fan-out), and `summary` joins them:
//!
//! ```text
//! load ──┬── orders ─────────────────────────────┐
//!        ├── tickets ────────────────────────────┼── summary
//!        └── months ── invoices (one per month) ─┘
//! ```
//!
//! This process submits the batch held, starts the workers (this same program, run as
//! `distributed --worker NAME --db PATH`), releases the batch, and draws `ProgressBars` from
//! `Client::watch_batch`: the counts come from the database, so any process could draw them.
//! Workers claim ready *steps*, not whole runs: one run's steps spread over the fleet, and so do
//! the elements of one fan-out, each a claim of its own. At the end each worker says how many
//! steps (an element counts as one) it ran.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jobgraph::store::queue::Queue;
use jobgraph::store::{PgStore, SqliteOptions, SqliteStore, Synchronous};
use jobgraph::{CancellationToken, Client, ProgressBars, StatusListener as _, Worker, job};
use serde::{Deserialize, Serialize};

/// How many runs the batch has.
const RUNS: u64 = 1_000;

/// How many worker processes run them.
const WORKERS: usize = 3;

/// The batch's name: run `i` is `reports/i`.
const BATCH: &str = "reports";

/// One customer's report: the job's input, stored with the run.
#[derive(Serialize, Deserialize)]
struct Report {
    /// The customer.
    customer: u64,
}

/// "I/O" of a few milliseconds.
async fn io(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

#[job(durable)]
impl Report {
    /// The customer's account number.
    #[step]
    async fn load(&self) -> u64 {
        io(1).await;
        self.customer * 7
    }

    #[step]
    async fn orders(&self, load: &u64) -> u64 {
        io(2).await;
        load % 13
    }

    #[step]
    async fn tickets(&self, load: &u64) -> u64 {
        io(3).await;
        load % 5
    }

    /// The months to invoice: one element each for `invoices`.
    #[step]
    async fn months(&self, load: &u64) -> Vec<u64> {
        io(1).await;
        (0..3).map(|month| load + month).collect()
    }

    /// One month's invoices: each element is claimed on its own, by any worker.
    #[step(for_each(months))]
    async fn invoices(&self, months: &u64) -> u64 {
        io(2).await;
        months % 11
    }

    #[step]
    async fn summary(&self, orders: &u64, tickets: &u64, invoices: &[u64]) -> String {
        let invoices: u64 = invoices.iter().sum();
        format!("{orders} orders, {tickets} tickets, {invoices} invoices")
    }
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut db: Option<String> = std::env::var("DATABASE_URL").ok();
    let mut postgres = false;
    let mut worker: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--db" => db = args.next(),
            "--postgres" => postgres = true,
            "--worker" => worker = args.next(),
            other => {
                eprintln!(
                    "unknown argument `{other}`; usage: distributed [--db PATH | --postgres]"
                );
                std::process::exit(2);
            }
        }
    }
    // Kept until the end: the private server and the temporary directory.
    let mut _server = None;
    let temp = tempfile::tempdir().expect("a temporary directory");
    if postgres && db.is_none() {
        let Some(server) = jobgraph_tests::pg::database().await else {
            eprintln!("--postgres: PostgreSQL's server binaries are not installed");
            std::process::exit(1);
        };
        db = Some(server.url().to_owned());
        _server = Some(server);
    }
    let url = db.unwrap_or_else(|| {
        let path = temp.path().join("fleet.db");
        path.to_str().expect("a UTF-8 path").to_owned()
    });
    if url.starts_with("postgres") {
        let store = PgStore::connect(&url).await.expect("connect to PostgreSQL");
        match worker {
            Some(name) => work(store, name).await,
            None => lead(store, &url).await,
        }
    } else {
        // `NORMAL` survives a process crash in WAL mode (power loss may lose the last commits).
        let options = SqliteOptions::new().with_synchronous(Synchronous::Normal);
        let store = SqliteStore::open_with(&url, options)
            .await
            .expect("open the store");
        match worker {
            Some(name) => work(store, name).await,
            None => lead(store, &url).await,
        }
    }
}

/// A worker process: runs `Report` steps until the batch has ended, then prints how many.
async fn work(store: impl Queue + Clone, name: String) {
    let worker = Worker::new(&store)
        .job::<Report>()
        .name(name.clone())
        .concurrency(8)
        .poll_interval(Duration::from_millis(20));
    let shutdown = CancellationToken::new();
    let client = Client::new(&store);
    let watch = {
        let shutdown = shutdown.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match client.batch_counts(BATCH).await {
                    Ok(counts) if counts.total() > 0 && counts.is_finished() => break,
                    _ => {}
                }
            }
            shutdown.cancel();
        }
    };
    let (stats, ()) = tokio::join!(worker.run(shutdown.clone()), watch);
    let stats = stats.expect("the store failed");
    println!("{name} ran {} steps", stats.completed);
}

/// The leading process: submits the batch, starts the workers, draws the progress.
async fn lead(store: impl Queue + Clone, path: &str) {
    let client = Client::new(&store);
    let started = Instant::now();
    let ids = client
        .submit_batch(BATCH, (0..RUNS).map(|customer| Report { customer }))
        .held()
        .await
        .expect("submit the batch");
    println!("submitted {} runs (held) to {path}", ids.len());

    let exe = std::env::current_exe().expect("this program's path");
    let children: Vec<_> = (0..WORKERS)
        .map(|w| {
            Command::new(&exe)
                .args(["--worker", &format!("worker-{w}"), "--db", path])
                .stdout(Stdio::piped())
                .spawn()
                .expect("start a worker")
        })
        .collect();
    client.release(BATCH).await.expect("release the batch");

    let bars = ProgressBars::new();
    let mut statuses =
        std::pin::pin!(client.watch_batch::<Report>(BATCH, Duration::from_millis(100)));
    while let Some(status) = statuses.next().await {
        match status {
            Ok(status) => bars.on_status(&status),
            Err(error) => {
                eprintln!("the batch's status cannot be read: {error}");
                break;
            }
        }
    }

    for child in children {
        let output = child.wait_with_output().expect("a worker ends");
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
    let counts = client
        .batch_counts(BATCH)
        .await
        .expect("the batch's counts");
    println!(
        "{} runs succeeded, {} failed, in {:.2?}",
        counts.succeeded,
        counts.failed,
        started.elapsed()
    );
    let last = client
        .result::<Report>(&ids[ids.len() - 1])
        .await
        .expect("the last run")
        .expect("it succeeded");
    println!("{}: {}", ids[ids.len() - 1], last.summary);
}
