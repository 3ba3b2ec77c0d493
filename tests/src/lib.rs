//! Integration tests and benchmarks of jobgraph live in `tests/` and `benches/`; this library
//! holds what several test files share.

pub mod kill;

/// Runs each `case` (an `async fn(store, base: u64)`) as a test on a fresh in-memory store (in
/// module `memory`) and on a fresh SQLite file (module `sqlite`). `base` numbers the case's
/// inputs apart per store (0 and 1000), for counters that are global to the test binary.
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
    };
}
