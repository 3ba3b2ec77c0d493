//! The SQLite store's schema: embedded migrations and the schema version check.
//!
//! `jobgraph_meta` holds `schema_version`. Opening a database applies the migrations it lacks,
//! in one `BEGIN IMMEDIATE` transaction (so processes opening a new file at once serialize), and
//! refuses a database of a version this build does not know.

use sqlx::{Connection as _, SqliteConnection};

use super::StoreError;
use super::sqlite::corrupt_or_database;

/// The schema version this build writes: the number of [`MIGRATIONS`].
pub(super) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Migration `i` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_runs_steps_elements.sql"),
    include_str!("migrations/0002_queue.sql"),
    include_str!("migrations/0003_queue_elements.sql"),
    include_str!("migrations/0004_steps_failed_index.sql"),
    include_str!("migrations/0005_ttr.sql"),
    include_str!("migrations/0006_elements_in_claim_order.sql"),
    include_str!("migrations/0007_limited_steps.sql"),
];

const CREATE_META: &str = "CREATE TABLE IF NOT EXISTS jobgraph_meta (
    key   TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
) STRICT";

const SELECT_VERSION: &str = "SELECT value FROM jobgraph_meta WHERE key = 'schema_version'";

const UPSERT_VERSION: &str = "INSERT INTO jobgraph_meta (key, value) VALUES ('schema_version', ?1)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// Brings the database to [`SCHEMA_VERSION`], or says why it cannot.
pub(super) async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
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
    // Ended here on every path, as PostgreSQL's migration is (where a dropped transaction held
    // its lock until the pool next ran), not by dropping it.
    tx.commit().await?;
    Ok(())
}

async fn create_meta(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query(CREATE_META).execute(conn).await?;
    Ok(())
}

/// The stored version, `None` in a new database.
async fn schema_version(conn: &mut SqliteConnection) -> Result<Option<i64>, StoreError> {
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

async fn set_schema_version(conn: &mut SqliteConnection, version: i64) -> Result<(), StoreError> {
    sqlx::query(UPSERT_VERSION)
        .bind(version.to_string())
        .execute(conn)
        .await?;
    Ok(())
}
