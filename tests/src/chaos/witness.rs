//! The chaos suite's records, in the store's own database beside its tables:
//!
//! - `chaos_witness`: one row per execution of a step (or of an element of a fan-out), written
//!   by the step itself, in its own autocommitted insert, before it works; the same insert
//!   records when the step began (`began_ms`, the worker's clock before the insert, which may
//!   wait for a connection) and what the store said as it landed (`at_ms`): the step's claim
//!   number and holder, and which steps of the run were committed;
//! - `chaos_commits`: one row per commit of a step's output, written by a trigger in the
//!   committing transaction, with the claim it was committed under (its number and holder) and,
//!   on PostgreSQL, the session that committed it (`application_name`: each worker names its
//!   connections after itself); likewise one row per commit of a fan-out's element (claimed one
//!   by one), as unit `step[i]`, and the fan-out's own commit (its elements' outputs, assembled
//!   by the last element's commit) under no claim;
//! - `chaos_ends`: one row per transition of a run to a terminal state, by a trigger (on
//!   PostgreSQL, of a run of one step: the completion of its step, which ends it);
//! - `chaos_acks`: what each worker's store answered to each completion and failure it sent
//!   (written by [`Flaky`](super::flaky::Flaky) after the answer), and the answers it replaced
//!   with an error (ambiguous commits).

use std::time::Duration;

use jobgraph::StepContext;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

/// The witness tables and the audit triggers, PostgreSQL (after the store created its schema).
pub const PG_SCHEMA: &str = "
CREATE TABLE chaos_witness (
    seq BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL, unit TEXT NOT NULL,
    worker TEXT NOT NULL, pid BIGINT NOT NULL, claim_seen BIGINT, holder_seen TEXT,
    committed_seen TEXT, began_ms BIGINT NOT NULL, at_ms BIGINT NOT NULL);
CREATE TABLE chaos_commits (
    seq BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL, claim BIGINT,
    holder TEXT, committer TEXT, output TEXT, at_ms BIGINT NOT NULL);
CREATE TABLE chaos_ends (
    seq BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, old_state TEXT, new_state TEXT NOT NULL,
    at_ms BIGINT NOT NULL);
CREATE TABLE chaos_acks (
    seq BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL, step TEXT NOT NULL, claim BIGINT NOT NULL,
    worker TEXT NOT NULL, kind TEXT NOT NULL, stored BOOLEAN NOT NULL, ambiguous BOOLEAN NOT NULL,
    at_ms BIGINT NOT NULL);
CREATE FUNCTION chaos_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_commits (run_id, step, claim, holder, committer, output, at_ms)
    VALUES (NEW.run_id, NEW.name, OLD.claims, OLD.worker,
            current_setting('application_name', true), NEW.output,
            jobgraph_ms(clock_timestamp()));
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_commit AFTER UPDATE ON jobgraph_steps
    FOR EACH ROW WHEN (NEW.state = 'completed') EXECUTE FUNCTION chaos_commit();
CREATE FUNCTION chaos_element_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_commits (run_id, step, claim, holder, committer, output, at_ms)
    VALUES (NEW.run_id, NEW.step || '[' || NEW.idx || ']', OLD.claims, OLD.worker,
            current_setting('application_name', true), NEW.output,
            jobgraph_ms(clock_timestamp()));
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_element_commit AFTER UPDATE ON jobgraph_queue_elements
    FOR EACH ROW WHEN (NEW.state = 'completed') EXECUTE FUNCTION chaos_element_commit();
CREATE FUNCTION chaos_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A run of one step ended with its step (below); writing it ended later is no transition.
    IF OLD.state IN ('pending', 'running') AND EXISTS (SELECT 1 FROM jobgraph_steps a
        WHERE a.run_id = NEW.id AND a.alone AND a.state = 'completed') THEN
        RETURN NEW;
    END IF;
    INSERT INTO chaos_ends (run_id, old_state, new_state, at_ms)
    VALUES (NEW.id, OLD.state, NEW.state, jobgraph_ms(clock_timestamp()));
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_end AFTER UPDATE ON jobgraph_runs
    FOR EACH ROW WHEN (NEW.state IN ('succeeded', 'failed', 'cancelled')) EXECUTE FUNCTION chaos_end();
-- The only step of a run completes without writing its run: that commit is the run's end.
CREATE FUNCTION chaos_alone_end() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_ends (run_id, old_state, new_state, at_ms)
    VALUES (NEW.run_id, NULL, 'succeeded', jobgraph_ms(clock_timestamp()));
    RETURN NEW;
END $$;
CREATE TRIGGER chaos_alone_end AFTER UPDATE ON jobgraph_steps
    FOR EACH ROW WHEN (NEW.alone AND NEW.state = 'completed' AND OLD.state <> 'completed')
    EXECUTE FUNCTION chaos_alone_end();
";

/// Unix ms in SQLite.
macro_rules! sqlite_now {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// The same in SQLite (no session names: `committer` stays NULL).
pub const SQLITE_SCHEMA: &str = concat!(
    "
CREATE TABLE chaos_witness (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step TEXT NOT NULL,
    unit TEXT NOT NULL, worker TEXT NOT NULL, pid INTEGER NOT NULL, claim_seen INTEGER,
    holder_seen TEXT, committed_seen TEXT, began_ms INTEGER NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE chaos_commits (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step TEXT NOT NULL,
    claim INTEGER, holder TEXT, committer TEXT, output TEXT, at_ms INTEGER NOT NULL);
CREATE TABLE chaos_ends (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, old_state TEXT,
    new_state TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE chaos_acks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, step TEXT NOT NULL,
    claim INTEGER NOT NULL, worker TEXT NOT NULL, kind TEXT NOT NULL, stored BOOLEAN NOT NULL,
    ambiguous BOOLEAN NOT NULL, at_ms INTEGER NOT NULL);
CREATE TRIGGER chaos_commit AFTER UPDATE ON jobgraph_steps WHEN NEW.state = 'completed'
BEGIN
    INSERT INTO chaos_commits (run_id, step, claim, holder, committer, output, at_ms)
    VALUES (NEW.run_id, NEW.name, OLD.claims, OLD.worker, NULL, NEW.output, ",
    sqlite_now!(),
    ");
END;
CREATE TRIGGER chaos_element_commit AFTER UPDATE ON jobgraph_queue_elements
    WHEN NEW.state = 'completed'
BEGIN
    INSERT INTO chaos_commits (run_id, step, claim, holder, committer, output, at_ms)
    VALUES (NEW.run_id, NEW.step || '[' || NEW.idx || ']', OLD.claims, OLD.worker, NULL,
            NEW.output, ",
    sqlite_now!(),
    ");
END;
CREATE TRIGGER chaos_end AFTER UPDATE ON jobgraph_runs
    WHEN NEW.state IN ('succeeded', 'failed', 'cancelled')
BEGIN
    INSERT INTO chaos_ends (run_id, old_state, new_state, at_ms)
    VALUES (NEW.id, OLD.state, NEW.state, ",
    sqlite_now!(),
    ");
END;
"
);

const PG_WITNESS: &str = "INSERT INTO chaos_witness
    (run_id, step, unit, worker, pid, claim_seen, holder_seen, committed_seen, began_ms, at_ms)
    SELECT $1, $2, $3, $4, $5,
        (SELECT claims FROM jobgraph_steps WHERE run_id = $1 AND name = $2),
        (SELECT worker FROM jobgraph_steps WHERE run_id = $1 AND name = $2),
        (SELECT string_agg(name, ',') FROM jobgraph_steps
            WHERE run_id = $1 AND state = 'completed'),
        $6, jobgraph_ms(clock_timestamp())";

const SQLITE_WITNESS: &str = concat!(
    "INSERT INTO chaos_witness
    (run_id, step, unit, worker, pid, claim_seen, holder_seen, committed_seen, began_ms, at_ms)
    SELECT ?1, ?2, ?3, ?4, ?5,
        (SELECT claims FROM jobgraph_steps WHERE run_id = ?1 AND name = ?2),
        (SELECT worker FROM jobgraph_steps WHERE run_id = ?1 AND name = ?2),
        (SELECT group_concat(name, ',') FROM jobgraph_steps
            WHERE run_id = ?1 AND state = 'completed'), ?6, ",
    sqlite_now!(),
    ""
);

const PG_ACK: &str = "INSERT INTO chaos_acks
    (run_id, step, claim, worker, kind, stored, ambiguous, at_ms)
    VALUES ($1, $2, $3, $4, $5, $6, $7, jobgraph_ms(clock_timestamp()))";

const SQLITE_ACK: &str = concat!(
    "INSERT INTO chaos_acks (run_id, step, claim, worker, kind, stored, ambiguous, at_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ",
    sqlite_now!(),
    ")"
);

/// The witness table could not be written: the step fails, and the queue retries it.
#[derive(Debug, thiserror::Error)]
#[error("the chaos witness could not record `{unit}` of run `{run}`: {source}")]
pub struct WitnessError {
    run: String,
    unit: String,
    #[source]
    source: sqlx::Error,
}

/// An answer of the store to a worker, as [`Witness::ack`] records it.
#[derive(Clone, Copy, Debug)]
pub struct Ack<'a> {
    /// The run.
    pub run: &'a str,
    /// The step.
    pub step: &'a str,
    /// The claim's number the worker sent.
    pub claim: u32,
    /// `complete` or `fail`.
    pub kind: &'static str,
    /// Whether the store said it stored it.
    pub stored: bool,
    /// Whether the worker was told an error instead (an injected ambiguous commit).
    pub ambiguous: bool,
}

enum Db {
    Pg(PgPool),
    Sqlite(SqlitePool),
}

/// The resource of the chaos jobs: a connection of its own to the store's database (never the
/// store's), through which each step records its execution.
pub struct Witness {
    db: Db,
    worker: String,
    pid: i64,
}

impl Witness {
    /// A witness for worker `worker` of the database at `url` (a `postgres://` URL or a SQLite
    /// file's path).
    ///
    /// # Errors
    ///
    /// If the database cannot be reached.
    pub async fn connect(url: &str, worker: &str) -> Result<Witness, sqlx::Error> {
        let db = if url.starts_with("postgres") {
            let options: PgConnectOptions = url.parse()?;
            Db::Pg(
                PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_lazy_with(options.application_name(&format!("{worker}/witness"))),
            )
        } else {
            let options = SqliteConnectOptions::new()
                .filename(url)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            Db::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await?,
            )
        };
        Ok(Witness {
            db,
            worker: worker.to_owned(),
            pid: i64::from(std::process::id()),
        })
    }

    /// Records an execution of `unit` (a step, or `parts[i]`) of the step `ctx` runs.
    ///
    /// # Errors
    ///
    /// If the database could not be written: the step returns it, and is retried.
    pub async fn record(&self, ctx: &StepContext, unit: &str) -> Result<(), WitnessError> {
        let (run, step) = (ctx.job_id(), ctx.step_name());
        // Before the insert, which may wait for a connection (the database just came back):
        // the checker explains re-executions by when a step began, not when it was recorded.
        let began = super::harness::now_ms();
        let done = match &self.db {
            Db::Pg(pool) => sqlx::query(PG_WITNESS)
                .bind(run)
                .bind(step)
                .bind(unit)
                .bind(&self.worker)
                .bind(self.pid)
                .bind(began)
                .execute(pool)
                .await
                .map(drop),
            Db::Sqlite(pool) => sqlx::query(SQLITE_WITNESS)
                .bind(run)
                .bind(step)
                .bind(unit)
                .bind(&self.worker)
                .bind(self.pid)
                .bind(began)
                .execute(pool)
                .await
                .map(drop),
        };
        done.map_err(|source| WitnessError {
            run: run.to_owned(),
            unit: unit.to_owned(),
            source,
        })
    }

    /// Records the store's answer to one completion or failure (best effort: the checker
    /// treats the acks as a subset of the answers).
    pub async fn ack(&self, ack: Ack<'_>) {
        let done = match &self.db {
            Db::Pg(pool) => sqlx::query(PG_ACK)
                .bind(ack.run)
                .bind(ack.step)
                .bind(i64::from(ack.claim))
                .bind(&self.worker)
                .bind(ack.kind)
                .bind(ack.stored)
                .bind(ack.ambiguous)
                .execute(pool)
                .await
                .map(drop),
            Db::Sqlite(pool) => sqlx::query(SQLITE_ACK)
                .bind(ack.run)
                .bind(ack.step)
                .bind(i64::from(ack.claim))
                .bind(&self.worker)
                .bind(ack.kind)
                .bind(ack.stored)
                .bind(ack.ambiguous)
                .execute(pool)
                .await
                .map(drop),
        };
        // Lost with the database: the checker reads the acks as a subset of the answers.
        let _ = done;
    }
}
