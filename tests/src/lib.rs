//! Integration tests and benchmarks of jobgraph live in `tests/` and `benches/`; this library
//! holds what several test files share.

pub mod chaos;
pub mod kill;
pub mod pg;
pub mod queue_jobs;

/// Runs each `case` (an `async fn(store, base: u64)`) as a test on every store: a fresh
/// in-memory store (module `memory`), a fresh SQLite file (module `sqlite`) and a fresh
/// PostgreSQL database of the test binary's private cluster (module `postgres`, see [`pg`]:
/// skipped, saying why, where PostgreSQL is not installed). `base` numbers the case's inputs
/// apart per store (0, 1000 and 2000), for counters that are global to the test binary.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident => $case:ident,)*) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$case(jobgraph::store::MemoryStore::new(), 0).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("jobs.db");
                    let store = jobgraph::store::SqliteStore::open(path.to_str().unwrap())
                        .await
                        .unwrap();
                    super::$case(store, 1000).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(db) = $crate::pg::database().await else {
                        return;
                    };
                    let store = jobgraph::store::PgStore::connect(db.url()).await.unwrap();
                    super::$case(store, 2000).await;
                }
            )*
        }
    };
}
