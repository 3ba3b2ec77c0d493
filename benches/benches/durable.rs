//! What durability costs: a batch of runs of an 8-step `#[job(durable)]` job, checkpointed into
//! SQLite, against the same batch in memory, against SQLite's own limit on this machine, and
//! against a jorb-style checkpoint (the whole batch rewritten as one JSON file after each run).
//!
//! `cargo bench -p jobgraph-benches --bench durable` prints two markdown tables (times, then
//! ratios with their goals); progress goes to stderr. About 2½ minutes on 2 cores. Settings,
//! from the environment: `DURABLE_RUNS` (runs per batch, 1,000), `DURABLE_CONCURRENCY` (runs at
//! once, 16: the batch default), `DURABLE_WIDE_CONCURRENCY` (the SQLite batches again with this
//! many at once, 64; 0 leaves them out), `DURABLE_ROUNDS` (7), `DURABLE_RAW_COMMITS` (commits
//! per raw-loop sample, 1,000). Database and JSON files go to a fresh temporary directory per
//! sample (`TMPDIR` moves them). `DURABLE_ONLY=<part of a name>` times only the contenders
//! whose name holds it and prints their times alone (to profile them, e.g. under `perf`).
//!
//! The job is the 8-step diamond of the `batch` bench, every step returning at once, so what is
//! timed is jobgraph and the store:
//!
//! ```text
//! conn ─┬─ orders ─┬─ revenue ─┬─ by_customer ─┬─ summary
//!       │          │           │               │
//!       │          └─ count ───┴─ average ─────┘
//!       └─ customers ──────────┘ (by_customer takes customers and revenue)
//! ```
//!
//! Contenders, each timing one batch of `DURABLE_RUNS` runs (inputs `seed = 0..RUNS`) on a
//! multi_thread runtime with 2 workers:
//!
//! - `in memory`: `Batch::new(inputs).concurrency(C).run()`: no store, nothing persisted.
//! - `MemoryStore`: `Batch::new(inputs).concurrency(C).store(&MemoryStore, "bench").run()`: the
//!   whole durable protocol (inputs stored first, a lease per run, a checkpoint per step, the
//!   run finished) on maps behind a mutex.
//! - `SQLite NORMAL`, `SQLite FULL`: the same on a `SqliteStore` in a new file with
//!   `synchronous` NORMAL or FULL (WAL), `C` runs at once and again `DURABLE_WIDE_CONCURRENCY`
//!   at once: the store commits the writes queued together in one transaction, so how many
//!   runs are going decides how many steps share a commit. Opening the store is not timed.
//! - `raw commit loop NORMAL/FULL`: SQLite's limit here: `DURABLE_RAW_COMMITS` transactions in
//!   a row, each `BEGIN IMMEDIATE`, an `UPDATE` of one row of a table shaped like
//!   `jobgraph_steps` (same columns, primary key and index, the values a completed step writes)
//!   and `COMMIT`, through sqlx on a pool built with `SqliteStore`'s settings (WAL, the same
//!   `synchronous`, foreign keys, 5 s busy timeout, 4 connections, no ping before use).
//! - `floor: the store's SQL alone`, `floor: the fewest rows` (NORMAL and FULL, as many runs at
//!   once as each SQLite batch): what the SQL costs with nothing of jobgraph around it. The
//!   batch's writes as bare statements on one connection to a file with the store's schema and
//!   settings, the runs advancing in lockstep (every commit holds a write of each run in flight:
//!   the best grouping a batch could reach), in the chain of commits a run needs (its input
//!   stored, its lease, one commit per level of the diamond, its end), one round trip per
//!   commit. `the store's SQL` replays `SqliteStore`'s own statements (33 rows written per run:
//!   the run and its 8 pending steps inserted, the run ended as not started, then leased with
//!   its steps pending again, each step updated, the run's `updated_at` per level, the run
//!   ended); `the fewest rows` what any store keeping a row per step must write (11: the run
//!   inserted with its input, leased, each step's row inserted as it settles, the run ended).
//!   No jobgraph store can beat the first; no store with a row per step can beat the second.
//! - `jorb-style JSON file`: what a careful jorb does: the batch's whole state (every run's
//!   input, state and the output of each of its steps, as jorb's job context) is one JSON file,
//!   written once before the runs start and rewritten after each run completes: serialize,
//!   write a temporary file, `fsync` it, rename it over the old one (no fsync of the directory:
//!   that would only slow it down). The runs themselves run in memory, as `in memory` does.
//!
//! Each round times every contender once, in a rotated order, so the ratios compare samples
//! taken seconds apart; a ratio is the median of the rounds' ratios, with quartiles. A
//! contender faster than 50 ms is repeated within its round and averaged. Every batch is
//! checked: the sum of the runs' summaries, and for the stores that every run succeeded with
//! all 8 steps completed (the JSON file is read back and checked too).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::future::{BoxFuture, FutureExt as _};
use jobgraph::store::{
    MemoryStore, RunFilter, RunState, SqliteOptions, SqliteStore, Store, Synchronous,
};
use jobgraph::{Batch, job};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::runtime::Runtime;

/// Steps per run.
const STEPS: usize = 8;
/// A contender faster than this is repeated within its round.
const MIN_SAMPLE: Duration = Duration::from_millis(50);

/// One input of the batch: every step's output derives from `seed`.
#[derive(Serialize, Deserialize)]
struct Diamond {
    seed: u64,
}

#[job(durable)]
impl Diamond {
    #[step]
    async fn conn(&self) -> u64 {
        self.seed
    }

    #[step]
    async fn orders(&self, conn: &u64) -> u64 {
        conn + 1
    }

    #[step]
    async fn customers(&self, conn: &u64) -> u64 {
        conn + 2
    }

    #[step]
    async fn revenue(&self, orders: &u64) -> u64 {
        orders * 3
    }

    #[step]
    async fn count(&self, orders: &u64) -> u64 {
        orders + 4
    }

    #[step]
    async fn by_customer(&self, customers: &u64, revenue: &u64) -> u64 {
        customers + revenue
    }

    #[step]
    async fn average(&self, count: &u64, revenue: &u64) -> u64 {
        revenue / count
    }

    #[step]
    async fn summary(&self, by_customer: &u64, average: &u64) -> u64 {
        by_customer + average
    }
}

/// The sum of the summaries of runs `0..runs`, computed directly.
fn expected(runs: usize) -> u64 {
    (0..runs as u64)
        .map(|seed| {
            let orders = seed + 1;
            let revenue = orders * 3;
            (seed + 2 + revenue) + revenue / (orders + 4)
        })
        .sum()
}

/// The benchmark's settings.
#[derive(Clone, Copy)]
struct Settings {
    runs: usize,
    concurrency: usize,
    /// The SQLite batches again at this concurrency, if not 0.
    wide: usize,
    rounds: usize,
    raw_commits: usize,
}

impl Settings {
    /// How many runs at once the SQLite batches run with.
    fn widths(&self) -> Vec<usize> {
        [self.concurrency, self.wide]
            .into_iter()
            .filter(|&w| w > 0)
            .collect()
    }

    fn from_env() -> Self {
        let setting = |name: &str, default: usize| -> usize {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let wide = setting("DURABLE_WIDE_CONCURRENCY", 64);
        let concurrency = setting("DURABLE_CONCURRENCY", 16).max(1);
        Settings {
            runs: setting("DURABLE_RUNS", 1_000).max(1),
            concurrency,
            wide: if wide == concurrency { 0 } else { wide },
            rounds: setting("DURABLE_ROUNDS", 7).max(1),
            raw_commits: setting("DURABLE_RAW_COMMITS", 1_000).max(1),
        }
    }
}

/// What a contender stores, if anything.
#[derive(Clone, Copy, PartialEq)]
enum Contender {
    InMemory,
    MemoryStore,
    /// A durable batch on SQLite, with this many runs at once.
    Sqlite(Synchronous, usize),
    Raw(Synchronous),
    /// The SQL a batch with this many runs at once writes, alone (see [`Writes`]).
    Floor(Synchronous, usize, Writes),
    Jorb,
}

/// Which writes a [`Contender::Floor`] replays.
#[derive(Clone, Copy, PartialEq)]
enum Writes {
    /// `SqliteStore`'s own statements for the batch.
    Store,
    /// The fewest rows any store with a row per step could write.
    Least,
}

impl Contender {
    /// Every contender of a run with settings `s`, in the order of the table.
    fn all(s: &Settings) -> Vec<Contender> {
        let mut all = vec![Contender::InMemory, Contender::MemoryStore];
        for sync in [Synchronous::Normal, Synchronous::Full] {
            all.push(Contender::Sqlite(sync, s.concurrency));
            if s.wide > 0 {
                all.push(Contender::Sqlite(sync, s.wide));
            }
        }
        all.extend([
            Contender::Raw(Synchronous::Normal),
            Contender::Raw(Synchronous::Full),
        ]);
        for sync in [Synchronous::Normal, Synchronous::Full] {
            for at_once in s.widths() {
                for writes in [Writes::Store, Writes::Least] {
                    all.push(Contender::Floor(sync, at_once, writes));
                }
            }
        }
        all.push(Contender::Jorb);
        all
    }

    fn name(self) -> String {
        let mode = |sync| match sync {
            Synchronous::Normal => "NORMAL",
            _ => "FULL",
        };
        match self {
            Contender::InMemory => "jobgraph in memory (no store)".to_owned(),
            Contender::MemoryStore => "jobgraph + MemoryStore".to_owned(),
            Contender::Sqlite(sync, at_once) => {
                format!("jobgraph + SQLite {}, {at_once} at once", mode(sync))
            }
            Contender::Raw(sync) => format!("raw commit loop {}", mode(sync)),
            Contender::Floor(sync, at_once, Writes::Store) => {
                format!(
                    "floor: the store's SQL alone {}, {at_once} at once",
                    mode(sync)
                )
            }
            Contender::Floor(sync, at_once, Writes::Least) => {
                format!("floor: the fewest rows {}, {at_once} at once", mode(sync))
            }
            Contender::Jorb => "jorb-style JSON file (fsync)".to_owned(),
        }
    }

    /// How many units one sample times: steps for a batch, commits for the raw loop.
    fn units(self, s: &Settings) -> usize {
        match self {
            Contender::Raw(_) => s.raw_commits,
            _ => s.runs * STEPS,
        }
    }
}

/// One sample of `contender`: the time of its timed part (a whole batch, or the raw loop),
/// which runs in a task spawned onto a worker of `rt`.
fn sample(rt: &Runtime, contender: Contender, s: Settings) -> Duration {
    let timed = match contender {
        Contender::InMemory => in_memory(s).boxed(),
        Contender::MemoryStore => {
            async move { durable_batch(&MemoryStore::new(), s.concurrency, s).await }.boxed()
        }
        Contender::Sqlite(synchronous, at_once) => {
            let (_dir, _path, store) = new_store(rt, synchronous);
            let took = spawned(rt, {
                let store = store.clone();
                async move { durable_batch(&store, at_once, s).await }.boxed()
            });
            rt.block_on(store.close());
            return took;
        }
        Contender::Raw(synchronous) => raw_commits(synchronous, s).boxed(),
        Contender::Floor(synchronous, at_once, writes) => {
            return floor(rt, synchronous, at_once, writes, s);
        }
        Contender::Jorb => jorb(s).boxed(),
    };
    spawned(rt, timed)
}

/// A `SqliteStore` in a new file with `synchronous`, in a new temporary directory: the directory,
/// the file and the store.
fn new_store(rt: &Runtime, synchronous: Synchronous) -> (tempfile::TempDir, PathBuf, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let options = SqliteOptions::new().with_synchronous(synchronous);
    // Opened in `block_on`, not in a spawned task: the future of `open_with` does not pass the
    // compiler's `Send` check for `tokio::spawn` (sqlx's executors in the migration;
    // higher-ranked lifetimes).
    let store = rt
        .block_on(SqliteStore::open_with(path.to_str().unwrap(), options))
        .unwrap();
    (dir, path, store)
}

/// sqlx's options for the file at `path` with `SqliteStore::open_with`'s settings
/// (jobgraph/src/store/sqlite.rs) and `synchronous`.
fn connect_options(path: &Path, synchronous: Synchronous) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .foreign_keys(true)
        .synchronous(match synchronous {
            Synchronous::Normal => SqliteSynchronous::Normal,
            _ => SqliteSynchronous::Full,
        })
        .busy_timeout(Duration::from_secs(5))
}

/// Runs `future` in a task spawned onto a worker of `rt`, as a multi_thread program does.
fn spawned(rt: &Runtime, future: BoxFuture<'static, Duration>) -> Duration {
    rt.block_on(async move { tokio::spawn(future).await.unwrap() })
}

async fn in_memory(s: Settings) -> Duration {
    let start = Instant::now();
    let batch = Batch::new((0..s.runs as u64).map(|seed| Diamond { seed }))
        .concurrency(s.concurrency)
        .run()
        .await;
    let took = start.elapsed();
    assert!(batch.is_success());
    let sum: u64 = batch.results.into_iter().map(|r| r.unwrap().summary).sum();
    assert_eq!(sum, expected(s.runs), "in memory");
    took
}

/// One durable batch named `bench` into `store` (empty), `at_once` runs at a time, checked
/// against the store.
async fn durable_batch(store: &(impl Store + Clone), at_once: usize, s: Settings) -> Duration {
    let start = Instant::now();
    let batch = Batch::new((0..s.runs as u64).map(|seed| Diamond { seed }))
        .concurrency(at_once)
        .store(store, "bench")
        .run()
        .await
        .unwrap();
    let took = start.elapsed();
    assert!(batch.is_success());
    assert_eq!(batch.loaded, 0, "the store must start empty");
    let sum: u64 = batch.results.into_iter().map(|r| r.unwrap().summary).sum();
    assert_eq!(sum, expected(s.runs), "durable batch");
    let filter = RunFilter {
        batch: Some("bench".to_owned()),
        ..RunFilter::default()
    };
    let runs = store.list_runs(&filter).await.unwrap();
    assert_eq!(runs.len(), s.runs);
    for run in &runs {
        assert_eq!(run.state, RunState::Succeeded, "run {}", run.id);
        assert_eq!(run.steps.completed, STEPS, "run {}", run.id);
    }
    took
}

/// A table shaped like `jobgraph_steps` (the columns, primary key and index of migration 0001),
/// without the foreign key to a runs table.
const RAW_TABLE: &str = "CREATE TABLE raw_steps (
    run_id     TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    state      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    output     TEXT,
    error      TEXT,
    started_at INTEGER,
    ended_at   INTEGER,
    PRIMARY KEY (run_id, name)
) STRICT;
CREATE INDEX raw_steps_by_name_state ON raw_steps (name, state);";

const RAW_INSERT: &str =
    "INSERT INTO raw_steps (run_id, name, position, state) VALUES (?1, ?2, ?3, 'pending')";

/// What `SqliteStore` writes for a completed step, to one row.
const RAW_UPDATE: &str = "UPDATE raw_steps
    SET state = ?3, attempts = ?4, output = ?5, error = NULL, started_at = ?6, ended_at = ?7
    WHERE run_id = ?1 AND name = ?2";

/// The step names of the diamond, for the raw rows' names.
const NAMES: [&str; STEPS] = [
    "conn",
    "orders",
    "customers",
    "revenue",
    "count",
    "by_customer",
    "average",
    "summary",
];

/// `s.raw_commits` single-row transactions in a row, on a pool with `SqliteStore`'s settings.
async fn raw_commits(synchronous: Synchronous, s: Settings) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.db");
    let connect = connect_options(&path, synchronous).create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect_with(connect)
        .await
        .unwrap();
    sqlx::raw_sql(RAW_TABLE).execute(&pool).await.unwrap();
    // As many rows as the batch has steps, inserted in one transaction (not timed); the loop
    // completes them in order, then pends them again, so every update changes the index.
    let rows = s.runs * STEPS;
    let mut tx = pool.begin().await.unwrap();
    for i in 0..rows {
        sqlx::query(RAW_INSERT)
            .bind(format!("bench/{}", i / STEPS))
            .bind(NAMES[i % STEPS])
            .bind((i % STEPS) as i64)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let now = jobgraph_now_ms();
    let start = Instant::now();
    for i in 0..s.raw_commits {
        let row = i % rows;
        let state = if (i / rows).is_multiple_of(2) {
            "completed"
        } else {
            "pending"
        };
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let done = sqlx::query(RAW_UPDATE)
            .bind(format!("bench/{}", row / STEPS))
            .bind(NAMES[row % STEPS])
            .bind(state)
            .bind(1_i64)
            .bind((row as u64 * 3 + 12_345).to_string())
            .bind(now)
            .bind(now + 1)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
        tx.commit().await.unwrap();
    }
    let took = start.elapsed();
    pool.close().await;
    took
}

/// How many inputs a durable batch stores at once (`STORING_AT_ONCE`,
/// jobgraph/src/batch/durable.rs).
const STORING_AT_ONCE: usize = 256;

/// The diamond's steps by level: a level's steps start when the level before completed.
const LEVELS: [&[&str]; 5] = [
    &["conn"],
    &["orders", "customers"],
    &["revenue", "count"],
    &["by_customer", "average"],
    &["summary"],
];

// `SqliteStore`'s statements (`WRITES`, jobgraph/src/store/sqlite.rs), with the arguments the
// floor binds: `?`s in order, JSON arrays of one element per write.

/// now, now, new runs `[id, job, batch, input, graph, owner, until]`; then their steps.
const STORE_NEW_RUNS: &str = "INSERT INTO jobgraph_runs
    (id, job, batch, input, graph, state, lease_owner, lease_until, created_at, updated_at)
    SELECT w.value ->> 0, w.value ->> 1, w.value ->> 2, w.value ->> 3, w.value ->> 4, 'running',
        w.value ->> 5, w.value ->> 6, ?, ?
    FROM json_each(?) AS w;
INSERT INTO jobgraph_steps (run_id, name, position, state)
    SELECT w.value ->> 0, json_extract(step.value, '$.name'), step.key, 'pending'
    FROM json_each(?) AS w, json_each(w.value ->> 4, '$.steps') AS step;";

/// now, leases `[id, owner, until, resume]`; then the resumed runs' steps pending again.
const STORE_LEASES: &str = "UPDATE jobgraph_runs
    SET lease_owner = w.value ->> 1, lease_until = w.value ->> 2, updated_at = ?,
        state = CASE WHEN w.value ->> 3 THEN 'running' ELSE jobgraph_runs.state END,
        error = CASE WHEN w.value ->> 3 THEN NULL ELSE jobgraph_runs.error END
    FROM json_each(?) AS w WHERE jobgraph_runs.id = w.value ->> 0;
UPDATE jobgraph_steps SET state = 'pending', error = NULL
    WHERE jobgraph_steps.state <> 'completed' AND jobgraph_steps.run_id IN
        (SELECT w.value ->> 0 FROM json_each(?) AS w WHERE w.value ->> 3);";

/// Settled steps `[run, step, state, attempts, output, error, started_at, ended_at]`.
const STORE_SETTLED: &str = "UPDATE jobgraph_steps
    SET state = w.value ->> 2, attempts = w.value ->> 3, output = w.value ->> 4,
        error = w.value ->> 5, started_at = w.value ->> 6, ended_at = w.value ->> 7
    FROM json_each(?) AS w
    WHERE jobgraph_steps.run_id = w.value ->> 0 AND jobgraph_steps.name = w.value ->> 1;";

/// now, the runs written (ids).
const STORE_RUNS_WRITTEN: &str = "UPDATE jobgraph_runs SET updated_at = ?
    WHERE jobgraph_runs.id IN (SELECT w.value FROM json_each(?) AS w);";

/// now, finished runs `[run, state, error]`.
const STORE_FINISHED: &str = "UPDATE jobgraph_runs
    SET state = w.value ->> 1, error = w.value ->> 2, lease_owner = NULL, lease_until = NULL,
        updated_at = ?
    FROM json_each(?) AS w WHERE jobgraph_runs.id = w.value ->> 0;";

/// now, now, new runs `[id, job, batch, input, graph]`, pending, without step rows.
const LEAST_NEW_RUNS: &str = "INSERT INTO jobgraph_runs
    (id, job, batch, input, graph, state, created_at, updated_at)
    SELECT w.value ->> 0, w.value ->> 1, w.value ->> 2, w.value ->> 3, w.value ->> 4, 'pending',
        ?, ?
    FROM json_each(?) AS w;";

/// now, leases `[id, owner, until]`.
const LEAST_LEASES: &str = "UPDATE jobgraph_runs
    SET lease_owner = w.value ->> 1, lease_until = w.value ->> 2, updated_at = ?,
        state = 'running'
    FROM json_each(?) AS w WHERE jobgraph_runs.id = w.value ->> 0;";

/// Settled steps `[run, step, position, state, attempts, output, error, started_at, ended_at]`,
/// each row inserted as it settles.
const LEAST_SETTLED: &str = "INSERT INTO jobgraph_steps
    (run_id, name, position, state, attempts, output, error, started_at, ended_at)
    SELECT w.value ->> 0, w.value ->> 1, w.value ->> 2, w.value ->> 3, w.value ->> 4,
        w.value ->> 5, w.value ->> 6, w.value ->> 7, w.value ->> 8
    FROM json_each(?) AS w;";

/// One transaction of a floor: its statements (one script, one round trip) and their arguments.
struct Commit {
    sql: String,
    args: Vec<Arg>,
}

enum Arg {
    Int(i64),
    Json(serde_json::Value),
}

impl Commit {
    fn new() -> Self {
        Commit {
            sql: "BEGIN IMMEDIATE;\n".to_owned(),
            args: Vec::new(),
        }
    }

    fn statement(mut self, sql: &str, args: impl IntoIterator<Item = Arg>) -> Self {
        self.sql.push_str(sql);
        self.sql.push('\n');
        self.args.extend(args);
        self
    }

    async fn run(mut self, conn: &mut sqlx::SqliteConnection) {
        self.sql.push_str("COMMIT;");
        let mut query = sqlx::query(&self.sql);
        for arg in self.args {
            query = match arg {
                Arg::Int(n) => query.bind(n),
                Arg::Json(v) => query.bind(v.to_string()),
            };
        }
        query.execute(&mut *conn).await.unwrap();
    }
}

/// One sample of a floor: the batch's writes as bare SQL on one connection of a store's file
/// (its schema migrated by `SqliteStore`, its settings), with none of jobgraph around them: no
/// runner, no fencing reads, no decisions. The runs advance in lockstep, `at_once` of them
/// together (the best grouping a batch could reach: every commit holds a write of each run in
/// flight), in the chain of commits a run needs: its input stored, then its lease, one commit
/// per level of the diamond, and its end. `Writes::Store` writes what `SqliteStore` writes (the
/// same statements); `Writes::Least` the fewest rows a store with a row per step could: the run
/// inserted with its input, its lease, each step's row inserted as it settles, its end (11 rows
/// per run, where the store writes 33).
fn floor(
    rt: &Runtime,
    synchronous: Synchronous,
    at_once: usize,
    writes: Writes,
    s: Settings,
) -> Duration {
    // The schema, and a real run's graph, from the store (not timed).
    let (dir, path, store) = new_store(rt, synchronous);
    spawned(rt, {
        let store = store.clone();
        async move {
            Batch::new([Diamond { seed: 0 }])
                .store(&store, "probe")
                .run()
                .await
                .unwrap();
            Duration::ZERO
        }
        .boxed()
    });
    rt.block_on(store.close());
    spawned(
        rt,
        async move {
            let connect = connect_options(&path, synchronous);
            let mut conn = sqlx::ConnectOptions::connect(&connect).await.unwrap();
            let graph: String = sqlx::query_scalar("SELECT graph FROM jobgraph_runs")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            sqlx::query("DELETE FROM jobgraph_runs")
                .execute(&mut conn)
                .await
                .unwrap();
            let took = floor_batch(&mut conn, &graph, at_once, writes, s).await;
            let count = |sql| sqlx::query_scalar::<_, i64>(sql);
            let steps = count("SELECT count(*) FROM jobgraph_steps WHERE state = 'completed'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            let runs = count("SELECT count(*) FROM jobgraph_runs WHERE state = 'succeeded'")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(
                (runs as usize, steps as usize),
                (s.runs, s.runs * STEPS),
                "floor"
            );
            sqlx::Connection::close(conn).await.unwrap();
            drop(dir);
            took
        }
        .boxed(),
    )
}

/// The timed part of [`floor`].
async fn floor_batch(
    conn: &mut sqlx::SqliteConnection,
    graph: &str,
    at_once: usize,
    writes: Writes,
    s: Settings,
) -> Duration {
    use Arg::{Int, Json};
    use serde_json::json;
    let ids: Vec<String> = (0..s.runs).map(|i| format!("bench/{i}")).collect();
    let owner = "floor-owner";
    // Each level's steps with their positions in the graph.
    let levels: Vec<Vec<(&str, usize)>> = LEVELS
        .iter()
        .map(|level| {
            level
                .iter()
                .map(|&name| (name, NAMES.iter().position(|&n| n == name).unwrap()))
                .collect()
        })
        .collect();
    let start = Instant::now();
    let now = jobgraph_now_ms();
    let until = now + 60_000;
    for (chunk, inputs) in ids.chunks(STORING_AT_ONCE).enumerate() {
        let new: Vec<_> = inputs
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let input = json!({ "seed": chunk * STORING_AT_ONCE + i }).to_string();
                match writes {
                    Writes::Store => json!([id, "Diamond", "bench", input, graph, owner, until]),
                    Writes::Least => json!([id, "Diamond", "bench", input, graph]),
                }
            })
            .collect();
        match writes {
            Writes::Store => {
                Commit::new()
                    .statement(
                        STORE_NEW_RUNS,
                        [Int(now), Int(now), Json(json!(new)), Json(json!(new))],
                    )
                    .run(conn)
                    .await;
                let finished: Vec<_> = inputs
                    .iter()
                    .map(|id| json!([id, "cancelled", "not started"]))
                    .collect();
                Commit::new()
                    .statement(STORE_FINISHED, [Int(now), Json(json!(finished))])
                    .run(conn)
                    .await;
            }
            Writes::Least => {
                Commit::new()
                    .statement(LEAST_NEW_RUNS, [Int(now), Int(now), Json(json!(new))])
                    .run(conn)
                    .await;
            }
        }
    }
    for wave in ids.chunks(at_once) {
        let leases: Vec<_> = match writes {
            Writes::Store => wave
                .iter()
                .map(|id| json!([id, owner, until, true]))
                .collect(),
            Writes::Least => wave.iter().map(|id| json!([id, owner, until])).collect(),
        };
        let commit = match writes {
            Writes::Store => Commit::new().statement(
                STORE_LEASES,
                [Int(now), Json(json!(leases)), Json(json!(leases))],
            ),
            Writes::Least => Commit::new().statement(LEAST_LEASES, [Int(now), Json(json!(leases))]),
        };
        commit.run(conn).await;
        for level in &levels {
            let mut settled = Vec::new();
            for (i, id) in wave.iter().enumerate() {
                for &(name, position) in level {
                    let output = (i as u64 * 3 + 12_345).to_string();
                    settled.push(match writes {
                        Writes::Store => {
                            json!([id, name, "completed", 1, output, null, now, now + 1])
                        }
                        Writes::Least => {
                            json!([
                                id,
                                name,
                                position,
                                "completed",
                                1,
                                output,
                                null,
                                now,
                                now + 1
                            ])
                        }
                    });
                }
            }
            let commit = match writes {
                Writes::Store => Commit::new()
                    .statement(STORE_SETTLED, [Json(json!(settled))])
                    .statement(STORE_RUNS_WRITTEN, [Int(now), Json(json!(wave))]),
                Writes::Least => Commit::new().statement(LEAST_SETTLED, [Json(json!(settled))]),
            };
            commit.run(conn).await;
        }
        let finished: Vec<_> = wave
            .iter()
            .map(|id| json!([id, "succeeded", null]))
            .collect();
        Commit::new()
            .statement(STORE_FINISHED, [Int(now), Json(json!(finished))])
            .run(conn)
            .await;
    }
    start.elapsed()
}

fn jobgraph_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One job of a jorb-style run: jorb's job context is a wide struct with a field per state's
/// result; `state` is the job's state (`pending`, then `done`).
#[derive(Serialize, Deserialize)]
struct JorbJob {
    id: String,
    state: String,
    seed: u64,
    conn: Option<u64>,
    orders: Option<u64>,
    customers: Option<u64>,
    revenue: Option<u64>,
    count: Option<u64>,
    by_customer: Option<u64>,
    average: Option<u64>,
    summary: Option<u64>,
    state_errors: Vec<String>,
}

/// A jorb-style run: the whole batch.
#[derive(Serialize, Deserialize)]
struct JorbRun {
    name: String,
    jobs: Vec<JorbJob>,
}

/// Rewrites `run` as `path`, crash-safely: a temporary file, fsync, rename over the old one.
fn checkpoint(run: &JorbRun, path: &Path) {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec(run).unwrap();
    let mut file = std::fs::File::create(&tmp).unwrap();
    file.write_all(&json).unwrap();
    file.sync_all().unwrap();
    drop(file);
    std::fs::rename(&tmp, path).unwrap();
}

/// The batch run in memory, the whole batch's state rewritten after each completed run.
async fn jorb(s: Settings) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.json");
    let start = Instant::now();
    let mut run = JorbRun {
        name: "bench".to_owned(),
        jobs: (0..s.runs)
            .map(|i| JorbJob {
                id: format!("bench/{i}"),
                state: "pending".to_owned(),
                seed: i as u64,
                conn: None,
                orders: None,
                customers: None,
                revenue: None,
                count: None,
                by_customer: None,
                average: None,
                summary: None,
                state_errors: Vec::new(),
            })
            .collect(),
    };
    checkpoint(&run, &path);
    let mut results = Batch::new((0..s.runs as u64).map(|seed| Diamond { seed }))
        .concurrency(s.concurrency)
        .stream();
    while let Some(item) = results.next().await {
        let out = item.result.unwrap();
        let job = &mut run.jobs[item.index];
        job.state = "done".to_owned();
        job.conn = Some(out.conn);
        job.orders = Some(out.orders);
        job.customers = Some(out.customers);
        job.revenue = Some(out.revenue);
        job.count = Some(out.count);
        job.by_customer = Some(out.by_customer);
        job.average = Some(out.average);
        job.summary = Some(out.summary);
        checkpoint(&run, &path);
    }
    drop(results);
    let took = start.elapsed();
    let stored: JorbRun = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(stored.jobs.iter().all(|j| j.state == "done"));
    let sum: u64 = stored.jobs.iter().map(|j| j.summary.unwrap()).sum();
    assert_eq!(sum, expected(s.runs), "jorb");
    took
}

/// The median and quartiles of `values`.
fn quartiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

fn spread(q: [f64; 3], digits: usize) -> String {
    format!("{:.d$} [{:.d$}–{:.d$}]", q[1], q[0], q[2], d = digits)
}

/// Seconds per sample of each contender in each round: `times[contender][round]`.
type Times = Vec<Vec<f64>>;

fn measure(rt: &Runtime, s: Settings, contenders: &[Contender]) -> Times {
    let mut times: Times = vec![Vec::with_capacity(s.rounds); contenders.len()];
    for round in 0..s.rounds {
        let started = Instant::now();
        for i in 0..contenders.len() {
            let k = (round + i) % contenders.len();
            let mut total = Duration::ZERO;
            let mut n = 0u32;
            while total < MIN_SAMPLE || n == 0 {
                total += sample(rt, contenders[k], s);
                n += 1;
            }
            times[k].push(total.as_secs_f64() / f64::from(n));
        }
        eprintln!(
            "round {}/{} took {:.1} s",
            round + 1,
            s.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    times
}

/// Best-effort facts about the machine and the build, for the report's header.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{cores} cores, {cpu}; commit {commit}")
}

fn report(times: &Times, s: Settings, contenders: &[Contender]) -> String {
    let t = |c: Contender| &times[contenders.iter().position(|&k| k == c).unwrap()];
    // Per round, the time of one unit (a step, or a raw commit).
    let per_unit = |c: Contender, round: usize| t(c)[round] / c.units(&s) as f64;
    // Per round, the ratio of two contenders' per-unit times.
    let ratio = |a: Contender, b: Contender| -> [f64; 3] {
        quartiles(
            (0..s.rounds)
                .map(|r| per_unit(a, r) / per_unit(b, r))
                .collect(),
        )
    };
    let mut out = String::new();
    let _ = writeln!(out, "# Durable runs: {}\n", machine());
    let _ = writeln!(
        out,
        "{} runs of the 8-step diamond per batch, {} at once unless said; multi_thread runtime \
         (2 workers); raw loop: {} commits per sample; median of {} rounds [quartiles]. A \
         durable run makes 12 store writes: its input stored (open and finish), then open, 8 \
         steps, finish; `SqliteStore` commits the writes queued together in one transaction.\n",
        s.runs, s.concurrency, s.raw_commits, s.rounds
    );
    let _ = writeln!(
        out,
        "| contender | per sample | µs per step (per commit for raw) | steps/s (commits/s for raw) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for &c in contenders {
        let [_, secs, _] = quartiles(t(c).clone());
        let us = quartiles((0..s.rounds).map(|r| per_unit(c, r) * 1e6).collect());
        let rate = c.units(&s) as f64 / secs;
        let _ = writeln!(
            out,
            "| {} | {:.1} ms | {} | {:.0} |",
            c.name(),
            secs * 1e3,
            spread(us, if us[1] < 10.0 { 2 } else { 1 }),
            rate
        );
    }
    use Contender::{Floor, InMemory, Jorb, MemoryStore, Raw, Sqlite};
    use Synchronous::{Full, Normal};
    let widths = s.widths();
    let _ = writeln!(
        out,
        "\n| ratio (per round, median [quartiles]) | value | goal |"
    );
    let _ = writeln!(out, "|---|---:|---|");
    let mut line = |what: String, q: [f64; 3], digits: usize, goal: Option<f64>| {
        let goal = match goal {
            None => String::new(),
            Some(goal) => {
                let met = if q[1] >= goal { "met" } else { "**missed**" };
                format!("≥ {goal} ({met})")
            }
        };
        let _ = writeln!(out, "| {what} | {} | {goal} |", spread(q, digits));
    };
    line(
        "MemoryStore: µs/step ÷ in memory".to_owned(),
        ratio(MemoryStore, InMemory),
        1,
        None,
    );
    for sync in [Normal, Full] {
        let c = Sqlite(sync, s.concurrency);
        line(
            format!("{}: µs/step ÷ in memory", c.name()),
            ratio(c, InMemory),
            0,
            None,
        );
        line(
            format!("{}: µs/step ÷ MemoryStore", c.name()),
            ratio(c, MemoryStore),
            1,
            None,
        );
    }
    for sync in [Normal, Full] {
        for &w in &widths {
            // steps/s ÷ commits/s = µs per commit ÷ µs per step.
            let c = Sqlite(sync, w);
            let pct = ratio(Raw(sync), c).map(|x| x * 100.0);
            line(
                format!(
                    "{}: steps/s as % of {} commits/s",
                    c.name(),
                    Raw(sync).name()
                ),
                pct,
                0,
                Some(50.0),
            );
        }
    }
    for sync in [Full, Normal] {
        for &w in &widths {
            // Same number of runs: the ratio of the batches' times.
            let c = Sqlite(sync, w);
            line(
                format!(
                    "{} runs: jorb-style JSON file ÷ {} (× faster)",
                    s.runs,
                    c.name()
                ),
                ratio(Jorb, c),
                2,
                (sync == Full).then_some(10.0),
            );
        }
    }
    // What the SQL alone costs: the most any implementation of these writes (`Store`), or of
    // any store with a row per step (`Least`), could gain.
    for sync in [Full, Normal] {
        for &w in &widths {
            let least = Floor(sync, w, Writes::Least);
            line(
                format!(
                    "{} runs: jorb-style JSON file ÷ {} (× faster)",
                    s.runs,
                    least.name()
                ),
                ratio(Jorb, least),
                2,
                None,
            );
        }
    }
    for sync in [Full, Normal] {
        for &w in &widths {
            let c = Sqlite(sync, w);
            for writes in [Writes::Store, Writes::Least] {
                let floor = Floor(sync, w, writes);
                line(
                    format!("{}: µs/step ÷ {}", c.name(), floor.name()),
                    ratio(c, floor),
                    2,
                    None,
                );
            }
        }
    }
    out
}

fn main() {
    // `cargo bench` passes `--bench`; anything else is a filter this harness does not take.
    let s = Settings::from_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    eprintln!(
        "durable: {} runs x {} steps, concurrency {} (and {} for SQLite), {} rounds",
        s.runs, STEPS, s.concurrency, s.wide, s.rounds
    );
    let contenders = Contender::all(&s);
    if let Ok(only) = std::env::var("DURABLE_ONLY") {
        // A profile of some contenders (`perf record`): their times alone, no ratios.
        let chosen: Vec<Contender> = contenders
            .into_iter()
            .filter(|c| c.name().contains(&only))
            .collect();
        let times = measure(&rt, s, &chosen);
        for (c, times) in chosen.iter().zip(&times) {
            let per_unit: Vec<f64> = times.iter().map(|t| t * 1e6 / c.units(&s) as f64).collect();
            println!("{}: µs per unit {per_unit:.1?}", c.name());
        }
        return;
    }
    let times = measure(&rt, s, &contenders);
    print!("{}", report(&times, s, &contenders));
}
