//! `SqliteStore`: the [`Store`] contract on an embedded SQLite database, through `sqlx`.
//!
//! Every statement is a constant next to the one function that runs it; `sqlx::query` (not the
//! compile-time macros) runs them, and the contract tests check them. Every write is in a
//! `BEGIN IMMEDIATE` transaction: it takes SQLite's write lock up front, so concurrent
//! processes queue on `busy_timeout` instead of failing mid-transaction on a lock upgrade. A
//! runner's writes are committed in groups (`commit_groups`): one transaction for the writes of
//! every run of the process that were queued while the previous one committed.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::schema;
use super::{
    GraphSpec, RunFilter, RunSpec, RunState, RunSummary, StepOutcome, StepStatus, StepTally, Store,
    StoreError, StoredRun, StoredStep, millis, now_ms, plus,
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
/// when the last clone of the store is dropped.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The queue of the group commit (`commit_groups`).
    writes: mpsc::UnboundedSender<Pending>,
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
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .synchronous(match options.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(options.busy_timeout);
        let pool = if memory {
            // An in-memory database lives as long as a connection to it: keep exactly one.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(4)
        }
        // A local file's connections do not go stale: no ping before each use (it cost a round
        // trip to the connection's thread per write, about a third of a commit's time).
        .test_before_acquire(false)
        .connect_with(connect)
        .await?;
        schema::migrate(&pool).await?;
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(commit_groups(pool.clone(), queue));
        Ok(SqliteStore { pool, writes })
    }

    /// Closes the database's connections; the store fails every call after.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Moves every lease's expiry (runs' and claimed steps') and every queued run's time to live
    /// `by` into the past, as if that much time had passed: protocol tests age leases in SQL
    /// instead of sleeping.
    ///
    /// # Panics
    ///
    /// If the database fails (a test helper).
    #[doc(hidden)]
    pub async fn age_leases(&self, by: Duration) {
        for statement in [AGE_LEASES, AGE_CLAIMS, AGE_EXPIRIES] {
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
        lease_owner, lease_until
    FROM jobgraph_runs WHERE id = ?1";

async fn select_run(
    conn: &mut SqliteConnection,
    run: &str,
) -> Result<Option<StoredRun>, StoreError> {
    Ok(select_run_and_lease(conn, run)
        .await?
        .map(|(stored, _)| stored))
}

/// Who holds a run's lease, and until when (Unix ms).
type Lease = (Option<String>, Option<i64>);

/// The run (without its steps) and its lease.
async fn select_run_and_lease(
    conn: &mut SqliteConnection,
    run: &str,
) -> Result<Option<(StoredRun, Lease)>, StoreError> {
    let Some(row) = sqlx::query(SELECT_RUN)
        .bind(run)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    const T: &str = "jobgraph_runs";
    let stored = StoredRun {
        id: get(&row, "id", T)?,
        job: get(&row, "job", T)?,
        batch: get(&row, "batch", T)?,
        input: get(&row, "input", T)?,
        graph: graph(get(&row, "graph", T)?, run)?,
        state: run_state(get(&row, "state", T)?, run)?,
        error: get(&row, "error", T)?,
        created_at: get(&row, "created_at", T)?,
        updated_at: get(&row, "updated_at", T)?,
        steps: Vec::new(),
    };
    let lease = (get(&row, "lease_owner", T)?, get(&row, "lease_until", T)?);
    Ok(Some((stored, lease)))
}

const SELECT_STEPS: &str = "SELECT name, state, attempts, output, error, started_at, ended_at
    FROM jobgraph_steps WHERE run_id = ?1 ORDER BY position";

async fn select_steps(
    conn: &mut SqliteConnection,
    run: &str,
) -> Result<Vec<StoredStep>, StoreError> {
    let rows = sqlx::query(SELECT_STEPS).bind(run).fetch_all(conn).await?;
    const T: &str = "jobgraph_steps";
    rows.iter()
        .map(|row| {
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
        })
        .collect()
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

/// Commits the writes of this process's runners in groups, until every store handle is dropped.
///
/// Each transaction takes every write queued while the previous one committed (at most
/// [`MAX_GROUP`]), in queue order: under concurrency, one commit (one fsync with
/// [`Synchronous::Full`]) serves many steps, and no caller hears of its write before the
/// transaction holding it committed.
async fn commit_groups(pool: SqlitePool, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut group = Vec::new();
    while let Some(first) = queue.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        commit_group(&pool, &mut group).await;
    }
}

/// Commits `group`'s writes in one transaction and tells each caller, emptying `group`.
///
/// A write that fails (its fencing, a missing step, a statement) fails alone, as it would have
/// in a transaction of its own after the writes queued before it: the transaction is rolled
/// back and the others run again without it. If the transaction cannot start (the write lock
/// stayed taken past the busy timeout) or commit, every write of the group fails with that
/// error.
async fn commit_group(pool: &SqlitePool, group: &mut Vec<Pending>) {
    loop {
        // A caller that stopped waiting gets no write, as if it had dropped its transaction.
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
    let Some((mut run, (holder, held_until))) = select_run_and_lease(conn, spec.id).await? else {
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
        return Ok(StoredRun {
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
        });
    };
    if run.job != spec.job {
        return Err(StoreError::Mismatch {
            run: spec.id.to_owned(),
            stored_job: run.job,
            job: spec.job.to_owned(),
        });
    }
    if let (Some(holder), Some(held_until)) = (holder, held_until)
        && holder != owner
        && held_until > now
    {
        return Err(StoreError::Busy {
            run: spec.id.to_owned(),
            owner: holder,
            until: held_until,
        });
    }
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

impl SqliteStore {
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
}
