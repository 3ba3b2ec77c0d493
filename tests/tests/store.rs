//! The `Store` contract, written once and run against every store (`MemoryStore`, `SqliteStore`
//! and `PgStore`, each test with its own database), then the SQLite store's own promises:
//! persistence, the schema version check, corrupt rows, concurrent processes; and the
//! PostgreSQL store's: the same, plus concurrent first opens of one database, and times on the
//! database's clock. The PostgreSQL tests run on a private server the tests start
//! (`jobgraph_tests::pg`), and are skipped where PostgreSQL is not installed.
//!
//! Leases are aged with `age_leases` rather than by sleeping.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jobgraph::store::{
    GraphSpec, MemoryStore, PgOptions, PgStore, RunFilter, RunSpec, RunState, SqliteOptions,
    SqliteStore, StepOutcome, StepSpec, StepStatus, StepTally, Store, StoreError, StoredRun,
    Synchronous,
};
use jobgraph_tests::pg::{self, TestDb};

const LEASE: Duration = Duration::from_secs(30);
const JOB: &str = "Import";

/// A store the contract runs on, with its test clock.
trait TestStore: Store {
    fn age(&self, by: Duration) -> BoxFuture<'_, ()>;
}

impl TestStore for MemoryStore {
    fn age(&self, by: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.age_leases(by))
    }
}

impl TestStore for SqliteStore {
    fn age(&self, by: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.age_leases(by))
    }
}

impl TestStore for PgStore {
    fn age(&self, by: Duration) -> BoxFuture<'_, ()> {
        Box::pin(self.age_leases(by))
    }
}

/// fetch → parse → publish, fetch → enrich, publish after enrich; audit stands alone.
fn graph() -> GraphSpec {
    let step = |name: &str, parents: &[usize], after: &[usize]| StepSpec {
        name: name.to_owned(),
        parents: parents.to_vec(),
        after: after.to_vec(),
    };
    GraphSpec {
        steps: vec![
            step("fetch", &[], &[]),
            step("parse", &[0], &[]),
            step("enrich", &[0], &[]),
            step("publish", &[1], &[2]),
            step("audit", &[], &[]),
        ],
    }
}

fn spec<'a>(id: &'a str, graph: &'a GraphSpec) -> RunSpec<'a> {
    RunSpec {
        id,
        job: JOB,
        input: r#"{"customer":7}"#,
        graph,
        batch: None,
    }
}

fn completed<'a>(step: &'a str, output: &'a str) -> StepOutcome<'a> {
    StepOutcome {
        step,
        attempts: 1,
        output: Some(output),
        error: None,
        started_at: Some(1_000),
        ended_at: 2_000,
    }
}

fn failed<'a>(step: &'a str, error: &'a str) -> StepOutcome<'a> {
    StepOutcome {
        step,
        attempts: 3,
        output: None,
        error: Some(error),
        started_at: Some(1_000),
        ended_at: 5_000,
    }
}

fn states(run: &StoredRun) -> Vec<(&str, StepStatus)> {
    run.steps
        .iter()
        .map(|s| (s.name.as_str(), s.state))
        .collect()
}

async fn load(store: &dyn Store, id: &str) -> StoredRun {
    store
        .load_run(id)
        .await
        .unwrap()
        .expect("the run is stored")
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

// ---- The contract ----------------------------------------------------------------------------

async fn open_creates_then_loads(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    let before = now_ms();
    let run = store
        .open_run(
            RunSpec {
                batch: Some("nightly"),
                ..spec("r1", &g)
            },
            "a",
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(run.id, "r1");
    assert_eq!(run.job, JOB);
    assert_eq!(run.batch.as_deref(), Some("nightly"));
    assert_eq!(run.input, r#"{"customer":7}"#);
    assert_eq!(run.graph, g);
    assert_eq!(run.state, RunState::Running);
    assert_eq!(run.error, None);
    assert!(run.created_at >= before && run.created_at <= now_ms());
    let names: Vec<_> = run.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["fetch", "parse", "enrich", "publish", "audit"]);
    for step in &run.steps {
        assert_eq!(step.state, StepStatus::Pending);
        assert_eq!(
            (step.attempts, &step.output, &step.error),
            (0, &None, &None)
        );
        assert_eq!((step.started_at, step.ended_at), (None, None));
    }
    assert_eq!(load(store, "r1").await, run);

    // The same owner opens its run again (a restarted runner with the same owner id).
    let again = store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    assert_eq!((again.created_at, again.steps), (run.created_at, run.steps));
    assert_eq!(store.load_run("nope").await.unwrap(), None);
}

async fn another_job_is_a_mismatch(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    let other = RunSpec {
        job: "Export",
        ..spec("r1", &g)
    };
    let err = store.open_run(other, "a", LEASE).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Mismatch { run, stored_job, job }
            if run == "r1" && stored_job == JOB && job == "Export"),
        "{err:?}"
    );
    assert!(err.to_string().contains("choose another run id"), "{err}");
}

async fn a_live_lease_keeps_others_out(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    let before = now_ms();
    let err = store
        .open_run(spec("r1", &g), "b", LEASE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Busy { run, owner, until }
            if run == "r1" && owner == "a" && *until > before),
        "{err:?}"
    );
    // Renewing keeps it out after the first lease would have expired.
    store.renew_lease("r1", "a", LEASE * 2).await.unwrap();
    store.age(LEASE + Duration::from_secs(1)).await;
    let err = store
        .open_run(spec("r1", &g), "b", LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");
    // b's writes are fenced out too.
    let err = store
        .step_completed("r1", "b", completed("fetch", "1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
}

async fn an_expired_lease_lets_another_owner_in_and_fences_the_old(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    store
        .step_completed("r1", "a", completed("fetch", "1"))
        .await
        .unwrap();
    store.age(LEASE + Duration::from_secs(1)).await;
    let taken = store.open_run(spec("r1", &g), "b", LEASE).await.unwrap();
    assert_eq!(taken.state, RunState::Running);
    assert_eq!(taken.steps[0].state, StepStatus::Completed, "kept");
    let before = load(store, "r1").await;

    // The stale owner changes nothing.
    let lost = |err: StoreError| {
        assert!(
            matches!(&err, StoreError::LeaseLost { run, owner } if run == "r1" && owner == "a"),
            "{err:?}"
        );
        assert!(err.to_string().contains("stop executing"), "{err}");
    };
    lost(
        store
            .step_completed("r1", "a", completed("parse", "2"))
            .await
            .unwrap_err(),
    );
    lost(
        store
            .step_failed("r1", "a", failed("parse", "boom"), &["publish"])
            .await
            .unwrap_err(),
    );
    lost(
        store
            .element_completed("r1", "a", "enrich", 0, "3")
            .await
            .unwrap_err(),
    );
    lost(
        store
            .finish_run("r1", "a", RunState::Succeeded, None)
            .await
            .unwrap_err(),
    );
    lost(store.renew_lease("r1", "a", LEASE).await.unwrap_err());
    assert_eq!(load(store, "r1").await, before);
    assert_eq!(store.elements("r1", "enrich").await.unwrap(), []);

    // The new owner writes.
    store
        .step_completed("r1", "b", completed("parse", "2"))
        .await
        .unwrap();
    assert_eq!(
        load(store, "r1").await.step("parse").unwrap().state,
        StepStatus::Completed
    );
}

async fn a_completed_step_is_stored(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    let opened = store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    let outcome = StepOutcome {
        step: "parse",
        attempts: 2,
        output: Some(r#"{"rows":[1,2]}"#),
        error: None,
        started_at: Some(1_700_000_000_000),
        ended_at: 1_700_000_000_250,
    };
    store.step_completed("r1", "a", outcome).await.unwrap();
    let run = load(store, "r1").await;
    let step = run.step("parse").unwrap();
    assert_eq!(step.state, StepStatus::Completed);
    assert_eq!(step.attempts, 2);
    assert_eq!(step.output.as_deref(), Some(r#"{"rows":[1,2]}"#));
    assert_eq!(step.error, None);
    assert_eq!(step.started_at, Some(1_700_000_000_000));
    assert_eq!(step.ended_at, Some(1_700_000_000_250));
    assert!(run.updated_at >= opened.updated_at);
    assert_eq!(
        run.steps
            .iter()
            .filter(|s| s.state == StepStatus::Pending)
            .count(),
        4
    );

    let err = store
        .step_completed("r1", "a", completed("nope", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchStep { run, step } if run == "r1" && step == "nope"),
        "{err:?}"
    );
    let err = store
        .step_completed("r9", "a", completed("parse", "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchRun { run } if run == "r9"),
        "{err:?}"
    );
}

async fn a_failed_step_records_its_error_and_the_skipped(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    // An unknown skipped step fails the whole transaction: nothing is written.
    let err = store
        .step_failed("r1", "a", failed("parse", "boom"), &["publish", "nope"])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchStep { step, .. } if step == "nope"),
        "{err:?}"
    );
    assert!(
        load(store, "r1")
            .await
            .steps
            .iter()
            .all(|s| s.state == StepStatus::Pending)
    );

    store
        .step_failed("r1", "a", failed("parse", "boom: bad row 3"), &["publish"])
        .await
        .unwrap();
    let run = load(store, "r1").await;
    let parse = run.step("parse").unwrap();
    assert_eq!(parse.state, StepStatus::Failed);
    assert_eq!(parse.error.as_deref(), Some("boom: bad row 3"));
    assert_eq!(parse.attempts, 3);
    assert_eq!(parse.output, None);
    assert_eq!(
        (parse.started_at, parse.ended_at),
        (Some(1_000), Some(5_000))
    );
    assert_eq!(
        states(&run),
        [
            ("fetch", StepStatus::Pending),
            ("parse", StepStatus::Failed),
            ("enrich", StepStatus::Pending),
            ("publish", StepStatus::Skipped),
            ("audit", StepStatus::Pending),
        ]
    );
}

async fn elements_are_stored_one_by_one(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    assert_eq!(store.elements("r1", "enrich").await.unwrap(), []);
    for (index, output) in [(2, "\"c\""), (0, "\"a\""), (7, "\"h\"")] {
        store
            .element_completed("r1", "a", "enrich", index, output)
            .await
            .unwrap();
    }
    // Storing an index again replaces it.
    store
        .element_completed("r1", "a", "enrich", 2, "\"C\"")
        .await
        .unwrap();
    store
        .element_completed("r1", "a", "parse", 0, "\"p\"")
        .await
        .unwrap();
    assert_eq!(
        store.elements("r1", "enrich").await.unwrap(),
        [
            (0, "\"a\"".to_owned()),
            (2, "\"C\"".to_owned()),
            (7, "\"h\"".to_owned())
        ]
    );
    assert_eq!(
        store.elements("r1", "parse").await.unwrap(),
        [(0, "\"p\"".to_owned())]
    );
    assert_eq!(store.elements("r1", "fetch").await.unwrap(), []);

    let err = store
        .element_completed("r1", "a", "nope", 0, "1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchStep { step, .. } if step == "nope"),
        "{err:?}"
    );
    let err = store.elements("r1", "nope").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchStep { step, .. } if step == "nope"),
        "{err:?}"
    );
    let err = store.elements("r9", "enrich").await.unwrap_err();
    assert!(matches!(&err, StoreError::NoSuchRun { .. }), "{err:?}");
}

async fn finishing_releases_the_lease(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    for step in ["fetch", "parse", "enrich", "publish", "audit"] {
        store
            .step_completed("r1", "a", completed(step, "1"))
            .await
            .unwrap();
    }
    let err = store
        .finish_run("r1", "a", RunState::Running, None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotTerminal { .. }), "{err:?}");
    store
        .finish_run("r1", "a", RunState::Succeeded, None)
        .await
        .unwrap();
    let done = load(store, "r1").await;
    assert_eq!(done.state, RunState::Succeeded);

    // The finished owner is fenced out; another owner opens at once and gets it as it is.
    let err = store
        .step_completed("r1", "a", completed("fetch", "2"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let reopened = store.open_run(spec("r1", &g), "b", LEASE).await.unwrap();
    assert_eq!(reopened.state, RunState::Succeeded);
    assert_eq!(reopened.steps, done.steps);
    // ...with its lease taken anyway.
    let err = store
        .open_run(spec("r1", &g), "c", LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");

    // A failed run is terminal too, and keeps its error.
    store.open_run(spec("r2", &g), "a", LEASE).await.unwrap();
    store
        .step_failed(
            "r2",
            "a",
            failed("fetch", "down"),
            &["parse", "enrich", "publish"],
        )
        .await
        .unwrap();
    store
        .finish_run(
            "r2",
            "a",
            RunState::Failed,
            Some("step `fetch` failed: down"),
        )
        .await
        .unwrap();
    let run = store.open_run(spec("r2", &g), "b", LEASE).await.unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(run.error.as_deref(), Some("step `fetch` failed: down"));
    assert_eq!(run.step("parse").unwrap().state, StepStatus::Skipped);
}

async fn a_cancelled_run_resumes(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    store
        .step_completed("r1", "a", completed("fetch", "1"))
        .await
        .unwrap();
    store
        .element_completed("r1", "a", "enrich", 0, "0")
        .await
        .unwrap();
    store
        .step_failed("r1", "a", failed("parse", "cancelled"), &["publish"])
        .await
        .unwrap();
    store
        .finish_run(
            "r1",
            "a",
            RunState::Cancelled,
            Some("cancelled by its caller"),
        )
        .await
        .unwrap();
    let cancelled = load(store, "r1").await;
    assert_eq!(cancelled.state, RunState::Cancelled);
    assert_eq!(cancelled.error.as_deref(), Some("cancelled by its caller"));

    let resumed = store.open_run(spec("r1", &g), "b", LEASE).await.unwrap();
    assert_eq!(resumed.state, RunState::Running);
    assert_eq!(resumed.error, None);
    assert_eq!(
        states(&resumed),
        [
            ("fetch", StepStatus::Completed),
            ("parse", StepStatus::Pending),
            ("enrich", StepStatus::Pending),
            ("publish", StepStatus::Pending),
            ("audit", StepStatus::Pending),
        ]
    );
    assert_eq!(
        resumed.step("parse").unwrap().attempts,
        3,
        "attempts are kept"
    );
    assert_eq!(resumed.step("fetch").unwrap().output.as_deref(), Some("1"));
    assert_eq!(
        store.elements("r1", "enrich").await.unwrap(),
        [(0, "0".to_owned())]
    );
}

async fn list_runs_filters_and_tallies(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    let batch = |id, batch| RunSpec {
        batch,
        ..spec(id, &g)
    };
    // Created in this order: r1, r2, r3 (Import), x1 (Export).
    store
        .open_run(batch("r1", Some("b1")), "a", LEASE)
        .await
        .unwrap();
    store
        .open_run(batch("r2", Some("b1")), "a", LEASE)
        .await
        .unwrap();
    store.open_run(batch("r3", None), "a", LEASE).await.unwrap();
    let export = RunSpec {
        job: "Export",
        ..spec("x1", &g)
    };
    store.open_run(export, "a", LEASE).await.unwrap();
    // r1 succeeded; r2: fetch completed, parse failed, publish skipped, failed.
    for step in ["fetch", "parse", "enrich", "publish", "audit"] {
        store
            .step_completed("r1", "a", completed(step, "1"))
            .await
            .unwrap();
    }
    store
        .finish_run("r1", "a", RunState::Succeeded, None)
        .await
        .unwrap();
    store
        .step_completed("r2", "a", completed("fetch", "1"))
        .await
        .unwrap();
    store
        .step_failed("r2", "a", failed("parse", "x"), &["publish"])
        .await
        .unwrap();
    store
        .finish_run("r2", "a", RunState::Failed, Some("x"))
        .await
        .unwrap();

    let ids = |filter: RunFilter| async move {
        let runs = store.list_runs(&filter).await.unwrap();
        runs.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    assert_eq!(ids(RunFilter::default()).await, ["x1", "r3", "r2", "r1"]);
    let by_job = RunFilter {
        job: Some(JOB.to_owned()),
        ..RunFilter::default()
    };
    assert_eq!(ids(by_job.clone()).await, ["r3", "r2", "r1"]);
    let by_state = |state| RunFilter {
        state: Some(state),
        ..RunFilter::default()
    };
    assert_eq!(ids(by_state(RunState::Running)).await, ["x1", "r3"]);
    assert_eq!(ids(by_state(RunState::Failed)).await, ["r2"]);
    assert_eq!(
        ids(by_state(RunState::Cancelled)).await,
        Vec::<String>::new()
    );
    let by_batch = RunFilter {
        batch: Some("b1".to_owned()),
        ..RunFilter::default()
    };
    assert_eq!(ids(by_batch).await, ["r2", "r1"]);
    let all_three = RunFilter {
        job: Some(JOB.to_owned()),
        state: Some(RunState::Succeeded),
        batch: Some("b1".to_owned()),
        limit: None,
    };
    assert_eq!(ids(all_three).await, ["r1"]);
    let limited = RunFilter {
        limit: Some(2),
        ..by_job
    };
    assert_eq!(ids(limited).await, ["r3", "r2"]);
    let none = RunFilter {
        job: Some("Nope".to_owned()),
        ..RunFilter::default()
    };
    assert_eq!(ids(none).await, Vec::<String>::new());

    let runs = store.list_runs(&RunFilter::default()).await.unwrap();
    let r2 = runs.iter().find(|r| r.id == "r2").unwrap();
    assert_eq!(
        (r2.job.as_str(), r2.batch.as_deref(), r2.state),
        (JOB, Some("b1"), RunState::Failed)
    );
    assert_eq!(
        r2.steps,
        StepTally {
            pending: 2,
            completed: 1,
            failed: 1,
            skipped: 1,
            cancelled: 0
        }
    );
    let r1 = runs.iter().find(|r| r.id == "r1").unwrap();
    assert_eq!((r1.steps.completed, r1.steps.total()), (5, 5));
    let r3 = runs.iter().find(|r| r.id == "r3").unwrap();
    assert_eq!((r3.steps.pending, r3.batch.as_deref()), (5, None));
    assert!(r3.created_at <= r3.updated_at);
}

async fn reset_step_redrives_the_descendants(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    for step in ["fetch", "parse", "enrich", "audit"] {
        store
            .step_completed("r1", "a", completed(step, "1"))
            .await
            .unwrap();
    }
    store
        .element_completed("r1", "a", "publish", 0, "0")
        .await
        .unwrap();
    store
        .element_completed("r1", "a", "fetch", 0, "0")
        .await
        .unwrap();
    store
        .step_failed("r1", "a", failed("publish", "503"), &[])
        .await
        .unwrap();

    // Not while its runner holds a live lease.
    let err = store.reset_step("r1", "parse").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Busy { owner, .. } if owner == "a"),
        "{err:?}"
    );

    store
        .finish_run("r1", "a", RunState::Failed, Some("publish failed"))
        .await
        .unwrap();
    // parse → publish (a parent); the others keep their outputs.
    let reset = store.reset_step("r1", "parse").await.unwrap();
    assert_eq!(reset, ["parse", "publish"]);
    let run = load(store, "r1").await;
    assert_eq!(run.state, RunState::Pending, "resumable");
    assert_eq!(run.error, None);
    assert_eq!(
        states(&run),
        [
            ("fetch", StepStatus::Completed),
            ("parse", StepStatus::Pending),
            ("enrich", StepStatus::Completed),
            ("publish", StepStatus::Pending),
            ("audit", StepStatus::Completed),
        ]
    );
    for name in ["parse", "publish"] {
        let step = run.step(name).unwrap();
        assert_eq!(
            (
                step.attempts,
                &step.output,
                &step.error,
                step.started_at,
                step.ended_at
            ),
            (0, &None, &None, None, None),
            "{name}"
        );
    }
    assert_eq!(store.elements("r1", "publish").await.unwrap(), []);
    assert_eq!(
        store.elements("r1", "fetch").await.unwrap(),
        [(0, "0".to_owned())]
    );

    // enrich → publish through `after`; fetch → everything but audit.
    assert_eq!(
        store.reset_step("r1", "enrich").await.unwrap(),
        ["enrich", "publish"]
    );
    assert_eq!(
        store.reset_step("r1", "fetch").await.unwrap(),
        ["fetch", "parse", "enrich", "publish"]
    );
    assert_eq!(store.elements("r1", "fetch").await.unwrap(), []);
    assert_eq!(store.reset_step("r1", "audit").await.unwrap(), ["audit"]);

    // The next open resumes it.
    let resumed = store.open_run(spec("r1", &g), "b", LEASE).await.unwrap();
    assert_eq!(resumed.state, RunState::Running);
    assert!(resumed.steps.iter().all(|s| s.state == StepStatus::Pending));

    let err = store.reset_step("r9", "parse").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchRun { run } if run == "r9"),
        "{err:?}"
    );
    store.age(LEASE * 2).await;
    let err = store.reset_step("r1", "nope").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::NoSuchStep { step, .. } if step == "nope"),
        "{err:?}"
    );
}

async fn runs_where_a_step_failed(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let g = graph();
    for id in ["r1", "r2", "r3", "r4"] {
        store.open_run(spec(id, &g), "a", LEASE).await.unwrap();
    }
    let export = RunSpec {
        job: "Export",
        ..spec("x1", &g)
    };
    store.open_run(export, "a", LEASE).await.unwrap();
    for id in ["r1", "r3", "x1"] {
        store
            .step_failed(id, "a", failed("parse", "x"), &["publish"])
            .await
            .unwrap();
    }
    store
        .step_failed("r2", "a", failed("fetch", "x"), &[])
        .await
        .unwrap();
    store
        .step_completed("r4", "a", completed("parse", "1"))
        .await
        .unwrap();

    let mut ids = store.runs_where_failed(JOB, "parse").await.unwrap();
    ids.sort();
    assert_eq!(ids, ["r1", "r3"]);
    assert_eq!(store.runs_where_failed(JOB, "fetch").await.unwrap(), ["r2"]);
    assert_eq!(
        store.runs_where_failed("Export", "parse").await.unwrap(),
        ["x1"]
    );
    assert_eq!(
        store.runs_where_failed(JOB, "audit").await.unwrap(),
        Vec::<String>::new()
    );
}

async fn an_invalid_graph_is_refused(store: Arc<impl TestStore>) {
    let store: &dyn TestStore = &*store;
    let mut twice = graph();
    twice.steps[4].name = "fetch".to_owned();
    let err = store
        .open_run(spec("r1", &twice), "a", LEASE)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::InvalidGraph { reason, .. } if reason.contains("`fetch`")),
        "{err:?}"
    );
    let mut dangling = graph();
    dangling.steps[1].after.push(9);
    let err = store
        .open_run(spec("r1", &dangling), "a", LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidGraph { .. }), "{err:?}");
    assert_eq!(store.load_run("r1").await.unwrap(), None);
}

/// Two tasks race `open_run` for one id: exactly one wins, and the run is created once.
async fn racing_opens_have_one_winner(store: Arc<impl TestStore>) {
    let g = Arc::new(graph());
    for round in 0..16 {
        let id = format!("race-{round}");
        let open = |owner: &'static str| {
            let (store, g, id) = (store.clone(), g.clone(), id.clone());
            tokio::spawn(async move {
                let result = store.open_run(spec(&id, &g), owner, LEASE).await;
                result.map(|run| run.steps.len())
            })
        };
        let (a, b) = (open("a"), open("b"));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let (winner, loser) = match (&a, &b) {
            (Ok(_), Err(_)) => ("a", b.unwrap_err()),
            (Err(_), Ok(_)) => ("b", a.unwrap_err()),
            _ => panic!("round {round}: exactly one open must win: {a:?} {b:?}"),
        };
        assert!(
            matches!(&loser, StoreError::Busy { owner, .. } if owner == winner),
            "{loser:?}"
        );
        let run = load(&*store, &id).await;
        assert_eq!(run.steps.len(), 5);
    }
    let all = store.list_runs(&RunFilter::default()).await.unwrap();
    assert_eq!(all.len(), 16);
}

/// Instantiates each contract test for every store, each with its own database.
macro_rules! contract {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(std::sync::Arc::new(jobgraph::store::MemoryStore::new())).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = super::sqlite_store(dir.path()).await;
                    super::$test(std::sync::Arc::new(store)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    let Some(db) = jobgraph_tests::pg::database().await else {
                        return;
                    };
                    let store = super::pg_store(&db).await;
                    super::$test(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

contract!(
    open_creates_then_loads,
    another_job_is_a_mismatch,
    a_live_lease_keeps_others_out,
    an_expired_lease_lets_another_owner_in_and_fences_the_old,
    a_completed_step_is_stored,
    a_failed_step_records_its_error_and_the_skipped,
    elements_are_stored_one_by_one,
    finishing_releases_the_lease,
    a_cancelled_run_resumes,
    list_runs_filters_and_tallies,
    reset_step_redrives_the_descendants,
    runs_where_a_step_failed,
    an_invalid_graph_is_refused,
    racing_opens_have_one_winner,
);

// ---- SQLite only -----------------------------------------------------------------------------

fn db_path(dir: &Path) -> String {
    dir.join("jobs.db").to_str().unwrap().to_owned()
}

async fn sqlite_store(dir: &Path) -> SqliteStore {
    SqliteStore::open(&db_path(dir)).await.unwrap()
}

/// A plain connection to the store's file, as another program would open it.
async fn raw(dir: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", db_path(dir)))
        .await
        .unwrap()
}

async fn execute(dir: &Path, sql: &str) {
    use sqlx::Connection;
    let mut conn = raw(dir).await;
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[tokio::test]
async fn sqlite_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let g = graph();
    let store = sqlite_store(dir.path()).await;
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    store
        .step_completed("r1", "a", completed("fetch", r#"{"n":1}"#))
        .await
        .unwrap();
    store
        .element_completed("r1", "a", "enrich", 3, "\"e\"")
        .await
        .unwrap();
    let before = load(&store, "r1").await;
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&format!("sqlite://{}", db_path(dir.path())))
        .await
        .unwrap();
    assert_eq!(load(&store, "r1").await, before);
    assert_eq!(
        store.elements("r1", "enrich").await.unwrap(),
        [(3, "\"e\"".to_owned())]
    );
    // The lease survived too.
    let err = store
        .open_run(spec("r1", &g), "b", LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");
}

#[tokio::test]
async fn sqlite_opens_paths_urls_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let g = graph();
    let bare = dir.path().join("bare.db");
    let url = dir.path().join("url.db");
    for name in [
        bare.to_str().unwrap().to_owned(),
        format!("sqlite://{}", url.to_str().unwrap()),
        "sqlite::memory:".to_owned(),
    ] {
        let options = SqliteOptions::new()
            .with_synchronous(Synchronous::Normal)
            .with_busy_timeout(Duration::from_secs(1));
        for store in [
            SqliteStore::open(&name).await.unwrap(),
            SqliteStore::open_with(&name, options).await.unwrap(),
        ] {
            store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
            assert_eq!(load(&store, "r1").await.steps.len(), 5, "{name}");
            store.close().await;
        }
    }
    assert!(bare.exists() && url.exists());
    // WAL mode is a property of the file: another connection sees it.
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut raw_at(&bare).await)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

async fn raw_at(path: &Path) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.to_str().unwrap()))
        .await
        .unwrap()
}

#[tokio::test]
async fn sqlite_refuses_another_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    sqlite_store(dir.path()).await.close().await;
    let version: String =
        sqlx::query_scalar("SELECT value FROM jobgraph_meta WHERE key = 'schema_version'")
            .fetch_one(&mut raw(dir.path()).await)
            .await
            .unwrap();
    assert_eq!(version, "7");

    execute(
        dir.path(),
        "UPDATE jobgraph_meta SET value = '99' WHERE key = 'schema_version'",
    )
    .await;
    let err = SqliteStore::open(&db_path(dir.path())).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Schema {
                found: 99,
                expected: 7
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("schema version 99") && message.contains("upgrade jobgraph"),
        "{message}"
    );

    execute(
        dir.path(),
        "UPDATE jobgraph_meta SET value = '-1' WHERE key = 'schema_version'",
    )
    .await;
    let err = SqliteStore::open(&db_path(dir.path())).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Schema { found: -1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );

    execute(
        dir.path(),
        "UPDATE jobgraph_meta SET value = 'one' WHERE key = 'schema_version'",
    )
    .await;
    let err = SqliteStore::open(&db_path(dir.path())).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { what } if what.contains("`one`")),
        "{err:?}"
    );
}

#[tokio::test]
async fn sqlite_reports_corrupt_rows() {
    let dir = tempfile::tempdir().unwrap();
    let g = graph();
    let store = sqlite_store(dir.path()).await;
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    store.open_run(spec("r2", &g), "a", LEASE).await.unwrap();
    execute(
        dir.path(),
        "UPDATE jobgraph_runs SET graph = '{\"steps\": 7}' WHERE id = 'r1'",
    )
    .await;
    let err = store.load_run("r1").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { what } if what.contains("graph of run `r1`")),
        "{err:?}"
    );
    assert!(err.to_string().contains("restore the database"), "{err}");
    store.age(LEASE * 2).await;
    let err = store.reset_step("r1", "fetch").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    // Other runs still read.
    assert_eq!(load(&store, "r2").await.steps.len(), 5);
}

/// Two stores on one file (two processes) race `open_run`: one wins each id.
#[test]
fn sqlite_processes_racing_on_one_file_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(dir.path());
    // Each "process" is its own runtime on its own thread, with its own pool.
    let race = |owner: &'static str| {
        let path = path.clone();
        std::thread::spawn(move || {
            block_on(async {
                let store = SqliteStore::open(&path).await.unwrap();
                let g = graph();
                let mut won = Vec::new();
                for round in 0..20 {
                    let id = format!("race-{round}");
                    match store.open_run(spec(&id, &g), owner, LEASE).await {
                        Ok(_) => won.push(id),
                        Err(StoreError::Busy { .. }) => {}
                        Err(e) => panic!("{owner}: {e:?}"),
                    }
                }
                won
            })
        })
    };
    let (a, b) = (race("a"), race("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(a.len() + b.len(), 20, "{a:?} {b:?}");
    assert!(a.iter().all(|id| !b.contains(id)));
}

// ---- PostgreSQL only -------------------------------------------------------------------------

async fn pg_store(db: &TestDb) -> PgStore {
    PgStore::connect(db.url()).await.unwrap()
}

/// A plain connection to the test's database, as another program would open it.
async fn pg_raw(db: &TestDb) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(db.url()).await.unwrap()
}

async fn pg_execute(db: &TestDb, sql: &str) {
    use sqlx::Connection;
    let mut conn = pg_raw(db).await;
    sqlx::query(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn postgres_survives_reconnecting() {
    let Some(db) = pg::database().await else {
        return;
    };
    let g = graph();
    let store = pg_store(&db).await;
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    store
        .step_completed("r1", "a", completed("fetch", r#"{"n":1}"#))
        .await
        .unwrap();
    store
        .element_completed("r1", "a", "enrich", 3, "\"e\"")
        .await
        .unwrap();
    let before = load(&store, "r1").await;
    store.close().await;
    drop(store);

    let options = PgOptions::new()
        .with_max_connections(1)
        .with_acquire_timeout(Duration::from_secs(5));
    let store = PgStore::connect_with(db.url(), options).await.unwrap();
    assert_eq!(load(&store, "r1").await, before);
    assert_eq!(
        store.elements("r1", "enrich").await.unwrap(),
        [(3, "\"e\"".to_owned())]
    );
    // The lease survived too.
    let err = store
        .open_run(spec("r1", &g), "b", LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");
    // A closed store fails, saying where to look.
    store.close().await;
    let err = store.load_run("r1").await.unwrap_err();
    assert!(matches!(err, StoreError::Database(_)), "{err:?}");
}

#[tokio::test]
async fn postgres_refuses_another_schema_version() {
    let Some(db) = pg::database().await else {
        return;
    };
    pg_store(&db).await.close().await;
    let version: String =
        sqlx::query_scalar("SELECT value FROM jobgraph_meta WHERE key = 'schema_version'")
            .fetch_one(&mut pg_raw(&db).await)
            .await
            .unwrap();
    assert_eq!(version, "19");

    pg_execute(
        &db,
        "UPDATE jobgraph_meta SET value = '99' WHERE key = 'schema_version'",
    )
    .await;
    let err = PgStore::connect(db.url()).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Schema {
                found: 99,
                expected: 19
            }
        ),
        "{err:?}"
    );
    // Its migration transaction ended (`postgres_opening_a_store_releases_the_migration_lock`).
    assert!(pg_migration_lock_is_free(&db), "after refusing the schema");
    let message = err.to_string();
    assert!(
        message.contains("schema version 99") && message.contains("upgrade jobgraph"),
        "{message}"
    );

    pg_execute(
        &db,
        "UPDATE jobgraph_meta SET value = '-1' WHERE key = 'schema_version'",
    )
    .await;
    let err = PgStore::connect(db.url()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Schema { found: -1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("restore it from a backup"),
        "{err}"
    );

    pg_execute(
        &db,
        "UPDATE jobgraph_meta SET value = 'one' WHERE key = 'schema_version'",
    )
    .await;
    let err = PgStore::connect(db.url()).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { what } if what.contains("`one`")),
        "{err:?}"
    );
}

/// Stores opening one new database at once (processes starting together) all succeed, and the
/// schema is created once.
#[test]
fn postgres_concurrent_first_opens_migrate_once() {
    let Some(db) = block_on(pg::database()) else {
        return;
    };
    // Each "process" is its own runtime on its own thread, with its own pool; all connect
    // first, then all open the store at once.
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let opens: Vec<_> = (0..8)
        .map(|i| {
            let (url, barrier) = (db.url().to_owned(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                block_on(async {
                    let store = PgStore::connect(&url).await.unwrap();
                    let g = graph();
                    let id = format!("r{i}");
                    store.open_run(spec(&id, &g), "a", LEASE).await.unwrap();
                    store.close().await;
                })
            })
        })
        .collect();
    for open in opens {
        open.join().unwrap();
    }
    block_on(async {
        let version: String =
            sqlx::query_scalar("SELECT value FROM jobgraph_meta WHERE key = 'schema_version'")
                .fetch_one(&mut pg_raw(&db).await)
                .await
                .unwrap();
        assert_eq!(version, "19");
        let store = pg_store(&db).await;
        let runs = store.list_runs(&RunFilter::default()).await.unwrap();
        assert_eq!(runs.len(), 8);
    });
}

#[tokio::test]
async fn postgres_reports_corrupt_rows() {
    let Some(db) = pg::database().await else {
        return;
    };
    let g = graph();
    let store = pg_store(&db).await;
    store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    store.open_run(spec("r2", &g), "a", LEASE).await.unwrap();
    pg_execute(
        &db,
        r#"UPDATE jobgraph_runs SET graph = '{"steps": 7}' WHERE id = 'r1'"#,
    )
    .await;
    let err = store.load_run("r1").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt { what } if what.contains("graph of run `r1`")),
        "{err:?}"
    );
    assert!(err.to_string().contains("restore the database"), "{err}");
    store.age(LEASE * 2).await;
    let err = store.reset_step("r1", "fetch").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    // Other runs still read.
    assert_eq!(load(&store, "r2").await.steps.len(), 5);
}

/// Leases expire on the database's clock, and the runner's times come back to the millisecond.
#[tokio::test]
async fn postgres_times_are_the_databases_and_exact() {
    let Some(db) = pg::database().await else {
        return;
    };
    let g = graph();
    let store = pg_store(&db).await;
    let mut raw = pg_raw(&db).await;
    // The server's clock, read by another connection, and the contract's millisecond.
    let server_now = async |raw: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar("SELECT jobgraph_ms(clock_timestamp())")
            .fetch_one(raw)
            .await
            .unwrap()
    };
    let before = server_now(&mut raw).await;
    let run = store.open_run(spec("r1", &g), "a", LEASE).await.unwrap();
    let after = server_now(&mut raw).await;
    assert!(before <= run.created_at && run.created_at <= after);
    assert_eq!(run.created_at, run.updated_at);
    let err = store
        .open_run(spec("r1", &g), "b", LEASE)
        .await
        .unwrap_err();
    let StoreError::Busy { until, .. } = err else {
        panic!("{err:?}")
    };
    let lease = i64::try_from(LEASE.as_millis()).unwrap();
    assert!(before + lease <= until && until <= after + lease, "{until}");
    // Aged by a second: the lease ends a second earlier.
    store.age(Duration::from_secs(1)).await;
    let err = store
        .open_run(spec("r1", &g), "b", LEASE)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Busy { until: aged, .. } if aged == until - 1_000),
        "{err:?}"
    );

    // A step's times are the runner's, to the millisecond: before the epoch, at it, and in the
    // year 9999.
    for (started, ended) in [
        (-1_500, -1),
        (0, 999),
        (1_700_000_000_250, 1_700_000_000_999),
        (253_402_300_799_998, 253_402_300_799_999),
    ] {
        let outcome = StepOutcome {
            started_at: Some(started),
            ended_at: ended,
            ..completed("fetch", "1")
        };
        store.step_completed("r1", "a", outcome).await.unwrap();
        let fetch = load(&store, "r1").await.steps[0].clone();
        assert_eq!(
            (fetch.started_at, fetch.ended_at),
            (Some(started), Some(ended))
        );
    }
    // A lease far longer than the database's calendar is capped, not an error.
    store.renew_lease("r1", "a", Duration::MAX).await.unwrap();
}

/// Every text column an index orders compares as bytes, whatever the database's collation (a
/// linguistic one costs each step of an index search a call of the collation library, and
/// would order run ids otherwise than the store's Rust code does when it locks runs in id
/// order). Listed from the catalog, so that a column added later without `COLLATE "C"` fails
/// here; all but `jobgraph_meta`'s key, which is read once as a store opens.
#[tokio::test]
async fn postgres_indexed_text_compares_as_bytes() {
    let Some(db) = pg::database().await else {
        return;
    };
    pg_store(&db).await.close().await;
    let mut raw = pg_raw(&db).await;
    let columns: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT c.relname::text, a.attname::text, co.collname::text
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE c.relname LIKE 'jobgraph\\_%' AND c.relname <> 'jobgraph_meta'
          AND a.atttypid = 'text'::regtype
        ORDER BY 1, 2",
    )
    .fetch_all(&mut raw)
    .await
    .unwrap();
    assert!(
        columns
            .iter()
            .any(|(t, c, _)| t == "jobgraph_runs" && c == "id"),
        "{columns:?}"
    );
    let other: Vec<_> = columns
        .iter()
        .filter(|(_, _, collation)| collation.as_deref() != Some("C"))
        .collect();
    assert!(other.is_empty(), "indexed without COLLATE \"C\": {other:?}");
}

/// The store's time functions are inlined into the statements that call them (each completion
/// calls `jobgraph_at`, each claim of a limited step `jobgraph_ms`): a call that is not runs as
/// a query of its own, eight times the cost.
#[tokio::test]
async fn postgres_time_functions_are_inlined() {
    let Some(db) = pg::database().await else {
        return;
    };
    pg_store(&db).await.close().await;
    let mut raw = pg_raw(&db).await;
    for call in ["jobgraph_at(ms)", "jobgraph_ms(jobgraph_at(ms))"] {
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (VERBOSE) SELECT {call} FROM unnest(ARRAY[1::bigint]) AS t (ms)"
        ))
        .fetch_all(&mut raw)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("to_timestamp"), "{call} not planned: {plan}");
        assert!(!plan.contains("jobgraph_"), "{call} not inlined: {plan}");
    }
}

/// Whether another session can take the store's migration lock now, asked from another thread
/// while this one's runtime (a test's: one thread) is blocked: what a second process opening
/// the store sees while the first is busy with anything else.
fn pg_migration_lock_is_free(db: &TestDb) -> bool {
    // `postgres_schema::MIGRATION_LOCK`: "jobgraph" in ASCII.
    const MIGRATION_LOCK: i64 = i64::from_be_bytes(*b"jobgraph");
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                block_on(async {
                    use sqlx::Connection;
                    let mut conn = pg_raw(db).await;
                    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                        .bind(MIGRATION_LOCK)
                        .fetch_one(&mut conn)
                        .await
                        .unwrap();
                    conn.close().await.unwrap();
                    free
                })
            })
            .join()
            .unwrap()
    })
}

/// Opening a store ends its migration transaction before it returns, whatever it found (a
/// version it refuses: `postgres_refuses_another_schema_version`): a transaction left to be
/// rolled back when dropped held the migration lock until the pool next ran on this runtime, so
/// a second process's open waited for this one's next `.await` (forever, when this one went on
/// to block: a worker process waiting for its start on stdin).
#[tokio::test]
async fn postgres_opening_a_store_releases_the_migration_lock() {
    let Some(db) = pg::database().await else {
        return;
    };
    // A new database: migrated and committed.
    let first = pg_store(&db).await;
    assert!(pg_migration_lock_is_free(&db), "after creating the schema");
    // Up to date: nothing to migrate.
    let second = pg_store(&db).await;
    assert!(
        pg_migration_lock_is_free(&db),
        "after finding the schema current"
    );
    first.close().await;
    second.close().await;
}

/// Two stores on one database (two processes) race `open_run`: one wins each id.
#[test]
fn postgres_processes_racing_on_one_database_have_one_winner() {
    let Some(db) = block_on(pg::database()) else {
        return;
    };
    // Create the schema first: this test is about the runs.
    block_on(async { pg_store(&db).await.close().await });
    let race = |owner: &'static str| {
        let url = db.url().to_owned();
        std::thread::spawn(move || {
            block_on(async {
                let store = PgStore::connect(&url).await.unwrap();
                let g = graph();
                let mut won = Vec::new();
                for round in 0..20 {
                    let id = format!("race-{round}");
                    match store.open_run(spec(&id, &g), owner, LEASE).await {
                        Ok(_) => won.push(id),
                        Err(StoreError::Busy { .. }) => {}
                        Err(e) => panic!("{owner}: {e:?}"),
                    }
                }
                won
            })
        })
    };
    let (a, b) = (race("a"), race("b"));
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_eq!(a.len() + b.len(), 20, "{a:?} {b:?}");
    assert!(a.iter().all(|id| !b.contains(id)));
}
