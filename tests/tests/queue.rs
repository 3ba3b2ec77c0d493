//! The queue protocol on SQLite: submit, claims under leases fenced by claim number, children
//! made ready in the completing transaction, retries through the queue, max attempts and max
//! fails, time to live, abort, and the worker and client on top. Leases are aged in SQL
//! (`age_leases`), never slept out.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobgraph::store::queue::{ClaimId, Failed, Held, Queue};
use jobgraph::store::{RunState, SqliteStore, StepStatus, Store as _, StoreError};
use jobgraph::{CancellationToken, Client, ClientError, Retry, Worker, job};
use serde::{Deserialize, Serialize};

async fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    (dir, store)
}

/// `a` feeds `b` and `c`, which both feed `d`: a fan-in.
#[derive(Serialize, Deserialize)]
struct Diamond {
    n: u64,
}

#[job(durable)]
impl Diamond {
    #[step]
    async fn a(&self) -> u64 {
        self.n
    }

    #[step]
    async fn b(&self, a: &u64) -> u64 {
        a + 1
    }

    #[step]
    async fn c(&self, a: &u64) -> u64 {
        a * 10
    }

    #[step]
    async fn d(&self, b: &u64, c: &u64) -> u64 {
        b + c
    }
}

const WORKER: &str = "worker-1";
const LEASE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_worker_runs_a_submitted_run_to_its_outputs() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    let run = client.submit(&Diamond { n: 2 }).await.unwrap();
    assert!(run.created);
    assert_eq!(
        client.status(&run.id).await.unwrap().state,
        RunState::Pending
    );
    assert!(client.result::<Diamond>(&run.id).await.unwrap().is_none());

    let worker = Worker::new(&store).job::<Diamond>();
    // One step is ready at a time on the diamond's first level, then two, then one.
    let mut rounds = Vec::new();
    loop {
        let stats = worker.run_once().await.unwrap();
        if stats.claimed == 0 {
            break;
        }
        rounds.push(stats.completed);
    }
    assert_eq!(rounds, [1, 2, 1]);
    let out = client
        .wait::<Diamond>(&run.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((out.a, out.b, out.c, out.d), (2, 3, 20, 23));
    let stored = client.status(&run.id).await.unwrap();
    assert_eq!(stored.state, RunState::Succeeded);
    assert!(stored.steps.iter().all(|s| s.attempts == 1));
}

#[tokio::test]
async fn concurrent_claims_are_disjoint() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    for n in 0..40 {
        client.submit(&Diamond { n }).await.unwrap();
    }
    let claimers = (0..4).map(|w| {
        let store = store.clone();
        tokio::spawn(async move {
            let name = format!("w{w}");
            let mut got = Vec::new();
            loop {
                let claims = store.claim(&name, &["Diamond"], 3, LEASE).await.unwrap();
                if claims.is_empty() {
                    return got;
                }
                got.extend(claims.into_iter().map(|c| c.id));
            }
        })
    });
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    // Each run's root, claimed once overall.
    assert_eq!(all.len(), 40);
    let distinct: HashSet<_> = all
        .iter()
        .map(|c| (c.run.clone(), c.step.clone()))
        .collect();
    assert_eq!(distinct.len(), 40);
    assert!(all.iter().all(|c| c.step == "a" && c.attempt == 1));
}

#[tokio::test]
async fn a_stale_workers_completion_is_fenced_out() {
    let (_dir, store) = store().await;
    let run = Client::new(&store).submit(&Diamond { n: 1 }).await.unwrap();
    let first = store.claim("slow", &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    // Nobody else can take it while the lease runs.
    assert!(
        store
            .claim("fast", &["Diamond"], 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // `slow` stalls past its lease: `fast` claims the step again.
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    let second = store.claim("fast", &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id.attempt, 2);
    // `slow` wakes up: its heartbeat says it lost the claim, its completion is refused.
    let held = store
        .heartbeat("slow", &[first[0].id.clone()], LEASE)
        .await
        .unwrap();
    assert_eq!(held, [Held::Lost]);
    let late = store.complete("slow", &first[0].id, "999", 0).await;
    assert!(
        matches!(late, Err(StoreError::ClaimLost { attempt: 1, .. })),
        "{late:?}"
    );
    store.complete("fast", &second[0].id, "1", 0).await.unwrap();
    let stored = store.load_run(&run.id).await.unwrap().unwrap();
    let a = stored.step("a").unwrap();
    assert_eq!(
        (a.state, a.output.as_deref(), a.attempts),
        (StepStatus::Completed, Some("1"), 2)
    );
    // The same claim cannot complete twice either.
    assert!(store.complete("fast", &second[0].id, "1", 0).await.is_err());
}

#[tokio::test]
async fn a_fan_in_becomes_ready_once_when_its_parents_complete_concurrently() {
    for round in 0..10 {
        let (_dir, store) = store().await;
        Client::new(&store)
            .submit(&Diamond { n: round })
            .await
            .unwrap();
        let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
        store
            .complete(WORKER, &root[0].id, &round.to_string(), 0)
            .await
            .unwrap();
        let parents = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
        let names: HashSet<_> = parents.iter().map(|c| c.id.step.as_str()).collect();
        assert_eq!(names, HashSet::from(["b", "c"]));
        // `d` is not ready before both complete.
        let (x, y) = (parents[0].id.clone(), parents[1].id.clone());
        let (s1, s2) = (store.clone(), store.clone());
        let (r1, r2) = tokio::join!(
            tokio::spawn(async move { s1.complete(WORKER, &x, "1", 0).await }),
            tokio::spawn(async move { s2.complete(WORKER, &y, "2", 0).await }),
        );
        r1.unwrap().unwrap();
        r2.unwrap().unwrap();
        let child = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
        assert_eq!(child.len(), 1);
        assert_eq!(child[0].id.step, "d");
        assert_eq!(
            child[0].deps,
            [
                ("b".to_owned(), "1".to_owned()),
                ("c".to_owned(), "2".to_owned())
            ]
        );
        assert!(
            store
                .claim(WORKER, &["Diamond"], 5, LEASE)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn a_duplicate_submit_returns_the_first_run_even_when_they_race() {
    let (_dir, store) = store().await;
    let submits = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            Client::new(&store)
                .submit(&Diamond { n: 5 })
                .key("order-5")
                .await
                .unwrap()
        })
    });
    let mut results = Vec::new();
    for submit in submits {
        results.push(submit.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    let ids: HashSet<_> = results.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn claims_follow_priority_then_ready_time_and_wait_for_run_at() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    let low = client.submit(&Diamond { n: 1 }).await.unwrap();
    let high = client.submit(&Diamond { n: 2 }).priority(10).await.unwrap();
    let later = client
        .submit(&Diamond { n: 3 })
        .priority(100)
        .run_at(std::time::SystemTime::now() + Duration::from_secs(3600))
        .await
        .unwrap();
    let claims = store.claim(WORKER, &["Diamond"], 10, LEASE).await.unwrap();
    let order: Vec<_> = claims.iter().map(|c| c.id.run.clone()).collect();
    assert_eq!(order, [high.id, low.id]);
    assert!(!order.contains(&later.id));
}

#[tokio::test]
async fn expired_leases_count_against_max_attempts() {
    let (_dir, store) = store().await;
    let run = Client::new(&store)
        .submit(&Diamond { n: 1 })
        .max_attempts(2)
        .await
        .unwrap();
    for attempt in 1..=2 {
        let claims = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
        assert_eq!(claims[0].id.attempt, attempt);
        store.age_leases(LEASE + Duration::from_secs(1)).await;
    }
    // The second lease expired too: the step fails, its descendants are skipped, the run ends.
    assert!(
        store
            .claim(WORKER, &["Diamond"], 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let stored = store.load_run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Failed);
    assert_eq!(stored.step("a").unwrap().state, StepStatus::Failed);
    assert!(
        stored
            .step("a")
            .unwrap()
            .error
            .as_deref()
            .unwrap()
            .contains("lease expired")
    );
    assert_eq!(stored.step("d").unwrap().state, StepStatus::Skipped);
}

/// Fails its first `fail` calls, then succeeds.
#[derive(Serialize, Deserialize)]
struct Flaky {
    fail: u32,
}

static FLAKY_CALLS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, thiserror::Error)]
#[error("the API answered 503")]
struct Unavailable;

#[job(durable)]
impl Flaky {
    #[step(retry = Retry::fixed(10, Duration::ZERO))]
    async fn call(&self) -> Result<u32, Unavailable> {
        let n = FLAKY_CALLS.fetch_add(1, Ordering::SeqCst);
        if n < self.fail {
            Err(Unavailable)
        } else {
            Ok(n)
        }
    }
}

#[tokio::test]
async fn retries_go_through_the_queue_and_max_fails_caps_them() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    let worker = Worker::new(&store).job::<Flaky>();
    FLAKY_CALLS.store(0, Ordering::SeqCst);
    let capped = client
        .submit(&Flaky { fail: 100 })
        .max_fails(3)
        .await
        .unwrap();
    let mut retried = 0;
    loop {
        let stats = worker.run_once().await.unwrap();
        if stats.claimed == 0 {
            break;
        }
        retried += stats.retried;
    }
    assert_eq!(retried, 2);
    let err = client
        .wait::<Flaky>(&capped.id, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Ended {
                state: RunState::Failed,
                ..
            }
        ),
        "{err}"
    );
    let stored = client.status(&capped.id).await.unwrap();
    let call = stored.step("call").unwrap();
    assert_eq!(call.attempts, 3);
    assert!(
        call.error.as_deref().unwrap().contains("503"),
        "{:?}",
        call.error
    );

    // Without a cap, the step's policy decides: it succeeds on the third call.
    FLAKY_CALLS.store(0, Ordering::SeqCst);
    let ok = client.submit(&Flaky { fail: 2 }).await.unwrap();
    while worker.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(
        client
            .wait::<Flaky>(&ok.id, Duration::from_secs(5))
            .await
            .unwrap()
            .call,
        2
    );
}

#[tokio::test]
async fn a_run_past_its_time_to_live_fails() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    let run = client
        .submit(&Diamond { n: 1 })
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    // Sixty seconds later, as far as the store knows.
    store.age_leases(Duration::from_secs(61)).await;
    assert!(
        store
            .claim(WORKER, &["Diamond"], 5, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let stored = client.status(&run.id).await.unwrap();
    assert_eq!(stored.state, RunState::Failed);
    assert_eq!(stored.error.as_deref(), Some("its time to live expired"));
    assert!(
        stored
            .steps
            .iter()
            .all(|s| s.state == StepStatus::Cancelled)
    );
    let zero = client.submit(&Diamond { n: 1 }).ttl(Duration::ZERO).await;
    assert!(zero.unwrap_err().to_string().contains("time to live"));
}

/// Waits until released (or cancelled): a step that is running when its run is aborted.
#[derive(Serialize, Deserialize)]
struct Slow;

static SLOW_STARTED: tokio::sync::Notify = tokio::sync::Notify::const_new();
static SLOW_DROPPED: AtomicU32 = AtomicU32::new(0);

struct CountDrop;

impl Drop for CountDrop {
    fn drop(&mut self) {
        SLOW_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

#[job(durable)]
impl Slow {
    #[step]
    async fn wait(&self) -> u32 {
        let _guard = CountDrop;
        SLOW_STARTED.notify_one();
        std::future::pending::<()>().await;
        0
    }

    #[step]
    async fn after(&self, wait: &u32) -> u32 {
        *wait
    }
}

#[tokio::test]
async fn abort_reaches_a_running_step_through_its_heartbeat() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    let run = client.submit(&Slow).await.unwrap();
    let worker = Worker::new(&store)
        .job::<Slow>()
        .lease(Duration::from_millis(300));
    let shutdown = CancellationToken::new();
    let working = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });
    SLOW_STARTED.notified().await;
    assert!(client.abort(&run.id).await.unwrap());
    // The next heartbeat (a third of the lease) cancels the step.
    while SLOW_DROPPED.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let stats = working.await.unwrap().unwrap();
    assert_eq!((stats.claimed, stats.cancelled, stats.completed), (1, 1, 0));
    let stored = client.status(&run.id).await.unwrap();
    assert_eq!(stored.state, RunState::Cancelled);
    assert!(
        stored
            .steps
            .iter()
            .all(|s| s.state == StepStatus::Cancelled)
    );
    assert!(!client.abort(&run.id).await.unwrap());
}

#[tokio::test]
async fn a_worker_drains_its_running_steps_on_shutdown_and_fails_bad_input_clearly() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(client.submit(&Diamond { n }).await.unwrap().id);
    }
    let worker = Arc::new(
        Worker::new(&store)
            .job::<Diamond>()
            .poll_interval(Duration::from_millis(5)),
    );
    let shutdown = CancellationToken::new();
    let working = tokio::spawn({
        let (worker, shutdown) = (Arc::clone(&worker), shutdown.clone());
        async move { worker.run(shutdown).await }
    });
    for id in &ids {
        client
            .wait::<Diamond>(id, Duration::from_secs(10))
            .await
            .unwrap();
    }
    shutdown.cancel();
    let stats = working.await.unwrap().unwrap();
    assert_eq!(stats.completed, 20);

    // An unknown run, a run of another job.
    assert!(matches!(
        client.result::<Diamond>("nope").await,
        Err(ClientError::Store(StoreError::NoSuchRun { .. }))
    ));
    let flaky = client.submit(&Flaky { fail: 0 }).await.unwrap();
    assert!(matches!(
        client.result::<Diamond>(&flaky.id).await,
        Err(ClientError::Store(StoreError::Mismatch { .. }))
    ));
    let _ = Failed::Failed;
    let _ = ClaimId {
        run: String::new(),
        step: String::new(),
        attempt: 0,
    };
}

#[tokio::test]
async fn a_held_batch_runs_nothing_until_released_and_appends_number_on() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    let ids = client
        .submit_batch("nightly", (0..3).map(|n| Diamond { n }))
        .held()
        .await
        .unwrap();
    assert_eq!(ids, ["nightly/0", "nightly/1", "nightly/2"]);
    let more = client
        .submit_batch("nightly", (3..5).map(|n| Diamond { n }))
        .held()
        .await
        .unwrap();
    assert_eq!(more, ["nightly/3", "nightly/4"]);
    let counts = client.batch_counts("nightly").await.unwrap();
    assert_eq!((counts.total(), counts.pending, counts.held), (5, 5, 5));
    assert!(
        store
            .claim(WORKER, &["Diamond"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    assert_eq!(client.release("nightly").await.unwrap(), 5);
    let worker = Worker::new(&store).job::<Diamond>();
    while worker.run_once().await.unwrap().claimed > 0 {}
    let counts = client.batch_counts("nightly").await.unwrap();
    assert_eq!((counts.succeeded, counts.held), (5, 0));
    assert!(counts.is_finished());
    assert_eq!(counts.steps.len(), 4);
    assert!(counts.steps.iter().all(|s| s.completed == 5));
    let out = client
        .wait::<Diamond>("nightly/4", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(out.d, 45);
}

#[tokio::test]
async fn a_batch_is_aborted_whole_and_its_status_is_a_local_batchs() {
    use futures::StreamExt as _;
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    client
        .submit_batch("b", (0..4).map(|n| Diamond { n }))
        .await
        .unwrap();
    // Two runs complete their root; then the batch is aborted.
    let roots = store.claim(WORKER, &["Diamond"], 2, LEASE).await.unwrap();
    for claim in &roots {
        store.complete(WORKER, &claim.id, "1", 0).await.unwrap();
    }
    let status = client.batch_status::<Diamond>("b").await.unwrap();
    assert_eq!(status.step(DiamondStep::A).completed, 2);
    assert_eq!(status.step(DiamondStep::A).waiting, 2);
    assert_eq!(status.runs.running, 2);
    assert!(!status.finished);

    assert_eq!(client.abort_batch("b").await.unwrap(), 4);
    assert_eq!(client.abort_batch("b").await.unwrap(), 0);
    let statuses: Vec<_> = client
        .watch_batch::<Diamond>("b", Duration::from_millis(1))
        .collect()
        .await;
    let last = statuses.last().unwrap().as_ref().unwrap();
    assert!(last.finished);
    assert_eq!(last.runs.cancelled, 4);
    assert_eq!(last.step(DiamondStep::D).cancelled, 4);
    assert!(
        store
            .claim(WORKER, &["Diamond"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A step limited to 2 live claims across every worker, and a rate-limited one.
#[derive(Serialize, Deserialize)]
struct Limited {
    n: u64,
}

#[job(durable)]
impl Limited {
    #[step(concurrency = 2)]
    async fn pooled(&self) -> u64 {
        self.n
    }

    #[step(rate = "1/h burst 3")]
    async fn metered(&self) -> u64 {
        self.n
    }
}

#[tokio::test]
async fn step_limits_hold_across_workers() {
    let (_dir, store) = store().await;
    let client = Client::new(&store);
    client
        .submit_batch("limited", (0..10).map(|n| Limited { n }))
        .await
        .unwrap();
    let jobs = ["Limited"];
    // Two workers ask for everything: together they get 2 `pooled` and 3 `metered` (the
    // bucket's burst), the rest waits.
    let first = store.claim("w1", &jobs, 100, LEASE).await.unwrap();
    let second = store.claim("w2", &jobs, 100, LEASE).await.unwrap();
    let all: Vec<_> = first.iter().chain(&second).collect();
    let count = |step: &str| all.iter().filter(|c| c.id.step == step).count();
    assert_eq!((count("pooled"), count("metered")), (2, 3));
    assert!(
        store
            .claim("w3", &jobs, 100, LEASE)
            .await
            .unwrap()
            .is_empty()
    );

    // A `pooled` claim that completes gives its place to the next; the rate's bucket refills
    // at one per hour only.
    let pooled = all.iter().find(|c| c.id.step == "pooled").unwrap();
    let holder = if first.iter().any(|c| c.id == pooled.id) {
        "w1"
    } else {
        "w2"
    };
    store.complete(holder, &pooled.id, "0", 0).await.unwrap();
    let next = store.claim("w3", &jobs, 100, LEASE).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].id.step, "pooled");
    // An expired claim no longer counts: its step is claimed again in its place.
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    let reclaimed = store.claim("w4", &jobs, 100, LEASE).await.unwrap();
    assert_eq!(
        reclaimed.iter().filter(|c| c.id.step == "pooled").count(),
        2
    );
    assert_eq!(
        reclaimed.iter().filter(|c| c.id.step == "metered").count(),
        0
    );
}

#[tokio::test]
async fn a_run_a_worker_cannot_decode_fails_with_a_clear_error_instead_of_sticking() {
    use jobgraph::store::queue::Submission;
    use jobgraph::store::{GraphSpec, StepSpec};
    let (_dir, store) = store().await;
    let spec = |name: &str, parents: &[usize]| StepSpec {
        name: name.to_owned(),
        parents: parents.to_vec(),
        after: Vec::new(),
    };
    let graph = GraphSpec {
        steps: vec![
            spec("a", &[]),
            spec("b", &[0]),
            spec("c", &[0]),
            spec("d", &[1, 2]),
        ],
    };
    let submit = |id: &'static str, input: &'static str, graph: &'static GraphSpec| Submission {
        id,
        job: "Diamond",
        input,
        graph,
        batch: None,
        key: None,
        held: false,
        limits: &[],
        priority: 0,
        run_at: 0,
        expires_at: None,
        max_attempts: 3,
        max_fails: None,
    };
    let graph: &'static GraphSpec = Box::leak(Box::new(graph));
    store
        .submit(submit("bad-input", r#"{"m": 1}"#, graph))
        .await
        .unwrap();
    let renamed: &'static GraphSpec = Box::leak(Box::new(GraphSpec {
        steps: vec![spec("fetch", &[])],
    }));
    store
        .submit(submit("other-code", r#"{"n": 1}"#, renamed))
        .await
        .unwrap();

    let worker = Worker::new(&store).job::<Diamond>();
    while worker.run_once().await.unwrap().claimed > 0 {}
    let client = Client::new(&store);
    let bad = client.status("bad-input").await.unwrap();
    assert_eq!(bad.state, RunState::Failed);
    let error = bad.step("a").unwrap().error.clone().unwrap();
    assert!(
        error.contains("does not decode as job `Diamond`"),
        "{error}"
    );
    let other = client.status("other-code").await.unwrap();
    assert_eq!(other.state, RunState::Failed);
    let error = other.step("fetch").unwrap().error.clone().unwrap();
    assert!(error.contains("has no step `fetch`"), "{error}");
}
