//! `SqliteStore`: the [`Store`] contract on an embedded SQLite database, through `sqlx`.
//!
//! Every statement is a constant next to the one function that runs it; `sqlx::query` (not the
//! compile-time macros) runs them, and the contract tests check them. Every write is in a
//! `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock up front, so concurrent
//! processes queue on `busy_timeout` instead of failing mid-transaction on a lock upgrade. A
//! runner's writes are committed in groups (`commit_groups`): one transaction for the writes of
//! every run of the process that were queued while the previous one committed, written
//! set-based (`write_group`: one script reads what the group's fencing needs, one writes each
//! kind of write in one statement and commits), since each statement sqlx runs is a round trip
//! to the connection's thread.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::future::{BoxFuture, FutureExt};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{
    Connection as _, Executor as _, Row, Sqlite, SqliteConnection, SqlitePool, Transaction,
};
use tokio::sync::{mpsc, oneshot};

use super::schema;
use super::{
    GraphSpec, RunFilter, RunSpec, RunState, RunSummary, StepOutcome, StepStatus, StepTally, Store,
    StoreError, StoredRun, StoredStep, check_open, millis, now_ms, plus,
};

/// A [`Store`] in an embedded SQLite database: runs survive the process (and, with
/// [`Synchronous::Full`], power loss).
///
/// The database is in WAL mode (readers never block the writer), with foreign keys on, an
/// explicit [`Synchronous`] mode and a `busy_timeout`. Opening it creates the file and its
/// tables (prefixed `jobgraph_`), migrates an older schema, and refuses a newer one
/// ([`StoreError::Schema`]). Several processes may open one file: their writes serialize.
///
/// The runners of one process share its writes: every write of a runner (opening a run, a
/// step's checkpoint, a lease renewal, finishing a run) is queued, and one transaction commits
/// all the writes queued while the previous one committed (a *group commit*). Each call returns
/// once the transaction holding its write committed, so a step's output is still on disk before
/// any of its children starts; concurrent runs share the commits (one fsync per transaction with
/// [`Synchronous::Full`]) instead of queueing for SQLite's write lock one step at a time.
/// Opening a store spawns the task that commits them onto the current tokio runtime; it ends
/// when the last clone of the store is dropped. For a file it writes on a connection of its
/// own, besides the pool's 4.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The queue of the group commit (`commit_groups`).
    writes: mpsc::UnboundedSender<Pending>,
    /// What the queue's commits made ready, for the idle workers of this process.
    news: Arc<super::ready::Local>,
}

/// How hard SQLite flushes each commit to disk (`PRAGMA synchronous`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Synchronous {
    /// `FULL`: a commit is on disk when it returns; it survives a process crash and power loss
    /// (or an OS crash). One fsync per commit.
    #[default]
    Full,
    /// `NORMAL`: in WAL mode a commit survives a process crash (`kill -9`), but power loss or
    /// an OS crash may lose the last commits (never corrupts the database). Fewer fsyncs,
    /// faster commits.
    Normal,
}

/// How [`SqliteStore::open_with`] opens the database.
///
/// # Default
///
/// `synchronous`: [`Synchronous::Full`]; `busy_timeout`: 5 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How hard each commit is flushed to disk.
    pub synchronous: Synchronous,
    /// How long a statement waits for another connection's (or process's) lock before it fails.
    pub busy_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl SqliteOptions {
    /// The defaults: [`Synchronous::Full`], a 5 s busy timeout.
    pub const fn new() -> Self {
        Self {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// Sets how hard each commit is flushed to disk.
    pub const fn with_synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Sets how long a statement waits for a lock.
    pub const fn with_busy_timeout(mut self, busy_timeout: Duration) -> Self {
        self.busy_timeout = busy_timeout;
        self
    }
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `path_or_url` with the default
    /// [`SqliteOptions`]: a path (`jobs.db`), a URL (`sqlite://jobs.db`, `sqlite:jobs.db?...`),
    /// or `sqlite::memory:` (a private database that lives as long as this store).
    pub async fn open(path_or_url: &str) -> Result<SqliteStore, StoreError> {
        Self::open_with(path_or_url, SqliteOptions::default()).await
    }

    /// Opens (creating it if missing) the database at `path_or_url` with `options`.
    pub async fn open_with(
        path_or_url: &str,
        options: SqliteOptions,
    ) -> Result<SqliteStore, StoreError> {
        let memory = path_or_url.contains(":memory:") || path_or_url.contains("mode=memory");
        let connect = if path_or_url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(path_or_url)?
        } else if path_or_url == ":memory:" {
            SqliteConnectOptions::from_str("sqlite::memory:")?
        } else {
            SqliteConnectOptions::new().filename(path_or_url)
        };
        let connect = connect
            .create_if_missing(true)
            .foreign_keys(true)
            .synchronous(match options.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(options.busy_timeout);
        if memory {
            // An in-memory database lives as long as a connection to it: keep exactly one. Its
            // journal is in memory whatever is asked; no other process opens it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .test_before_acquire(false)
                .after_release(end_orphaned_transaction)
                .connect_with(connect.journal_mode(SqliteJournalMode::Wal))
                .await?;
            schema::migrate(&mut *pool.acquire().await?).await?;
            return Ok(Self::start(pool, None, None));
        }
        // A file: one connection first switches it to WAL (kept in the file, so later connections
        // need not ask) and migrates it, waiting for any other process doing the same; it then
        // becomes the writer's own connection.
        let mut first = SqliteConnection::connect_with(&connect).await?;
        wal(&mut first, options.busy_timeout).await?;
        schema::migrate(&mut first).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A local file's connections do not go stale: no ping before each use (it cost a
            // round trip to the connection's thread per write, about a third of a commit's time).
            .test_before_acquire(false)
            .after_release(end_orphaned_transaction)
            .connect_with(connect.clone())
            .await?;
        Ok(Self::start(pool, Some(connect), Some(first)))
    }

    /// The store on `pool`, and its group commit spawned, writing on `own` (else a connection
    /// opened with `connect`, else the pool's).
    fn start(
        pool: SqlitePool,
        connect: Option<SqliteConnectOptions>,
        own: Option<SqliteConnection>,
    ) -> SqliteStore {
        let (writes, queue) = mpsc::unbounded_channel();
        let writer = Writer {
            pool: pool.clone(),
            connect,
            own,
        };
        tokio::spawn(commit_groups(writer, queue));
        SqliteStore {
            pool,
            writes,
            news: Arc::default(),
        }
    }

    /// Closes the database's connections; the store fails every call after.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Moves every lease's expiry (runs', claimed steps' and claimed elements') and every queued
    /// run's time to live `by` into the past, as if that much time had passed: protocol tests age
    /// leases in SQL instead of sleeping.
    ///
    /// # Panics
    ///
    /// If the database fails (a test helper).
    #[doc(hidden)]
    pub async fn age_leases(&self, by: Duration) {
        for statement in [
            AGE_LEASES,
            AGE_CLAIMS,
            AGE_EXPIRIES,
            super::sqlite_queue::AGE_ELEMENT_CLAIMS,
        ] {
            sqlx::query(statement)
                .bind(millis(by))
                .execute(&self.pool)
                .await
                .expect("age_leases: the store's database failed");
        }
    }

    pub(super) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(super) async fn begin(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// Rolls back the transaction a pooled connection is given back in, if any: the pool's
/// `after_release` hook.
///
/// A caller may drop a store call's future at any await (a `select!`, a timeout, a worker's
/// heartbeat still in flight when `Worker::run_once` returns). If it drops it after the
/// connection's thread ran `BEGIN IMMEDIATE` and acknowledged it, while sqlx (0.8) was still
/// checking that it began a transaction (one more round trip, before it makes a
/// `Transaction`), nothing rolls it back, and the connection went back to the pool holding
/// SQLite's write lock: every other connection's write then waited out its busy timeout and
/// failed with "database is locked", and writes on that connection were never committed.
/// A `Transaction` dropped the usual way has queued its rollback; the rollback here runs
/// after it, and finds nothing left to do.
fn end_orphaned_transaction(
    conn: &mut SqliteConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        use sqlx::TransactionManager as _;
        while conn.is_in_transaction() {
            // One level each time (sqlx counts savepoints as depth); an error ends the loop, and
            // the pool closes the connection (which ends its transaction).
            sqlx::sqlite::SqliteTransactionManager::rollback(conn).await?;
        }
        Ok(true)
    })
}

/// A decoding error is a corrupt value (`what`); anything else is the database failing.
pub(super) fn corrupt_or_database(error: sqlx::Error, what: &str) -> StoreError {
    match error {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt {
            what: format!("{what} cannot be read ({error})"),
        },
        error => StoreError::from(error),
    }
}

pub(super) fn get<'r, T>(row: &'r SqliteRow, column: &str, table: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>,
{
    row.try_get(column)
        .map_err(|e| corrupt_or_database(e, &format!("{table}.{column}")))
}

fn run_state(value: &str, run: &str) -> Result<RunState, StoreError> {
    value.parse().map_err(|e| StoreError::Corrupt {
        what: format!("the state of run `{run}`: {e}"),
    })
}

fn step_status(value: &str, run: &str, step: &str) -> Result<StepStatus, StoreError> {
    value.parse().map_err(|e| StoreError::Corrupt {
        what: format!("the state of step `{step}` of run `{run}`: {e}"),
    })
}

pub(super) fn graph(json: &str, run: &str) -> Result<GraphSpec, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        what: format!("the graph of run `{run}` ({e})"),
    })
}

fn lease_lost(run: &str, owner: &str) -> StoreError {
    StoreError::LeaseLost {
        run: run.to_owned(),
        owner: owner.to_owned(),
    }
}

pub(super) fn no_such_run(run: &str) -> StoreError {
    StoreError::NoSuchRun {
        run: run.to_owned(),
    }
}

pub(super) fn no_such_step(run: &str, step: &str) -> StoreError {
    StoreError::NoSuchStep {
        run: run.to_owned(),
        step: step.to_owned(),
    }
}

/// Switches the file `conn` is open on to WAL mode, waiting up to `busy_timeout` for other
/// connections (processes opening the same new file at once).
///
/// `PRAGMA journal_mode = WAL` reads the database header and then upgrades to a write lock; if
/// another connection holds or waits for that lock, SQLite returns `SQLITE_BUSY` at once instead
/// of calling the busy handler (waiting could deadlock), so `busy_timeout` alone does not cover
/// it: the statement is retried, with the read lock released in between.
async fn wal(conn: &mut SqliteConnection, busy_timeout: Duration) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&mut *conn)
            .await
        {
            Ok(_) => return Ok(()),
            Err(error) if is_busy(&error) && tokio::time::Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether `error` is SQLite's `SQLITE_BUSY` or `SQLITE_LOCKED` (or one of their extended codes).
fn is_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i32 = 5;
    const SQLITE_LOCKED: i32 = 6;
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
}

// ---- Statements, one function each ------------------------------------------------------------

const AGE_LEASES: &str =
    "UPDATE jobgraph_runs SET lease_until = lease_until - ?1 WHERE lease_until IS NOT NULL";

const AGE_CLAIMS: &str =
    "UPDATE jobgraph_steps SET lease_until = lease_until - ?1 WHERE lease_until IS NOT NULL";

const AGE_EXPIRIES: &str =
    "UPDATE jobgraph_runs SET expires_at = expires_at - ?1 WHERE expires_at IS NOT NULL";

/// A run's graph and lease, and whether a client submitted it, for `reset_step`.
struct Head {
    graph: String,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    queued: bool,
}

const SELECT_HEAD: &str =
    "SELECT graph, lease_owner, lease_until, queued FROM jobgraph_runs WHERE id = ?1";

async fn select_head(conn: &mut SqliteConnection, run: &str) -> Result<Option<Head>, StoreError> {
    let Some(row) = sqlx::query(SELECT_HEAD)
        .bind(run)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    const T: &str = "jobgraph_runs";
    Ok(Some(Head {
        graph: get(&row, "graph", T)?,
        lease_owner: get(&row, "lease_owner", T)?,
        lease_until: get(&row, "lease_until", T)?,
        queued: get::<i64>(&row, "queued", T)? == 1,
    }))
}

/// A new run and its pending steps, read from its graph's JSON (`?5`): one round trip.
const INSERT_RUN: &str = "INSERT INTO jobgraph_runs
    (id, job, batch, input, graph, state, lease_owner, lease_until, created_at, updated_at)
    VALUES (?1, ?2, ?3, ?4, ?5, 'running', ?6, ?7, ?8, ?8);
INSERT INTO jobgraph_steps (run_id, name, position, state)
    SELECT ?1, json_extract(step.value, '$.name'), step.key, 'pending'
    FROM json_each(?5, '$.steps') AS step";

/// Inserts run `spec.id` and its steps, running under `owner`'s lease: the rows it inserted.
async fn insert_run(
    conn: &mut SqliteConnection,
    spec: &RunSpec<'_>,
    graph: &str,
    owner: &str,
    until: i64,
    now: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query(INSERT_RUN)
        .bind(spec.id)
        .bind(spec.job)
        .bind(spec.batch)
        .bind(spec.input)
        .bind(graph)
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Takes the lease; with `?5` true, the run is running again (its error cleared).
const TAKE_LEASE: &str = "UPDATE jobgraph_runs
    SET lease_owner = ?2, lease_until = ?3, updated_at = ?4,
        state = CASE WHEN ?5 THEN 'running' ELSE state END,
        error = CASE WHEN ?5 THEN NULL ELSE error END
    WHERE id = ?1";

async fn take_lease(
    conn: &mut SqliteConnection,
    run: &str,
    owner: &str,
    until: i64,
    now: i64,
    resume: bool,
) -> Result<(), StoreError> {
    sqlx::query(TAKE_LEASE)
        .bind(run)
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(resume)
        .execute(conn)
        .await?;
    Ok(())
}

const RESUME_STEPS: &str = "UPDATE jobgraph_steps SET state = 'pending', error = NULL
    WHERE run_id = ?1 AND state <> 'completed'";

async fn resume_steps(conn: &mut SqliteConnection, run: &str) -> Result<(), StoreError> {
    sqlx::query(RESUME_STEPS).bind(run).execute(conn).await?;
    Ok(())
}

/// Fencing in one statement: touches the run if `owner` holds its lease.
const FENCE: &str = "UPDATE jobgraph_runs SET updated_at = ?3 WHERE id = ?1 AND lease_owner = ?2";

const SELECT_EXISTS: &str = "SELECT 1 FROM jobgraph_runs WHERE id = ?1";

/// Whether the run exists.
async fn run_exists(conn: &mut SqliteConnection, run: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query(SELECT_EXISTS)
        .bind(run)
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// Ok if `owner` holds the run's lease (and marks the run written); else why not.
async fn fence(
    conn: &mut SqliteConnection,
    run: &str,
    owner: &str,
    now: i64,
) -> Result<(), StoreError> {
    let done = sqlx::query(FENCE)
        .bind(run)
        .bind(owner)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else if run_exists(conn, run).await? {
        Err(lease_lost(run, owner))
    } else {
        Err(no_such_run(run))
    }
}

const RENEW_LEASE: &str = "UPDATE jobgraph_runs SET lease_until = ?2 WHERE id = ?1";

async fn renew_lease(conn: &mut SqliteConnection, run: &str, until: i64) -> Result<(), StoreError> {
    sqlx::query(RENEW_LEASE)
        .bind(run)
        .bind(until)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a completed or failed step if `owner` (`?9`) holds the run's lease, and marks the
/// run written (`?10`): fencing and the write in one round trip. Changes 2 rows, or none.
const SETTLE_STEP: &str = "UPDATE jobgraph_steps
    SET state = ?3, attempts = ?4, output = ?5, error = ?6, started_at = ?7, ended_at = ?8
    WHERE run_id = ?1 AND name = ?2
        AND EXISTS (SELECT 1 FROM jobgraph_runs WHERE id = ?1 AND lease_owner = ?9);
UPDATE jobgraph_runs SET updated_at = ?10 WHERE id = ?1 AND changes() = 1";

/// Records a completed or failed step, fenced: [`StoreError::LeaseLost`],
/// [`StoreError::NoSuchRun`] or [`StoreError::NoSuchStep`] if it cannot (having changed
/// nothing but, diagnosing, the run's `updated_at`: the caller rolls back).
async fn settle_step(
    conn: &mut SqliteConnection,
    run: &str,
    owner: &str,
    state: StepStatus,
    outcome: &StepOutcome<'_>,
) -> Result<(), StoreError> {
    let now = now_ms();
    let done = sqlx::query(SETTLE_STEP)
        .bind(run)
        .bind(outcome.step)
        .bind(state.as_str())
        .bind(i64::from(outcome.attempts))
        .bind(outcome.output)
        .bind(outcome.error)
        .bind(outcome.started_at)
        .bind(outcome.ended_at)
        .bind(owner)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 2 {
        return Ok(());
    }
    // Nothing changed: the lease, the run or the step is missing. `fence` says which of the
    // first two.
    fence(conn, run, owner, now).await?;
    Err(no_such_step(run, outcome.step))
}

const SKIP_STEP: &str =
    "UPDATE jobgraph_steps SET state = 'skipped' WHERE run_id = ?1 AND name = ?2";

async fn skip_step(conn: &mut SqliteConnection, run: &str, step: &str) -> Result<(), StoreError> {
    let done = sqlx::query(SKIP_STEP)
        .bind(run)
        .bind(step)
        .execute(conn)
        .await?;
    match done.rows_affected() {
        0 => Err(no_such_step(run, step)),
        _ => Ok(()),
    }
}

const UPSERT_ELEMENT: &str = "INSERT INTO jobgraph_elements (run_id, step, idx, output)
    VALUES (?1, ?2, ?3, ?4)
    ON CONFLICT (run_id, step, idx) DO UPDATE SET output = excluded.output";

async fn upsert_element(
    conn: &mut SqliteConnection,
    run: &str,
    step: &str,
    index: usize,
    output: &str,
) -> Result<(), StoreError> {
    let index = i64::try_from(index).map_err(|_| no_such_step(run, step))?;
    let done = sqlx::query(UPSERT_ELEMENT)
        .bind(run)
        .bind(step)
        .bind(index)
        .bind(output)
        .execute(conn)
        .await;
    match done {
        Ok(_) => Ok(()),
        // The element's (run, step) must be a step of the run.
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
            Err(no_such_step(run, step))
        }
        Err(e) => Err(e.into()),
    }
}

const SELECT_ELEMENTS: &str = "SELECT idx, output FROM jobgraph_elements
    WHERE run_id = ?1 AND step = ?2 ORDER BY idx";

async fn select_elements(
    conn: &mut SqliteConnection,
    run: &str,
    step: &str,
) -> Result<Vec<(usize, String)>, StoreError> {
    let rows = sqlx::query(SELECT_ELEMENTS)
        .bind(run)
        .bind(step)
        .fetch_all(conn)
        .await?;
    const T: &str = "jobgraph_elements";
    rows.iter()
        .map(|row| {
            let idx: i64 = get(row, "idx", T)?;
            let idx = usize::try_from(idx).map_err(|_| StoreError::Corrupt {
                what: format!("element {idx} of step `{step}` of run `{run}` has a negative index"),
            })?;
            Ok((idx, get(row, "output", T)?))
        })
        .collect()
}

const SELECT_STEP_EXISTS: &str = "SELECT 1 FROM jobgraph_steps WHERE run_id = ?1 AND name = ?2";

async fn step_exists(
    conn: &mut SqliteConnection,
    run: &str,
    step: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query(SELECT_STEP_EXISTS)
        .bind(run)
        .bind(step)
        .fetch_optional(conn)
        .await?
        .is_some())
}

const FINISH_RUN: &str = "UPDATE jobgraph_runs
    SET state = ?3, error = ?4, lease_owner = NULL, lease_until = NULL, updated_at = ?5
    WHERE id = ?1 AND lease_owner = ?2";

/// Whether the run was finished (`owner` held its lease).
async fn finish_run(
    conn: &mut SqliteConnection,
    run: &str,
    owner: &str,
    state: RunState,
    error: Option<&str>,
    now: i64,
) -> Result<bool, StoreError> {
    let done = sqlx::query(FINISH_RUN)
        .bind(run)
        .bind(owner)
        .bind(state.as_str())
        .bind(error)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

const SELECT_RUN: &str =
    "SELECT id, job, batch, input, graph, state, error, created_at, updated_at,
        lease_owner, lease_until, queued
    FROM jobgraph_runs WHERE id = ?1";

async fn select_run(
    conn: &mut SqliteConnection,
    run: &str,
) -> Result<Option<StoredRun>, StoreError> {
    Ok(select_run_and_lease(conn, run)
        .await?
        .map(|(stored, _, _)| stored))
}

/// Who holds a run's lease, and until when (Unix ms).
type Lease = (Option<String>, Option<i64>);

/// The run (without its steps), its lease, and whether it was submitted (queued).
async fn select_run_and_lease(
    conn: &mut SqliteConnection,
    run: &str,
) -> Result<Option<(StoredRun, Lease, bool)>, StoreError> {
    let Some(row) = sqlx::query(SELECT_RUN)
        .bind(run)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    run_and_lease(&row, run).map(Some)
}

/// A row of [`SELECT_RUN`]'s columns: the run (without its steps), its lease, and whether it
/// was submitted.
fn run_and_lease(row: &SqliteRow, run: &str) -> Result<(StoredRun, Lease, bool), StoreError> {
    const T: &str = "jobgraph_runs";
    let stored = StoredRun {
        id: get(row, "id", T)?,
        job: get(row, "job", T)?,
        batch: get(row, "batch", T)?,
        input: get(row, "input", T)?,
        graph: graph(get(row, "graph", T)?, run)?,
        state: run_state(get(row, "state", T)?, run)?,
        error: get(row, "error", T)?,
        created_at: get(row, "created_at", T)?,
        updated_at: get(row, "updated_at", T)?,
        steps: Vec::new(),
    };
    let lease = (get(row, "lease_owner", T)?, get(row, "lease_until", T)?);
    Ok((stored, lease, get::<i64>(row, "queued", T)? == 1))
}

const SELECT_STEPS: &str = "SELECT name, state, attempts, output, error, started_at, ended_at
    FROM jobgraph_steps WHERE run_id = ?1 ORDER BY position";

async fn select_steps(
    conn: &mut SqliteConnection,
    run: &str,
) -> Result<Vec<StoredStep>, StoreError> {
    let rows = sqlx::query(SELECT_STEPS).bind(run).fetch_all(conn).await?;
    rows.iter().map(|row| stored_step(row, run)).collect()
}

/// A row of [`SELECT_STEPS`]'s columns: a step of run `run`.
fn stored_step(row: &SqliteRow, run: &str) -> Result<StoredStep, StoreError> {
    const T: &str = "jobgraph_steps";
    let name: String = get(row, "name", T)?;
    let attempts: i64 = get(row, "attempts", T)?;
    Ok(StoredStep {
        state: step_status(get(row, "state", T)?, run, &name)?,
        attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt {
            what: format!("step `{name}` of run `{run}` has {attempts} attempts"),
        })?,
        output: get(row, "output", T)?,
        error: get(row, "error", T)?,
        started_at: get(row, "started_at", T)?,
        ended_at: get(row, "ended_at", T)?,
        name,
    })
}

const SELECT_SUMMARIES: &str = "SELECT r.id, r.job, r.batch, r.state, r.created_at, r.updated_at,
        COUNT(CASE WHEN s.state = 'pending' THEN 1 END) AS pending,
        COUNT(CASE WHEN s.state = 'completed' THEN 1 END) AS completed,
        COUNT(CASE WHEN s.state = 'failed' THEN 1 END) AS failed,
        COUNT(CASE WHEN s.state = 'skipped' THEN 1 END) AS skipped,
        COUNT(CASE WHEN s.state = 'cancelled' THEN 1 END) AS cancelled
    FROM jobgraph_runs r LEFT JOIN jobgraph_steps s ON s.run_id = r.id
    WHERE (?1 IS NULL OR r.job = ?1) AND (?2 IS NULL OR r.state = ?2)
        AND (?3 IS NULL OR r.batch = ?3)
    GROUP BY r.id
    ORDER BY r.created_at DESC, r.rowid DESC
    LIMIT ?4";

async fn select_summaries(
    conn: &mut SqliteConnection,
    filter: &RunFilter,
) -> Result<Vec<RunSummary>, StoreError> {
    // SQLite reads a negative LIMIT as none.
    let limit = filter.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(-1));
    let rows = sqlx::query(SELECT_SUMMARIES)
        .bind(filter.job.as_deref())
        .bind(filter.state.map(RunState::as_str))
        .bind(filter.batch.as_deref())
        .bind(limit)
        .fetch_all(conn)
        .await?;
    const T: &str = "jobgraph_runs";
    let count = |row: &SqliteRow, column: &str| -> Result<usize, StoreError> {
        let n: i64 = get(row, column, T)?;
        usize::try_from(n).map_err(|_| StoreError::Corrupt {
            what: format!("a step count of {n}"),
        })
    };
    rows.iter()
        .map(|row| {
            let id: String = get(row, "id", T)?;
            Ok(RunSummary {
                job: get(row, "job", T)?,
                batch: get(row, "batch", T)?,
                state: run_state(get(row, "state", T)?, &id)?,
                created_at: get(row, "created_at", T)?,
                updated_at: get(row, "updated_at", T)?,
                steps: StepTally {
                    pending: count(row, "pending")?,
                    completed: count(row, "completed")?,
                    failed: count(row, "failed")?,
                    skipped: count(row, "skipped")?,
                    cancelled: count(row, "cancelled")?,
                },
                id,
            })
        })
        .collect()
}

const RESET_STEP: &str = "UPDATE jobgraph_steps
    SET state = 'pending', attempts = 0, output = NULL, error = NULL, started_at = NULL,
        ended_at = NULL
    WHERE run_id = ?1 AND name = ?2";

async fn reset_step(conn: &mut SqliteConnection, run: &str, step: &str) -> Result<(), StoreError> {
    let done = sqlx::query(RESET_STEP)
        .bind(run)
        .bind(step)
        .execute(conn)
        .await?;
    match done.rows_affected() {
        0 => Err(StoreError::Corrupt {
            what: format!("step `{step}` of run `{run}` is in its stored graph but has no row"),
        }),
        _ => Ok(()),
    }
}

const DELETE_ELEMENTS: &str = "DELETE FROM jobgraph_elements WHERE run_id = ?1 AND step = ?2";

async fn delete_elements(
    conn: &mut SqliteConnection,
    run: &str,
    step: &str,
) -> Result<(), StoreError> {
    sqlx::query(DELETE_ELEMENTS)
        .bind(run)
        .bind(step)
        .execute(conn)
        .await?;
    Ok(())
}

/// A run that ended (or was cancelled) becomes pending: the next open resumes it.
const MAKE_RESUMABLE: &str = "UPDATE jobgraph_runs SET
        state = CASE WHEN state IN ('succeeded', 'failed', 'cancelled') THEN 'pending' ELSE state END,
        error = CASE WHEN state IN ('succeeded', 'failed', 'cancelled') THEN NULL ELSE error END,
        updated_at = ?2
    WHERE id = ?1";

async fn make_resumable(
    conn: &mut SqliteConnection,
    run: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(MAKE_RESUMABLE)
        .bind(run)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

const SELECT_FAILED_RUNS: &str = "SELECT r.id FROM jobgraph_runs r
    JOIN jobgraph_steps s ON s.run_id = r.id
    WHERE r.job = ?1 AND s.name = ?2 AND s.state = 'failed'
    ORDER BY r.created_at DESC, r.rowid DESC";

async fn select_failed_runs(
    conn: &mut SqliteConnection,
    job: &str,
    step: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query(SELECT_FAILED_RUNS)
        .bind(job)
        .bind(step)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| get(row, "id", "jobgraph_runs"))
        .collect()
}

// ---- Writes, committed in groups ----------------------------------------------------------------

/// The most writes one transaction commits.
const MAX_GROUP: usize = 256;

/// A runner's write, with owned copies of its arguments: the group commit runs it in another
/// task.
enum Write {
    OpenRun {
        id: String,
        job: String,
        input: String,
        graph: GraphSpec,
        batch: Option<String>,
        owner: String,
        lease: Duration,
    },
    RenewLease {
        run: String,
        owner: String,
        lease: Duration,
    },
    /// A step completed or failed, and the steps its failure skips.
    SettleStep {
        run: String,
        owner: String,
        state: StepStatus,
        step: String,
        attempts: u32,
        output: Option<String>,
        error: Option<String>,
        started_at: Option<i64>,
        ended_at: i64,
        skipped: Vec<String>,
    },
    ElementCompleted {
        run: String,
        owner: String,
        step: String,
        index: usize,
        output: String,
    },
    FinishRun {
        run: String,
        owner: String,
        state: RunState,
        error: Option<String>,
    },
}

/// What a write returns: the run it opened, or nothing.
enum Written {
    Run(Box<StoredRun>),
    Done,
}

/// A write waiting for its group, and the caller waiting for its commit.
struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// The error of a write whose group commit is gone (the runtime that ran it shut down).
fn writer_gone() -> StoreError {
    StoreError::from(sqlx::Error::WorkerCrashed)
}

/// The connection the group commit writes on.
struct Writer {
    pool: SqlitePool,
    /// How to open a connection of the writer's own: a file's (an in-memory database has one
    /// pooled connection, shared).
    connect: Option<SqliteConnectOptions>,
    /// The writer's own connection, once open. A group on it costs 2 round trips to its thread:
    /// no pool checkout, and no ping when a pooled connection is given back.
    own: Option<SqliteConnection>,
}

/// Commits the writes of this process's runners in groups, until every store handle is dropped.
///
/// Each transaction takes every write queued while the previous one committed (at most
/// [`MAX_GROUP`]), in queue order: under concurrency, one commit (one fsync with
/// [`Synchronous::Full`]) serves many steps, and no caller hears of its write before the
/// transaction holding it committed.
async fn commit_groups(mut writer: Writer, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::new();
    while let Some(first) = queue.recv().await {
        group.push(first);
        take_queued(&mut queue, &mut group);
        // The callers answered by the last commit are woken but may not have run yet (on a
        // busy machine, or queued behind this task on its thread): let them queue their next
        // writes into this group rather than wait a whole commit for the next one.
        for _ in 0..MAX_YIELDS {
            let before = group.len();
            tokio::task::yield_now().await;
            take_queued(&mut queue, &mut group);
            if group.len() == before {
                break;
            }
        }
        commit_group(&mut writer, &mut group).await;
    }
}

/// How many times the group commit lets other tasks run while they add writes to its group.
const MAX_YIELDS: usize = 4;

/// Moves the writes waiting in `queue` into `group`, up to [`MAX_GROUP`].
fn take_queued(queue: &mut mpsc::UnboundedReceiver<Pending>, group: &mut Vec<Pending>) {
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(next) => group.push(next),
            Err(_) => break,
        }
    }
}

/// Commits `group`'s writes in one transaction and tells each caller, emptying `group`.
///
/// The group is written set-based ([`write_group`]): one statement per kind of write for all
/// the writes of that kind, their fencing decided from what the transaction read first. If a
/// statement fails, the transaction is rolled back and the group written again one write at a
/// time ([`commit_one_by_one`]), where a write that fails fails alone. If the transaction
/// cannot start (the write lock stayed taken past the busy timeout) or commit, every write of
/// the group fails with that error.
async fn commit_group(writer: &mut Writer, group: &mut Vec<Pending>) {
    // A caller that stopped waiting gets no write, as if it had dropped its transaction.
    group.retain(|pending| !pending.reply.is_closed());
    if group.is_empty() {
        return;
    }
    if writer.pool.is_closed() {
        writer.own = None;
        return fail_group(group, sqlx::Error::PoolClosed);
    }
    let writes: Vec<&Write> = group.iter().map(|pending| &pending.write).collect();
    let outcome = match &writer.connect {
        Some(connect) => {
            let conn = match &mut writer.own {
                Some(conn) => conn,
                own @ None => match SqliteConnection::connect_with(connect).await {
                    Ok(conn) => own.insert(conn),
                    Err(error) => return fail_group(group, error),
                },
            };
            let outcome = write_group(conn, &writes, true).await;
            if !matches!(outcome, Ok(_) | Err(Trouble::OneByOne { clean: true })) {
                // Whatever state it was left in, a new connection starts clean.
                writer.own = None;
            }
            outcome
        }
        None => match writer.pool.begin_with("BEGIN IMMEDIATE").await {
            Err(error) => Err(Trouble::Failed(error)),
            Ok(mut tx) => match write_group(&mut tx, &writes, false).await {
                Ok(answers) => match tx.commit().await {
                    Ok(()) => Ok(answers),
                    Err(error) => Err(Trouble::Failed(error)),
                },
                Err(trouble) => Err(trouble),
            },
        },
    };
    drop(writes);
    match outcome {
        Ok(answers) => {
            for (pending, answer) in group.drain(..).zip(answers) {
                let _ = pending.reply.send(answer);
            }
        }
        Err(Trouble::Failed(error)) => fail_group(group, error),
        Err(Trouble::OneByOne { .. }) => commit_one_by_one(&writer.pool, group).await,
    }
}

/// Commits `group`'s writes in one transaction, each write its own statements, and tells each
/// caller, emptying `group`: the way back when a set-based statement failed.
///
/// A write that fails (its fencing, a missing step, a statement) fails alone, as it would have
/// in a transaction of its own after the writes queued before it: the transaction is rolled
/// back and the others run again without it. If the transaction cannot start or commit, every
/// write of the group fails with that error.
async fn commit_one_by_one(pool: &SqlitePool, group: &mut Vec<Pending>) {
    loop {
        group.retain(|pending| !pending.reply.is_closed());
        if group.is_empty() {
            return;
        }
        let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => tx,
            Err(error) => return fail_group(group, error),
        };
        let mut written = Vec::with_capacity(group.len());
        let mut failed = None;
        for (index, pending) in group.iter().enumerate() {
            match apply(&mut tx, &pending.write).await {
                Ok(done) => written.push(done),
                Err(error) => {
                    failed = Some((index, error));
                    break;
                }
            }
        }
        if let Some((index, error)) = failed {
            let _ = tx.rollback().await;
            let pending = group.remove(index);
            let _ = pending.reply.send(Err(error));
            continue;
        }
        if let Err(error) = tx.commit().await {
            return fail_group(group, error);
        }
        for (pending, done) in group.drain(..).zip(written) {
            let _ = pending.reply.send(Ok(done));
        }
        return;
    }
}

/// Tells every caller of `group` that its transaction failed with `error`.
fn fail_group(group: &mut Vec<Pending>, error: sqlx::Error) {
    let error = Arc::new(error);
    for pending in group.drain(..) {
        let shared = GroupFailed(Arc::clone(&error));
        let _ = pending
            .reply
            .send(Err(StoreError::Database(Box::new(shared))));
    }
}

/// The database error of a group's transaction, told to each of its writes.
#[derive(Debug)]
struct GroupFailed(Arc<sqlx::Error>);

impl fmt::Display for GroupFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the transaction committing this write with others failed")
    }
}

impl std::error::Error for GroupFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// One write's statements, in the caller's transaction.
fn apply<'c>(
    conn: &'c mut SqliteConnection,
    write: &'c Write,
) -> BoxFuture<'c, Result<Written, StoreError>> {
    async move {
        match write {
            Write::OpenRun {
                id,
                job,
                input,
                graph,
                batch,
                owner,
                lease,
            } => {
                let spec = RunSpec {
                    id,
                    job,
                    input,
                    graph,
                    batch: batch.as_deref(),
                };
                let run = open_run(conn, &spec, owner, *lease).await?;
                Ok(Written::Run(Box::new(run)))
            }
            Write::RenewLease { run, owner, lease } => {
                let now = now_ms();
                fence(conn, run, owner, now).await?;
                renew_lease(conn, run, plus(now, *lease)).await?;
                Ok(Written::Done)
            }
            Write::SettleStep {
                run,
                owner,
                state,
                step,
                attempts,
                output,
                error,
                started_at,
                ended_at,
                skipped,
            } => {
                let outcome = StepOutcome {
                    step,
                    attempts: *attempts,
                    output: output.as_deref(),
                    error: error.as_deref(),
                    started_at: *started_at,
                    ended_at: *ended_at,
                };
                settle_step(conn, run, owner, *state, &outcome).await?;
                for step in skipped {
                    skip_step(conn, run, step).await?;
                }
                Ok(Written::Done)
            }
            Write::ElementCompleted {
                run,
                owner,
                step,
                index,
                output,
            } => {
                fence(conn, run, owner, now_ms()).await?;
                upsert_element(conn, run, step, *index, output).await?;
                Ok(Written::Done)
            }
            Write::FinishRun {
                run,
                owner,
                state,
                error,
            } => {
                if finish_run(conn, run, owner, *state, error.as_deref(), now_ms()).await? {
                    Ok(Written::Done)
                } else if run_exists(conn, run).await? {
                    Err(lease_lost(run, owner))
                } else {
                    Err(no_such_run(run))
                }
            }
        }
    }
    .boxed()
}

// ---- A group, set-based -------------------------------------------------------------------------

/// What a segment of a group reads first, in one round trip and one row (each row is a message
/// from the connection's thread): who holds the lease of each run its writes touch (the first
/// argument: run ids; `[id, owner]` pairs), which of the steps they name exist (the second:
/// `[run, step]` pairs), the runs it opens (the third: run ids; [`SELECT_RUN`]'s columns) with
/// their steps (the fourth: the same ids; [`SELECT_STEPS`]' columns and the run's id first,
/// in graph order), and how many rows the connection changed so far (for
/// [`CHECK`]).
///
/// The arguments are JSON arrays, bound to `?` in order (sqlx binds a script's `?`s one after
/// the other, statement after statement; numbered ones it would bind wrong).
macro_rules! read_sql {
    () => {
        "SELECT
    (SELECT json_group_array(json_array(r.id, r.lease_owner)) FROM jobgraph_runs AS r
        WHERE r.id IN (SELECT value FROM json_each(?))) AS leases,
    (SELECT json_group_array(json_array(s.run_id, s.name)) FROM json_each(?) AS k
        JOIN jobgraph_steps AS s ON s.run_id = k.value ->> 0 AND s.name = k.value ->> 1)
        AS steps,
    (SELECT json_group_array(json_array(r.id, r.job, r.batch, r.input, r.graph, r.state,
            r.error, r.created_at, r.updated_at, r.lease_owner, r.lease_until, r.queued))
        FROM jobgraph_runs AS r WHERE r.id IN (SELECT value FROM json_each(?))) AS runs,
    (SELECT json_group_array(json_array(s.run_id, s.name, s.state, s.attempts, s.output,
            s.error, s.started_at, s.ended_at) ORDER BY s.run_id, s.position)
        FROM jobgraph_steps AS s WHERE s.run_id IN (SELECT value FROM json_each(?)))
        AS run_steps,
    total_changes() AS changes"
    };
}

/// What a segment of a group writes: one statement per kind of write for all its writes of
/// that kind, in this order, then [`CHECK`]. A segment's script holds only the statements of
/// the kinds it writes ([`Plan::sql`]): sqlx sends a result from the connection's thread for
/// each statement run, and most groups write 4 or 5 kinds of the 10. Each takes JSON arrays with
/// one element per write and, where marked `now`, the time, bound to `?` in order (see
/// [`read_sql!`]): new runs `[id, job, batch, input, graph, owner, until]` (the runs, then
/// their steps, read from the graph), leases taken `[id, owner, until, resume]` (the runs, then
/// a resumed run's unfinished steps, pending again), settled steps `[run, step, state,
/// attempts, output, error, started_at, ended_at]`, skipped steps `[run, step]`, elements
/// `[run, step, index, output]`, renewed leases `[run, until]`, finished runs `[run, state,
/// error]`, and the runs written (ids).
const WRITES: [&str; WRITE_KINDS] = [
    // now, now, new runs
    "INSERT INTO jobgraph_runs
    (id, job, batch, input, graph, state, lease_owner, lease_until, created_at, updated_at)
    SELECT w.value ->> 0, w.value ->> 1, w.value ->> 2, w.value ->> 3, w.value ->> 4, 'running',
        w.value ->> 5, w.value ->> 6, ?, ?
    FROM json_each(?) AS w",
    // new runs
    "INSERT INTO jobgraph_steps (run_id, name, position, state)
    SELECT w.value ->> 0, json_extract(step.value, '$.name'), step.key, 'pending'
    FROM json_each(?) AS w, json_each(w.value ->> 4, '$.steps') AS step",
    // now, leases
    "UPDATE jobgraph_runs
    SET lease_owner = w.value ->> 1, lease_until = w.value ->> 2, updated_at = ?,
        state = CASE WHEN w.value ->> 3 THEN 'running' ELSE jobgraph_runs.state END,
        error = CASE WHEN w.value ->> 3 THEN NULL ELSE jobgraph_runs.error END
    FROM json_each(?) AS w WHERE jobgraph_runs.id = w.value ->> 0",
    // leases
    "UPDATE jobgraph_steps SET state = 'pending', error = NULL
    WHERE jobgraph_steps.state <> 'completed' AND jobgraph_steps.run_id IN
        (SELECT w.value ->> 0 FROM json_each(?) AS w WHERE w.value ->> 3)",
    // settled steps
    "UPDATE jobgraph_steps
    SET state = w.value ->> 2, attempts = w.value ->> 3, output = w.value ->> 4,
        error = w.value ->> 5, started_at = w.value ->> 6, ended_at = w.value ->> 7
    FROM json_each(?) AS w
    WHERE jobgraph_steps.run_id = w.value ->> 0 AND jobgraph_steps.name = w.value ->> 1",
    // skipped steps
    "UPDATE jobgraph_steps SET state = 'skipped'
    FROM json_each(?) AS w
    WHERE jobgraph_steps.run_id = w.value ->> 0 AND jobgraph_steps.name = w.value ->> 1",
    // elements
    "INSERT INTO jobgraph_elements (run_id, step, idx, output)
    SELECT w.value ->> 0, w.value ->> 1, w.value ->> 2, w.value ->> 3 FROM json_each(?) AS w
    WHERE true
    ON CONFLICT (run_id, step, idx) DO UPDATE SET output = excluded.output",
    // renewed leases
    "UPDATE jobgraph_runs SET lease_until = w.value ->> 1
    FROM json_each(?) AS w WHERE jobgraph_runs.id = w.value ->> 0",
    // now, finished runs
    "UPDATE jobgraph_runs
    SET state = w.value ->> 1, error = w.value ->> 2, lease_owner = NULL, lease_until = NULL,
        updated_at = ?
    FROM json_each(?) AS w WHERE jobgraph_runs.id = w.value ->> 0",
    // now, the runs written
    "UPDATE jobgraph_runs SET updated_at = ?
    WHERE jobgraph_runs.id IN (SELECT w.value FROM json_each(?) AS w)",
];

/// How many kinds of statements [`WRITES`] has.
const WRITE_KINDS: usize = 10;

/// The end of a segment's writes: a check that they changed as many rows as planned (the
/// connection's total of changed rows they must reach, bound to `?`); it fails the script with
/// malformed JSON otherwise, before the commit.
const CHECK: &str = "SELECT json(CASE WHEN total_changes() = ? THEN 'null' ELSE '{' END)";

/// A segment's reads, in the group's open transaction.
const READ: &str = read_sql!();
/// The first segment's reads on the writer's own connection: the transaction begins with them.
const BEGIN_AND_READ: &str = concat!("BEGIN IMMEDIATE;\n", read_sql!());
/// How many statements [`READ`] is.
const READ_STATEMENTS: usize = 1;
/// Why a group was not written set-based.
enum Trouble {
    /// The transaction could not begin or commit: every write of the group fails with this.
    Failed(sqlx::Error),
    /// A statement failed: the transaction was rolled back (on the writer's own connection:
    /// `clean` if the rollback succeeded), and the group is to be written one write at a time.
    OneByOne { clean: bool },
}

/// Writes `writes` set-based and answers each, in order, as if each had been written alone
/// after the ones before it: 2 round trips per segment (see [`segments`]), usually one segment
/// per group.
///
/// With `own` the connection is the writer's own, not in a transaction: the first round trip
/// begins the transaction and the last one commits it. Without, the caller's transaction holds
/// the writes and the caller commits.
async fn write_group(
    conn: &mut SqliteConnection,
    writes: &[&Write],
    own: bool,
) -> Result<Vec<Result<Written, StoreError>>, Trouble> {
    let segments = segments(writes);
    let mut answers = Vec::with_capacity(writes.len());
    let last = segments.len().saturating_sub(1);
    for (n, range) in segments.into_iter().enumerate() {
        let segment = &writes[range];
        let begin = own && n == 0;
        let commit = own && n == last;
        let asks = Asks::of(segment);
        let opened = json(&asks.opened);
        let read = sqlx::query(if begin { BEGIN_AND_READ } else { READ })
            .bind(json(&asks.runs))
            .bind(json(&asks.steps))
            .bind(opened.clone())
            .bind(opened);
        let rows = match script(conn, read, READ_STATEMENTS + usize::from(begin)).await {
            Ok(rows) => rows,
            // No transaction began.
            Err((0, error)) if begin => return Err(Trouble::Failed(error)),
            Err(_) => return Err(rolled_back(conn, own).await),
        };
        let Ok(mut seen) = Seen::read(&rows[usize::from(begin)..]) else {
            // A stored run that does not read: its write fails alone, one write at a time.
            return Err(rolled_back(conn, own).await);
        };
        let now = now_ms();
        let mut plan = Plan::default();
        for write in segment {
            answers.push(plan.write(write, &mut seen, now));
        }
        let (sql, statements) = plan.sql(commit);
        let write = plan.query(&sql, now, seen.changes);
        match script(conn, write, statements + usize::from(commit)).await {
            Ok(_) => {}
            Err((at, error)) if commit && at == statements => {
                return Err(Trouble::Failed(error));
            }
            Err(_) => return Err(rolled_back(conn, own).await),
        }
    }
    Ok(answers)
}

/// After a failed statement: rolls the writer's own connection back (the caller's transaction
/// rolls back when dropped).
async fn rolled_back(conn: &mut SqliteConnection, own: bool) -> Trouble {
    let clean = !own || sqlx::query("ROLLBACK").execute(conn).await.is_ok();
    Trouble::OneByOne { clean }
}

/// `value` as JSON.
fn json<T: serde::Serialize>(value: &T) -> String {
    // Strings, numbers, booleans, arrays and maps with string keys: serializing cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

/// Runs `script`, `statements` statements, and returns the rows of each; on an error, which
/// statement failed (the ones before it ran).
async fn script<'q>(
    conn: &mut SqliteConnection,
    script: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    statements: usize,
) -> Result<Vec<Vec<SqliteRow>>, (usize, sqlx::Error)> {
    let mut rows: Vec<Vec<SqliteRow>> = (0..statements).map(|_| Vec::new()).collect();
    let mut at = 0;
    let mut results = conn.fetch_many(script);
    while let Some(result) = results.next().await {
        match result {
            Ok(sqlx::Either::Left(_)) => at += 1,
            Ok(sqlx::Either::Right(row)) => {
                if let Some(rows) = rows.get_mut(at) {
                    rows.push(row);
                }
            }
            Err(error) => return Err((at, error)),
        }
    }
    Ok(rows)
}

/// Splits a group into segments that can each be written set-based: a write starts a new
/// segment if it opens a run a write before it in the segment touched (the run must be read
/// after those writes), or if it writes what a write before it in the segment writes (the
/// same step, element, lease renewal or finish: one statement cannot write a row twice in
/// order). Every other pair of writes commutes, given the order of [`WRITES`]'s statements
/// (runs opened first, finished last).
fn segments(writes: &[&Write]) -> Vec<std::ops::Range<usize>> {
    #[derive(Default)]
    struct Keys<'w> {
        runs: HashSet<&'w str>,
        steps: HashSet<(&'w str, &'w str)>,
        elements: HashSet<(&'w str, &'w str, usize)>,
        renewed: HashSet<&'w str>,
        finished: HashSet<&'w str>,
    }
    impl<'w> Keys<'w> {
        /// Adds `write`'s keys; false (adding nothing) if it must start a new segment.
        fn add(&mut self, write: &'w Write) -> bool {
            let fits = match write {
                Write::OpenRun { id, .. } => !self.runs.contains(id.as_str()),
                Write::RenewLease { run, .. } => self.renewed.insert(run),
                Write::SettleStep {
                    run, step, skipped, ..
                } => {
                    let names = || std::iter::once(step).chain(skipped);
                    if names().any(|s| self.steps.contains(&(run.as_str(), s.as_str()))) {
                        false
                    } else {
                        self.steps
                            .extend(names().map(|s| (run.as_str(), s.as_str())));
                        true
                    }
                }
                Write::ElementCompleted {
                    run, step, index, ..
                } => self.elements.insert((run, step, *index)),
                Write::FinishRun { run, .. } => self.finished.insert(run),
            };
            if fits {
                self.runs.insert(write.run());
            }
            fits
        }
    }
    let mut segments = Vec::new();
    let mut keys = Keys::default();
    let mut start = 0;
    for (i, write) in writes.iter().enumerate() {
        if !keys.add(write) {
            segments.push(start..i);
            start = i;
            keys = Keys::default();
            keys.add(write);
        }
    }
    segments.push(start..writes.len());
    segments
}

impl Write {
    /// The run the write is about.
    fn run(&self) -> &str {
        match self {
            Write::OpenRun { id: run, .. }
            | Write::RenewLease { run, .. }
            | Write::SettleStep { run, .. }
            | Write::ElementCompleted { run, .. }
            | Write::FinishRun { run, .. } => run,
        }
    }
}

/// What a segment asks [`READ`].
#[derive(Default)]
struct Asks<'w> {
    /// The runs of its writes but the opens.
    runs: BTreeSet<&'w str>,
    /// The steps its writes name.
    steps: Vec<(&'w str, &'w str)>,
    /// The runs it opens.
    opened: Vec<&'w str>,
}

impl<'w> Asks<'w> {
    fn of(writes: &[&'w Write]) -> Self {
        let mut asks = Asks::default();
        for write in writes {
            match write {
                Write::OpenRun { id, .. } => asks.opened.push(id),
                Write::RenewLease { run, .. } | Write::FinishRun { run, .. } => {
                    asks.runs.insert(run);
                }
                Write::SettleStep {
                    run, step, skipped, ..
                } => {
                    asks.runs.insert(run);
                    asks.steps.push((run, step));
                    asks.steps
                        .extend(skipped.iter().map(|s| (run.as_str(), s.as_str())));
                }
                Write::ElementCompleted { run, step, .. } => {
                    asks.runs.insert(run);
                    asks.steps.push((run, step));
                }
            }
        }
        asks
    }
}

/// What a segment read, as its writes change it: each existing run's lease owner, the steps
/// that exist, and the stored runs it opens.
#[derive(Default)]
struct Seen {
    /// The connection's total of changed rows, before the segment writes.
    changes: i64,
    owners: HashMap<String, Option<String>>,
    steps: HashMap<String, HashSet<String>>,
    /// Each run opened: the run (its steps too), its lease, and whether it was submitted.
    runs: HashMap<String, (StoredRun, Lease, bool)>,
}

impl Seen {
    /// From [`READ`]'s rows, statement by statement.
    fn read(rows: &[Vec<SqliteRow>]) -> Result<Seen, StoreError> {
        const T: &str = "a group's reads";
        let [read] = rows else {
            return Err(StoreError::Corrupt {
                what: format!("a group's reads returned {} results", rows.len()),
            });
        };
        let [row] = read.as_slice() else {
            return Err(StoreError::Corrupt {
                what: format!("a group's reads returned {} rows", read.len()),
            });
        };
        let decode = |column: &str| -> Result<String, StoreError> { get(row, column, T) };
        let corrupt = |e: serde_json::Error| StoreError::Corrupt {
            what: format!("a group's reads cannot be read ({e})"),
        };
        let leases: Vec<(String, Option<String>)> =
            serde_json::from_str(&decode("leases")?).map_err(corrupt)?;
        let steps: Vec<(String, String)> =
            serde_json::from_str(&decode("steps")?).map_err(corrupt)?;
        let runs: Vec<ReadRun> = serde_json::from_str(&decode("runs")?).map_err(corrupt)?;
        let run_steps: Vec<ReadStep> =
            serde_json::from_str(&decode("run_steps")?).map_err(corrupt)?;
        let mut seen = Seen {
            changes: get(row, "changes", T)?,
            ..Seen::default()
        };
        seen.owners.extend(leases);
        for (run, step) in steps {
            seen.steps.entry(run).or_default().insert(step);
        }
        for (
            id,
            job,
            batch,
            input,
            graph_text,
            state,
            error,
            created,
            updated,
            owner,
            until,
            queued,
        ) in runs
        {
            let run = StoredRun {
                graph: graph(&graph_text, &id)?,
                state: run_state(&state, &id)?,
                id: id.clone(),
                job,
                batch,
                input,
                error,
                created_at: created,
                updated_at: updated,
                steps: Vec::new(),
            };
            seen.owners.insert(id.clone(), owner.clone());
            seen.runs.insert(id, (run, (owner, until), queued == 1));
        }
        for (id, name, state, attempts, output, error, started_at, ended_at) in run_steps {
            let step = StoredStep {
                state: step_status(&state, &id, &name)?,
                attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt {
                    what: format!("step `{name}` of run `{id}` has {attempts} attempts"),
                })?,
                output,
                error,
                started_at,
                ended_at,
                name,
            };
            seen.steps
                .entry(id.clone())
                .or_default()
                .insert(step.name.clone());
            if let Some((run, _, _)) = seen.runs.get_mut(&id) {
                run.steps.push(step);
            }
        }
        Ok(seen)
    }

    /// Ok if `owner` holds run `run`'s lease; else why not ([`fence`]'s answer).
    fn fence(&self, run: &str, owner: &str) -> Result<(), StoreError> {
        match self.owners.get(run) {
            None => Err(no_such_run(run)),
            Some(holder) if holder.as_deref() == Some(owner) => Ok(()),
            Some(_) => Err(lease_lost(run, owner)),
        }
    }

    /// Ok if run `run` has step `step`; else [`StoreError::NoSuchStep`].
    fn step(&self, run: &str, step: &str) -> Result<(), StoreError> {
        if self
            .steps
            .get(run)
            .is_some_and(|steps| steps.contains(step))
        {
            Ok(())
        } else {
            Err(no_such_step(run, step))
        }
    }
}

/// A run opened, as [`read_sql!`] reads it.
type ReadRun = (
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    i64,
    i64,
    Option<String>,
    Option<i64>,
    i64,
);

/// A step of a run opened, as [`read_sql!`] reads it.
type ReadStep = (
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A settled step, as [`WRITES`] takes it.
type Settled<'w> = (
    &'w str,
    &'w str,
    &'static str,
    u32,
    Option<&'w str>,
    Option<&'w str>,
    Option<i64>,
    i64,
);

/// A new run, as [`WRITES`] takes it.
type NewRun<'w> = (
    &'w str,
    &'w str,
    Option<&'w str>,
    &'w str,
    String,
    &'w str,
    i64,
);

/// What a segment writes: [`WRITES`]'s arguments.
#[derive(Default)]
struct Plan<'w> {
    runs: Vec<NewRun<'w>>,
    steps: usize,
    leases: Vec<(&'w str, &'w str, i64, bool)>,
    /// The unfinished steps of the runs resumed, pending again.
    resumed: usize,
    settled: Vec<Settled<'w>>,
    skipped: BTreeSet<(&'w str, &'w str)>,
    elements: Vec<(&'w str, &'w str, i64, &'w str)>,
    renewed: Vec<(&'w str, i64)>,
    finished: Vec<(&'w str, &'static str, Option<&'w str>)>,
    touched: BTreeSet<&'w str>,
}

impl<'w> Plan<'w> {
    /// Plans `write` as [`apply`] would write it after the writes planned before it (`seen`
    /// is what they left), and answers it as `apply` would; a write that fails plans nothing.
    fn write(
        &mut self,
        write: &'w Write,
        seen: &mut Seen,
        now: i64,
    ) -> Result<Written, StoreError> {
        match write {
            Write::OpenRun {
                id,
                job,
                input,
                graph,
                batch,
                owner,
                lease,
            } => {
                let until = plus(now, *lease);
                let Some((mut run, (holder, held_until), queued)) = seen.runs.remove(id) else {
                    if let Some(reason) = graph.check() {
                        return Err(StoreError::InvalidGraph {
                            run: id.clone(),
                            reason,
                        });
                    }
                    let text =
                        serde_json::to_string(graph).map_err(|e| StoreError::InvalidGraph {
                            run: id.clone(),
                            reason: e.to_string(),
                        })?;
                    self.runs
                        .push((id, job, batch.as_deref(), input, text, owner, until));
                    self.steps += graph.steps.len();
                    seen.owners.insert(id.clone(), Some(owner.clone()));
                    seen.steps.insert(
                        id.clone(),
                        graph.steps.iter().map(|s| s.name.clone()).collect(),
                    );
                    let spec = RunSpec {
                        id,
                        job,
                        input,
                        graph,
                        batch: batch.as_deref(),
                    };
                    return Ok(Written::Run(Box::new(new_run(&spec, now))));
                };
                let live = holder.as_deref().zip(held_until).filter(|l| l.1 > now);
                check_open(id, &run.job, queued, live, job, owner)?;
                let resume = !run.state.is_terminal();
                self.leases.push((id, owner, until, resume));
                if resume {
                    run.state = RunState::Running;
                    run.error = None;
                    for step in &mut run.steps {
                        if step.state != StepStatus::Completed {
                            step.state = StepStatus::Pending;
                            step.error = None;
                            self.resumed += 1;
                        }
                    }
                }
                run.updated_at = now;
                seen.owners.insert(id.clone(), Some(owner.clone()));
                Ok(Written::Run(Box::new(run)))
            }
            Write::RenewLease { run, owner, lease } => {
                seen.fence(run, owner)?;
                self.renewed.push((run, plus(now, *lease)));
                self.touched.insert(run);
                Ok(Written::Done)
            }
            Write::SettleStep {
                run,
                owner,
                state,
                step,
                attempts,
                output,
                error,
                started_at,
                ended_at,
                skipped,
            } => {
                seen.fence(run, owner)?;
                seen.step(run, step)?;
                for skip in skipped {
                    seen.step(run, skip)?;
                }
                self.settled.push((
                    run,
                    step,
                    state.as_str(),
                    *attempts,
                    output.as_deref(),
                    error.as_deref(),
                    *started_at,
                    *ended_at,
                ));
                self.skipped
                    .extend(skipped.iter().map(|s| (run.as_str(), s.as_str())));
                self.touched.insert(run);
                Ok(Written::Done)
            }
            Write::ElementCompleted {
                run,
                owner,
                step,
                index,
                output,
            } => {
                seen.fence(run, owner)?;
                let index = i64::try_from(*index).map_err(|_| no_such_step(run, step))?;
                seen.step(run, step)?;
                self.elements.push((run, step, index, output));
                self.touched.insert(run);
                Ok(Written::Done)
            }
            Write::FinishRun {
                run,
                owner,
                state,
                error,
            } => {
                seen.fence(run, owner)?;
                self.finished.push((run, state.as_str(), error.as_deref()));
                seen.owners.insert(run.clone(), None);
                Ok(Written::Done)
            }
        }
    }

    /// Which of [`WRITES`]' statements the segment runs: those of the kinds it writes (a
    /// resumed run whose steps all completed has none to make pending again).
    fn kinds(&self) -> [bool; WRITE_KINDS] {
        [
            !self.runs.is_empty(),
            !self.runs.is_empty(),
            !self.leases.is_empty(),
            self.resumed > 0,
            !self.settled.is_empty(),
            !self.skipped.is_empty(),
            !self.elements.is_empty(),
            !self.renewed.is_empty(),
            !self.finished.is_empty(),
            !self.touched.is_empty(),
        ]
    }

    /// The segment's script: its statements of [`WRITES`], [`CHECK`], and with `commit` a
    /// `COMMIT`; and how many statements it has before the commit.
    fn sql(&self, commit: bool) -> (String, usize) {
        let mut sql = String::new();
        let mut statements = 0;
        for (statement, runs) in WRITES.iter().zip(self.kinds()) {
            if runs {
                sql.push_str(statement);
                sql.push_str(";\n");
                statements += 1;
            }
        }
        sql.push_str(CHECK);
        if commit {
            sql.push_str(";\nCOMMIT");
        }
        (sql, statements + 1)
    }

    /// The segment's script `sql` ([`Plan::sql`]) with the plan bound to it: the connection's
    /// total of changed rows was `changes` before.
    fn query<'q>(
        &self,
        sql: &'q str,
        now: i64,
        changes: i64,
    ) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
        let planned = self.runs.len()
            + self.steps
            + self.leases.len()
            + self.resumed
            + self.settled.len()
            + self.skipped.len()
            + self.elements.len()
            + self.renewed.len()
            + self.finished.len()
            + self.touched.len();
        let total = changes.saturating_add(i64::try_from(planned).unwrap_or(i64::MAX));
        let [
            runs,
            steps,
            leases,
            resumed,
            settled,
            skipped,
            elements,
            renewed,
            finished,
            touched,
        ] = self.kinds();
        let mut query = sqlx::query(sql);
        if runs {
            query = query.bind(now).bind(now).bind(json(&self.runs));
        }
        if steps {
            query = query.bind(json(&self.runs));
        }
        if leases {
            query = query.bind(now).bind(json(&self.leases));
        }
        if resumed {
            query = query.bind(json(&self.leases));
        }
        if settled {
            query = query.bind(json(&self.settled));
        }
        if skipped {
            query = query.bind(json(&self.skipped));
        }
        if elements {
            query = query.bind(json(&self.elements));
        }
        if renewed {
            query = query.bind(json(&self.renewed));
        }
        if finished {
            query = query.bind(now).bind(json(&self.finished));
        }
        if touched {
            query = query.bind(now).bind(json(&self.touched));
        }
        query.bind(total)
    }
}

/// Creates or loads the run and takes its lease (see [`Store::open_run`]): 2 round trips for
/// a new run, 4 for a stored one. The run returned is what was written, not read back.
async fn open_run(
    conn: &mut SqliteConnection,
    spec: &RunSpec<'_>,
    owner: &str,
    lease: Duration,
) -> Result<StoredRun, StoreError> {
    let now = now_ms();
    let until = plus(now, lease);
    let Some((mut run, (holder, held_until), queued)) = select_run_and_lease(conn, spec.id).await?
    else {
        if let Some(reason) = spec.graph.check() {
            return Err(StoreError::InvalidGraph {
                run: spec.id.to_owned(),
                reason,
            });
        }
        let invalid = |reason: String| StoreError::InvalidGraph {
            run: spec.id.to_owned(),
            reason,
        };
        let graph = serde_json::to_string(spec.graph).map_err(|e| invalid(e.to_string()))?;
        let inserted = insert_run(conn, spec, &graph, owner, until, now).await?;
        let steps = spec.graph.steps.len();
        if usize::try_from(inserted).ok() != Some(1 + steps) {
            return Err(invalid(format!(
                "its {steps} steps were stored as {} rows",
                inserted.saturating_sub(1)
            )));
        }
        return Ok(new_run(spec, now));
    };
    let live = holder.as_deref().zip(held_until).filter(|l| l.1 > now);
    check_open(spec.id, &run.job, queued, live, spec.job, owner)?;
    let resume = !run.state.is_terminal();
    take_lease(conn, spec.id, owner, until, now, resume).await?;
    if resume {
        resume_steps(conn, spec.id).await?;
        run.state = RunState::Running;
        run.error = None;
    }
    run.updated_at = now;
    run.steps = select_steps(conn, spec.id).await?;
    Ok(run)
}

/// The run `open_run` created from `spec` at `now`, as it was written.
fn new_run(spec: &RunSpec<'_>, now: i64) -> StoredRun {
    StoredRun {
        id: spec.id.to_owned(),
        job: spec.job.to_owned(),
        batch: spec.batch.map(str::to_owned),
        input: spec.input.to_owned(),
        graph: spec.graph.clone(),
        state: RunState::Running,
        error: None,
        created_at: now,
        updated_at: now,
        steps: spec
            .graph
            .steps
            .iter()
            .map(|step| StoredStep {
                name: step.name.clone(),
                state: StepStatus::Pending,
                attempts: 0,
                output: None,
                error: None,
                started_at: None,
                ended_at: None,
            })
            .collect(),
    }
}

impl SqliteStore {
    /// What the queue's commits made ready ([`Queue::wait_ready`](super::queue::Queue::wait_ready)).
    pub(super) fn news(&self) -> &super::ready::Local {
        &self.news
    }

    /// Queues `write` for the group commit; returns once the transaction holding it committed.
    async fn write(&self, write: Write) -> Result<Written, StoreError> {
        let (reply, committed) = oneshot::channel();
        self.writes
            .send(Pending { write, reply })
            .map_err(|_| writer_gone())?;
        committed.await.map_err(|_| writer_gone())?
    }

    /// [`SqliteStore::write`], for a write that returns nothing.
    async fn write_done(&self, write: Write) -> Result<(), StoreError> {
        self.write(write).await.map(|_| ())
    }
}

// ---- The contract -------------------------------------------------------------------------------

impl Store for SqliteStore {
    fn open_run<'a>(
        &'a self,
        spec: RunSpec<'a>,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<StoredRun, StoreError>> {
        let write = Write::OpenRun {
            id: spec.id.to_owned(),
            job: spec.job.to_owned(),
            input: spec.input.to_owned(),
            graph: spec.graph.clone(),
            batch: spec.batch.map(str::to_owned),
            owner: owner.to_owned(),
            lease,
        };
        async move {
            match self.write(write).await? {
                Written::Run(run) => Ok(*run),
                Written::Done => Err(no_such_run(spec.id)),
            }
        }
        .boxed()
    }

    fn renew_lease<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.write_done(Write::RenewLease {
            run: run_id.to_owned(),
            owner: owner.to_owned(),
            lease,
        })
        .boxed()
    }

    fn step_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.write_done(settle(run_id, owner, StepStatus::Completed, &outcome, &[]))
            .boxed()
    }

    fn step_failed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
        skipped: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.write_done(settle(run_id, owner, StepStatus::Failed, &outcome, skipped))
            .boxed()
    }

    fn element_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        step: &'a str,
        index: usize,
        output: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.write_done(Write::ElementCompleted {
            run: run_id.to_owned(),
            owner: owner.to_owned(),
            step: step.to_owned(),
            index,
            output: output.to_owned(),
        })
        .boxed()
    }
    fn elements<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(usize, String)>, StoreError>> {
        async move {
            let mut tx = self.pool.begin().await?;
            let elements = select_elements(&mut tx, run_id, step).await?;
            if elements.is_empty() && !step_exists(&mut tx, run_id, step).await? {
                return Err(if run_exists(&mut tx, run_id).await? {
                    no_such_step(run_id, step)
                } else {
                    no_such_run(run_id)
                });
            }
            tx.commit().await?;
            Ok(elements)
        }
        .boxed()
    }

    fn finish_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        state: RunState,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            if !matches!(
                state,
                RunState::Succeeded | RunState::Failed | RunState::Cancelled
            ) {
                return Err(StoreError::NotTerminal {
                    run: run_id.to_owned(),
                    state,
                });
            }
            self.write_done(Write::FinishRun {
                run: run_id.to_owned(),
                owner: owner.to_owned(),
                state,
                error: error.map(str::to_owned),
            })
            .await
        }
        .boxed()
    }

    fn load_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRun>, StoreError>> {
        async move {
            // One read transaction: the run and its steps from one snapshot.
            let mut tx = self.pool.begin().await?;
            let Some(mut run) = select_run(&mut tx, run_id).await? else {
                return Ok(None);
            };
            run.steps = select_steps(&mut tx, run_id).await?;
            tx.commit().await?;
            Ok(Some(run))
        }
        .boxed()
    }

    fn list_runs<'a>(
        &'a self,
        filter: &'a RunFilter,
    ) -> BoxFuture<'a, Result<Vec<RunSummary>, StoreError>> {
        async move {
            let mut conn = self.pool.acquire().await?;
            select_summaries(&mut conn, filter).await
        }
        .boxed()
    }

    fn reset_step<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let mut tx = self.begin().await?;
            let now = now_ms();
            let head = select_head(&mut tx, run_id)
                .await?
                .ok_or_else(|| no_such_run(run_id))?;
            let graph = graph(&head.graph, run_id)?;
            let root = graph
                .position(step)
                .ok_or_else(|| no_such_step(run_id, step))?;
            if let (Some(holder), Some(until)) = (head.lease_owner, head.lease_until)
                && until > now
            {
                return Err(StoreError::Busy {
                    run: run_id.to_owned(),
                    owner: holder,
                    until,
                });
            }
            let hits = graph.descendants(root);
            if head.queued {
                super::sqlite_queue::check_unclaimed(&mut tx, run_id, now).await?;
            }
            let mut names = Vec::new();
            for (spec, &hit) in graph.steps.iter().zip(&hits) {
                if hit {
                    reset_step(&mut tx, run_id, &spec.name).await?;
                    delete_elements(&mut tx, run_id, &spec.name).await?;
                    names.push(spec.name.clone());
                }
            }
            if head.queued {
                super::sqlite_queue::requeue(&mut tx, run_id, &graph, &hits, now).await?;
            }
            make_resumable(&mut tx, run_id, now).await?;
            tx.commit().await?;
            if head.queued {
                self.news.heard(None);
            }
            Ok(names)
        }
        .boxed()
    }

    fn runs_where_failed<'a>(
        &'a self,
        job: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let mut conn = self.pool.acquire().await?;
            select_failed_runs(&mut conn, job, step).await
        }
        .boxed()
    }
}

/// The write of a settled step.
fn settle(
    run: &str,
    owner: &str,
    state: StepStatus,
    outcome: &StepOutcome<'_>,
    skipped: &[&str],
) -> Write {
    Write::SettleStep {
        run: run.to_owned(),
        owner: owner.to_owned(),
        state,
        step: outcome.step.to_owned(),
        attempts: outcome.attempts,
        output: outcome.output.map(str::to_owned),
        error: outcome.error.map(str::to_owned),
        started_at: outcome.started_at,
        ended_at: outcome.ended_at,
        skipped: skipped.iter().map(|&s| s.to_owned()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StepSpec;

    fn outcome(step: &str) -> StepOutcome<'_> {
        StepOutcome {
            step,
            attempts: 1,
            output: Some("1"),
            error: None,
            started_at: None,
            ended_at: 1,
        }
    }

    /// A pooled connection given back with a transaction sqlx lost track of is rolled back: it
    /// does not keep SQLite's write lock from every other connection, nor the writes made on it
    /// uncommitted.
    ///
    /// sqlx (0.8) loses track of one when the future of `BEGIN IMMEDIATE` is dropped after the
    /// connection's thread acknowledged it, before sqlx made a `Transaction` of it (it then
    /// checks the connection's state, one more round trip). That race is not reproducible on
    /// demand; forgetting the `Transaction` leaves the connection in the same state.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pooled_connection_given_back_in_a_transaction_is_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let path = path.to_str().unwrap();
        let store = SqliteStore::open(path).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        std::mem::forget(conn.begin_with("BEGIN IMMEDIATE").await.unwrap());
        assert!(conn.is_in_transaction());
        drop(conn);
        // Another connection can take the write lock (waiting for the pool's hook to run)...
        let mut other = SqliteConnection::connect_with(
            &SqliteConnectOptions::new()
                .filename(path)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
        let tx = other.begin_with("BEGIN IMMEDIATE").await.unwrap();
        tx.commit().await.unwrap();
        // ...and the pool's connections begin transactions, whose writes other connections see.
        let mut tx = store.begin().await.unwrap();
        tx.execute("CREATE TABLE seen (x INTEGER)").await.unwrap();
        tx.commit().await.unwrap();
        other.execute("SELECT x FROM seen").await.unwrap();
    }

    /// `open_run` builds the run it returns from what it wrote, without reading it back: it must
    /// be what the store holds, for a new run, a resumed one and one that ended.
    #[tokio::test(flavor = "current_thread")]
    async fn open_run_returns_what_is_stored() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let graph = GraphSpec {
            steps: ["a", "b"]
                .iter()
                .enumerate()
                .map(|(i, name)| StepSpec {
                    name: (*name).to_owned(),
                    parents: (0..i).collect(),
                    after: Vec::new(),
                })
                .collect(),
        };
        let spec = RunSpec {
            id: "r1",
            job: "J",
            input: "{\"n\":1}",
            graph: &graph,
            batch: Some("nightly"),
        };
        let lease = Duration::from_secs(60);
        let stored = || async { store.load_run("r1").await.unwrap().unwrap() };

        let opened = store.open_run(spec, "o1", lease).await.unwrap();
        assert_eq!(opened, stored().await);
        store
            .step_completed("r1", "o1", outcome("a"))
            .await
            .unwrap();
        store
            .finish_run("r1", "o1", RunState::Cancelled, Some("stop"))
            .await
            .unwrap();
        let resumed = store.open_run(spec, "o2", lease).await.unwrap();
        assert_eq!(resumed.state, RunState::Running);
        assert_eq!(resumed, stored().await);
        store
            .step_completed("r1", "o2", outcome("b"))
            .await
            .unwrap();
        store
            .finish_run("r1", "o2", RunState::Succeeded, None)
            .await
            .unwrap();
        let ended = store.open_run(spec, "o3", lease).await.unwrap();
        assert_eq!(ended.state, RunState::Succeeded);
        assert_eq!(ended, stored().await);
    }

    /// Writes queued together commit in one transaction; one that fails fails alone, with the
    /// error it would have had alone, and the others commit.
    #[tokio::test(flavor = "current_thread")]
    async fn a_write_that_fails_fails_alone_in_its_group() {
        let store = SqliteStore::open("sqlite::memory:").await.unwrap();
        let names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        let graph = GraphSpec {
            steps: names
                .iter()
                .map(|name| StepSpec {
                    name: name.clone(),
                    parents: Vec::new(),
                    after: Vec::new(),
                })
                .collect(),
        };
        let spec = |id| RunSpec {
            id,
            job: "J",
            input: "{}",
            graph: &graph,
            batch: None,
        };
        let lease = Duration::from_secs(60);
        store.open_run(spec("r1"), "a", lease).await.unwrap();
        store.open_run(spec("r2"), "b", lease).await.unwrap();
        // Every write is queued before the group commit's task runs (one thread): one group.
        let mut writes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            writes.push(store.step_completed("r1", "a", outcome(name)));
            if i == 5 {
                writes.push(store.step_completed("r2", "a", outcome(name)));
            }
            if i == 10 {
                writes.push(store.step_completed("r1", "a", outcome("nope")));
            }
        }
        let results = futures::future::join_all(writes).await;
        for (i, result) in results.iter().enumerate() {
            match i {
                6 => assert!(
                    matches!(result, Err(StoreError::LeaseLost { run, .. }) if run == "r2"),
                    "{result:?}"
                ),
                12 => assert!(
                    matches!(result, Err(StoreError::NoSuchStep { step, .. }) if step == "nope"),
                    "{result:?}"
                ),
                _ => assert!(result.is_ok(), "write {i}: {result:?}"),
            }
        }
        let r1 = store.load_run("r1").await.unwrap().unwrap();
        assert!(r1.steps.iter().all(|s| s.state == StepStatus::Completed));
        let r2 = store.load_run("r2").await.unwrap().unwrap();
        assert!(r2.steps.iter().all(|s| s.state == StepStatus::Pending));
    }

    /// A fresh database file's path (removed with its WAL by [`Temp`]'s drop).
    struct Temp(std::path::PathBuf);

    impl Temp {
        fn new(name: &str) -> Temp {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Temp(std::env::temp_dir().join(format!(
                "jobgraph-sqlite-{name}-{}-{n}-{}.db",
                std::process::id(),
                now_ms()
            )))
        }

        fn path(&self) -> &str {
            self.0.to_str().expect("a UTF-8 temporary directory")
        }
    }

    impl Drop for Temp {
        fn drop(&mut self) {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = self.0.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
    }

    fn six_steps() -> GraphSpec {
        GraphSpec {
            steps: (0..6)
                .map(|i| StepSpec {
                    name: format!("s{i}"),
                    parents: Vec::new(),
                    after: Vec::new(),
                })
                .collect(),
        }
    }

    /// Runs `r1` (leased by `a`) and `r2` (by `b`), six steps each.
    async fn two_runs(store: &SqliteStore) {
        let graph = six_steps();
        for (id, owner) in [("r1", "a"), ("r2", "b")] {
            let spec = RunSpec {
                id,
                job: "J",
                input: "{}",
                graph: &graph,
                batch: None,
            };
            store
                .open_run(spec, owner, Duration::from_secs(60))
                .await
                .unwrap();
        }
    }

    fn settle_write(run: &str, owner: &str, step: &str, output: &str, skipped: &[&str]) -> Write {
        let outcome = StepOutcome {
            step,
            attempts: 2,
            output: Some(output),
            error: (!skipped.is_empty()).then_some("it broke"),
            started_at: Some(10),
            ended_at: 20,
        };
        let state = if skipped.is_empty() {
            StepStatus::Completed
        } else {
            StepStatus::Failed
        };
        settle(run, owner, state, &outcome, skipped)
    }

    fn element_write(run: &str, owner: &str, step: &str, index: usize) -> Write {
        Write::ElementCompleted {
            run: run.to_owned(),
            owner: owner.to_owned(),
            step: step.to_owned(),
            index,
            output: format!("\"{run}.{step}[{index}] by {owner}\""),
        }
    }

    fn renew_write(run: &str, owner: &str) -> Write {
        Write::RenewLease {
            run: run.to_owned(),
            owner: owner.to_owned(),
            lease: Duration::from_secs(90),
        }
    }

    fn finish_write(run: &str, owner: &str, state: RunState) -> Write {
        Write::FinishRun {
            run: run.to_owned(),
            owner: owner.to_owned(),
            state,
            error: Some(format!("{run} ended by {owner}")),
        }
    }

    fn open_write(run: &str, owner: &str, job: &str, graph: GraphSpec) -> Write {
        Write::OpenRun {
            id: run.to_owned(),
            job: job.to_owned(),
            input: format!("{{\"run\":\"{run}\"}}"),
            graph,
            batch: Some("b".to_owned()),
            owner: owner.to_owned(),
            lease: Duration::from_secs(60),
        }
    }

    /// Every kind of write, live and failing, in an order where later writes must see earlier
    /// ones (on [`two_runs`]), with the answer each must get.
    fn mixed_group() -> Vec<(Write, &'static str)> {
        let mut bad = six_steps();
        bad.steps[1].name = "s0".to_owned();
        vec![
            (settle_write("r1", "a", "s0", "0", &[]), "ok"),
            (settle_write("r2", "a", "s0", "0", &[]), "LeaseLost r2"),
            (
                settle_write("r1", "a", "nope", "0", &[]),
                "NoSuchStep r1.nope",
            ),
            (settle_write("r9", "a", "s0", "0", &[]), "NoSuchRun r9"),
            (element_write("r1", "a", "s1", 0), "ok"),
            (element_write("r1", "a", "s1", 3), "ok"),
            (element_write("r2", "a", "s1", 0), "LeaseLost r2"),
            (element_write("r1", "a", "nope", 0), "NoSuchStep r1.nope"),
            (element_write("r9", "a", "s1", 0), "NoSuchRun r9"),
            (renew_write("r1", "a"), "ok"),
            (renew_write("r2", "a"), "LeaseLost r2"),
            (renew_write("r9", "a"), "NoSuchRun r9"),
            // Fails whole: `s3` is not skipped.
            (
                settle_write("r1", "a", "s2", "\"x\"", &["s3", "nope"]),
                "NoSuchStep r1.nope",
            ),
            (settle_write("r1", "a", "s4", "\"x\"", &["s5"]), "ok"),
            // The same step again: the second write wins.
            (settle_write("r1", "a", "s0", "\"again\"", &[]), "ok"),
            (element_write("r1", "a", "s1", 0), "ok"),
            (renew_write("r1", "a"), "ok"),
            (finish_write("r2", "b", RunState::Cancelled), "ok"),
            // After the finish: fenced.
            (settle_write("r2", "b", "s1", "1", &[]), "LeaseLost r2"),
            (renew_write("r2", "b"), "LeaseLost r2"),
            (finish_write("r2", "b", RunState::Failed), "LeaseLost r2"),
            // Opens the run just finished (it resumes, lease released) ...
            (open_write("r2", "c", "J", six_steps()), "run"),
            // ... so its old owner is fenced and the new one writes.
            (settle_write("r2", "b", "s1", "1", &[]), "LeaseLost r2"),
            (open_write("r3", "a", "J", six_steps()), "run"),
            (settle_write("r3", "a", "s0", "3", &[]), "ok"),
            (element_write("r3", "a", "s1", 1), "ok"),
            (open_write("r1", "c", "J", six_steps()), "Busy r1 a"),
            (open_write("r2", "d", "Other", six_steps()), "Mismatch r2"),
            (open_write("r4", "a", "J", bad), "InvalidGraph r4"),
            (finish_write("r1", "a", RunState::Succeeded), "ok"),
            (element_write("r1", "a", "s1", 0), "LeaseLost r1"),
            (finish_write("r3", "a", RunState::Succeeded), "ok"),
            (open_write("r3", "c", "J", six_steps()), "run"),
        ]
    }

    /// An answer, without what depends on the clock.
    fn shape(answer: &Result<Written, StoreError>) -> String {
        match answer {
            Ok(Written::Done) => "ok".to_owned(),
            Ok(Written::Run(_)) => "run".to_owned(),
            Err(StoreError::LeaseLost { run, .. }) => format!("LeaseLost {run}"),
            Err(StoreError::NoSuchRun { run }) => format!("NoSuchRun {run}"),
            Err(StoreError::NoSuchStep { run, step }) => format!("NoSuchStep {run}.{step}"),
            Err(StoreError::Busy { run, owner, .. }) => format!("Busy {run} {owner}"),
            Err(StoreError::Mismatch { run, .. }) => format!("Mismatch {run}"),
            Err(StoreError::InvalidGraph { run, .. }) => format!("InvalidGraph {run}"),
            Err(error) => format!("{error:?}"),
        }
    }

    /// A run as stored (or as opened), without what depends on the clock.
    fn timeless(mut run: StoredRun) -> StoredRun {
        run.created_at = 0;
        run.updated_at = 0;
        run
    }

    /// What the store holds of runs `r1`–`r4`, with their leases and elements.
    async fn contents(store: &SqliteStore) -> Vec<String> {
        let mut contents = Vec::new();
        for id in ["r1", "r2", "r3", "r4"] {
            let run = store.load_run(id).await.unwrap().map(timeless);
            let lease: Option<(Option<String>, bool)> = sqlx::query_as(
                "SELECT lease_owner, lease_until IS NOT NULL FROM jobgraph_runs WHERE id = ?1",
            )
            .bind(id)
            .fetch_optional(store.pool())
            .await
            .unwrap();
            let elements = match &run {
                Some(_) => store.elements(id, "s1").await.unwrap(),
                None => Vec::new(),
            };
            contents.push(format!("{run:?} {lease:?} {elements:?}"));
        }
        contents
    }

    /// The same group, written set-based (on the writer's own connection, and in a pooled
    /// transaction) and one write at a time: the same answers, the same database after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_written_set_based_is_the_group_written_one_by_one() {
        let expected: Vec<&str> = mixed_group().iter().map(|(_, answer)| *answer).collect();

        let reference_file = Temp::new("one-by-one");
        let reference = SqliteStore::open(reference_file.path()).await.unwrap();
        two_runs(&reference).await;
        let mut group = Vec::new();
        let mut replies = Vec::new();
        for (write, _) in mixed_group() {
            let (reply, answer) = oneshot::channel();
            group.push(Pending { write, reply });
            replies.push(answer);
        }
        commit_one_by_one(reference.pool(), &mut group).await;
        let mut one_by_one = Vec::new();
        let mut opened = Vec::new();
        for reply in replies {
            let answer = reply.await.unwrap();
            if let Ok(Written::Run(run)) = &answer {
                opened.push(timeless((**run).clone()));
            }
            one_by_one.push(shape(&answer));
        }
        assert_eq!(one_by_one, expected);
        let reference_contents = contents(&reference).await;

        for own in [true, false] {
            let file = Temp::new("set-based");
            let store = SqliteStore::open(file.path()).await.unwrap();
            two_runs(&store).await;
            let writes: Vec<Write> = mixed_group().into_iter().map(|(w, _)| w).collect();
            let writes: Vec<&Write> = writes.iter().collect();
            assert_eq!(segments(&writes).len(), 6, "the group needs 6 segments");
            let answers = if own {
                let options = SqliteConnectOptions::from_str(file.path()).unwrap();
                let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
                write_group(&mut conn, &writes, true).await
            } else {
                let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
                let answers = write_group(&mut tx, &writes, false).await;
                tx.commit().await.unwrap();
                answers
            };
            let Ok(answers) = answers else {
                panic!("own connection {own}: the group was not written set-based");
            };
            let shapes: Vec<String> = answers.iter().map(shape).collect();
            assert_eq!(shapes, expected, "own connection {own}");
            let runs: Vec<StoredRun> = answers
                .into_iter()
                .filter_map(|answer| match answer {
                    Ok(Written::Run(run)) => Some(timeless(*run)),
                    _ => None,
                })
                .collect();
            assert_eq!(runs, opened, "own connection {own}: the runs opened");
            assert_eq!(
                contents(&store).await,
                reference_contents,
                "own connection {own}: the database after"
            );
        }
    }

    /// Reads a segment of nothing on `conn`, beginning its transaction: the connection's total
    /// of changed rows.
    async fn begin_and_read_nothing(conn: &mut SqliteConnection) -> i64 {
        let nothing = || json(&Vec::<String>::new());
        let read = sqlx::query(BEGIN_AND_READ)
            .bind(nothing())
            .bind(nothing())
            .bind(nothing())
            .bind(nothing());
        let rows = script(conn, read, READ_STATEMENTS + 1).await.unwrap();
        Seen::read(&rows[1..]).unwrap().changes
    }

    /// A set-based write that changes other rows than the group planned fails its script at
    /// the check, before the commit.
    #[tokio::test(flavor = "current_thread")]
    async fn a_set_based_write_that_misses_its_rows_fails() {
        let file = Temp::new("misses");
        let store = SqliteStore::open(file.path()).await.unwrap();
        two_runs(&store).await;
        let options = SqliteConnectOptions::from_str(file.path()).unwrap();
        let mut conn = SqliteConnection::connect_with(&options).await.unwrap();
        let changes = begin_and_read_nothing(&mut conn).await;
        // A settled step that is not there: planned to change 2 rows (it and its run), changes 1.
        let mut plan = Plan::default();
        plan.settled
            .push(("r1", "nope", "completed", 1, Some("1"), None, None, 1));
        plan.touched.insert("r1");
        let (sql, statements) = plan.sql(true);
        let write = plan.query(&sql, 1, changes);
        let Err((at, error)) = script(&mut conn, write, statements + 1).await else {
            panic!("the script committed");
        };
        assert_eq!(at, statements - 1, "the check: {error}");
        sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        // The same plan, right: it commits.
        let changes = begin_and_read_nothing(&mut conn).await;
        plan.settled[0].1 = "s0";
        let (sql, statements) = plan.sql(true);
        let write = plan.query(&sql, 1, changes);
        let rows = script(&mut conn, write, statements + 1).await.unwrap();
        assert_eq!(rows.len(), statements + 1);
        let run = store.load_run("r1").await.unwrap().unwrap();
        assert_eq!(run.steps[0].state, StepStatus::Completed);
        assert_eq!(run.updated_at, 1);
    }

    /// A write whose statement fails (a trigger refuses its output) fails alone with the
    /// database's error, on the writer's own connection and on a pooled one; the others of its
    /// group commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_statement_fails_fails_alone() {
        let file = Temp::new("boom");
        for path in [file.path(), "sqlite::memory:"] {
            let store = SqliteStore::open(path).await.unwrap();
            sqlx::query(
                "CREATE TRIGGER boom BEFORE UPDATE OF output ON jobgraph_steps
                    WHEN NEW.output = '\"boom\"' BEGIN SELECT RAISE(ABORT, 'boom'); END",
            )
            .execute(store.pool())
            .await
            .unwrap();
            two_runs(&store).await;
            // Queued before the group commit's task runs: one group (or few).
            let writes = vec![
                store.step_completed("r1", "a", outcome("s0")),
                store.step_completed(
                    "r1",
                    "a",
                    StepOutcome {
                        output: Some("\"boom\""),
                        ..outcome("s1")
                    },
                ),
                store.step_completed("r2", "b", outcome("s1")),
                store.step_completed("r2", "a", outcome("s2")),
            ];
            let results = futures::future::join_all(writes).await;
            assert!(results[0].is_ok(), "{path}: {:?}", results[0]);
            assert!(
                matches!(&results[1], Err(StoreError::Database(e)) if e.to_string().contains("boom")),
                "{path}: {:?}",
                results[1]
            );
            assert!(results[2].is_ok(), "{path}: {:?}", results[2]);
            assert!(
                matches!(&results[3], Err(StoreError::LeaseLost { .. })),
                "{path}: {:?}",
                results[3]
            );
            let r1 = store.load_run("r1").await.unwrap().unwrap();
            assert_eq!(r1.steps[0].state, StepStatus::Completed);
            assert_eq!(r1.steps[1].state, StepStatus::Pending);
            let r2 = store.load_run("r2").await.unwrap().unwrap();
            assert_eq!(r2.steps[1].state, StepStatus::Completed);
            assert_eq!(r2.steps[2].state, StepStatus::Pending);
            // And the writer goes on set-based.
            store
                .step_completed("r1", "a", outcome("s2"))
                .await
                .unwrap();
            store.close().await;
        }
    }

    /// A closed store refuses writes, though the writer has a connection of its own.
    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_store_refuses_writes() {
        let file = Temp::new("closed");
        let store = SqliteStore::open(file.path()).await.unwrap();
        two_runs(&store).await;
        store.close().await;
        assert!(
            store
                .step_completed("r1", "a", outcome("s0"))
                .await
                .is_err()
        );
    }
}
