//! `PgStore`: the [`Store`] contract on PostgreSQL, through `sqlx`.
//!
//! Every statement is a constant next to the one function that runs it, as in `sqlite.rs`, and
//! the contract tests check them against a real server. Each method is one transaction (a
//! method of one statement is one statement, which PostgreSQL runs as its own transaction):
//!
//! - **Locks, not a global writer.** A write locks the run's row first, and only it: fencing is
//!   an `UPDATE ... WHERE id = $1 AND lease_owner = $2` on the run, which holds the row until
//!   commit, so a takeover cannot slip in between the check and the write; `open_run` and
//!   `reset_step` read the run `FOR UPDATE`. Runs do not wait for one another. Every write locks
//!   the run before its steps and elements, so two writers never deadlock.
//! - **One clock: the database's.** Lease expiry and the run's `created_at` and `updated_at` are
//!   `now()` on the server (SQLite uses the runner's clock, since there every process is on one
//!   machine; here processes on many machines share runs, and comparing one machine's lease
//!   expiry with another's clock would let clock skew hand a live run to a second owner).
//!   `now()` is the time the transaction started: a transaction that waited for a row lock
//!   computes a lease that much shorter (milliseconds: every transaction here is a few
//!   statements), never longer. A step's `started_at` and `ended_at` are the runner's, as given.
//! - **Reads from one snapshot.** `load_run` and `elements` read in a `REPEATABLE READ, READ
//!   ONLY` transaction: the run and its steps as of one moment, without locks.
//! - **Concurrent creation.** Two owners opening a new run at once both find no row; the
//!   `INSERT ... ON CONFLICT DO NOTHING` of the second waits for the first to commit, inserts
//!   nothing, and the second reads the committed run (and its live lease) `FOR UPDATE`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use super::postgres_growth::{Growth, Table};
use super::postgres_queue::Ready;
use super::postgres_schema;
use super::queue::{Sweeps, lease_ms};
use super::{
    GraphSpec, RunFilter, RunSpec, RunState, RunSummary, StepOutcome, StepStatus, StepTally, Store,
    StoreError, StoredRun, StoredStep, check_open,
};

/// A [`Store`] in a PostgreSQL database: runs survive their processes and are shared by
/// processes on many machines.
///
/// Opening it connects a pool, creates its tables (prefixed `jobgraph_`, in the first schema of
/// the connection's `search_path`) and two functions (`jobgraph_ms`, `jobgraph_at`) if missing,
/// migrates an older schema, and refuses a newer one ([`StoreError::Schema`]); processes
/// opening one database at once are safe (an advisory lock serializes the migration). Times
/// are stored as `timestamptz` and leases expire on the database's clock (see the module
/// source for why). Tested on PostgreSQL 15.
///
/// A store that inserts as many rows into one of its queue tables as PostgreSQL's statistics
/// say it holds (a large submit, a fan-out's expansion) analyzes it after the write's commit
/// (`ANALYZE`), so that every session's plans on it are made again for its new size. That
/// needs the owner of the table (the role that created it) or of the database, or a
/// superuser; another role's analysis is skipped with PostgreSQL's warning, and autovacuum
/// analyzes the table later (about a minute), statements planned for its old size until then.
///
/// ```no_run
/// # async fn example() -> Result<(), jobgraph::store::StoreError> {
/// use jobgraph::store::{PgOptions, PgStore};
///
/// let store = PgStore::connect("postgres://jobs:secret@db.internal/jobs").await?;
/// // A unix socket (the directory, percent-encoded) and a bigger pool:
/// let local = PgStore::connect_with(
///     "postgres:///jobs?host=%2Fvar%2Frun%2Fpostgresql",
///     PgOptions::new().with_max_connections(32),
/// )
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The queue's LISTEN connection, shared by the store's clones (started by the first
    /// idle worker: see `postgres_queue`).
    ready: Arc<Ready>,
    /// When the queue's next sweep is due (shared by the clones).
    sweeps: Arc<Sweeps>,
    /// The rows the store inserted into the queue tables since it last analyzed them (shared
    /// by the clones: see `postgres_growth`).
    growth: Arc<Growth>,
    /// The connections a worker's claims and commits keep between calls (shared by the
    /// clones).
    kept: Arc<KeptConnections>,
}

/// The connections a worker's two hot calls keep between calls: one for claims, and one for
/// each commit a worker has in flight at once (`worker::LANES`).
///
/// The pool lends its idle connections in turn (first in, first out), so a worker's claims and
/// commits, one of each at a time, were spread over every connection of the pool: each server
/// process ran an eighth of them, with its caches cold and its mapping of the shared buffers
/// faulted in page by page (`perf`: 66 busy server processes for four workers, and the kernel's
/// page-fault handling among the server's top symbols). Kept, each call's statements run on
/// the same server process every time, and skip the pool's ping before each lend.
#[derive(Debug)]
pub(super) struct KeptConnections {
    pub(super) claims: Kept,
    pub(super) commits: Kept,
}

/// Kept connections of one kind of call, at most `most`: each taken for a call and put back
/// when the call succeeds. A call that fails drops its connection back into the pool (which
/// pings it before lending it again: a connection broken by a server restart costs one failed
/// call, which the worker retries). More calls at once than `most` (two workers on one store)
/// get the others from the pool.
#[derive(Debug, Default)]
pub(super) struct Kept {
    /// How many it keeps: 0 for a pool too small to spare connections (fewer than
    /// [`KEEP_FROM`]).
    most: usize,
    kept: std::sync::Mutex<Vec<sqlx::pool::PoolConnection<Postgres>>>,
}

/// The smallest pool whose store keeps connections: three kept (one for claims, one per lane of
/// commits) leave the other calls at least three.
const KEEP_FROM: u32 = 6;

impl KeptConnections {
    fn new(max_connections: u32) -> Self {
        let on = max_connections >= KEEP_FROM;
        let kept = |most: usize| Kept {
            most: if on { most } else { 0 },
            ..Kept::default()
        };
        KeptConnections {
            claims: kept(1),
            commits: kept(crate::worker::LANES),
        }
    }

    /// Drops them all into the pool (which waits for every lent connection as it closes).
    fn release(&self) {
        drop(std::mem::take(&mut *self.claims.kept()));
        drop(std::mem::take(&mut *self.commits.kept()));
    }
}

impl Kept {
    fn kept(&self) -> std::sync::MutexGuard<'_, Vec<sqlx::pool::PoolConnection<Postgres>>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A kept connection, or one from `pool`.
    pub(super) async fn take(
        &self,
        pool: &PgPool,
    ) -> Result<sqlx::pool::PoolConnection<Postgres>, StoreError> {
        let kept = self.kept().pop();
        match kept {
            Some(conn) => Ok(conn),
            None => Ok(pool.acquire().await?),
        }
    }

    /// Keeps `conn` after a call that succeeded (unless as many are kept already).
    pub(super) fn put(&self, conn: sqlx::pool::PoolConnection<Postgres>) {
        let mut kept = self.kept();
        if kept.len() < self.most {
            kept.push(conn);
        }
    }
}

/// How [`PgStore::connect_with`] connects.
///
/// # Default
///
/// `max_connections`: 8; `acquire_timeout`: 30 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PgOptions {
    /// The most connections the store's pool opens to the server: how many of its calls run at
    /// once (a call holds one connection for its transaction). From 4 on, a worker's claims
    /// and its commits each keep one of them between calls.
    pub max_connections: u32,
    /// How long a call waits for a connection of the pool (all busy, or the server unreachable)
    /// before it fails with [`StoreError::Database`].
    pub acquire_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl PgOptions {
    /// The defaults: at most 8 connections, a 30 s acquire timeout.
    pub const fn new() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(30),
        }
    }

    /// Sets the most connections the pool opens (at least 1).
    pub const fn with_max_connections(mut self, max_connections: u32) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets how long a call waits for a connection.
    pub const fn with_acquire_timeout(mut self, acquire_timeout: Duration) -> Self {
        self.acquire_timeout = acquire_timeout;
        self
    }
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, or
    /// `postgresql://`; a unix socket's directory goes in `?host=`, percent-encoded) with the
    /// default [`PgOptions`], and creates or migrates its schema. The database must exist.
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        Self::connect_with(url, PgOptions::default()).await
    }

    /// Connects to the database at `url` with `options`, and creates or migrates its schema.
    pub async fn connect_with(url: &str, options: PgOptions) -> Result<PgStore, StoreError> {
        let mut connect = PgConnectOptions::from_str(url)?;
        if connect.get_application_name().is_none() {
            // Names the store's sessions in `pg_stat_activity`.
            connect = connect.application_name("jobgraph");
        }
        // The store's statements are prepared once per connection; PostgreSQL would still plan
        // each of the first five runs of one for its parameters (and any later run whose generic
        // plan it guesses costlier). Their plans do not depend on the values (ids, names,
        // limits): planning them once halves a claim's time on an idle database and takes a
        // fifth off a commit's (measured with `SELECT 1` at 0.13 ms: claim 1.31 → 0.66 ms,
        // complete 1.14 → 0.93 ms, submit 1.22 → 1.03 ms).
        //
        // And none is compiled (`jit`): a plan made for parameters it does not know is costed
        // for a tenth of a table, which passes `jit_above_cost` once the queue holds tens of
        // thousands of steps, and PostgreSQL then compiles the statement at every run, for a
        // claim that reads a few rows: a claim of a limited step with 60,000 ready took
        // 40-50 ms of compiling for 15 buffers read.
        //
        // Only these connections' own settings, each unless the URL's `options` set it.
        for (setting, value) in [("plan_cache_mode", "force_generic_plan"), ("jit", "off")] {
            if !connect
                .get_options()
                .is_some_and(|options| options.contains(setting))
            {
                connect = connect.options([(setting, value)]);
            }
        }
        // sqlx pings a pooled connection before lending it (`test_before_acquire`): a round trip
        // per call, kept, so that a server restart costs the calls after it nothing but a
        // reconnection. A worker's claims and commits skip it on their kept connections
        // (`KeptConnections`): after a restart, each fails once and is retried on a new one.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await?;
        postgres_schema::migrate(&pool).await?;
        Ok(PgStore {
            pool,
            ready: Arc::default(),
            sweeps: Arc::default(),
            growth: Arc::default(),
            kept: Arc::new(KeptConnections::new(options.max_connections)),
        })
    }

    /// Closes the pool's connections; the store fails every call after.
    pub async fn close(&self) {
        self.kept.release();
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
            AGE_STEP_EXPIRIES,
            AGE_ELEMENT_CLAIMS,
            AGE_ELEMENT_EXPIRIES,
        ] {
            sqlx::query(statement)
                .bind(lease_ms(by))
                .execute(&self.pool)
                .await
                .expect("age_leases: the store's database failed");
        }
        self.sweeps.now();
    }

    /// The plan PostgreSQL would choose now for a claim of up to `limit` steps of `jobs`
    /// (`EXPLAIN` of the claim's statement, not run).
    ///
    /// # Panics
    ///
    /// If the database fails (a test helper).
    #[doc(hidden)]
    pub async fn explain_claim(&self, jobs: &[&str], limit: usize) -> String {
        super::postgres_queue::explain_claim(&self.pool, jobs, limit)
            .await
            .expect("explain_claim: the store's database failed")
    }

    /// The database's clock (`now()`), Unix ms: what leases and times to live are counted on,
    /// for protocol tests that read them back.
    ///
    /// # Panics
    ///
    /// If the database fails (a test helper).
    #[doc(hidden)]
    pub async fn clock_ms(&self) -> i64 {
        sqlx::query_scalar("SELECT jobgraph_ms(now())")
            .fetch_one(&self.pool)
            .await
            .expect("clock_ms: the store's database failed")
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn kept(&self) -> &KeptConnections {
        &self.kept
    }

    pub(super) fn sweeps(&self) -> &Sweeps {
        &self.sweeps
    }

    pub(super) fn ready(&self) -> &Ready {
        &self.ready
    }

    /// A read-write transaction (`READ COMMITTED`: each statement sees what committed before
    /// it; the row locks give the isolation the contract needs).
    pub(super) async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Counts rows committed into the queue tables (a table, how many), and analyzes the
    /// tables they doubled (`postgres_growth`).
    pub(super) async fn grew(&self, rows: &[(Table, usize)]) {
        self.growth.grew(&self.pool, rows).await;
    }

    /// A read-only transaction on one snapshot.
    pub(super) async fn snapshot(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?)
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

/// Column `column` (a name, or an [`At`]) of `row`, of table `table` (for the error).
pub(super) fn get<'r, T>(row: &'r PgRow, column: impl Col, table: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(column)
        .map_err(|e| corrupt_or_database(e, &format!("{table}.{column}")))
}

/// How [`get`] and [`get_ms`] name a column: by name, or by the position found for the name
/// ([`At`]).
pub(super) trait Col: sqlx::ColumnIndex<PgRow> + std::fmt::Display + Copy {}

impl Col for &str {}

impl Col for At {}

/// A column of a statement's result found by name once, from its first row, and then read by
/// position in every row: sqlx finds a column by name through a SipHash map, for every row and
/// column, which cost a worker process a tenth of its CPU in the rows of its claims and commits
/// (hundreds of rows each, a dozen columns).
#[derive(Clone, Copy, Debug)]
pub(super) struct At {
    name: &'static str,
    index: usize,
}

impl At {
    /// Column `name` of the rows of `row`'s result, of table `table` (for the error).
    pub(super) fn of(row: &PgRow, name: &'static str, table: &str) -> Result<At, StoreError> {
        use sqlx::Column as _;
        let index = row
            .try_column(name)
            .map_err(|e| corrupt_or_database(e, &format!("{table}.{name}")))?
            .ordinal();
        Ok(At { name, index })
    }
}

impl sqlx::ColumnIndex<PgRow> for At {
    fn index(&self, row: &PgRow) -> Result<usize, sqlx::Error> {
        use sqlx::Column as _;
        // Each row of one result has the same columns; a row of another result is refused
        // rather than read at a position that may hold another column.
        match row.columns().get(self.index) {
            Some(column) if column.name() == self.name => Ok(self.index),
            _ => Err(sqlx::Error::ColumnNotFound(self.name.to_owned())),
        }
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Column `column` of `row`, a `timestamptz`, as Unix milliseconds (rounded down), read from
/// PostgreSQL's binary format (microseconds since 2000-01-01 UTC): what `jobgraph_ms(column)`
/// in the statement returns, without its cost in the server (0.4–0.5 µs a call, twice for
/// every step a claim takes: a tenth of the claim statement's time).
pub(super) fn get_ms(row: &PgRow, column: impl Col, table: &str) -> Result<i64, StoreError> {
    use sqlx::ValueRef as _;
    use sqlx::postgres::PgValueFormat;
    /// Unix milliseconds at PostgreSQL's epoch, 2000-01-01 UTC.
    const PG_EPOCH_MS: i64 = 946_684_800_000;
    let what = || format!("{table}.{column}");
    let value = row
        .try_get_raw(column)
        .map_err(|e| corrupt_or_database(e, &what()))?;
    let micros = match (value.is_null(), value.format(), value.as_bytes()) {
        (false, PgValueFormat::Binary, Ok(bytes)) => <[u8; 8]>::try_from(bytes).ok(),
        _ => None,
    }
    .map(i64::from_be_bytes)
    // `infinity` and `-infinity` are the extremes.
    .filter(|m| *m != i64::MAX && *m != i64::MIN);
    micros
        .and_then(|m| m.div_euclid(1000).checked_add(PG_EPOCH_MS))
        .ok_or_else(|| StoreError::Corrupt {
            what: format!("{} is not a finite timestamp", what()),
        })
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

fn no_such_step(run: &str, step: &str) -> StoreError {
    StoreError::NoSuchStep {
        run: run.to_owned(),
        step: step.to_owned(),
    }
}

// ---- Statements, one function each ------------------------------------------------------------

const AGE_LEASES: &str = "UPDATE jobgraph_runs
    SET lease_until = lease_until - $1 * interval '1 millisecond'
    WHERE lease_until IS NOT NULL";

const AGE_CLAIMS: &str = "UPDATE jobgraph_steps
    SET lease_until = lease_until - $1 * interval '1 millisecond'
    WHERE lease_until IS NOT NULL";

const AGE_EXPIRIES: &str = "UPDATE jobgraph_runs
    SET expires_at = expires_at - $1 * interval '1 millisecond'
    WHERE expires_at IS NOT NULL";

const AGE_STEP_EXPIRIES: &str = "UPDATE jobgraph_steps
    SET expires_at = expires_at - $1 * interval '1 millisecond'
    WHERE expires_at IS NOT NULL";

const AGE_ELEMENT_CLAIMS: &str = "UPDATE jobgraph_queue_elements
    SET lease_until = lease_until - $1 * interval '1 millisecond'
    WHERE lease_until IS NOT NULL";

const AGE_ELEMENT_EXPIRIES: &str = "UPDATE jobgraph_queue_elements
    SET expires_at = expires_at - $1 * interval '1 millisecond'
    WHERE expires_at IS NOT NULL";

/// A run's job, state, graph and lease, locked for the rest of the transaction, for `open_run`
/// and `reset_step`.
struct Head {
    job: String,
    state: RunState,
    graph: String,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    /// Whether the lease is live on the database's clock.
    live: bool,
    /// Whether a client submitted it (a queued run).
    queued: bool,
}

const LOCK_HEAD: &str = "SELECT job, state, graph::text AS graph, lease_owner,
        jobgraph_ms(lease_until) AS lease_until, coalesce(lease_until > now(), false) AS live,
        queued
    FROM jobgraph_runs WHERE id = $1 FOR UPDATE";

async fn lock_head(conn: &mut PgConnection, run: &str) -> Result<Option<Head>, StoreError> {
    let Some(row) = sqlx::query(LOCK_HEAD)
        .bind(run)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    const T: &str = "jobgraph_runs";
    Ok(Some(Head {
        job: get(&row, "job", T)?,
        state: run_state(get(&row, "state", T)?, run)?,
        graph: get(&row, "graph", T)?,
        lease_owner: get(&row, "lease_owner", T)?,
        lease_until: get(&row, "lease_until", T)?,
        live: get(&row, "live", T)?,
        queued: get(&row, "queued", T)?,
    }))
}

const INSERT_RUN: &str = "INSERT INTO jobgraph_runs
    (id, job, batch, input, graph, state, lease_owner, lease_until, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5::jsonb, 'running', $6, now() + $7 * interval '1 millisecond',
        now(), now())
    ON CONFLICT (id) DO NOTHING";

/// Whether the run was inserted: `false` if another transaction created it first (this one
/// waited for that one to commit).
async fn insert_run(
    conn: &mut PgConnection,
    spec: &RunSpec<'_>,
    graph: &str,
    owner: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let done = sqlx::query(INSERT_RUN)
        .bind(spec.id)
        .bind(spec.job)
        .bind(spec.batch)
        .bind(spec.input)
        .bind(graph)
        .bind(owner)
        .bind(lease_ms(lease))
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The condition that finds a runner's step (`run_id = .. AND name = ..`) through
/// `jobgraph_steps_by_name`: a runner's steps have no job (a queued run's steps have theirs, and
/// the queue finds them by position).
macro_rules! by_name {
    () => {
        "job IS NULL"
    };
}

/// All of a new run's steps in one statement, numbered in graph order (no job: a runner's; and
/// no limits: `limited` named, as every insert of this build's, so that schema version 16's
/// trigger for the inserts of older builds does not run).
const INSERT_STEPS: &str = "INSERT INTO jobgraph_steps (run_id, idx, name, state, limited)
    SELECT $1, (t.ord - 1)::integer, t.name, 'pending', false
    FROM unnest($2::text[]) WITH ORDINALITY AS t (name, ord)";

async fn insert_steps(
    conn: &mut PgConnection,
    run: &str,
    graph: &GraphSpec,
) -> Result<(), StoreError> {
    let names: Vec<&str> = graph.steps.iter().map(|s| s.name.as_str()).collect();
    sqlx::query(INSERT_STEPS)
        .bind(run)
        .bind(names)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes the lease; a run that has not ended (pending, running, cancelled) becomes running.
const TAKE_LEASE: &str = "UPDATE jobgraph_runs SET
        lease_owner = $2, lease_until = now() + $3 * interval '1 millisecond', updated_at = now(),
        state = CASE WHEN state IN ('succeeded', 'failed') THEN state ELSE 'running' END,
        error = CASE WHEN state IN ('succeeded', 'failed') THEN error ELSE NULL END
    WHERE id = $1";

async fn take_lease(
    conn: &mut PgConnection,
    run: &str,
    owner: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    sqlx::query(TAKE_LEASE)
        .bind(run)
        .bind(owner)
        .bind(lease_ms(lease))
        .execute(conn)
        .await?;
    Ok(())
}

const RESUME_STEPS: &str = "UPDATE jobgraph_steps SET state = 'pending', error = NULL
    WHERE run_id = $1 AND state <> 'completed'";

async fn resume_steps(conn: &mut PgConnection, run: &str) -> Result<(), StoreError> {
    sqlx::query(RESUME_STEPS).bind(run).execute(conn).await?;
    Ok(())
}

const SELECT_EXISTS: &str = "SELECT 1 FROM jobgraph_runs WHERE id = $1";

/// Whether the run exists.
async fn run_exists(conn: &mut PgConnection, run: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query(SELECT_EXISTS)
        .bind(run)
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// Why a fenced statement that changed no row failed: the run exists (so `owner` lost its
/// lease) or not.
async fn not_fenced(conn: &mut PgConnection, run: &str, owner: &str) -> StoreError {
    match run_exists(conn, run).await {
        Ok(true) => lease_lost(run, owner),
        Ok(false) => no_such_run(run),
        Err(e) => e,
    }
}

/// Fencing in one statement: touches the run if `owner` holds its lease, and keeps the run's
/// row locked until the transaction ends (so the lease cannot change hands before it commits).
const FENCE: &str =
    "UPDATE jobgraph_runs SET updated_at = now() WHERE id = $1 AND lease_owner = $2";

/// Ok if `owner` holds the run's lease (and marks the run written); else why not.
async fn fence(conn: &mut PgConnection, run: &str, owner: &str) -> Result<(), StoreError> {
    let done = sqlx::query(FENCE)
        .bind(run)
        .bind(owner)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(not_fenced(conn, run, owner).await)
    }
}

/// Fenced and renewed in one statement.
const RENEW_LEASE: &str = "UPDATE jobgraph_runs
    SET lease_until = now() + $3 * interval '1 millisecond', updated_at = now()
    WHERE id = $1 AND lease_owner = $2";

/// Whether `owner` held the lease (and now holds it for `lease` more).
async fn renew_lease(
    conn: &mut PgConnection,
    run: &str,
    owner: &str,
    lease: Duration,
) -> Result<bool, StoreError> {
    let done = sqlx::query(RENEW_LEASE)
        .bind(run)
        .bind(owner)
        .bind(lease_ms(lease))
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A runner's step, found by name ([`by_name!`]).
const SETTLE_STEP: &str = concat!(
    "UPDATE jobgraph_steps
    SET state = $3, attempts = $4, output = $5, error = $6, started_at = jobgraph_at($7),
        ended_at = jobgraph_at($8)
    WHERE run_id = $1 AND name = $2 AND ",
    by_name!()
);

/// Records a completed or failed step; [`StoreError::NoSuchStep`] if there is none.
async fn settle_step(
    conn: &mut PgConnection,
    run: &str,
    state: StepStatus,
    outcome: &StepOutcome<'_>,
) -> Result<(), StoreError> {
    let done = sqlx::query(SETTLE_STEP)
        .bind(run)
        .bind(outcome.step)
        .bind(state.as_str())
        .bind(i64::from(outcome.attempts))
        .bind(outcome.output)
        .bind(outcome.error)
        .bind(outcome.started_at)
        .bind(outcome.ended_at)
        .execute(conn)
        .await?;
    match done.rows_affected() {
        0 => Err(no_such_step(run, outcome.step)),
        _ => Ok(()),
    }
}

const SKIP_STEPS: &str = concat!(
    "UPDATE jobgraph_steps SET state = 'skipped'
    WHERE run_id = $1 AND name = ANY ($2::text[]) AND ",
    by_name!(),
    "
    RETURNING name"
);

/// Marks `steps` skipped; [`StoreError::NoSuchStep`] naming the first that the run lacks.
async fn skip_steps(conn: &mut PgConnection, run: &str, steps: &[&str]) -> Result<(), StoreError> {
    if steps.is_empty() {
        return Ok(());
    }
    let skipped: Vec<String> = sqlx::query_scalar(SKIP_STEPS)
        .bind(run)
        .bind(steps)
        .fetch_all(conn)
        .await?;
    match steps.iter().find(|&&s| !skipped.iter().any(|k| k == s)) {
        Some(missing) => Err(no_such_step(run, missing)),
        None => Ok(()),
    }
}

/// The element's step is found by name; none found (no such step) inserts nothing.
const UPSERT_ELEMENT: &str = concat!(
    "INSERT INTO jobgraph_elements (run_id, step_idx, idx, output)
    SELECT run_id, idx, $3, $4 FROM jobgraph_steps WHERE run_id = $1 AND name = $2 AND ",
    by_name!(),
    "
    ON CONFLICT (run_id, step_idx, idx) DO UPDATE SET output = excluded.output"
);

async fn upsert_element(
    conn: &mut PgConnection,
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
        .await?;
    match done.rows_affected() {
        0 => Err(no_such_step(run, step)),
        _ => Ok(()),
    }
}

const SELECT_ELEMENTS: &str = "SELECT e.idx, e.output
    FROM jobgraph_elements e
    JOIN jobgraph_steps s ON s.run_id = e.run_id AND s.idx = e.step_idx
    WHERE s.run_id = $1 AND s.name = $2
    ORDER BY e.idx";

async fn select_elements(
    conn: &mut PgConnection,
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

const SELECT_STEP_EXISTS: &str = "SELECT 1 FROM jobgraph_steps WHERE run_id = $1 AND name = $2";

async fn step_exists(conn: &mut PgConnection, run: &str, step: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query(SELECT_STEP_EXISTS)
        .bind(run)
        .bind(step)
        .fetch_optional(conn)
        .await?
        .is_some())
}

/// Fenced and finished in one statement.
const FINISH_RUN: &str = "UPDATE jobgraph_runs
    SET state = $3, error = $4, lease_owner = NULL, lease_until = NULL, updated_at = now()
    WHERE id = $1 AND lease_owner = $2";

/// Whether the run was finished (`owner` held its lease).
async fn finish_run(
    conn: &mut PgConnection,
    run: &str,
    owner: &str,
    state: RunState,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query(FINISH_RUN)
        .bind(run)
        .bind(owner)
        .bind(state.as_str())
        .bind(error)
        .execute(conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The completed step of a queued run of one step (`$r`: the runs table's name or alias, and a
/// dot), if it completed: `FROM` and `WHERE` of a subquery over it (`a`). Such a step is
/// completed without writing its run (schema version 11, `postgres_queue`), so a run stored
/// `pending` or `running` with one has succeeded, at the step's end.
macro_rules! alone_completed {
    ($r:literal) => {
        concat!(
            "FROM jobgraph_steps a WHERE a.run_id = ",
            $r,
            "id AND a.idx = 0 AND a.alone AND a.state = 'completed'"
        )
    };
}
pub(super) use alone_completed;

/// A run's state as readers see it (`$r`: the runs table's name or alias, and a dot). A
/// queued run is stored `pending` until it ends, so that neither a claim nor a commit that
/// leaves it unfinished writes its row (see `postgres_queue`): it is running once one of its
/// steps is claimed (`worker`, until the step ends or is put back), has failed an attempt
/// (`fails`), or has ended since the run was last written (`ended_at`, against the run's
/// `updated_at`: a redrive writes the run, and resets the claims and failures of the steps it
/// queues again, which makes it pending until a worker takes one). A run of one step has
/// succeeded once its step completed ([`alone_completed!`]).
macro_rules! shown_run_state {
    ($r:literal) => {
        concat!(
            "CASE WHEN ",
            $r,
            "state IN ('pending', 'running') AND EXISTS (SELECT 1 ",
            $crate::store::postgres::alone_completed!($r),
            ") THEN 'succeeded' WHEN ",
            $r,
            "state = 'pending' AND EXISTS (SELECT 1 FROM jobgraph_steps q
                WHERE q.run_id = ",
            $r,
            "id AND (q.state = 'pending' AND (q.worker IS NOT NULL OR q.fails > 0)
                    OR q.ended_at >= ",
            $r,
            "updated_at))
            THEN 'running' ELSE ",
            $r,
            "state END"
        )
    };
}
pub(super) use shown_run_state;

/// When a run was last written, as readers see it (`$r` as in [`shown_run_state!`]): for a
/// queued run not written since one of its steps ended (one that ended with its only step, or
/// that is running), that step's end.
macro_rules! shown_updated_at {
    ($r:literal) => {
        concat!(
            "CASE WHEN ",
            $r,
            "state IN ('pending', 'running') THEN greatest(",
            $r,
            "updated_at, (SELECT max(q.ended_at) FROM jobgraph_steps q WHERE q.run_id = ",
            $r,
            "id)) ELSE ",
            $r,
            "updated_at END"
        )
    };
}

const SELECT_RUN: &str = concat!(
    "SELECT id, job, batch, input, graph::text AS graph, ",
    shown_run_state!("jobgraph_runs."),
    " AS state, error,
        jobgraph_ms(created_at) AS created_at, jobgraph_ms(",
    shown_updated_at!("jobgraph_runs."),
    ") AS updated_at
    FROM jobgraph_runs WHERE id = $1"
);

async fn select_run(conn: &mut PgConnection, run: &str) -> Result<Option<StoredRun>, StoreError> {
    let Some(row) = sqlx::query(SELECT_RUN)
        .bind(run)
        .fetch_optional(conn)
        .await?
    else {
        return Ok(None);
    };
    const T: &str = "jobgraph_runs";
    Ok(Some(StoredRun {
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
    }))
}

const SELECT_STEPS: &str = "SELECT name, state, attempts, output, error,
        jobgraph_ms(started_at) AS started_at, jobgraph_ms(ended_at) AS ended_at
    FROM jobgraph_steps WHERE run_id = $1 ORDER BY idx";

async fn select_steps(conn: &mut PgConnection, run: &str) -> Result<Vec<StoredStep>, StoreError> {
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

/// The newest runs that match first (an index scan, cut at the limit), then each one's tally.
const SELECT_SUMMARIES: &str = concat!(
    "SELECT r.id, r.job, r.batch, r.state,
        jobgraph_ms(r.created_at) AS created_at, jobgraph_ms(r.updated_at) AS updated_at,
        t.pending, t.completed, t.failed, t.skipped, t.cancelled
    FROM (
        SELECT id, job, batch, ",
    shown_run_state!("jobgraph_runs."),
    " AS state, created_at, ",
    shown_updated_at!("jobgraph_runs."),
    " AS updated_at, seq FROM jobgraph_runs
        WHERE ($1::text IS NULL OR job = $1)
            AND ($2::text IS NULL OR ",
    shown_run_state!("jobgraph_runs."),
    " = $2)
            AND ($3::text IS NULL OR batch = $3)
        ORDER BY created_at DESC, seq DESC
        LIMIT $4
    ) r
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (WHERE s.state = 'pending') AS pending,
            count(*) FILTER (WHERE s.state = 'completed') AS completed,
            count(*) FILTER (WHERE s.state = 'failed') AS failed,
            count(*) FILTER (WHERE s.state = 'skipped') AS skipped,
            count(*) FILTER (WHERE s.state = 'cancelled') AS cancelled
        FROM jobgraph_steps s WHERE s.run_id = r.id
    ) t
    ORDER BY r.created_at DESC, r.seq DESC"
);

async fn select_summaries(
    conn: &mut PgConnection,
    filter: &RunFilter,
) -> Result<Vec<RunSummary>, StoreError> {
    // `LIMIT NULL` is no limit.
    let limit = filter.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
    let rows = sqlx::query(SELECT_SUMMARIES)
        .bind(filter.job.as_deref())
        .bind(filter.state.map(RunState::as_str))
        .bind(filter.batch.as_deref())
        .bind(limit)
        .fetch_all(conn)
        .await?;
    const T: &str = "jobgraph_runs";
    let count = |row: &PgRow, column: &str| -> Result<usize, StoreError> {
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

const RESET_STEPS: &str = "UPDATE jobgraph_steps
    SET state = 'pending', attempts = 0, output = NULL, error = NULL, started_at = NULL,
        ended_at = NULL
    WHERE run_id = $1 AND name = ANY ($2::text[])
    RETURNING name";

/// Resets `steps` (names of the stored graph); each must have its row.
async fn reset_steps(conn: &mut PgConnection, run: &str, steps: &[&str]) -> Result<(), StoreError> {
    let reset: Vec<String> = sqlx::query_scalar(RESET_STEPS)
        .bind(run)
        .bind(steps)
        .fetch_all(conn)
        .await?;
    match steps.iter().find(|&&s| !reset.iter().any(|r| r == s)) {
        Some(step) => Err(StoreError::Corrupt {
            what: format!("step `{step}` of run `{run}` is in its stored graph but has no row"),
        }),
        None => Ok(()),
    }
}

const DELETE_ELEMENTS: &str = "DELETE FROM jobgraph_elements e USING jobgraph_steps s
    WHERE s.run_id = $1 AND s.name = ANY ($2::text[])
        AND e.run_id = s.run_id AND e.step_idx = s.idx";

async fn delete_elements(
    conn: &mut PgConnection,
    run: &str,
    steps: &[&str],
) -> Result<(), StoreError> {
    sqlx::query(DELETE_ELEMENTS)
        .bind(run)
        .bind(steps)
        .execute(conn)
        .await?;
    Ok(())
}

/// A run that ended (or was cancelled) becomes pending: the next open resumes it.
const MAKE_RESUMABLE: &str = "UPDATE jobgraph_runs SET
        state = CASE WHEN state IN ('succeeded', 'failed', 'cancelled') THEN 'pending' ELSE state END,
        error = CASE WHEN state IN ('succeeded', 'failed', 'cancelled') THEN NULL ELSE error END,
        updated_at = now()
    WHERE id = $1";

async fn make_resumable(conn: &mut PgConnection, run: &str) -> Result<(), StoreError> {
    sqlx::query(MAKE_RESUMABLE).bind(run).execute(conn).await?;
    Ok(())
}

const SELECT_FAILED_RUNS: &str = "SELECT r.id FROM jobgraph_runs r
    JOIN jobgraph_steps s ON s.run_id = r.id
    WHERE r.job = $1 AND s.name = $2 AND s.state = 'failed' AND s.error IS NOT NULL
    ORDER BY r.created_at DESC, r.seq DESC";

async fn select_failed_runs(
    conn: &mut PgConnection,
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

// ---- The contract -------------------------------------------------------------------------------

/// `open_run` on an existing (locked) run: checks, takes the lease, resumes.
async fn open_existing(
    conn: &mut PgConnection,
    spec: &RunSpec<'_>,
    head: Head,
    owner: &str,
    lease: Duration,
) -> Result<(), StoreError> {
    // A queued run's steps have no index by name, which a runner's checkpoints use.
    let live = head
        .lease_owner
        .as_deref()
        .zip(head.lease_until)
        .filter(|_| head.live);
    check_open(spec.id, &head.job, head.queued, live, spec.job, owner)?;
    take_lease(&mut *conn, spec.id, owner, lease).await?;
    if !head.state.is_terminal() {
        resume_steps(conn, spec.id).await?;
    }
    Ok(())
}

impl Store for PgStore {
    fn open_run<'a>(
        &'a self,
        spec: RunSpec<'a>,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<StoredRun, StoreError>> {
        async move {
            let mut tx = self.begin().await?;
            let mut created = false;
            match lock_head(&mut tx, spec.id).await? {
                Some(head) => open_existing(&mut tx, &spec, head, owner, lease).await?,
                None => {
                    if let Some(reason) = spec.graph.check() {
                        return Err(StoreError::InvalidGraph {
                            run: spec.id.to_owned(),
                            reason,
                        });
                    }
                    let graph = serde_json::to_string(spec.graph).map_err(|e| {
                        StoreError::InvalidGraph {
                            run: spec.id.to_owned(),
                            reason: e.to_string(),
                        }
                    })?;
                    if insert_run(&mut tx, &spec, &graph, owner, lease).await? {
                        insert_steps(&mut tx, spec.id, spec.graph).await?;
                        created = true;
                    } else {
                        // Created by a concurrent open since our read, and committed: this
                        // statement sees it.
                        let head = lock_head(&mut tx, spec.id)
                            .await?
                            .ok_or_else(|| no_such_run(spec.id))?;
                        open_existing(&mut tx, &spec, head, owner, lease).await?;
                    }
                }
            }
            let mut run = select_run(&mut tx, spec.id)
                .await?
                .ok_or_else(|| no_such_run(spec.id))?;
            run.steps = select_steps(&mut tx, spec.id).await?;
            tx.commit().await?;
            if created {
                self.grew(&[(Table::Runs, 1), (Table::Steps, spec.graph.steps.len())])
                    .await;
            }
            Ok(run)
        }
        .boxed()
    }

    fn renew_lease<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut conn = self.pool.acquire().await?;
            if renew_lease(&mut conn, run_id, owner, lease).await? {
                Ok(())
            } else {
                Err(not_fenced(&mut conn, run_id, owner).await)
            }
        }
        .boxed()
    }

    fn step_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut tx = self.begin().await?;
            fence(&mut tx, run_id, owner).await?;
            settle_step(&mut tx, run_id, StepStatus::Completed, &outcome).await?;
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }

    fn step_failed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
        skipped: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let mut tx = self.begin().await?;
            fence(&mut tx, run_id, owner).await?;
            settle_step(&mut tx, run_id, StepStatus::Failed, &outcome).await?;
            skip_steps(&mut tx, run_id, skipped).await?;
            tx.commit().await?;
            Ok(())
        }
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
        async move {
            let mut tx = self.begin().await?;
            fence(&mut tx, run_id, owner).await?;
            upsert_element(&mut tx, run_id, step, index, output).await?;
            tx.commit().await?;
            Ok(())
        }
        .boxed()
    }

    fn elements<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(usize, String)>, StoreError>> {
        async move {
            let mut tx = self.snapshot().await?;
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
            let mut conn = self.pool.acquire().await?;
            if finish_run(&mut conn, run_id, owner, state, error).await? {
                Ok(())
            } else {
                Err(not_fenced(&mut conn, run_id, owner).await)
            }
        }
        .boxed()
    }

    fn load_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRun>, StoreError>> {
        async move {
            let mut tx = self.snapshot().await?;
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
            let head = lock_head(&mut tx, run_id)
                .await?
                .ok_or_else(|| no_such_run(run_id))?;
            let graph = graph(&head.graph, run_id)?;
            let root = graph
                .position(step)
                .ok_or_else(|| no_such_step(run_id, step))?;
            if let (Some(holder), Some(until)) = (head.lease_owner, head.lease_until)
                && head.live
            {
                return Err(StoreError::Busy {
                    run: run_id.to_owned(),
                    owner: holder,
                    until,
                });
            }
            if head.queued {
                super::postgres_queue::check_unclaimed(&mut tx, run_id).await?;
            }
            let hits = graph.descendants(root);
            let names: Vec<&str> = graph
                .steps
                .iter()
                .zip(&hits)
                .filter(|(_, hit)| **hit)
                .map(|(spec, _)| spec.name.as_str())
                .collect();
            reset_steps(&mut tx, run_id, &names).await?;
            delete_elements(&mut tx, run_id, &names).await?;
            if head.queued {
                super::postgres_queue::requeue(&mut tx, run_id, &head.job, &graph, &hits).await?;
            }
            make_resumable(&mut tx, run_id).await?;
            tx.commit().await?;
            Ok(names.into_iter().map(str::to_owned).collect())
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
