//! Durable batches: a named batch stores its inputs as runs `NAME/INDEX`, running it again runs
//! only the runs that did not succeed, a batch whose future was dropped mid-way resumes from the
//! store alone (`resume_batch`), and the status starts from what the store holds. Each case runs
//! on the in-memory store, on SQLite and on PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::durable::resume_batch;
use jobgraph::store::{MemoryStore, PgStore, RunFilter, RunState, SqliteStore, Store};
use jobgraph::{Batch, BatchStatus, job};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the warehouse refused row {0}")]
struct Refused(u64);

/// How often each step ran per row, which rows fail at `save`, and which rows hang in `save`:
/// global, since the job's value is stored and decoded again. Each test uses rows of its own.
static RAN: Mutex<Option<HashMap<(u64, &'static str), u32>>> = Mutex::new(None);
static FAILING: Mutex<Option<HashSet<u64>>> = Mutex::new(None);
static HANGING: Mutex<Option<HashSet<u64>>> = Mutex::new(None);

fn ran(row: u64, step: &'static str) -> u32 {
    RAN.lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&(row, step)).copied())
        .unwrap_or(0)
}

fn mark(row: u64, step: &'static str) {
    *RAN.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry((row, step))
        .or_default() += 1;
}

fn set(cell: &Mutex<Option<HashSet<u64>>>, rows: impl IntoIterator<Item = u64>, on: bool) {
    let mut cell = cell.lock().unwrap();
    let cell = cell.get_or_insert_with(HashSet::new);
    for row in rows {
        if on {
            cell.insert(row);
        } else {
            cell.remove(&row);
        }
    }
}

fn has(cell: &Mutex<Option<HashSet<u64>>>, row: u64) -> bool {
    cell.lock()
        .unwrap()
        .as_ref()
        .is_some_and(|s| s.contains(&row))
}

/// `fetch` -> `save`.
#[derive(Serialize, Deserialize)]
struct Row {
    row: u64,
}

#[job(durable)]
impl Row {
    #[step]
    async fn fetch(&self) -> u64 {
        mark(self.row, "fetch");
        self.row * 10
    }

    #[step]
    async fn save(&self, fetch: &u64) -> Result<String, Refused> {
        mark(self.row, "save");
        if has(&HANGING, self.row) {
            std::future::pending::<()>().await;
        }
        if has(&FAILING, self.row) {
            return Err(Refused(self.row));
        }
        Ok(format!("saved {fetch}"))
    }
}

jobgraph_tests::on_both_stores! {
    a_rerun_runs_only_the_failed_runs => rerun_runs_only_failed,
    a_dropped_batch_resumes_from_the_store_alone => dropped_batch_resumes,
}

/// Every status a batch reported, in order.
type Seen = Arc<Mutex<Vec<BatchStatus<RowStep>>>>;

/// Records every status the batch reports.
fn recorder() -> (Seen, impl Fn(&BatchStatus<RowStep>) + Send + 'static) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    (seen, move |status: &BatchStatus<RowStep>| {
        sink.lock().unwrap().push(status.clone())
    })
}

async fn rerun_runs_only_failed<S: Store + Clone>(store: S, base: u64) {
    let rows = || (0..10).map(move |i| Row { row: base + i });
    set(&FAILING, [base + 3, base + 7], true);
    let first = Batch::new(rows())
        .concurrency(3)
        .store(&store, "nightly")
        .run()
        .await
        .unwrap();
    assert_eq!(
        (first.summary.succeeded, first.summary.failed, first.loaded),
        (8, 2, 0)
    );
    assert_eq!(first.run_ids[3], "nightly/3");
    let err = first.results[3].as_ref().unwrap_err();
    assert_eq!(err.job_error().unwrap().step(), RowStep::Save);
    let stored = store.load_run("nightly/3").await.unwrap().unwrap();
    assert_eq!(
        (stored.state, stored.batch.as_deref()),
        (RunState::Failed, Some("nightly"))
    );

    // The same batch again, the warehouse fixed: only the two failed runs run, and only their
    // failed step.
    set(&FAILING, [base + 3, base + 7], false);
    let (seen, listener) = recorder();
    let again = Batch::new(rows())
        .concurrency(3)
        .status_listener(listener)
        .store(&store, "nightly")
        .run()
        .await
        .unwrap();
    assert!(again.is_success(), "{:?}", again.summary);
    assert_eq!(again.loaded, 8);
    assert_eq!(again.results.len(), 10);
    for (i, result) in again.results.iter().enumerate() {
        let row = base + i as u64;
        assert_eq!(result.as_ref().unwrap().save, format!("saved {}", row * 10));
        assert_eq!(ran(row, "fetch"), 1, "row {row}: `fetch` ran again");
        let saves = if i == 3 || i == 7 { 2 } else { 1 };
        assert_eq!(ran(row, "save"), saves, "row {row}");
    }
    // The status starts from the store: 8 runs succeeded, the 2 failed ones wait to run again,
    // with their `fetch` completed.
    let seen = seen.lock().unwrap();
    let start = &seen[0];
    assert_eq!((start.total, start.total_known), (10, true));
    assert_eq!(
        (start.runs.succeeded, start.runs.waiting, start.runs.failed),
        (8, 2, 0)
    );
    assert_eq!(start.step(RowStep::Fetch).completed, 10);
    assert_eq!(
        (
            start.step(RowStep::Save).completed,
            start.step(RowStep::Save).waiting
        ),
        (8, 2)
    );
    let end = seen.last().unwrap();
    assert!(end.finished);
    assert_eq!((end.runs.succeeded, end.runs.total()), (10, 10));
    assert_eq!(end.step(RowStep::Save).completed, 10);
}

async fn dropped_batch_resumes<S: Store + Clone>(store: S, base: u64) {
    let base = base + 100;
    // Rows 6 to 9 hang in `save`: with 4 runs at a time, rows 0 to 5 succeed, 6 to 9 hang,
    // 10 and 11 never start. Then the batch's future is dropped, as a crash would.
    let hanging = (6..10).map(|i| base + i);
    set(&HANGING, hanging.clone(), true);
    let batch = Batch::new((0..12).map(|i| Row { row: base + i }))
        .concurrency(4)
        .store(&store, "import")
        .run();
    let stuck = async {
        loop {
            let done = store
                .list_runs(&RunFilter {
                    batch: Some("import".into()),
                    state: Some(RunState::Succeeded),
                    ..RunFilter::default()
                })
                .await
                .unwrap()
                .len();
            if done == 6 && hanging.clone().all(|row| ran(row, "save") == 1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        _ = batch => panic!("the batch ended though 4 runs hang"),
        _ = tokio::time::timeout(Duration::from_secs(20), stuck) => {}
    }
    // The whole batch is stored, the rows never started too.
    let listed = store
        .list_runs(&RunFilter {
            batch: Some("import".into()),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 12);
    // The dead process's leases expire.
    age(&store, Duration::from_secs(3600)).await;

    set(&HANGING, hanging.clone(), false);
    let (seen, listener) = recorder();
    let resumed = resume_batch::<Row>(&store, "import")
        .concurrency(4)
        .status_listener(listener)
        .run()
        .await
        .unwrap();
    assert!(resumed.is_success(), "{:?}", resumed.summary);
    assert_eq!(resumed.loaded, 6);
    assert_eq!(resumed.run_ids[11], "import/11");
    for i in 0..12 {
        let row = base + i;
        let out = resumed.results[i as usize].as_ref().unwrap();
        assert_eq!(out.save, format!("saved {}", row * 10));
        assert_eq!(ran(row, "fetch"), 1, "row {row}: `fetch` ran again");
        let saves = if (6..10).contains(&i) { 2 } else { 1 };
        assert_eq!(ran(row, "save"), saves, "row {row}");
    }
    let seen = seen.lock().unwrap().clone();
    let start = &seen[0];
    assert_eq!((start.total, start.total_known), (12, true));
    assert_eq!((start.runs.succeeded, start.runs.waiting), (6, 6));
    // `fetch` completed in the 6 runs that succeeded and in the 4 that hung.
    assert_eq!(start.step(RowStep::Fetch).completed, 10);
    assert_eq!(start.step(RowStep::Save).completed, 6);
    let end = seen.last().unwrap();
    assert!(end.finished);
    assert_eq!(end.runs.succeeded, 12);
    assert_eq!(end.step(RowStep::Fetch).completed, 12);

    // Once more: everything is loaded, nothing runs.
    let again = resume_batch::<Row>(&store, "import").run().await.unwrap();
    assert_eq!((again.loaded, again.summary.succeeded), (12, 12));
    assert_eq!(ran(base + 11, "fetch"), 1);
}

/// Ages every lease of `store` by `by`, as time passing would.
async fn age<S: Store>(store: &S, by: Duration) {
    let any: &dyn std::any::Any = store;
    if let Some(memory) = any.downcast_ref::<MemoryStore>() {
        memory.age_leases(by).await;
    } else if let Some(sqlite) = any.downcast_ref::<SqliteStore>() {
        sqlite.age_leases(by).await;
    } else if let Some(postgres) = any.downcast_ref::<PgStore>() {
        postgres.age_leases(by).await;
    } else {
        unreachable!("a store of the suite");
    }
}
