//! The PostgreSQL store's schema: embedded migrations and the schema version check.
//!
//! `jobgraph_meta` holds `schema_version`, as in SQLite. Opening a store applies the migrations
//! its database lacks, in one transaction that first takes a transaction-scoped advisory lock
//! ([`MIGRATION_LOCK`]): processes opening one new database at once queue on that lock, and the
//! second finds the schema the first committed (without it, two `CREATE TABLE`s of one name race,
//! `IF NOT EXISTS` or not, and one fails on the catalog's unique index). A database of a version
//! this build does not know is refused.

use sqlx::{PgConnection, PgPool};

use super::StoreError;
use super::postgres::corrupt_or_database;

/// The schema version this build writes: the number of [`MIGRATIONS`].
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("postgres_migrations/0001_runs_steps_elements.sql"),
    include_str!("postgres_migrations/0002_queue.sql"),
    include_str!("postgres_migrations/0003_claim_index.sql"),
    include_str!("postgres_migrations/0004_queue_elements.sql"),
    include_str!("postgres_migrations/0005_ttr.sql"),
    include_str!("postgres_migrations/0006_room_for_claims.sql"),
    include_str!("postgres_migrations/0007_claims_walk_the_queue_order.sql"),
    include_str!("postgres_migrations/0008_graph_keys.sql"),
    include_str!("postgres_migrations/0009_limit_claims.sql"),
    include_str!("postgres_migrations/0010_steps_by_position.sql"),
    include_str!("postgres_migrations/0011_runs_of_one_step.sql"),
    include_str!("postgres_migrations/0012_times_inline.sql"),
    include_str!("postgres_migrations/0013_keys_in_byte_order.sql"),
    include_str!("postgres_migrations/0014_limited_steps.sql"),
    include_str!("postgres_migrations/0015_limited_elements.sql"),
    include_str!("postgres_migrations/0016_limited_by_older_builds.sql"),
    include_str!("postgres_migrations/0017_handed_steps_stay_hot.sql"),
    include_str!("postgres_migrations/0018_handoffs_fenced_by_resets.sql"),
    include_str!("postgres_migrations/0019_alone_steps_carry_their_input.sql"),
];

/// The key of the advisory lock that serializes migrations: "jobgraph" in ASCII, one key per
/// database (advisory locks are per database), released at commit or rollback.
pub(super) const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"jobgraph");

const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";

const META_EXISTS: &str = "SELECT to_regclass('jobgraph_meta') IS NOT NULL";

const CREATE_META: &str = "CREATE TABLE jobgraph_meta (
    key   text NOT NULL PRIMARY KEY,
    value text NOT NULL
)";

const SELECT_VERSION: &str = "SELECT value FROM jobgraph_meta WHERE key = 'schema_version'";

const UPSERT_VERSION: &str = "INSERT INTO jobgraph_meta (key, value) VALUES ('schema_version', $1)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Brings the database to [`SCHEMA_VERSION`], or says why it cannot.
pub(super) async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query(LOCK)
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    create_meta(&mut tx).await?;
    let found = schema_version(&mut tx).await?.unwrap_or(0);
    let Some(missing) = usize::try_from(found)
        .ok()
        .and_then(|found| MIGRATIONS.get(found..))
    else {
        tx.rollback().await?;
        return Err(StoreError::Schema {
            found,
            expected: SCHEMA_VERSION,
        });
    };
    if !missing.is_empty() {
        for migration in missing {
            sqlx::raw_sql(migration).execute(&mut *tx).await?;
        }
        set_schema_version(&mut tx, SCHEMA_VERSION).await?;
    }
    // Ended here on every path, not by dropping it: sqlx rolls a dropped transaction back from
    // a task its pool spawns on this runtime, so the lock, which every process's open waits
    // for, would stay held until this runtime next runs.
    tx.commit().await?;
    Ok(())
}

/// Creates `jobgraph_meta` unless it exists (checked first, under the migration lock: `IF NOT
/// EXISTS` would log a notice at every open).
async fn create_meta(conn: &mut PgConnection) -> Result<(), StoreError> {
    let exists: bool = sqlx::query_scalar(META_EXISTS)
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        sqlx::query(CREATE_META).execute(conn).await?;
    }
    Ok(())
}

/// The stored version, `None` in a new database.
async fn schema_version(conn: &mut PgConnection) -> Result<Option<i64>, StoreError> {
    let value: Option<String> = sqlx::query_scalar(SELECT_VERSION)
        .fetch_optional(conn)
        .await
        .map_err(|e| corrupt_or_database(e, "jobgraph_meta.schema_version"))?;
    value
        .map(|v| {
            v.trim().parse().map_err(|_| StoreError::Corrupt {
                what: format!("jobgraph_meta.schema_version is `{v}`, not a number"),
            })
        })
        .transpose()
}

async fn set_schema_version(conn: &mut PgConnection, version: i64) -> Result<(), StoreError> {
    sqlx::query(UPSERT_VERSION)
        .bind(version.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
