//! The child process of the kill test (`tests/kill.rs`): runs the durable batch
//! [`BATCH`](jobgraph_tests::kill::BATCH) of [`RUNS`](jobgraph_tests::kill::RUNS) runs on a SQLite
//! store until it finishes or the test kills it (SIGKILL), and is started again on the same
//! database to resume it.
//!
//! `durable_child STORE_DB GENERATION`
//!
//! - Before doing its work, every step (every element of `fan`) records its execution in table
//!   `executions` of `STORE_DB` (a table of the test's, beside the store's), through a
//!   connection of its own, with its own autocommitted insert: (generation, pid, run, unit,
//!   time). The test compares these with what the store committed.
//! - Prints `started` once the batch has planned its runs and is about to run them (its status
//!   listener's first call), and `done SUCCEEDED FAILED CANCELLED LOADED` when the batch ends; exits
//!   0 if every run succeeded.
//! - Generation 0 and even generations run `Batch::new(inputs).store(..)`; odd generations
//!   resume the batch from the store alone (`resume_batch`) if the store holds all its runs.

use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobgraph::durable::resume_batch;
use jobgraph::store::{RunFilter, SqliteOptions, SqliteStore, Store, Synchronous};
use jobgraph::{Batch, BatchStatus, StepContext, job};
use jobgraph_tests::kill::{self as pure, BATCH, CONCURRENCY, RUNS};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Where steps record their executions, and who they are.
struct Log {
    pool: SqlitePool,
    generation: i64,
    pid: i64,
}

static LOG: OnceLock<Log> = OnceLock::new();

/// The table of executions; the test creates it too, before the first child starts.
const CREATE_EXECUTIONS: &str = "CREATE TABLE IF NOT EXISTS executions (
    generation INTEGER NOT NULL,
    pid        INTEGER NOT NULL,
    run        INTEGER NOT NULL,
    unit       TEXT    NOT NULL,
    at_ms      INTEGER NOT NULL,
    -- Filled in by the test's trigger: how many commits the store had made.
    commits_before INTEGER
)";

const INSERT_EXECUTION: &str =
    "INSERT INTO executions (generation, pid, run, unit, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Records that `unit` of run `n` starts executing in this process, committed before it
/// returns. A failure panics the step (and fails the test).
async fn record(n: u64, unit: &str) {
    let log = LOG.get().expect("the log is opened before the batch runs");
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    sqlx::query(INSERT_EXECUTION)
        .bind(log.generation)
        .bind(log.pid)
        .bind(i64::try_from(n).expect("a small input"))
        .bind(unit)
        .bind(i64::try_from(at).expect("a sane clock"))
        .execute(&log.pool)
        .await
        .expect("record an execution");
}

/// One input of the batch: run `kill/n`.
#[derive(Serialize, Deserialize)]
struct Item {
    n: u64,
}

#[job(durable)]
impl Item {
    #[step]
    async fn seed(&self) -> u64 {
        record(self.n, "seed").await;
        pure::seed(self.n)
    }

    #[step]
    async fn grow(&self, seed: &u64) -> u64 {
        record(self.n, "grow").await;
        tokio::time::sleep(Duration::from_millis(pure::GROW_MS)).await;
        pure::grow(self.n, *seed)
    }

    #[step]
    async fn split(&self, grow: &u64) -> Vec<u64> {
        record(self.n, "split").await;
        pure::split(*grow)
    }

    #[step(for_each(split, concurrency = 2))]
    async fn fan(&self, split: &u64, ctx: &StepContext) -> u64 {
        let index = ctx.element().expect("a for_each step");
        record(self.n, &format!("fan[{index}]")).await;
        tokio::time::sleep(Duration::from_millis(pure::fan_ms(*split))).await;
        pure::fan(self.n, *split)
    }

    #[step]
    async fn left(&self, grow: &u64) -> u64 {
        record(self.n, "left").await;
        tokio::time::sleep(Duration::from_millis(pure::left_ms(self.n))).await;
        pure::left(*grow)
    }

    #[step]
    async fn right(&self, grow: &u64) -> String {
        record(self.n, "right").await;
        pure::right(self.n, *grow)
    }

    #[step]
    async fn join(&self, left: &u64, right: &str, fan: &[u64]) -> u64 {
        record(self.n, "join").await;
        pure::join(*left, right, fan)
    }
}

fn usage() -> ! {
    eprintln!("usage: durable_child STORE_DB GENERATION");
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store_db, generation] = args.as_slice() else {
        usage();
    };
    let Ok(generation) = generation.parse::<i64>() else {
        usage();
    };

    // `NORMAL` in WAL mode: every commit survives the process's death, which is all this test
    // kills.
    let options = SqliteOptions::new().with_synchronous(Synchronous::Normal);
    let store = SqliteStore::open_with(store_db, options)
        .await
        .expect("open the store");
    let connect = SqliteConnectOptions::new()
        .filename(store_db)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(connect)
        .await
        .expect("open the executions log");
    sqlx::query(CREATE_EXECUTIONS)
        .execute(&pool)
        .await
        .expect("create the executions table");
    let log = Log {
        pool,
        generation,
        pid: i64::from(std::process::id()),
    };
    assert!(LOG.set(log).is_ok(), "the log is opened once");

    let started = AtomicBool::new(false);
    let listener = move |_: &BatchStatus<ItemStep>| {
        // The first call comes once the batch has planned its runs, before any starts.
        if !started.swap(true, Ordering::Relaxed) {
            let mut out = std::io::stdout().lock();
            writeln!(out, "started")
                .and_then(|()| out.flush())
                .expect("stdout");
        }
    };
    let stored = store
        .list_runs(&RunFilter {
            batch: Some(BATCH.to_owned()),
            ..RunFilter::default()
        })
        .await
        .expect("list the batch's runs")
        .len();
    let batch = if generation % 2 == 1 && stored == RUNS as usize {
        resume_batch::<Item>(&store, BATCH)
            .concurrency(CONCURRENCY)
            .status_listener(listener)
            .run()
            .await
    } else {
        Batch::new((0..RUNS).map(|n| Item { n }))
            .concurrency(CONCURRENCY)
            .status_listener(listener)
            .store(&store, BATCH)
            .run()
            .await
    }
    .expect("the batch's store failed");
    let summary = &batch.summary;
    println!(
        "done {} {} {} {}",
        summary.succeeded, summary.failed, summary.cancelled, batch.loaded
    );
    if let Some(err) = batch.results.iter().find_map(|r| r.as_ref().err()) {
        eprintln!("durable_child: first error: {err:?}");
    }
    std::process::exit(if batch.is_success() { 0 } else { 1 });
}
