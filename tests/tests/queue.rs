//! The queue protocol, on SQLite and on PostgreSQL (every case runs on both, module `sqlite` and
//! module `postgres`): submit, claims under leases fenced by claim number, children made ready in
//! the completing transaction, retries through the queue, max attempts and max fails, time to
//! live, abort, batches, limits, and the worker and client on top. Leases are aged in SQL
//! (`age_leases`), never slept out. Then PostgreSQL's own promises: claims from several
//! connections at once pass over each other's rows (`SKIP LOCKED`), limits hold under concurrent
//! claims, LISTEN/NOTIFY wakes an idle worker long before its poll, and workers on four
//! connections run a batch to the end while it is being aborted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::store::queue::{Claim, ClaimId, Completion, Failed, Held, Queue};
use jobgraph::store::{
    PgStore, RunFilter, RunState, SqliteStore, StepStatus, Store as _, StoreError,
};
use jobgraph::{CancellationToken, Client, ClientError, Retry, Worker, WorkerStats, job};
use serde::{Deserialize, Serialize};

/// A store the cases run on: a queue, and its test helper.
trait TestQueue: Queue + Clone {
    /// Moves leases (steps', elements' and runs') and times to live `by` into the past (the
    /// stores' `age_leases`).
    fn age_leases(&self, by: Duration) -> impl Future<Output = ()> + Send;

    /// The store's clock, Unix ms: what its leases are counted on.
    fn clock(&self) -> impl Future<Output = i64> + Send;

    /// Whether its commits hand the steps they make ready over to the committing worker
    /// (`Queue::complete_and_claim`: PostgreSQL does, SQLite hands none).
    const HANDS_OVER: bool;
}

impl TestQueue for SqliteStore {
    const HANDS_OVER: bool = false;

    async fn age_leases(&self, by: Duration) {
        SqliteStore::age_leases(self, by).await;
    }

    async fn clock(&self) -> i64 {
        unix_ms()
    }
}

impl TestQueue for PgStore {
    const HANDS_OVER: bool = true;

    async fn age_leases(&self, by: Duration) {
        PgStore::age_leases(self, by).await;
    }

    async fn clock(&self) -> i64 {
        PgStore::clock_ms(self).await
    }
}

/// Runs each `case` (an `async fn(store, base: u64)`) as a test on a fresh SQLite file (module
/// `sqlite`) and a fresh database of the test binary's PostgreSQL (module `postgres`, skipped
/// where PostgreSQL is not installed unless required). `base` (1000 and 2000) keeps the cases'
/// global counters apart when both run at once.
macro_rules! on_both_queues {
    ($($name:ident => $case:ident,)*) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let path = dir.path().join("queue.db");
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
                    let Some(db) = jobgraph_tests::pg::database().await else {
                        return;
                    };
                    let store = jobgraph::store::PgStore::connect(db.url()).await.unwrap();
                    super::$case(store, 2000).await;
                }
            )*
        }
    };
}

on_both_queues! {
    a_worker_runs_a_submitted_run_to_its_outputs => worker_runs_a_submitted_run,
    a_submitted_run_and_a_runners_run_never_share_an_id => submitted_and_runners_ids_apart,
    concurrent_claims_are_disjoint => concurrent_claims_are_disjoint,
    a_stale_workers_completion_is_fenced_out => stale_completion_is_fenced_out,
    a_claim_id_whose_position_is_another_steps_matches_no_claim => forged_positions_match_nothing,
    a_fan_in_becomes_ready_once_when_its_parents_complete_concurrently => fan_in_ready_once,
    a_duplicate_submit_returns_the_first_run_even_when_they_race => duplicate_submits_race,
    claims_follow_priority_then_ready_time_and_wait_for_run_at => claims_follow_priority,
    expired_leases_count_against_max_attempts => expired_leases_count,
    a_claim_that_meets_an_exhausted_step_fails_it_and_takes_the_next => exhausted_step_then_next,
    an_elements_expired_leases_count_against_max_attempts => exhausted_elements,
    retries_go_through_the_queue_and_max_fails_caps_them => retries_through_the_queue,
    a_run_past_its_time_to_live_fails => time_to_live,
    a_retry_waits_its_delay_by_the_stores_clock => retry_delay_counts_from_the_stores_clock,
    abort_reaches_a_running_step_through_its_heartbeat => abort_reaches_a_running_step,
    a_worker_drains_its_running_steps_on_shutdown_and_fails_bad_input_clearly => worker_drains,
    a_held_batch_runs_nothing_until_released_and_appends_number_on => held_batch,
    a_batch_is_aborted_whole_and_its_status_is_a_local_batchs => batch_aborted_whole,
    step_limits_hold_across_workers => step_limits_hold_across_workers,
    claims_taken_before_a_step_had_limits_count_against_them => claims_before_limits_count,
    handed_steps_taken_before_their_step_had_limits_count_against_them => handed_before_limits_count,
    steps_stored_before_a_step_had_limits_are_limited => steps_before_limits_are_limited,
    fan_out_elements_stored_before_their_step_had_limits_are_limited => elements_before_limits_are_limited,
    a_claim_takes_unlimited_steps_beside_limited_ones => unlimited_beside_limited,
    an_empty_rate_bucket_does_not_crowd_out_other_steps => empty_bucket_crowds_out_nothing,
    a_returned_error_is_not_an_expired_lease => errors_are_not_expiries,
    a_run_a_worker_cannot_decode_fails_with_a_clear_error_instead_of_sticking => undecodable_runs_fail_clearly,
    completions_commit_together_each_fenced_alone => complete_many_together,
    a_commit_hands_its_worker_the_children_it_made_ready => commits_hand_over_children,
    a_worker_runs_the_steps_its_commits_hand_over => worker_runs_handed_steps,
    a_handed_step_whose_worker_stopped_answering_is_claimed_again => lapsed_handoffs_claimed_again,
    a_stale_and_a_live_claim_of_one_step_in_one_call_are_told_apart => stale_and_live_claim_together,
    runs_of_one_step_end_with_their_step_among_other_completions => one_step_runs_complete_among_others,
    a_run_of_one_step_ended_by_its_step_stays_ended_for_every_reader_and_writer => one_step_runs_stay_ended,
    a_run_is_running_from_its_first_claim_to_its_end_whoever_reads_it => running_from_first_claim,
    a_run_with_two_last_steps_ends_with_the_second => two_last_steps,
    a_worker_prefetches_claims_but_runs_no_more_than_its_concurrency => prefetch_runs_within_concurrency,
    a_worker_with_steps_queued_claims_in_batches_of_half_its_room => claims_wait_for_half_their_room,
    a_worker_does_not_start_a_queued_step_whose_lease_may_have_lapsed => lapsed_claims_are_not_started,
    a_fan_outs_elements_are_claimed_one_by_one_by_several_workers => fan_out_spreads_over_workers,
    an_elements_expired_lease_is_reclaimed_and_its_stale_completion_fenced => element_lease_expires,
    a_failing_element_is_retried_alone_and_one_failing_for_good_fails_its_step => element_failures,
    a_failed_element_cancels_the_other_elements_claims => failed_element_cancels_the_others,
    an_empty_fan_out_completes_at_once => empty_fan_out,
    a_run_whose_last_step_is_an_empty_fan_out_succeeds => empty_fan_out_last,
    the_fan_out_bound_and_the_steps_concurrency_limit_element_claims => element_limits,
    elements_completed_together_release_as_many_held_back => elements_completed_together,
    abort_reaches_running_element_claims => abort_reaches_elements,
    a_fan_outs_run_past_its_time_to_live_fails_and_cancels_its_elements => fan_out_expires,
    a_claim_is_a_lease_of_its_steps_ttr_renewed_by_it => claims_lease_their_ttr,
    a_worker_heartbeats_within_the_shortest_ttr_it_holds => worker_beats_within_ttrs,
    a_redriven_fan_out_runs_every_element_again => redriven_fan_out_runs_again,
    redriving_below_a_failed_step_is_refused_and_redriving_it_runs_the_rest => redrive_below_failure,
}

/// Counters of the jobs' executions, per key (a case's `base` and what it counts).
static COUNTS: Mutex<Option<HashMap<u64, u32>>> = Mutex::new(None);

/// Adds one to counter `key`: its value before.
fn bump(key: u64) -> u32 {
    let mut counts = COUNTS.lock().unwrap();
    let n = counts
        .get_or_insert_with(HashMap::new)
        .entry(key)
        .or_insert(0);
    *n += 1;
    *n - 1
}

fn count(key: u64) -> u32 {
    let counts = COUNTS.lock().unwrap();
    counts
        .as_ref()
        .and_then(|c| c.get(&key).copied())
        .unwrap_or(0)
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

/// A runner cannot open a submitted run (workers execute it, step by step), and a submit cannot
/// take a runner's run's id: each says the id is taken, and neither run changes.
async fn submitted_and_runners_ids_apart(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let submitted = client.submit(&Diamond { n: 2 }).id("shared").await.unwrap();
    let stored = client.status(&submitted.id).await.unwrap();
    let spec = |id| jobgraph::store::RunSpec {
        id,
        job: "Diamond",
        input: r#"{"n":2}"#,
        graph: &stored.graph,
        batch: None,
    };
    let opened = store.open_run(spec("shared"), "runner", LEASE).await;
    assert!(
        matches!(&opened, Err(StoreError::IdTaken { run }) if run == "shared"),
        "{opened:?}"
    );
    assert_eq!(client.status("shared").await.unwrap(), stored);
    let worker = Worker::new(&store).job::<Diamond>();
    while worker.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(
        client.status("shared").await.unwrap().state,
        RunState::Succeeded
    );

    store
        .open_run(spec("runners"), "runner", LEASE)
        .await
        .unwrap();
    let taken = client.submit(&Diamond { n: 2 }).id("runners").await;
    assert!(
        matches!(&taken, Err(ClientError::Store(StoreError::IdTaken { run })) if run == "runners"),
        "{taken:?}"
    );
    assert_eq!(
        store.load_run("runners").await.unwrap().unwrap().state,
        RunState::Running
    );
}

async fn worker_runs_a_submitted_run(store: impl TestQueue, _base: u64) {
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

async fn concurrent_claims_are_disjoint(store: impl TestQueue, _base: u64) {
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

async fn stale_completion_is_fenced_out(store: impl TestQueue, _base: u64) {
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

/// Asserts that `forged` matches no claim of `WORKER`'s: its heartbeat says lost, its
/// completion is not stored, and its failure (to retry, or for good) is refused.
async fn matches_no_claim(store: &impl TestQueue, forged: &ClaimId) {
    let held = store
        .heartbeat(WORKER, std::slice::from_ref(forged), LEASE)
        .await
        .unwrap();
    assert_eq!(held, [Held::Lost]);
    let done = [Completion {
        claim: forged,
        output: "999",
        started_at: 0,
    }];
    assert_eq!(store.complete_many(WORKER, &done).await.unwrap(), [false]);
    for retry_in in [Some(Duration::ZERO), None] {
        let failed = store.fail(WORKER, forged, "boom", 0, retry_in).await;
        assert!(
            matches!(failed, Err(StoreError::ClaimLost { .. })),
            "{failed:?}"
        );
    }
}

/// A claim id names its step twice, by name and by position: an id whose two disagree (built by
/// hand, with another step's position) matches no claim, even one its worker holds under the
/// same number. Its heartbeat says lost, its completion and its failure are refused, and
/// neither step (nor either fan-out's count of its elements) changes.
async fn forged_positions_match_nothing(store: impl TestQueue, _base: u64) {
    let run = Client::new(&store).submit(&Diamond { n: 1 }).await.unwrap();
    let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    store.complete(WORKER, &root[0].id, "1", 0).await.unwrap();
    let mut parents = store.claim(WORKER, &["Diamond"], 2, LEASE).await.unwrap();
    parents.sort_by(|x, y| x.id.step.cmp(&y.id.step));
    let (b, c) = (parents[0].id.clone(), parents[1].id.clone());
    assert_eq!(
        (b.step.as_str(), c.step.as_str(), b.attempt),
        ("b", "c", c.attempt)
    );
    // `b` by name, `c` by position: both held by this worker under claim 1.
    let forged = ClaimId {
        position: c.position,
        ..b.clone()
    };
    matches_no_claim(&store, &forged).await;
    let stored = store.load_run(&run.id).await.unwrap().unwrap();
    for name in ["b", "c"] {
        let step = stored.step(name).unwrap();
        assert_eq!(
            (step.state, step.output.as_deref()),
            (StepStatus::Pending, None)
        );
    }
    // The real ids still hold their claims, and complete.
    store.complete(WORKER, &b, "2", 0).await.unwrap();
    store.complete(WORKER, &c, "10", 0).await.unwrap();

    // An element's id, with the other fan-out's position.
    let run = Client::new(&store).submit(&Bounded { n: 2 }).await.unwrap();
    let root = store.claim(WORKER, &["Bounded"], 1, LEASE).await.unwrap();
    store
        .complete(WORKER, &root[0].id, "[0,1]", 0)
        .await
        .unwrap();
    let elements = store.claim(WORKER, &["Bounded"], 10, LEASE).await.unwrap();
    let of = |step: &str| {
        elements
            .iter()
            .find(|e| e.id.step == step && e.id.element == Some(0))
            .unwrap()
            .id
            .clone()
    };
    let (halves, pooled) = (of("halves"), of("pooled"));
    let forged = ClaimId {
        position: pooled.position,
        ..halves.clone()
    };
    matches_no_claim(&store, &forged).await;
    // Every element completes with its real id, and each fan-out completes with its own.
    for element in &elements {
        let output = if element.id.step == "halves" {
            "5"
        } else {
            "7"
        };
        store
            .complete(WORKER, &element.id, output, 0)
            .await
            .unwrap();
    }
    let stored = store.load_run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Succeeded);
    assert_eq!(
        stored.step("halves").unwrap().output.as_deref(),
        Some("[5,5]")
    );
    assert_eq!(
        stored.step("pooled").unwrap().output.as_deref(),
        Some("[7,7]")
    );
}

async fn fan_in_ready_once(store: impl TestQueue, base: u64) {
    // Each round's run is done before the next is submitted: each claim sees only the round's.
    for round in base..base + 10 {
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

async fn duplicate_submits_race(store: impl TestQueue, _base: u64) {
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

async fn claims_follow_priority(store: impl TestQueue, _base: u64) {
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
    let order = claimed_runs(&claims);
    assert_eq!(order, [&high.id, &low.id]);
    assert!(!order.contains(&later.id.as_str()));
}

async fn expired_leases_count(store: impl TestQueue, _base: u64) {
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

/// A claim of one step that finds the step at the head of the queue exhausted (its one allowed
/// lease expired) fails it, and still returns the next ready step: its worker is not sent to
/// wait for news while work is ready.
async fn exhausted_step_then_next(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let first = client
        .submit(&Diamond { n: 1 })
        .max_attempts(1)
        .await
        .unwrap();
    let claims = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(claims[0].id.run, first.id);
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    let second = client.submit(&Diamond { n: 2 }).await.unwrap();
    let next = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(
        (next[0].id.run.as_str(), next[0].id.step.as_str()),
        (second.id.as_str(), "a")
    );
    let stored = store.load_run(&first.id).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Failed);
    let a = stored.step("a").unwrap();
    assert_eq!((a.state, a.attempts), (StepStatus::Failed, 1));
    assert!(
        a.error.as_deref().unwrap().contains("on 1 of its claims"),
        "{:?}",
        a.error
    );
}

/// Each element of a fan-out is leased, and its expired leases counted, alone: an element whose
/// leases expired `max_attempts` times fails naming itself, and fails its step.
async fn exhausted_elements(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let run = client
        .submit(&Pages {
            key: base + 530,
            pages: vec![1, 2],
        })
        .max_attempts(1)
        .await
        .unwrap();
    let list = store.claim(WORKER, &["Pages"], 1, LEASE).await.unwrap();
    store
        .complete(WORKER, &list[0].id, "[1, 2]", 0)
        .await
        .unwrap();
    let elements = store.claim("slow", &["Pages"], 1, LEASE).await.unwrap();
    assert_eq!(
        units(&elements),
        BTreeSet::from([("fetch".to_owned(), Some(0))])
    );
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    // Element 0 is exhausted; element 1 was never claimed, and is cancelled with its step.
    let after = store.claim("fast", &["Pages"], 10, LEASE).await.unwrap();
    assert!(after.is_empty(), "{after:?}");
    let stored = store.load_run(&run.id).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Failed);
    let fetch = stored.step("fetch").unwrap();
    assert_eq!(fetch.state, StepStatus::Failed);
    assert!(
        fetch
            .error
            .as_deref()
            .unwrap()
            .starts_with("element 0: its worker stopped answering (lease expired) on 1 of"),
        "{:?}",
        fetch.error
    );
    assert_eq!(stored.step("index").unwrap().state, StepStatus::Skipped);
}

/// Fails its first `fail` calls, then succeeds; its calls are counted in counter `key`.
#[derive(Serialize, Deserialize)]
struct Flaky {
    fail: u32,
    key: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the API answered 503")]
struct Unavailable;

#[job(durable)]
impl Flaky {
    #[step(retry = Retry::fixed(10, Duration::ZERO))]
    async fn call(&self) -> Result<u32, Unavailable> {
        let n = bump(self.key);
        if n < self.fail {
            Err(Unavailable)
        } else {
            Ok(n)
        }
    }
}

async fn retries_through_the_queue(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let worker = Worker::new(&store).job::<Flaky>();
    let capped = client
        .submit(&Flaky {
            fail: 100,
            key: base + 1,
        })
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
    let ok = client
        .submit(&Flaky {
            fail: 2,
            key: base + 2,
        })
        .await
        .unwrap();
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

/// This machine's clock, in Unix milliseconds.
fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("a Unix time in milliseconds fits in i64")
}

async fn retry_delay_counts_from_the_stores_clock(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    client.submit(&Diamond { n: 1 }).await.unwrap();
    let claim = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    let [claim] = &claim[..] else {
        panic!("one step is ready: {claim:?}")
    };
    let hour = Duration::from_secs(3600);
    let before = unix_ms();
    let failed = store
        .fail(WORKER, &claim.id, "503", before, Some(hour))
        .await
        .unwrap();
    let after = unix_ms();
    // The store adds the delay to its own clock (here the same machine's, so it falls between
    // the two readings, give or take a second of rounding).
    let Failed::Retrying { at } = failed else {
        panic!("the step is retried: {failed:?}")
    };
    let hour_ms = 3_600_000;
    assert!(
        (before + hour_ms - 1000..=after + hour_ms + 1000).contains(&at),
        "retry at {at}, failed between {before} and {after}"
    );
    // Not ready before then.
    assert!(
        store
            .claim(WORKER, &["Diamond"], 5, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn time_to_live(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let run = client
        .submit(&Diamond { n: 1 })
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    // Fifty-nine seconds later, as far as the store knows, it still runs: the time to live
    // counts from the store's clock when it stored the run (not from a client's clock).
    store.age_leases(Duration::from_secs(59)).await;
    let claimed = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        client.status(&run.id).await.unwrap().state,
        RunState::Running
    );
    // Sixty-one.
    store.age_leases(Duration::from_secs(2)).await;
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

/// Waits until cancelled: a step that is running when its run is aborted. Counts its starts in
/// counter `key` and its drops in `key + 1`.
#[derive(Serialize, Deserialize)]
struct Slow {
    key: u64,
}

struct CountDrop(u64);

impl Drop for CountDrop {
    fn drop(&mut self) {
        bump(self.0);
    }
}

#[job(durable)]
impl Slow {
    #[step]
    async fn wait(&self) -> u32 {
        let _guard = CountDrop(self.key + 1);
        bump(self.key);
        std::future::pending::<()>().await;
        0
    }

    #[step]
    async fn after(&self, wait: &u32) -> u32 {
        *wait
    }
}

async fn abort_reaches_a_running_step(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let key = base + 10;
    let run = client.submit(&Slow { key }).await.unwrap();
    let worker = Worker::new(&store)
        .job::<Slow>()
        .lease(Duration::from_millis(300));
    let (shutdown, working) = started(worker);
    while count(key) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(client.abort(&run.id).await.unwrap());
    // The next heartbeat (a third of the lease) cancels the step.
    while count(key + 1) == 0 {
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

async fn worker_drains(store: impl TestQueue, base: u64) {
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
    let flaky = client
        .submit(&Flaky {
            fail: 0,
            key: base + 3,
        })
        .await
        .unwrap();
    assert!(matches!(
        client.result::<Diamond>(&flaky.id).await,
        Err(ClientError::Store(StoreError::Mismatch { .. }))
    ));
    let _ = Failed::Failed;
    let _ = ClaimId {
        run: String::new(),
        step: String::new(),
        position: 0,
        attempt: 0,
        element: None,
        only_step: false,
        handed_over: None,
    };
}

/// A worker whose claim of a step expired (its database was down past the lease) and which
/// claimed the step again settles both executions in one `complete_many` (the first one's
/// commit waited for the database): the live claim commits, the stale one is fenced, and the
/// answer says which (found by the chaos suite: the answer was keyed by step, not by claim, and
/// said both were stored).
async fn stale_and_live_claim_together(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let run = client.submit(&Diamond { n: 3 }).await.unwrap().id;
    let first = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    store.age_leases(LEASE * 2).await;
    let again = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (&again[0].id.step, again[0].id.attempt),
        (&first[0].id.step, first[0].id.attempt + 1)
    );
    let done = [
        Completion {
            claim: &first[0].id,
            output: "7",
            started_at: 0,
        },
        Completion {
            claim: &again[0].id,
            output: "8",
            started_at: 0,
        },
    ];
    assert_eq!(
        store.complete_many(WORKER, &done).await.unwrap(),
        [false, true]
    );
    let stored = store.load_run(&run).await.unwrap().unwrap();
    assert_eq!(stored.step("a").unwrap().output.as_deref(), Some("8"));
}

/// A completion of each of `claims`, each with `output`.
fn completions<'a>(
    claims: &'a [jobgraph::store::queue::Claim],
    output: &'a str,
) -> Vec<Completion<'a>> {
    claims
        .iter()
        .map(|c| Completion {
            claim: &c.id,
            output,
            started_at: 0,
        })
        .collect()
}

/// One `complete_many` settles steps of several runs: each fenced alone (a stale claim is
/// refused, the others commit), two parents of one child completed together make it ready once,
/// and the run ends in the same call as its last step.
async fn complete_many_together(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let one = client.submit(&Diamond { n: 1 }).await.unwrap().id;
    let two = client.submit(&Diamond { n: 2 }).await.unwrap().id;
    let roots = store.claim(WORKER, &["Diamond"], 2, LEASE).await.unwrap();
    assert_eq!(roots.len(), 2);
    let stale = ClaimId {
        attempt: roots[1].id.attempt + 1,
        ..roots[1].id.clone()
    };
    let done = [
        Completion {
            claim: &roots[0].id,
            output: "1",
            started_at: 0,
        },
        Completion {
            claim: &stale,
            output: "999",
            started_at: 0,
        },
    ];
    assert_eq!(
        store.complete_many(WORKER, &done).await.unwrap(),
        [true, false]
    );
    assert_eq!(roots[0].id.run, one);
    // Run one's `b` and `c` are ready; run two's root is still claimed, not completed.
    let parents = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    let names: HashSet<_> = parents
        .iter()
        .map(|c| (c.id.run.as_str(), c.id.step.as_str()))
        .collect();
    assert_eq!(
        names,
        HashSet::from([(one.as_str(), "b"), (one.as_str(), "c")])
    );
    let stored = store.load_run(&two).await.unwrap().unwrap();
    assert_eq!(stored.step("a").unwrap().state, StepStatus::Pending);
    // Both parents of `d`, and run two's root, in one call: `d` becomes ready once.
    let done: Vec<Completion<'_>> = completions(&parents, "5")
        .into_iter()
        .chain([Completion {
            claim: &roots[1].id,
            output: "2",
            started_at: 0,
        }])
        .collect();
    assert_eq!(
        store.complete_many(WORKER, &done).await.unwrap(),
        [true, true, true]
    );
    let next = store.claim(WORKER, &["Diamond"], 10, LEASE).await.unwrap();
    // As a set: two runs submitted in the same millisecond have ids in no particular order.
    let names: HashSet<_> = next
        .iter()
        .map(|c| (c.id.run.as_str(), c.id.step.as_str()))
        .collect();
    assert_eq!(next.len(), 3);
    assert_eq!(
        names,
        HashSet::from([
            (one.as_str(), "d"),
            (two.as_str(), "b"),
            (two.as_str(), "c")
        ])
    );
    let d = next.iter().find(|c| c.id.step == "d").unwrap();
    assert_eq!(
        d.deps,
        [
            ("b".to_owned(), "5".to_owned()),
            ("c".to_owned(), "5".to_owned())
        ]
    );
    // The run ends in the call that completes its last step.
    let last = [Completion {
        claim: &d.id,
        output: "10",
        started_at: 0,
    }];
    assert_eq!(store.complete_many(WORKER, &last).await.unwrap(), [true]);
    assert_eq!(
        client.status(&one).await.unwrap().state,
        RunState::Succeeded
    );
    // Nothing to settle is nothing done.
    assert!(store.complete_many(WORKER, &[]).await.unwrap().is_empty());
}

/// A commit hands its worker the children its completions made ready, claimed in the same
/// writes (PostgreSQL; SQLite hands none, and they are ready for claims): each with its run's
/// input and its parents' outputs, leased as a claim is, held against every other claim, up to
/// the commit's limit, and never a step with limits. A handed step is fenced, completed and
/// hands over its own children as a claimed one does, and its run ends with its last step.
async fn commits_hand_over_children(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let one = client.submit(&Diamond { n: 3 }).await.unwrap().id;
    let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    let committed = store
        .complete_and_claim(WORKER, &completions(&root, "3"), 10, LEASE)
        .await
        .unwrap();
    assert_eq!(committed.stored, [true]);
    let steps = |claims: &[Claim]| -> BTreeSet<String> {
        claims.iter().map(|c| c.id.step.clone()).collect()
    };
    let children = BTreeSet::from(["b".to_owned(), "c".to_owned()]);
    if !hands_over(&store) {
        assert!(committed.claims.is_empty());
        let ready = store.claim("w2", &["Diamond"], 10, LEASE).await.unwrap();
        assert_eq!(steps(&ready), children);
        return;
    }
    let handed = committed.claims;
    assert_eq!(steps(&handed), children);
    for claim in &handed {
        assert_eq!((claim.id.run.as_str(), claim.id.attempt), (one.as_str(), 1));
        assert_eq!(
            (claim.job.as_str(), claim.input.as_str()),
            ("Diamond", r#"{"n":3}"#)
        );
        assert_eq!(claim.deps, [("a".to_owned(), "3".to_owned())]);
        assert_eq!(claim.lease, LEASE);
    }
    // Held: another worker's claim takes neither, and the store lists them as this worker's.
    assert!(
        store
            .claim("w2", &["Diamond"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let held: BTreeSet<(String, Option<String>)> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.holder, l.step))
        .collect();
    assert_eq!(
        held,
        BTreeSet::from([
            (WORKER.to_owned(), Some("b".to_owned())),
            (WORKER.to_owned(), Some("c".to_owned())),
        ])
    );
    // A stale completion of a handed step is refused; the live ones commit, and a commit that
    // may hand nothing leaves `d` ready for any claim.
    let stale = ClaimId {
        attempt: handed[0].id.attempt + 1,
        ..handed[0].id.clone()
    };
    assert_eq!(
        store
            .complete_many(WORKER, &completions_of(&[&stale], "0"))
            .await
            .unwrap(),
        [false]
    );
    let committed = store
        .complete_and_claim(WORKER, &completions(&handed, "4"), 0, LEASE)
        .await
        .unwrap();
    assert_eq!(
        (committed.stored, committed.claims.len()),
        (vec![true, true], 0)
    );
    let d = store.claim("w2", &["Diamond"], 10, LEASE).await.unwrap();
    assert_eq!(steps(&d), BTreeSet::from(["d".to_owned()]));
    assert_eq!(
        d[0].deps,
        [
            ("b".to_owned(), "4".to_owned()),
            ("c".to_owned(), "4".to_owned())
        ]
    );
    // A limit of one hands one child over; the other is ready for claims.
    let two = client.submit(&Diamond { n: 5 }).await.unwrap().id;
    let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(root[0].id.run, two);
    let committed = store
        .complete_and_claim(WORKER, &completions(&root, "5"), 1, LEASE)
        .await
        .unwrap();
    assert_eq!(committed.claims.len(), 1);
    let other = store.claim("w3", &["Diamond"], 10, LEASE).await.unwrap();
    let mut both = steps(&committed.claims);
    both.extend(steps(&other));
    assert_eq!((other.len(), both), (1, children));
    // A handed step ends its run as a claimed one: `d` of run one, which w2 holds.
    let last = store
        .complete_and_claim("w2", &completions(&d, "8"), 10, LEASE)
        .await
        .unwrap();
    assert_eq!((last.stored, last.claims.len()), (vec![true], 0));
    assert_eq!(
        client.status(&one).await.unwrap().state,
        RunState::Succeeded
    );
    // A child with limits stays ready for claims: `gate`, beside `free`, which is handed.
    client.submit(&Gated { n: 1 }).await.unwrap();
    let open = store.claim(WORKER, &["Gated"], 1, LEASE).await.unwrap();
    let committed = store
        .complete_and_claim(WORKER, &completions(&open, "1"), 10, LEASE)
        .await
        .unwrap();
    assert_eq!(
        steps(&committed.claims),
        BTreeSet::from(["free".to_owned()])
    );
    let gate = store.claim("w2", &["Gated"], 10, LEASE).await.unwrap();
    assert_eq!(steps(&gate), BTreeSet::from(["gate".to_owned()]));
}

/// `Q::HANDS_OVER`, of a store of an `impl TestQueue` argument.
fn hands_over<Q: TestQueue>(_: &Q) -> bool {
    Q::HANDS_OVER
}

/// A completion of each claim of `ids`, each with `output`.
fn completions_of<'a>(ids: &[&'a ClaimId], output: &'a str) -> Vec<Completion<'a>> {
    ids.iter()
        .map(|&claim| Completion {
            claim,
            output,
            started_at: 0,
        })
        .collect()
}

/// `open` feeds `gate`, one claim at a time across workers, and `free`.
#[derive(Serialize, Deserialize)]
struct Gated {
    n: u32,
}

#[job(durable)]
impl Gated {
    #[step]
    async fn open(&self) -> u32 {
        self.n
    }

    #[step(concurrency = 1)]
    async fn gate(&self, open: &u32) -> u32 {
        open + 1
    }

    #[step]
    async fn free(&self, open: &u32) -> u32 {
        open + 2
    }
}

/// A step a commit handed over whose worker stopped answering is claimed again once its lease
/// ended, as a claimed step is (on PostgreSQL it is in no index a claim reads: the claims'
/// sweep finds it through its run): another worker's claim takes both children of the root as
/// their second attempts, the first worker's completions are refused, and the run ends. On
/// SQLite the first worker claims the children instead.
async fn lapsed_handoffs_claimed_again(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let run = client.submit(&Diamond { n: 4 }).await.unwrap().id;
    let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    let committed = store
        .complete_and_claim(WORKER, &completions(&root, "4"), 10, LEASE)
        .await
        .unwrap();
    let held = if hands_over(&store) {
        committed.claims
    } else {
        store.claim(WORKER, &["Diamond"], 10, LEASE).await.unwrap()
    };
    let steps = |claims: &[Claim]| -> Vec<(String, u32)> {
        let mut steps: Vec<_> = claims
            .iter()
            .map(|c| (c.id.step.clone(), c.id.attempt))
            .collect();
        steps.sort();
        steps
    };
    assert_eq!(steps(&held), [("b".to_owned(), 1), ("c".to_owned(), 1)]);
    assert!(
        store
            .claim("w2", &["Diamond"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    let again = store.claim("w2", &["Diamond"], 10, LEASE).await.unwrap();
    assert_eq!(steps(&again), [("b".to_owned(), 2), ("c".to_owned(), 2)]);
    let stale = store
        .complete_many(WORKER, &completions(&held, "0"))
        .await
        .unwrap();
    assert_eq!(stale, [false, false]);
    let committed = store
        .complete_and_claim("w2", &completions(&again, "5"), 10, LEASE)
        .await
        .unwrap();
    let last = if hands_over(&store) {
        committed.claims
    } else {
        store.claim("w2", &["Diamond"], 10, LEASE).await.unwrap()
    };
    assert_eq!(steps(&last), [("d".to_owned(), 1)]);
    assert_eq!(
        last[0].deps,
        [
            ("b".to_owned(), "5".to_owned()),
            ("c".to_owned(), "5".to_owned())
        ]
    );
    assert!(
        store
            .complete_many("w2", &completions(&last, "10"))
            .await
            .unwrap()[0]
    );
    assert_eq!(
        client.status(&run).await.unwrap().state,
        RunState::Succeeded
    );
}

/// The claims' sweep for lapsed hand-offs reads a bounded number of unfinished runs at a time
/// (256), each sweep going on where the last one stopped: with 300 runs unfinished, the sweep of
/// the claim that takes the roots reads the first 256, the next sweep the last 44 (so it misses
/// the first run's handed steps, whose leases ended since), and the one after begins again and
/// finds them, claimed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_sweep_for_lapsed_handoffs_reads_the_unfinished_runs_in_turn() {
    let Some((_db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    let runs = client
        .submit_batch("waiting", (0..300).map(|n| Diamond { n }))
        .await
        .unwrap();
    let first = &runs[0];
    // Every root claimed by one worker, which completes the first run's and is handed its
    // children.
    let roots = store.claim("w0", &["Diamond"], 300, LEASE).await.unwrap();
    assert_eq!(roots.len(), 300);
    let root = roots.iter().find(|c| &c.id.run == first).unwrap();
    let committed = store
        .complete_and_claim(
            "w0",
            &completions(std::slice::from_ref(root), "1"),
            10,
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(committed.claims.len(), 2);
    let taken = |claims: &[Claim]| -> BTreeMap<(String, u32), usize> {
        let mut taken = BTreeMap::new();
        for c in claims {
            *taken.entry((c.id.step.clone(), c.id.attempt)).or_default() += 1;
        }
        taken
    };
    // Every lease ended: the other roots are in the claims' index, the two children are not,
    // and this sweep reads the last 44 runs.
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    let again = store.claim("w2", &["Diamond"], 1_000, LEASE).await.unwrap();
    assert_eq!(taken(&again), BTreeMap::from([(("a".to_owned(), 2), 299)]));
    store.age_leases(Duration::ZERO).await;
    let next = store.claim("w2", &["Diamond"], 1_000, LEASE).await.unwrap();
    let handed: Vec<(&str, &str, u32)> = next
        .iter()
        .map(|c| (c.id.run.as_str(), c.id.step.as_str(), c.id.attempt))
        .collect();
    assert_eq!(handed, [(first.as_str(), "b", 2), (first.as_str(), "c", 2)]);
}

/// The row of step `step` of run `run`: (worker, claims, whether it is ready for claims).
async fn step_row(
    conn: &mut sqlx::PgConnection,
    run: &str,
    step: &str,
) -> (Option<String>, i64, bool) {
    sqlx::query_as(
        "SELECT worker, claims, ready_at IS NOT NULL FROM jobgraph_steps
        WHERE run_id = $1 AND name = $2",
    )
    .bind(run)
    .bind(step)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A diamond submitted, its root claimed and completed by [`WORKER`], whose commit is handed
/// `b` and `c`: the run, and those claims.
async fn diamond_handed_over(store: &PgStore) -> (String, Vec<Claim>) {
    let run = Client::new(store)
        .submit(&Diamond { n: 2 })
        .await
        .unwrap()
        .id;
    let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    let handed = store
        .complete_and_claim(WORKER, &completions(&root, "2"), 10, LEASE)
        .await
        .unwrap()
        .claims;
    (run, handed)
}

/// A commit hands its worker the children it made ready without writing their rows: each row
/// stays as it was (no worker, no claim, not ready), and each claim carries its run's count of
/// resets.
/// A heartbeat writes its claim into the row, which is then an ordinary claim of the worker's;
/// the completion of one and the failure (tried again) of the other are stored under the claims
/// the commit made, and a claim takes the one tried again as its second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_commit_hands_steps_over_without_writing_them() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let (run, handed) = diamond_handed_over(store).await;
    let [b, c] = &handed[..] else {
        panic!("{handed:?}")
    };
    let (b, c) = if b.id.step == "b" { (b, c) } else { (c, b) };
    for claim in [b, c] {
        assert!(claim.id.handed_over.is_some(), "{claim:?}");
        assert_eq!(
            step_row(&mut conn, &run, &claim.id.step).await,
            (None, 0, false)
        );
    }
    let held = store
        .heartbeat(WORKER, std::slice::from_ref(&b.id), LEASE)
        .await
        .unwrap();
    assert_eq!(held, [Held::Held]);
    assert_eq!(
        step_row(&mut conn, &run, "b").await,
        (Some(WORKER.to_owned()), 1, false)
    );
    // Held, written or not: no claim takes either.
    assert!(
        store
            .claim("w2", &["Diamond"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let stored = store
        .complete_many(WORKER, &completions_of(&[&b.id], "3"))
        .await
        .unwrap();
    assert_eq!(stored, [true]);
    let failed = store
        .fail(WORKER, &c.id, "503", 0, Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(matches!(failed, Failed::Retrying { .. }), "{failed:?}");
    let again = store.claim("w2", &["Diamond"], 10, LEASE).await.unwrap();
    let seen: Vec<(&str, u32, u32)> = again
        .iter()
        .map(|c| (c.id.step.as_str(), c.id.attempt, c.fails))
        .collect();
    assert_eq!(seen, [("c", 2, 1)]);
    // The first claim of `c` is over: its completion is refused.
    let stale = store
        .complete_many(WORKER, &completions_of(&[&c.id], "0"))
        .await
        .unwrap();
    assert_eq!(stale, [false]);
    let attempts: i64 =
        sqlx::query_scalar("SELECT attempts FROM jobgraph_steps WHERE run_id = $1 AND name = 'b'")
            .bind(&run)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(attempts, 1);
}

/// A reset of a step is refused while a step below it is held by a claim a commit handed over
/// without writing its row, as for any live claim; once that claim's lease ended, the reset
/// queues the step again, and the stale claim's completion and heartbeat find it gone (the row
/// was written since the hand-off, though it looks as it did then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_reset_waits_for_a_handed_steps_claim_and_then_fences_it() {
    let Some((_db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let (run, handed) = diamond_handed_over(store).await;
    assert_eq!(handed.len(), 2);
    match store.reset_step(&run, "a").await {
        Err(StoreError::Busy { owner, .. }) => assert_eq!(owner, WORKER),
        other => panic!("{other:?}"),
    }
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    assert_eq!(
        store.reset_step(&run, "a").await.unwrap(),
        ["a", "b", "c", "d"]
    );
    assert_reset_ended(store, &handed).await;
}

/// The claims a commit handed over of the diamond ([`diamond_handed_over`]) ended with the reset
/// of its root: their heartbeats find them lost, their completions are refused, and the run
/// starts again from its root.
async fn assert_reset_ended(store: &PgStore, handed: &[Claim]) {
    let ids: Vec<ClaimId> = handed.iter().map(|c| c.id.clone()).collect();
    let held = store.heartbeat(WORKER, &ids, LEASE).await.unwrap();
    assert_eq!(held, [Held::Lost, Held::Lost]);
    let stale = store
        .complete_many(WORKER, &completions(handed, "0"))
        .await
        .unwrap();
    assert_eq!(stale, [false, false]);
    let again = store.claim("w2", &["Diamond"], 10, LEASE).await.unwrap();
    let seen: Vec<(&str, u32)> = again
        .iter()
        .map(|c| (c.id.step.as_str(), c.id.attempt))
        .collect();
    assert_eq!(seen, [("a", 1)]);
}

/// A commit hands over only the steps a claim would lease with the worker's lease, whether it
/// reads them or not (a child all of whose dependencies completed in the commit is handed over
/// from its run's row, unread): not a step with a TTR (`slow`, beside `fast`, which is handed),
/// no step of a run with a time to live, not a fan-out (`each`, whose elements are ready for
/// claims); and the steps of a run whose row does not say its steps are plain (inserted by an
/// older build) are read, and handed over all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_commit_hands_over_only_what_a_claim_would_lease_as_its_workers() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    let handed_after_root = |job: &'static str| async move {
        let root = store.claim(WORKER, &[job], 1, LEASE).await.unwrap();
        assert_eq!(root.len(), 1, "{job}");
        let committed = store
            .complete_and_claim(WORKER, &completions(&root, "[1]"), 10, LEASE)
            .await
            .unwrap();
        assert_eq!(committed.stored, [true], "{job}");
        let handed: BTreeSet<String> = committed.claims.iter().map(|c| c.id.step.clone()).collect();
        let ready: BTreeSet<(String, Option<usize>)> = store
            .claim("w2", &[job], 10, LEASE)
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.id.step, c.id.element))
            .collect();
        (handed, ready)
    };
    let set =
        |steps: &[&str]| -> BTreeSet<String> { steps.iter().map(|s| s.to_string()).collect() };

    client.submit(&Paced { n: 1 }).await.unwrap();
    let (handed, ready) = handed_after_root("Paced").await;
    assert_eq!(handed, set(&["fast"]));
    assert_eq!(ready, BTreeSet::from([("slow".to_owned(), None)]));

    client
        .submit(&Diamond { n: 1 })
        .ttl(Duration::from_secs(600))
        .await
        .unwrap();
    let (handed, ready) = handed_after_root("Diamond").await;
    assert_eq!(handed, set(&[]));
    assert_eq!(
        ready,
        BTreeSet::from([("b".to_owned(), None), ("c".to_owned(), None)])
    );

    client.submit(&Tail { items: vec![7] }).await.unwrap();
    let (handed, ready) = handed_after_root("Tail").await;
    assert_eq!(handed, set(&[]));
    assert_eq!(ready, BTreeSet::from([("each".to_owned(), Some(0))]));

    let older = client.submit(&Diamond { n: 2 }).await.unwrap().id;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE jobgraph_runs SET plain = false WHERE id = $1")
        .bind(&older)
        .execute(&mut conn)
        .await
        .unwrap();
    let (handed, ready) = handed_after_root("Diamond").await;
    assert_eq!(handed, set(&["b", "c"]));
    assert!(ready.is_empty(), "{ready:?}");
}

/// `begin` feeds `slow`, which has a TTR, and `fast`, which has none.
#[derive(Serialize, Deserialize)]
struct Paced {
    n: u32,
}

#[job(durable)]
impl Paced {
    #[step]
    async fn begin(&self) -> Vec<u32> {
        vec![self.n]
    }

    #[step(timeout = Duration::from_secs(30))]
    async fn slow(&self, begin: &Vec<u32>) -> usize {
        begin.len()
    }

    #[step]
    async fn fast(&self, begin: &Vec<u32>) -> usize {
        begin.len()
    }
}

/// A process of the build before schema version 18 resets a step without counting the reset in
/// its run's row (it queues the steps again and clears the run's time to live): the trigger of
/// that version counts it, so a claim a commit of this build handed over before it is refused,
/// though the step's row looks as it did when it was handed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_older_builds_reset_ends_the_claims_handed_over_before_it() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let (run, handed) = diamond_handed_over(store).await;
    assert_eq!(handed.len(), 2);
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    // The older build's statements, as it runs them for a reset of `a`.
    sqlx::raw_sql(&format!(
        "UPDATE jobgraph_steps
        SET state = 'pending', attempts = 0, output = NULL, error = NULL, started_at = NULL,
            ended_at = NULL
        WHERE run_id = '{run}';
        UPDATE jobgraph_steps s
        SET waiting = r.waiting, ready_at = NULL, claims = 0, fails = 0, worker = NULL,
            lease_until = NULL, fan_size = NULL, fan_done = 0, expires_at = NULL
        FROM unnest('{{0, 1, 2, 3}}'::integer[], '{{1, 1, 1, 2}}'::integer[]) AS r (idx, waiting)
        WHERE s.run_id = '{run}' AND s.idx = r.idx;
        UPDATE jobgraph_steps SET waiting = 0, ready_at = now() WHERE run_id = '{run}' AND idx = 0;
        UPDATE jobgraph_runs SET expires_at = NULL WHERE id = '{run}';"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let resets: i64 = sqlx::query_scalar("SELECT resets FROM jobgraph_runs WHERE id = $1")
        .bind(&run)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(resets, 1);
    assert_reset_ended(store, &handed).await;
}

/// The sweep for lapsed hand-offs reads the steps of the unfinished runs it picked, by their
/// keys, and no other: with 3,000 single-step runs ready (none of them in the index of
/// unfinished runs) and the tables' statistics current, a claim that sweeps reads no row of
/// `jobgraph_steps` by a table scan (the sweep's plan, made once per connection, scanned the
/// whole table for handed steps and joined them to the runs it picked: 120 ms a second with
/// 640,000 steps).
#[tokio::test]
async fn postgres_the_sweep_for_lapsed_handoffs_reads_no_other_runs_steps() {
    let Some((db, mut admin)) = analyzed_backlog("backlog", (0..3_000).map(|n| Single { n })).await
    else {
        return;
    };
    let before = steps_read_by_table_scans(&mut admin).await;
    let store = PgStore::connect(db.url()).await.unwrap();
    // A new store's first claim sweeps; no step of this job is there to take.
    let claims = store.claim(WORKER, &["Diamond"], 10, LEASE).await.unwrap();
    assert!(claims.is_empty());
    let read = steps_read_by_table_scans(&mut admin).await - before;
    assert_eq!(
        read, 0,
        "the sweep read {read} rows of jobgraph_steps by table scans"
    );
}

/// A worker runs the steps its commits hand over before the steps it queued (PostgreSQL; on
/// SQLite every step comes through a claim): twenty diamonds with a prefetch of all their roots
/// end with every output right, each step run once, and on PostgreSQL all but the roots handed
/// over.
async fn worker_runs_handed_steps(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let runs: Vec<String> = client
        .submit_batch("handed", (base..base + 20).map(|n| Diamond { n }))
        .await
        .unwrap();
    let worker = Worker::new(&store)
        .job::<Diamond>()
        .concurrency(4)
        .prefetch(20);
    let stop = CancellationToken::new();
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { worker.run(stop).await })
    };
    within(30, batch_finished(&client, "handed")).await;
    stop.cancel();
    let stats: WorkerStats = within(10, running).await.unwrap().unwrap();
    for (run, n) in runs.iter().zip(base..) {
        let out = client.result::<Diamond>(run).await.unwrap().unwrap();
        assert_eq!(
            (out.a, out.b, out.c, out.d),
            (n, n + 1, n * 10, n + 1 + n * 10)
        );
    }
    assert_eq!((stats.completed, stats.claimed), (80, 80));
    let handed = if hands_over(&store) { 60 } else { 0 };
    assert_eq!(stats.handed, handed);
}

/// Runs of one step end in the call that completes their step, settled claim by claim among
/// completions of every other kind: a live claim is stored and its run succeeds; a stale claim,
/// and the claim of a run aborted since, are refused and leave their runs as they were; a step
/// of a run of several steps makes its children ready and leaves its run running.
async fn one_step_runs_complete_among_others(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let mut alone = Vec::new();
    for key in [1, 2, 3] {
        alone.push(client.submit(&Busy { key }).await.unwrap().id);
    }
    let diamond = client.submit(&Diamond { n: 4 }).await.unwrap().id;
    let mut busy = store.claim(WORKER, &["Busy"], 3, LEASE).await.unwrap();
    busy.sort_by_key(|c| alone.iter().position(|id| *id == c.id.run));
    assert_eq!(busy.len(), 3);
    let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    assert_eq!(root.len(), 1);
    assert!(client.abort(&alone[2]).await.unwrap());
    let stale = ClaimId {
        attempt: busy[1].id.attempt + 1,
        ..busy[1].id.clone()
    };
    let completion = |claim, output| Completion {
        claim,
        output,
        started_at: 0,
    };
    let done = [
        completion(&stale, "999"),
        completion(&busy[0].id, "1"),
        completion(&root[0].id, "4"),
        completion(&busy[2].id, "3"),
    ];
    assert_eq!(
        store.complete_many(WORKER, &done).await.unwrap(),
        [false, true, true, false]
    );
    let state = |run: &str| {
        let client = &client;
        let run = run.to_owned();
        async move { client.status(&run).await.unwrap() }
    };
    let first = state(&alone[0]).await;
    assert_eq!(first.state, RunState::Succeeded);
    assert_eq!(first.step("work").unwrap().output.as_deref(), Some("1"));
    let second = state(&alone[1]).await;
    assert_eq!(second.state, RunState::Running);
    assert_eq!(second.step("work").unwrap().state, StepStatus::Pending);
    let aborted = state(&alone[2]).await;
    assert_eq!(aborted.state, RunState::Cancelled);
    assert_eq!(aborted.step("work").unwrap().output, None);
    assert_eq!(state(&diamond).await.state, RunState::Running);
    let next = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    let names: BTreeSet<&str> = next.iter().map(|c| c.id.step.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["b", "c"]));
    // The live claim of the second run still completes it.
    let last = [completion(&busy[1].id, "2")];
    assert_eq!(store.complete_many(WORKER, &last).await.unwrap(), [true]);
    assert_eq!(state(&alone[1]).await.state, RunState::Succeeded);
}

/// A run of one step ends when its step completes, and stays ended for every reader (its
/// status and when it was last written, the runs listed by state, its batch's counts) and every
/// writer that comes after (an abort of it or of its batch, its time to live, a stale claim); a
/// redrive runs it again. Its claim says it is its run's only step; an id that says so of another
/// step is completed the usual way, its children made ready. (On PostgreSQL such a step is
/// completed without writing its run: readers derive its end from the step.)
async fn one_step_runs_stay_ended(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let ids = client
        .submit_batch("alone", [1, 2, 3].map(|key| Busy { key }))
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    let mut busy = store.claim(WORKER, &["Busy"], 3, LEASE).await.unwrap();
    busy.sort_by_key(|c| ids.iter().position(|id| *id == c.id.run));
    assert_eq!(busy.len(), 3);
    assert!(busy.iter().all(|c| c.id.only_step));
    let done: Vec<Completion<'_>> = busy[..2]
        .iter()
        .map(|c| Completion {
            claim: &c.id,
            output: "7",
            started_at: 0,
        })
        .collect();
    assert_eq!(
        store.complete_many(WORKER, &done).await.unwrap(),
        [true, true]
    );
    let ended = client.status(&ids[0]).await.unwrap();
    assert_eq!(ended.state, RunState::Succeeded);
    assert_eq!(ended.error, None);
    let step_ended = ended.step("work").unwrap().ended_at.unwrap();
    assert!(ended.updated_at >= step_ended, "{ended:?}");
    let listed = |state| {
        let store = &store;
        async move {
            let filter = RunFilter {
                state: Some(state),
                batch: Some("alone".to_owned()),
                ..RunFilter::default()
            };
            let mut runs: Vec<String> = store
                .list_runs(&filter)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            runs.sort();
            runs
        }
    };
    assert_eq!(listed(RunState::Succeeded).await, ids[..2]);
    assert_eq!(listed(RunState::Running).await, ids[2..]);
    let counts = client.batch_counts("alone").await.unwrap();
    assert_eq!((counts.succeeded, counts.running), (2, 1), "{counts:?}");

    // An ended run is not aborted, alone or with its batch: only the third is.
    assert!(!client.abort(&ids[0]).await.unwrap());
    assert_eq!(client.abort_batch("alone").await.unwrap(), 1);
    let late = [Completion {
        claim: &busy[2].id,
        output: "7",
        started_at: 0,
    }];
    assert_eq!(store.complete_many(WORKER, &late).await.unwrap(), [false]);
    // Past their time to live, the ended runs stay succeeded (a claim sweeps expired runs).
    store.age_leases(Duration::from_secs(61)).await;
    assert!(
        store
            .claim(WORKER, &["Busy"], 3, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let states: Vec<RunState> = futures::future::join_all(ids.iter().map(|id| client.status(id)))
        .await
        .into_iter()
        .map(|s| s.unwrap().state)
        .collect();
    assert_eq!(
        states,
        [
            RunState::Succeeded,
            RunState::Succeeded,
            RunState::Cancelled
        ]
    );
    assert_eq!(
        client.status(&ids[0]).await.unwrap().updated_at,
        ended.updated_at
    );

    // A redrive runs it again.
    store.reset_step(&ids[1], "work").await.unwrap();
    assert_eq!(
        client.status(&ids[1]).await.unwrap().state,
        RunState::Pending
    );
    let again = store.claim(WORKER, &["Busy"], 3, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    store.complete(WORKER, &again[0].id, "8", 0).await.unwrap();
    let redriven = client.status(&ids[1]).await.unwrap();
    assert_eq!(redriven.state, RunState::Succeeded);
    assert_eq!(redriven.step("work").unwrap().output.as_deref(), Some("8"));

    // A claim id that calls a step of a run of several its run's only step: completed the
    // usual way, its children made ready, its run running.
    let diamond = client.submit(&Diamond { n: 2 }).await.unwrap().id;
    let root = store.claim(WORKER, &["Diamond"], 1, LEASE).await.unwrap();
    assert!(!root[0].id.only_step);
    let forged = ClaimId {
        only_step: true,
        ..root[0].id.clone()
    };
    store.complete(WORKER, &forged, "2", 0).await.unwrap();
    assert_eq!(
        client.status(&diamond).await.unwrap().state,
        RunState::Running
    );
    let next = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    let names: BTreeSet<&str> = next.iter().map(|c| c.id.step.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["b", "c"]));
}

/// A queued run is pending until a worker claims one of its steps, and running from then until
/// it ends, as every reader says (its status, the runs listed by state, its batch's counts):
/// while its first step is claimed, after a failed attempt of it is put back, while its next
/// steps wait to be claimed. A redriven run is pending again until a worker takes it. (On
/// PostgreSQL, neither a claim nor a commit that leaves the run unfinished writes the run:
/// readers derive running from the run's steps.)
async fn running_from_first_claim(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let ids = client
        .submit_batch("states", [Diamond { n: 1 }])
        .await
        .unwrap();
    let run = &ids[0];
    let seen = |expected: RunState| {
        let (store, client) = (&store, &client);
        async move {
            assert_eq!(client.status(run).await.unwrap().state, expected);
            let listed = store
                .list_runs(&RunFilter {
                    state: Some(expected),
                    ..RunFilter::default()
                })
                .await
                .unwrap();
            assert_eq!(
                listed.iter().map(|r| &r.id).collect::<Vec<_>>(),
                [run],
                "listed as {expected:?}"
            );
            let counts = client.batch_counts("states").await.unwrap();
            let by_state = match expected {
                RunState::Pending => counts.pending,
                RunState::Running => counts.running,
                RunState::Succeeded => counts.succeeded,
                _ => unreachable!(),
            };
            assert_eq!((by_state, counts.total()), (1, 1), "{counts:?}");
        }
    };
    let settle = |claims: Vec<jobgraph::store::queue::Claim>| {
        let store = &store;
        async move {
            let done = completions(&claims, "1");
            assert!(store.complete_many(WORKER, &done).await.unwrap()[0]);
        }
    };
    seen(RunState::Pending).await;
    let first = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    assert_eq!(first.len(), 1);
    seen(RunState::Running).await;
    let failed = store
        .fail(WORKER, &first[0].id, "503", 0, Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(matches!(failed, Failed::Retrying { .. }), "{failed:?}");
    seen(RunState::Running).await;
    let again = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    settle(again).await;
    // `b` and `c` are ready, neither claimed.
    seen(RunState::Running).await;
    for _ in 0..2 {
        let next = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
        assert!(!next.is_empty());
        for claim in next {
            settle(vec![claim]).await;
        }
    }
    seen(RunState::Succeeded).await;
    assert_eq!(store.reset_step(run, "d").await.unwrap(), ["d"]);
    seen(RunState::Pending).await;
    let redriven = store.claim(WORKER, &["Diamond"], 5, LEASE).await.unwrap();
    assert_eq!(redriven.len(), 1);
    seen(RunState::Running).await;
    settle(redriven).await;
    seen(RunState::Succeeded).await;
}

/// A run whose graph has two last steps (`Gated`: `gate` and `free`, neither waited for) ends
/// when both have completed, in either order, whoever ends first: PostgreSQL ends a run whose
/// one last step completed without counting its steps, and must count these.
async fn two_last_steps(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let runs = client
        .submit_batch("two-last", [Gated { n: 1 }, Gated { n: 2 }])
        .await
        .unwrap();
    let complete = |claims: Vec<jobgraph::store::queue::Claim>| {
        let store = &store;
        async move {
            let stored = store
                .complete_many(WORKER, &completions(&claims, "1"))
                .await
                .unwrap();
            assert!(stored.iter().all(|&s| s), "{claims:?}");
        }
    };
    let state = |run: &String| {
        let client = &client;
        let run = run.clone();
        async move { client.status(&run).await.unwrap().state }
    };
    let open = store.claim(WORKER, &["Gated"], 5, LEASE).await.unwrap();
    assert_eq!(open.len(), 2);
    complete(open).await;
    // `gate` takes one claim at a time: the first run's, with both `free`s.
    let mut last = store.claim(WORKER, &["Gated"], 5, LEASE).await.unwrap();
    last.sort_by(|x, y| (&x.id.run, x.id.position).cmp(&(&y.id.run, y.id.position)));
    let steps: Vec<(&str, &str)> = last
        .iter()
        .map(|c| (c.id.run.as_str(), c.id.step.as_str()))
        .collect();
    let (a, b) = (runs[0].as_str(), runs[1].as_str());
    assert_eq!(steps, [(a, "gate"), (a, "free"), (b, "free")]);
    let free_a = last.remove(1);
    // The first run's `gate`, the second's `free`: each has its other last step pending.
    complete(last).await;
    assert_eq!(state(&runs[0]).await, RunState::Running);
    assert_eq!(state(&runs[1]).await, RunState::Running);
    complete(vec![free_a]).await;
    assert_eq!(state(&runs[0]).await, RunState::Succeeded);
    assert_eq!(state(&runs[1]).await, RunState::Running);
    let gate_b = store.claim(WORKER, &["Gated"], 5, LEASE).await.unwrap();
    assert_eq!(gate_b.len(), 1);
    complete(gate_b).await;
    assert_eq!(state(&runs[1]).await, RunState::Succeeded);
}

/// Counts its executions in counter `key`, and the steps of `key` running at once.
#[derive(Serialize, Deserialize)]
struct Busy {
    key: u64,
}

/// Per key: the steps running now, and the most that ran at once.
static RUNNING: Mutex<Option<HashMap<u64, (u32, u32)>>> = Mutex::new(None);

fn most_at_once(key: u64) -> u32 {
    RUNNING
        .lock()
        .unwrap()
        .as_ref()
        .and_then(|r| r.get(&key))
        .map_or(0, |r| r.1)
}

#[job(durable)]
impl Busy {
    #[step]
    async fn work(&self) -> u64 {
        {
            let mut running = RUNNING.lock().unwrap();
            let r = running
                .get_or_insert_with(HashMap::new)
                .entry(self.key)
                .or_default();
            r.0 += 1;
            r.1 = r.1.max(r.0);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Some(r) = RUNNING
            .lock()
            .unwrap()
            .as_mut()
            .and_then(|r| r.get_mut(&self.key))
        {
            r.0 -= 1;
        }
        bump(self.key);
        self.key
    }
}

/// A worker with `prefetch` claims its concurrency and its prefetch in one claim, and runs no
/// more steps at once than its concurrency.
async fn prefetch_runs_within_concurrency(store: impl TestQueue, base: u64) {
    let key = base + 40;
    let client = Client::new(&store);
    for _ in 0..6 {
        client.submit(&Busy { key }).await.unwrap();
    }
    let worker = Worker::new(&store).job::<Busy>().concurrency(2).prefetch(4);
    let stats = worker.run_once().await.unwrap();
    assert_eq!((stats.claimed, stats.completed), (6, 6));
    assert_eq!(count(key), 6);
    assert_eq!(most_at_once(key), 2);
    // Without prefetch, a claim takes no more than the concurrency.
    for _ in 0..3 {
        client.submit(&Busy { key }).await.unwrap();
    }
    let stats = Worker::new(&store)
        .job::<Busy>()
        .concurrency(2)
        .run_once()
        .await
        .unwrap();
    assert_eq!(stats.claimed, 2);
}

/// A job of one step that takes 2 ms.
#[derive(Serialize, Deserialize)]
struct Nap {
    n: u32,
}

#[job(durable)]
impl Nap {
    #[step]
    async fn only(&self) -> u32 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.n
    }
}

/// While steps wait in a worker (`prefetch`), it claims again only once it has room for half
/// its concurrency and prefetch, not a step as each step ends.
async fn claims_wait_for_half_their_room(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    client
        .submit_batch("halves", (0..200).map(|n| Nap { n }))
        .await
        .unwrap();
    // Room for 10, one step at a time: every claim made while a step waits asks for at least 5.
    let worker = Worker::new(&store)
        .job::<Nap>()
        .concurrency(1)
        .prefetch(9)
        .poll_interval(Duration::from_millis(20));
    let (shutdown, running) = started(worker);
    within(120, batch_finished(&client, "halves")).await;
    shutdown.cancel();
    let stats = within(60, running).await.unwrap().unwrap();
    assert_eq!((stats.claimed, stats.completed), (200, 200), "{stats:?}");
    // 40 claims of 5 would do (43–47 seen); a claim as each step ends, about 200 (143–204
    // seen). A slow claim or commit leaves the queue empty, and the claim then made may ask
    // for less.
    assert!(stats.claims <= 80, "{} claims: {stats:?}", stats.claims);
}

/// A job whose first execution (per key) stalls its thread, as a stopped process or a
/// blocking step would: nothing else of its runtime runs meanwhile, heartbeats included.
#[derive(Serialize, Deserialize)]
struct Stall {
    key: u64,
    stall_ms: u64,
}

#[job(durable)]
impl Stall {
    #[step]
    async fn work(&self) -> u64 {
        if bump(self.key) == 0 {
            std::thread::sleep(Duration::from_millis(self.stall_ms));
        }
        self.key
    }
}

/// A worker stalled past its lease does not start the claims it had queued: the store may
/// have given them to another worker meanwhile. It ends them cancelled, unrun, and the step runs
/// once, under a later claim.
async fn lapsed_claims_are_not_started(store: impl TestQueue, base: u64) {
    let key = base + 45;
    let client = Client::new(&store);
    // Twice the lease: a generous margin on a loaded machine.
    let (lease, stall_ms) = (Duration::from_millis(300), 600);
    for _ in 0..2 {
        client.submit(&Stall { key, stall_ms }).await.unwrap();
    }
    let worker = Worker::new(&store)
        .job::<Stall>()
        .concurrency(1)
        .prefetch(1)
        .lease(lease);
    // One claim of both steps; the first stalls the worker (`#[tokio::test]` runs on one
    // thread) past the second's lease.
    let stats = worker.run_once().await.unwrap();
    assert_eq!(
        (stats.claimed, stats.completed, stats.cancelled),
        (2, 1, 1),
        "{stats:?}"
    );
    assert_eq!(
        count(key),
        1,
        "the second step did not run under its lapsed claim"
    );
    // Once its lease has expired in the store (aged here: a heartbeat sent before the worker
    // gave the claim up may have renewed it), the next claim takes it, and it runs.
    store.age_leases(lease + Duration::from_secs(1)).await;
    let stats = worker.run_once().await.unwrap();
    assert_eq!((stats.claimed, stats.completed), (1, 1), "{stats:?}");
    assert_eq!(count(key), 2);
}

async fn held_batch(store: impl TestQueue, _base: u64) {
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

async fn batch_aborted_whole(store: impl TestQueue, _base: u64) {
    use futures::StreamExt as _;
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

async fn step_limits_hold_across_workers(store: impl TestQueue, _base: u64) {
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

/// A job's first submits declared no limits (an older version of it), and their steps were
/// claimed as any; a later submit declares `pooled`'s concurrency of 2: the two claims of it
/// already held count against it.
async fn claims_before_limits_count(store: impl TestQueue, _base: u64) {
    old_limited_runs(&store, 2).await;
    let old = store.claim("w1", &["Limited"], 10, LEASE).await.unwrap();
    assert_eq!(old.len(), 4);
    Client::new(&store).submit(&Limited { n: 3 }).await.unwrap();
    let new = store.claim("w2", &["Limited"], 10, LEASE).await.unwrap();
    let steps: Vec<&str> = new.iter().map(|c| c.id.step.as_str()).collect();
    assert_eq!(steps, ["metered"]);
}

/// A job whose second step, after its first, runs one at a time.
#[derive(Serialize, Deserialize)]
struct LimitedChild {
    n: u32,
}

#[job(durable)]
impl LimitedChild {
    #[step]
    async fn first(&self) -> u32 {
        self.n
    }

    #[step(concurrency = 1)]
    async fn second(&self, first: &u32) -> u32 {
        first + 1
    }
}

/// Two runs of `LimitedChild`'s older version (no limits) had their `second` handed over by
/// the commits of their `first` (on PostgreSQL; claimed, on SQLite); a later submit declares
/// `second`'s concurrency of 1: those two claims count against it, so the new run's `second`
/// waits until they completed.
async fn handed_before_limits_count(store: impl TestQueue, _base: u64) {
    let graph = leaked_graph(&[("first", &[]), ("second", &[0])]);
    let inputs = [r#"{"n":1}"#.to_owned(), r#"{"n":2}"#.to_owned()];
    let template = raw_submission("", "LimitedChild", "", graph);
    store.submit_batch("old", template, &inputs).await.unwrap();
    let roots = store
        .claim("w1", &["LimitedChild"], 10, LEASE)
        .await
        .unwrap();
    assert_eq!(roots.len(), 2);
    let committed = store
        .complete_and_claim("w1", &completions(&roots, "1"), 10, LEASE)
        .await
        .unwrap();
    let held = if hands_over(&store) {
        committed.claims
    } else {
        store
            .claim("w1", &["LimitedChild"], 10, LEASE)
            .await
            .unwrap()
    };
    assert_eq!(held.len(), 2);
    Client::new(&store)
        .submit(&LimitedChild { n: 3 })
        .await
        .unwrap();
    let first = store
        .claim("w2", &["LimitedChild"], 10, LEASE)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id.step, "first");
    let stored = store
        .complete_many("w2", &completions(&first, "3"))
        .await
        .unwrap();
    assert_eq!(stored, [true]);
    let waiting = store
        .claim("w2", &["LimitedChild"], 10, LEASE)
        .await
        .unwrap();
    assert!(waiting.is_empty(), "{waiting:?}");
    let stored = store
        .complete_many("w1", &completions(&held, "2"))
        .await
        .unwrap();
    assert_eq!(stored, [true, true]);
    let second = store
        .claim("w2", &["LimitedChild"], 10, LEASE)
        .await
        .unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].id.step, "second");
}

/// A job with a step limited to one claim at a time, and a step without limits.
#[derive(Serialize, Deserialize)]
struct Mixed {
    n: u32,
}

#[job(durable)]
impl Mixed {
    #[step(concurrency = 1)]
    async fn single(&self) -> u32 {
        self.n
    }

    #[step]
    async fn free(&self) -> u32 {
        self.n
    }
}

/// A claim that meets a limited step takes the unlimited steps beside it, in one claim, and the
/// limited one within its limit: of three runs' steps, every `free` and one `single`; then
/// nothing while that `single` is held, and the next once it completed.
async fn unlimited_beside_limited(store: impl TestQueue, _base: u64) {
    Client::new(&store)
        .submit_batch("mixed", (0..3).map(|n| Mixed { n }))
        .await
        .unwrap();
    let jobs = ["Mixed"];
    let first = store.claim(WORKER, &jobs, 100, LEASE).await.unwrap();
    let count = |claims: &[Claim], step: &str| claims.iter().filter(|c| c.id.step == step).count();
    assert_eq!((count(&first, "single"), count(&first, "free")), (1, 3));
    assert!(
        store
            .claim(WORKER, &jobs, 100, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let single = first.iter().find(|c| c.id.step == "single").unwrap();
    store.complete(WORKER, &single.id, "0", 0).await.unwrap();
    let next = store.claim(WORKER, &jobs, 100, LEASE).await.unwrap();
    assert_eq!((count(&next, "single"), count(&next, "free")), (1, 0));
}

/// Submits `runs` runs of `Limited` as its older version did, batch `old` in one transaction:
/// the same steps, no limits.
async fn old_limited_runs(store: &impl Queue, runs: u32) {
    let graph = leaked_graph(&[("pooled", &[]), ("metered", &[])]);
    let inputs: Vec<String> = (1..=runs).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    let template = raw_submission("", "Limited", "", graph);
    store.submit_batch("old", template, &inputs).await.unwrap();
}

/// Claims every ready step of `Limited` it may, and counts them by step: (`pooled`, `metered`).
async fn claim_limited(store: &impl Queue) -> (usize, usize) {
    claim_counts(store, "Limited", ["pooled", "metered"]).await
}

/// Claims every ready step and element of `Bounded` it may, and counts them by step:
/// (`halves`, `pooled`).
async fn claim_bounded(store: &impl Queue) -> (usize, usize) {
    claim_counts(store, "Bounded", ["halves", "pooled"]).await
}

/// Claims every ready step of `job` it may, and counts those of `steps`.
async fn claim_counts(store: &impl Queue, job: &str, steps: [&str; 2]) -> (usize, usize) {
    let claims = store.claim("w1", &[job], 100, LEASE).await.unwrap();
    let count = |step: &str| claims.iter().filter(|c| c.id.step == step).count();
    (count(steps[0]), count(steps[1]))
}

/// Steps stored before their step had limits are limited once a submit declares them, though
/// no step stored since is ready (that submit was held): a claim of everything takes 2
/// `pooled` (its concurrency) and 3 `metered` (its bucket's burst) of the five runs' steps.
async fn steps_before_limits_are_limited(store: impl TestQueue, _base: u64) {
    old_limited_runs(&store, 5).await;
    Client::new(&store)
        .submit_batch("declares", [Limited { n: 6 }])
        .held()
        .await
        .unwrap();
    assert_eq!(claim_limited(&store).await, (2, 3));
}

/// Elements stored before their fan-out had limits are limited once a submit declares them:
/// two runs of `Bounded` as its older version stored them (the same fan-outs, no limits), their
/// elements inserted; then a held submit declares `pooled`'s concurrency of 3. A claim of
/// everything takes 2 `halves` of each run (its fan-out's bound) and 3 `pooled`, of 10 ready.
async fn elements_before_limits_are_limited(store: impl TestQueue, _base: u64) {
    static FAN_OUTS: [jobgraph::store::queue::FanOut; 2] = [
        jobgraph::store::queue::FanOut {
            step: 1,
            over: 0,
            bound: Some(2),
        },
        jobgraph::store::queue::FanOut {
            step: 2,
            over: 0,
            bound: None,
        },
    ];
    let graph = leaked_graph(&[("items", &[]), ("halves", &[0]), ("pooled", &[0])]);
    for id in ["old-1", "old-2"] {
        let mut submission = raw_submission(id, "Bounded", r#"{"n":5}"#, graph);
        submission.fan_outs = &FAN_OUTS;
        store.submit(submission).await.unwrap();
    }
    let jobs = ["Bounded"];
    for root in store.claim(WORKER, &jobs, 10, LEASE).await.unwrap() {
        store
            .complete(WORKER, &root.id, "[0,1,2,3,4]", 0)
            .await
            .unwrap();
    }
    Client::new(&store)
        .submit_batch("declares", [Bounded { n: 5 }])
        .held()
        .await
        .unwrap();
    assert_eq!(claim_bounded(&store).await, (4, 3));
}

/// A graph of `steps` (each a name and its parents' positions), for the whole test.
fn leaked_graph(steps: &[(&str, &[usize])]) -> &'static jobgraph::store::GraphSpec {
    let steps = steps
        .iter()
        .map(|(name, parents)| jobgraph::store::StepSpec {
            name: (*name).to_owned(),
            parents: parents.to_vec(),
            after: Vec::new(),
        })
        .collect();
    Box::leak(Box::new(jobgraph::store::GraphSpec { steps }))
}

/// Run `id` of `job` with `input` and `graph`, submitted to the store as is (not by a client
/// of the job's current code): no limits, fan-outs or TTRs, ready at once.
fn raw_submission(
    id: &'static str,
    job: &'static str,
    input: &'static str,
    graph: &'static jobgraph::store::GraphSpec,
) -> jobgraph::store::queue::Submission<'static> {
    jobgraph::store::queue::Submission {
        id,
        job,
        input,
        graph,
        batch: None,
        key: None,
        held: false,
        limits: &[],
        fan_outs: &[],
        ttrs: &[],
        priority: 0,
        run_at: Some(0),
        ttl: None,
        max_attempts: 3,
        max_fails: None,
    }
}

async fn undecodable_runs_fail_clearly(store: impl TestQueue, _base: u64) {
    let graph = leaked_graph(&[("a", &[]), ("b", &[0]), ("c", &[0]), ("d", &[1, 2])]);
    let submit = |id, input, graph| raw_submission(id, "Diamond", input, graph);
    store
        .submit(submit("bad-input", r#"{"m": 1}"#, graph))
        .await
        .unwrap();
    let renamed = leaked_graph(&[("fetch", &[])]);
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

// ---- PostgreSQL only ----------------------------------------------------------------------------

/// A fresh database and `n` stores on it, each with a pool of its own (as `n` processes).
async fn pg_stores(n: usize) -> Option<(jobgraph_tests::pg::TestDb, Vec<PgStore>)> {
    let db = jobgraph_tests::pg::database().await?;
    let mut stores = Vec::with_capacity(n);
    for _ in 0..n {
        stores.push(PgStore::connect(db.url()).await.unwrap());
    }
    Some((db, stores))
}

/// Returns once every run of batch `name` has ended (polled every 20 ms).
async fn batch_finished(client: &Client, name: &str) {
    while !client.batch_counts(name).await.unwrap().is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fails the test if `what` takes longer than `secs` seconds: what must not block.
async fn within<T>(secs: u64, what: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), what)
        .await
        .unwrap_or_else(|_| panic!("blocked for {secs} s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claim_passes_over_rows_another_transaction_holds() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    for n in 0..5 {
        client.submit(&Diamond { n }).await.unwrap();
    }
    // Another transaction holds the first ready step (as a claim in flight would).
    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    let held: String = sqlx::query_scalar(
        "SELECT run_id FROM jobgraph_steps WHERE state = 'pending' AND ready_at IS NOT NULL
         ORDER BY priority DESC, ready_at LIMIT 1 FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    // Without `SKIP LOCKED` this claim would wait for that transaction, forever.
    let claims = within(10, store.claim(WORKER, &["Diamond"], 10, LEASE))
        .await
        .unwrap();
    assert_eq!(claims.len(), 4);
    assert!(claims.iter().all(|c| c.id.run != held));
    tx.rollback().await.unwrap();
    let last = store.claim(WORKER, &["Diamond"], 10, LEASE).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].id.run, held);
}

/// The runs of `claims`, in order.
fn claimed_runs(claims: &[jobgraph::store::queue::Claim]) -> Vec<&str> {
    claims.iter().map(|c| c.id.run.as_str()).collect()
}

/// Five runs of `Pages` (their ids), the first claimed (by the store's first claim, a sweep,
/// which took what it asked for), the second's row locked by another transaction, which
/// committed without writing it: marked. `other`: that transaction's connection.
async fn second_marked(store: &PgStore, other: &mut sqlx::PgConnection) -> Vec<String> {
    use sqlx::Connection as _;
    let pages = (0..5).map(|key| Pages { key, pages: vec![] });
    let runs = Client::new(store)
        .submit_batch("marks", pages)
        .await
        .unwrap();
    let first = store.claim(WORKER, &["Pages"], 1, LEASE).await.unwrap();
    assert_eq!(claimed_runs(&first), [&runs[0]]);
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobgraph_steps WHERE run_id = $1 FOR UPDATE")
        .bind(&runs[1])
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    runs
}

/// A claim reads only the rows no transaction marked since their version was written (it
/// would lock a row another claim took since its snapshot, and hold it against that step's
/// completion). A lock that ended without an update leaves its mark: such a row is claimed by
/// the next sweep, which reads every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_row_a_lock_left_marked_waits_for_the_next_sweep() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let runs = second_marked(store, &mut other).await;
    let next = store.claim(WORKER, &["Pages"], 2, LEASE).await.unwrap();
    assert_eq!(claimed_runs(&next), [&runs[2], &runs[3]]);
    // A sweep (due now that time moved) reads every claimable row: the marked one is the best.
    store.age_leases(Duration::ZERO).await;
    let swept = store.claim(WORKER, &["Pages"], 1, LEASE).await.unwrap();
    assert_eq!(claimed_runs(&swept), [&runs[1]]);
}

/// A claim that failed may have left marks (its locks, and any update, ended with it): the next
/// claim reads every row. Here the claim fails before it locks anything (its statement cannot
/// be planned: the runs' `input` is renamed away), and a row a lock left marked before it is
/// taken by the claim after it, not passed over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_claim_after_a_failed_claim_reads_every_row() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let runs = second_marked(store, &mut other).await;
    let rename = "ALTER TABLE jobgraph_runs RENAME COLUMN input TO renamed";
    sqlx::query(rename).execute(&mut other).await.unwrap();
    let failed = store.claim(WORKER, &["Pages"], 1, LEASE).await;
    assert!(failed.is_err(), "{failed:?}");
    let back = "ALTER TABLE jobgraph_runs RENAME COLUMN renamed TO input";
    sqlx::query(back).execute(&mut other).await.unwrap();
    let next = store.claim(WORKER, &["Pages"], 1, LEASE).await.unwrap();
    assert_eq!(claimed_runs(&next), [&runs[1]]);
}

/// A claim that locked more rows than it took (a job's best steps and its best elements, of
/// which it takes the best) leaves the others marked: the next claim reads them, and takes
/// them in the queue's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_a_claim_locked_and_left_are_read_by_the_next_claim() {
    let Some((_db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    // Two elements ready, then four runs whose first steps are ready after them.
    listed(store, "fan", 900, vec![1, 2]).await;
    let pages = (0..4).map(|key| Pages { key, pages: vec![] });
    let runs = Client::new(store)
        .submit_batch("after", pages)
        .await
        .unwrap();
    // This claim locks two `list` rows and two elements, and takes the elements.
    let elements = store.claim(WORKER, &["Pages"], 2, LEASE).await.unwrap();
    assert_eq!(
        units(&elements),
        BTreeSet::from([("fetch".to_owned(), Some(0)), ("fetch".to_owned(), Some(1))])
    );
    // The next takes the two it left, the best, not the two after them.
    let next = store.claim(WORKER, &["Pages"], 2, LEASE).await.unwrap();
    assert_eq!(claimed_runs(&next), [&runs[0], &runs[1]]);
}

/// The only step of a run is completed by its row alone: the run's row is neither locked nor
/// written. An abort of the run that waits for the step's row while the completion commits
/// finds the run ended, cancels nothing and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_abort_that_waits_for_a_completing_only_step_finds_its_run_ended() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    let run = client.submit(&Busy { key: 0 }).await.unwrap().id;
    let claimed = store.claim(WORKER, &["Busy"], 1, LEASE).await.unwrap();
    assert!(claimed[0].id.only_step);
    // Another transaction holds the step's row; the completion, then the abort, wait for it.
    let mut other = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut tx = other.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobgraph_steps WHERE run_id = $1 FOR UPDATE")
        .bind(&run)
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut watch = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let completing = tokio::spawn({
        let (store, id) = (store.clone(), claimed[0].id.clone());
        async move {
            let done = [Completion {
                claim: &id,
                output: "5",
                started_at: 0,
            }];
            store.complete_many(WORKER, &done).await
        }
    });
    waiting_for_locks(&mut watch, 1).await;
    let aborting = tokio::spawn({
        let (client, run) = (client.clone(), run.clone());
        async move { client.abort(&run).await }
    });
    waiting_for_locks(&mut watch, 2).await;
    tx.rollback().await.unwrap();
    assert_eq!(within(10, completing).await.unwrap().unwrap(), [true]);
    assert!(!within(10, aborting).await.unwrap().unwrap());
    let status = client.status(&run).await.unwrap();
    assert_eq!(status.state, RunState::Succeeded);
    assert_eq!(status.step("work").unwrap().output.as_deref(), Some("5"));
    let stored: String = sqlx::query_scalar("SELECT state FROM jobgraph_runs WHERE id = $1")
        .bind(&run)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(stored, "pending", "the run's row was written");
}

/// Returns once `n` sessions of the database wait for a lock.
async fn waiting_for_locks(watch: &mut sqlx::PgConnection, n: i64) {
    within(10, async {
        while sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut *watch)
        .await
        .unwrap()
            < n
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Stores the rows of `jobgraph_steps` and `jobgraph_queue_elements` again as a process of a
/// build before schema version 14 would insert them: naming every column but `limited`.
const REINSERT_AS_AN_OLDER_BUILD: &str = "DO $$
    DECLARE steps text; elements text;
    BEGIN
        SELECT string_agg(quote_ident(column_name), ', ') INTO steps
            FROM information_schema.columns
            WHERE table_name = 'jobgraph_steps' AND column_name <> 'limited';
        SELECT string_agg(quote_ident(column_name), ', ') INTO elements
            FROM information_schema.columns
            WHERE table_name = 'jobgraph_queue_elements' AND column_name <> 'limited';
        CREATE TEMP TABLE old_steps AS SELECT * FROM jobgraph_steps;
        CREATE TEMP TABLE old_elements AS SELECT * FROM jobgraph_queue_elements;
        DELETE FROM jobgraph_steps;
        EXECUTE format('INSERT INTO jobgraph_steps (%s) SELECT %s FROM old_steps', steps, steps);
        EXECUTE format('INSERT INTO jobgraph_queue_elements (%s) SELECT %s FROM old_elements',
            elements, elements);
    END $$";

/// A fleet is upgraded process by process: the first process of a new build migrates the
/// database, and those of the build before keep inserting rows until they are replaced, naming
/// the columns they knew. Their steps and fan-out elements are marked from the limit rows as
/// this build's are (schema version 16), so the limits hold for them: of five runs of `Limited`
/// and two of `Bounded` (its elements inserted), a claim of everything takes 2 `pooled` and 3
/// `metered`, and 4 `halves` (two per run: the fan-out's bound) and 3 `pooled` (its
/// concurrency). Unmarked (`limited` false, the default before), they were all claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_rows_an_older_build_inserts_are_limited() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    client
        .submit_batch("fans", [Bounded { n: 5 }, Bounded { n: 5 }])
        .await
        .unwrap();
    for root in store.claim(WORKER, &["Bounded"], 10, LEASE).await.unwrap() {
        store
            .complete(WORKER, &root.id, "[0,1,2,3,4]", 0)
            .await
            .unwrap();
    }
    client
        .submit_batch("limited", (0..5).map(|n| Limited { n }))
        .await
        .unwrap();
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(REINSERT_AS_AN_OLDER_BUILD)
        .execute(&mut conn)
        .await
        .unwrap();
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM jobgraph_steps WHERE limited IS NULL)
            + (SELECT count(*) FROM jobgraph_queue_elements WHERE limited IS NULL)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(unmarked, 0);
    assert_eq!(claim_limited(store).await, (2, 3));
    assert_eq!(claim_bounded(store).await, (4, 3));
}

/// A submit that stores steps of a step without limits (an older version of the job) while
/// another submit creates the step's limit row cannot see that row, nor the other its steps,
/// until one commits; yet the steps end limited. The older submit is stopped inside its insert
/// of steps (a row of its run's first step, inserted by another transaction that waives the
/// foreign key, makes it wait on the primary key), after the insert's snapshot was taken; the
/// submit that declares the limits (held, so that no step of its own is ready) must wait for it
/// and mark its steps. Were it to commit first, a claim would take all five `pooled` steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_steps_stored_while_their_limits_are_created_are_limited() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let mut blocker = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO jobgraph_steps (run_id, idx, name, state, job, limited) \
         VALUES ('old/0', 0, 'pooled', 'pending', 'Limited', false)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let mut watch = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let old = tokio::spawn({
        let store = store.clone();
        async move { old_limited_runs(&store, 5).await }
    });
    waiting_for_locks(&mut watch, 1).await;
    let declaring = tokio::spawn({
        let client = Client::new(store);
        async move {
            client
                .submit_batch("declares", [Limited { n: 6 }])
                .held()
                .await
        }
    });
    // It waits for the older submit (or, were it not to, it ends).
    tokio::select! {
        () = waiting_for_locks(&mut watch, 2) => {}
        _ = tokio::time::sleep(Duration::from_secs(3)) => {}
    }
    tx.rollback().await.unwrap();
    within(10, old).await.unwrap();
    within(10, declaring).await.unwrap().unwrap();
    let unmarked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobgraph_steps WHERE job = 'Limited' AND NOT limited",
    )
    .fetch_one(&mut watch)
    .await
    .unwrap();
    assert_eq!(unmarked, 0);
    assert_eq!(claim_limited(store).await, (2, 3));
}

/// The submit that creates a step's limit row marks that step's rows stored before, while a
/// worker's commit may be writing them: the commit holds its runs' rows (locked first, in id
/// order) and writes their steps one by one. The submit locks the runs first too, so it waits
/// for the commit instead of holding a step row the commit needs next. Here a transaction
/// stands for the commit: it locks both runs of an older version of `Limited`, writes the
/// `pooled` step of the first, and once the submit waits, the second's. Were the submit to
/// mark the second run's step (it reads the job's runs newest first) before it waited for the
/// first's, the two would wait for each other, and PostgreSQL would end one with a deadlock
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_limit_created_beside_a_commit_of_its_steps_waits_for_the_commit() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    old_limited_runs(store, 2).await;
    let mut commit = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut tx = commit.begin().await.unwrap();
    let runs: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM jobgraph_runs WHERE job = 'Limited' ORDER BY id FOR UPDATE",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(runs.len(), 2);
    let write = "UPDATE jobgraph_steps SET claims = claims WHERE run_id = $1 AND name = 'pooled'";
    sqlx::query(write)
        .bind(&runs[0])
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut watch = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let declaring = tokio::spawn({
        let client = Client::new(store);
        async move { client.submit(&Limited { n: 3 }).await }
    });
    waiting_for_locks(&mut watch, 1).await;
    sqlx::query(write)
        .bind(&runs[1])
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    within(10, declaring).await.unwrap().unwrap();
    assert_eq!(claim_limited(store).await, (2, 3));
}

/// A claim of a job whose limited fan-out is at its limit reads none of its elements'
/// backlog: 100 runs of `PooledFan` with 30 elements each ready, 3 claimed (its concurrency),
/// then 20 claims find nothing and read a few rows of `jobgraph_queue_elements` (each read the
/// 3,000 ready elements, to find none it could take).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_of_full_limited_fan_outs_read_no_backlog() {
    let Some((db, mut admin)) =
        analyzed_backlog("fans", (0..100).map(|_| PooledFan { n: 30 })).await
    else {
        return;
    };
    let store = PgStore::connect(db.url()).await.unwrap();
    let jobs = ["PooledFan"];
    let roots = store.claim(WORKER, &jobs, 100, LEASE).await.unwrap();
    let list = serde_json::to_string(&(0..30).collect::<Vec<u32>>()).unwrap();
    let done: Vec<Completion<'_>> = roots
        .iter()
        .map(|c| Completion {
            claim: &c.id,
            output: &list,
            started_at: 0,
        })
        .collect();
    let stored = store.complete_many(WORKER, &done).await.unwrap();
    assert_eq!(stored, vec![true; 100]);
    sqlx::query("ANALYZE jobgraph_queue_elements")
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        store.claim(WORKER, &jobs, 100, LEASE).await.unwrap().len(),
        3
    );
    let read = read_by_empty_claims(&db, &mut admin, "PooledFan", "jobgraph_queue_elements").await;
    assert!(
        read < 1_000,
        "20 claims read {read} rows of jobgraph_queue_elements"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_claims_from_four_connections_are_disjoint() {
    let Some((_db, stores)) = pg_stores(4).await else {
        return;
    };
    let client = Client::new(&stores[0]);
    client
        .submit_batch("many", (0..60).map(|n| Diamond { n }))
        .await
        .unwrap();
    let start = Arc::new(tokio::sync::Barrier::new(stores.len()));
    let claimers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let (store, start) = (store.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                let name = format!("w{w}");
                let mut got = Vec::new();
                start.wait().await;
                loop {
                    let claims = store.claim(&name, &["Diamond"], 2, LEASE).await.unwrap();
                    if claims.is_empty() {
                        return got;
                    }
                    got.extend(claims.into_iter().map(|c| c.id));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(within(60, claimer).await.unwrap());
    }
    assert_eq!(all.len(), 60);
    let distinct: HashSet<_> = all.iter().map(|c| c.run.clone()).collect();
    assert_eq!(distinct.len(), 60);
    assert!(all.iter().all(|c| c.step == "a" && c.attempt == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_limits_hold_under_concurrent_claims() {
    for _round in 0..3 {
        let Some((_db, stores)) = pg_stores(6).await else {
            return;
        };
        Client::new(&stores[0])
            .submit_batch("limited", (0..10).map(|n| Limited { n }))
            .await
            .unwrap();
        // Six workers ask for everything at once, three times: 2 `pooled` (its concurrency) and
        // 3 `metered` (its bucket's burst) in all.
        let wave = |stores: &[PgStore]| {
            let start = Arc::new(tokio::sync::Barrier::new(stores.len()));
            let claimers: Vec<_> = stores
                .iter()
                .enumerate()
                .map(|(w, store)| {
                    let (store, start) = (store.clone(), Arc::clone(&start));
                    tokio::spawn(async move {
                        let name = format!("w{w}");
                        start.wait().await;
                        let claims = store.claim(&name, &["Limited"], 100, LEASE).await;
                        let claims = claims.unwrap().into_iter();
                        claims.map(|c| (name.clone(), c)).collect::<Vec<_>>()
                    })
                })
                .collect();
            async move {
                let mut all = Vec::new();
                for claimer in claimers {
                    all.extend(within(60, claimer).await.unwrap());
                }
                all
            }
        };
        let steps = |claims: &[(String, jobgraph::store::queue::Claim)], step: &str| {
            claims.iter().filter(|(_, c)| c.id.step == step).count()
        };
        let mut claimed = Vec::new();
        for _ in 0..3 {
            claimed.extend(wave(&stores).await);
        }
        assert_eq!(
            (steps(&claimed, "pooled"), steps(&claimed, "metered")),
            (2, 3)
        );
        // The two `pooled` complete, at once: two more, no more, whoever asks.
        let settles: Vec<_> = claimed
            .iter()
            .filter(|(_, c)| c.id.step == "pooled")
            .map(|(holder, c)| {
                let (store, holder, id) = (stores[1].clone(), holder.clone(), c.id.clone());
                tokio::spawn(async move { store.complete(&holder, &id, "0", 0).await.unwrap() })
            })
            .collect();
        for settle in settles {
            within(60, settle).await.unwrap();
        }
        let mut again = Vec::new();
        for _ in 0..3 {
            again.extend(wave(&stores).await);
        }
        assert_eq!((steps(&again, "pooled"), steps(&again, "metered")), (2, 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_notification_wakes_an_idle_wait() {
    let Some((_db, stores)) = pg_stores(2).await else {
        return;
    };
    let (worker, client) = (&stores[0], Client::new(&stores[1]));
    let jobs = ["Diamond"];
    // The first wait starts the store's listener and returns: nothing was heard yet.
    assert!(
        worker
            .claim(WORKER, &jobs, 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    within(10, worker.wait_ready(&jobs, Duration::from_secs(60))).await;
    // From now on a wait after an empty claim waits for news.
    news_wakes_an_idle_wait(worker, &client, 3000).await;
}

/// A wait of `worker` for `Diamond` after an empty claim, where news reaches it: no news, or
/// news of another job (a `Flaky` counting in counter `key`), does not wake it; a submit of
/// its job does; and news between an empty claim and the wait after it (a completion whose
/// children are ready) is not lost.
async fn news_wakes_an_idle_wait(worker: &impl Queue, client: &Client, key: u64) {
    let jobs = ["Diamond"];
    assert!(
        worker
            .claim(WORKER, &jobs, 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let waiting = worker.wait_ready(&jobs, Duration::from_secs(60));
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "the wait returned without news"
    );
    // News of another job does not wake it.
    client.submit(&Flaky { fail: 0, key }).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "news of another job woke the wait"
    );
    // A submit of its job wakes it, long before its 60 s.
    let run = client.submit(&Diamond { n: 7 }).await.unwrap();
    within(10, &mut waiting).await;
    let claims = worker.claim(WORKER, &jobs, 1, LEASE).await.unwrap();
    assert_eq!(claims[0].id.run, run.id);

    // A notification sent between an empty claim and the wait after it is not lost.
    assert!(
        worker
            .claim(WORKER, &jobs, 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    worker
        .complete(WORKER, &claims[0].id, "7", 0)
        .await
        .unwrap();
    within(10, worker.wait_ready(&jobs, Duration::from_secs(60))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_an_idle_worker_long_before_its_poll() {
    let Some((_db, stores)) = pg_stores(2).await else {
        return;
    };
    let client = Client::new(&stores[1]);
    // Polls once a minute: only a notification gets its runs done within the test's timeouts.
    let worker = Worker::new(&stores[0])
        .job::<Diamond>()
        .poll_interval(Duration::from_secs(60));
    let (shutdown, working) = started(worker);
    for n in 0..5 {
        let run = client.submit(&Diamond { n }).await.unwrap();
        let out = client
            .wait::<Diamond>(&run.id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.d, n + 1 + n * 10);
    }
    shutdown.cancel();
    let stats = within(60, working).await.unwrap().unwrap();
    assert_eq!(stats.completed, 20);
}

/// A fresh SQLite store in a temporary directory (kept as long as the directory).
async fn sqlite_store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    (dir, store)
}

/// A database of SQLite's schema version 6 (no `limited` on steps and elements) is migrated
/// with the rows of limited steps and fan-outs marked: their limits hold at once. Three runs of
/// `Limited` and two of `Bounded` (its fan-outs' elements inserted), version 7 undone, reopened:
/// a claim of everything takes 2 `pooled` and 3 `metered`, and of the fan-outs 2 `halves` per
/// run and 3 `pooled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_version_6_database_migrates_with_its_limited_rows_marked() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let path = path.to_str().unwrap();
    let store = SqliteStore::open(path).await.unwrap();
    let client = Client::new(&store);
    client
        .submit_batch("limited", (0..5).map(|n| Limited { n }))
        .await
        .unwrap();
    for _ in 0..2 {
        client.submit(&Bounded { n: 5 }).await.unwrap();
    }
    let roots = store.claim(WORKER, &["Bounded"], 10, LEASE).await.unwrap();
    assert_eq!(roots.len(), 2);
    for root in &roots {
        store
            .complete(WORKER, &root.id, "[0,1,2,3,4]", 0)
            .await
            .unwrap();
    }
    store.close().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::raw_sql(
        "DROP INDEX jobgraph_steps_ready;
        DROP INDEX jobgraph_steps_ready_limited;
        DROP INDEX jobgraph_queue_elements_ready;
        DROP INDEX jobgraph_queue_elements_ready_limited;
        ALTER TABLE jobgraph_steps DROP COLUMN limited;
        ALTER TABLE jobgraph_queue_elements DROP COLUMN limited;
        CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at)
            WHERE state = 'pending' AND ready_at IS NOT NULL;
        CREATE INDEX jobgraph_queue_elements_ready
            ON jobgraph_queue_elements (job, priority DESC, ready_at, idx)
            WHERE state = 'pending' AND ready_at IS NOT NULL;
        UPDATE jobgraph_meta SET value = '6' WHERE key = 'schema_version'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    let store = SqliteStore::open(path).await.unwrap();
    assert_eq!(claim_limited(&store).await, (2, 3));
    assert_eq!(claim_bounded(&store).await, (4, 3));
}

/// SQLite has no `NOTIFY`: the commits of one process (through any clone of its store) wake
/// that process's idle waits, each for news of its jobs after its latest claim began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_commit_wakes_an_idle_wait_of_its_process() {
    let (_dir, store) = sqlite_store().await;
    let (worker, client) = (store.clone(), Client::new(&store));
    let jobs = ["Diamond"];
    // A job not claimed yet: the wait returns, for the worker to claim it first.
    within(10, worker.wait_ready(&jobs, Duration::from_secs(60))).await;
    news_wakes_an_idle_wait(&worker, &client, 3100).await;

    // A step tried again at once is ready again: news.
    let flaky = ["Flaky"];
    let taken = worker.claim(WORKER, &flaky, 1, LEASE).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert!(
        worker
            .claim(WORKER, &flaky, 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let retried = worker
        .fail(WORKER, &taken[0].id, "503", 0, Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(matches!(retried, Failed::Retrying { .. }));
    within(10, worker.wait_ready(&flaky, Duration::from_secs(60))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_submit_wakes_an_idle_worker_of_its_process_long_before_its_poll() {
    let (_dir, store) = sqlite_store().await;
    let client = Client::new(&store);
    // Polls once a minute: only news of the submits gets its runs done within the timeouts.
    let worker = Worker::new(&store)
        .job::<Diamond>()
        .poll_interval(Duration::from_secs(60));
    let (shutdown, working) = started(worker);
    for n in 0..5 {
        // Time for the worker to find nothing and wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let run = client.submit(&Diamond { n }).await.unwrap();
        let out = client
            .wait::<Diamond>(&run.id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(out.d, n + 1 + n * 10);
    }
    shutdown.cancel();
    let stats = within(60, working).await.unwrap().unwrap();
    assert_eq!(stats.completed, 20);
}

/// Workers on four connections run a batch while half of it is aborted: no store error (a
/// deadlock would be one), every run ends once, the aborted ones cancelled or already ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_workers_on_four_connections_run_a_batch_being_aborted() {
    let Some((_db, stores)) = pg_stores(5).await else {
        return;
    };
    let client = Client::new(&stores[4]);
    let ids = client
        .submit_batch("busy", (0..40).map(|n| Diamond { n }))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let workers: Vec<_> = stores[..4]
        .iter()
        .enumerate()
        .map(|(w, store)| {
            let worker = Worker::new(store)
                .job::<Diamond>()
                .name(format!("w{w}"))
                .concurrency(4)
                .poll_interval(Duration::from_millis(20));
            let shutdown = shutdown.clone();
            tokio::spawn(async move { worker.run(shutdown).await })
        })
        .collect();
    let mut aborted = 0;
    for id in ids.iter().step_by(2) {
        if client.abort(id).await.unwrap() {
            aborted += 1;
        }
    }
    within(60, batch_finished(&client, "busy")).await;
    shutdown.cancel();
    let mut completed = 0;
    for worker in workers {
        let stats = within(60, worker).await.unwrap().unwrap();
        // A deadlock would be a store error, which the worker retries and counts.
        assert_eq!(stats.store_errors, 0, "{stats:?}");
        completed += stats.completed;
    }
    let counts = client.batch_counts("busy").await.unwrap();
    assert_eq!(counts.cancelled, aborted);
    assert_eq!(counts.succeeded, 40 - aborted);
    assert_eq!(counts.failed, 0);
    // Each step of each run completed once; an aborted run's completed steps are counted too.
    let stored: usize = counts.steps.iter().map(|s| s.completed as usize).sum();
    assert_eq!(completed, stored);
    for (i, id) in ids.iter().enumerate() {
        let run = client.status(id).await.unwrap();
        if i % 2 == 1 {
            assert_eq!(run.state, RunState::Succeeded, "{id}");
        }
    }
}

/// A worker's claims keep a connection, and its commits two (one per commit it has in
/// flight): the pool lends its idle connections in turn, and without them one worker's calls
/// ran on every connection of the pool (each server process cold). Here a worker burns down
/// 2,000 jobs in small claims, with a claim, two commits and heartbeats in flight at once, on a
/// store whose pool may open 8 connections, while the test watches `pg_stat_activity`: every
/// claim statement runs on one server process, and every completion on one of two others
/// (without the kept connections, claims were seen on 6 or 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_worker_keeps_a_connection_for_its_claims_and_two_for_its_commits() {
    use sqlx::Connection as _;
    let Some(db) = jobgraph_tests::pg::database().await else {
        return;
    };
    let other = PgStore::connect(db.url()).await.unwrap();
    let client = Client::new(&other);
    client
        .submit_batch("kept", (0..2_000).map(|n| Single { n }))
        .await
        .unwrap();
    // The worker's sessions, named apart from the client's.
    let store = PgStore::connect(&format!("{}&application_name=kept", db.url()))
        .await
        .unwrap();
    let worker = Worker::new(&store)
        .job::<Single>()
        .concurrency(4)
        .prefetch(4)
        .lease(Duration::from_millis(600))
        .poll_interval(Duration::from_millis(20));
    let (shutdown, running) = started(worker);
    // The server processes seen running (or last to run) a claim, and a completion.
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let (mut claiming, mut completing) = (BTreeSet::new(), BTreeSet::new());
    within(120, async {
        while !client.batch_counts("kept").await.unwrap().is_finished() {
            let seen: Vec<(i32, bool)> = sqlx::query_as(
                "SELECT pid, query LIKE 'WITH flag AS%' FROM pg_stat_activity
                WHERE datname = current_database() AND application_name = 'kept'
                  AND (query LIKE 'WITH flag AS%'
                    OR query LIKE 'UPDATE jobgraph_steps s%SET state = ''completed''%')",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            for (pid, claim) in seen {
                if claim {
                    claiming.insert(pid);
                } else {
                    completing.insert(pid);
                }
            }
        }
    })
    .await;
    shutdown.cancel();
    let stats = within(60, running).await.unwrap().unwrap();
    assert_eq!(stats.completed, 2_000, "{stats:?}");
    assert!(stats.claimed >= 250, "claims of at most 8 steps: {stats:?}");
    // A claim is one statement, the last its session runs: always seen. A commit's session
    // ends each with `COMMIT`, so a completion is seen only while it runs.
    assert_eq!(claiming.len(), 1, "claims ran on {claiming:?}");
    assert!(completing.len() <= 2, "completions ran on {completing:?}");
    assert!(claiming.is_disjoint(&completing));
}

/// A job of one step.
#[derive(Serialize, Deserialize)]
struct Single {
    n: u32,
}

#[job(durable)]
impl Single {
    #[step]
    async fn only(&self) -> u32 {
        self.n
    }
}

/// A claim's plan after a large submit (which analyzes the tables: their statistics are
/// current), for a claim of a tenth of the backlog (what a plan made once per connection
/// assumes): it walks the queue's index in order and stops after the steps it takes, without
/// sorting the backlog through another index of ready steps (schema version 7); it updates the
/// steps it took by their `ctid` (a TID scan) and reads each one's run by its key, instead of
/// hashing the whole steps or runs table against them.
#[tokio::test]
async fn postgres_a_claim_after_a_large_submit_reads_only_the_rows_it_takes() {
    let Some(db) = jobgraph_tests::pg::database().await else {
        return;
    };
    let store = PgStore::connect(db.url()).await.unwrap();
    Client::new(&store)
        .submit_batch("backlog", (0..60_000).map(|n| Single { n }))
        .await
        .unwrap();
    let plan = store.explain_claim(&["Single"], 6_000).await;
    // How the claim picks steps: the plan between its `picked_steps` and `picked_elements`.
    let (picking, taking) = plan
        .split_once("CTE picked_steps")
        .and_then(|(_, rest)| rest.split_once("CTE picked_elements"))
        .unwrap_or_else(|| panic!("no `picked_steps` in the plan:\n{plan}"));
    assert!(
        picking.contains("Index Scan using jobgraph_steps_ready on jobgraph_steps"),
        "{plan}"
    );
    assert!(
        !picking.contains("Sort"),
        "a claim sorts the steps it read:\n{plan}"
    );
    assert!(taking.contains("Tid Scan on jobgraph_steps"), "{plan}");
    assert!(
        taking.contains("Index Scan using jobgraph_runs_pkey on jobgraph_runs"),
        "{plan}"
    );
    for table in ["jobgraph_steps", "jobgraph_runs"] {
        assert!(
            !taking.contains(&format!("Seq Scan on {table}")),
            "a claim reads {table} whole:\n{plan}"
        );
    }
}

/// How many rows sequential scans read from `jobgraph_steps` (`pg_stat_user_tables`), once the
/// stores' connections to the database have ended (a connection may keep its counts until it
/// ends): it ends them.
async fn steps_read_by_table_scans(conn: &mut sqlx::PgConnection) -> i64 {
    read_by_table_scans(conn, "jobgraph_steps").await
}

/// [`steps_read_by_table_scans`] of `table`.
async fn read_by_table_scans(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
    const STORES: &str = "FROM pg_stat_activity
        WHERE datname = current_database() AND application_name = 'jobgraph'";
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) {STORES}"))
        .execute(&mut *conn)
        .await
        .unwrap();
    within(30, async {
        while sqlx::query_scalar::<_, i64>(&format!("SELECT count(*) {STORES}"))
            .fetch_one(&mut *conn)
            .await
            .unwrap()
            > 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    sqlx::query_scalar("SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = $1")
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

/// Runs `worker` one claim at a time until it completed `steps` steps or more (in queue order:
/// the oldest ready first).
async fn complete_at_least(worker: &Worker, steps: usize) {
    let mut done = 0;
    while done < steps {
        let stats = worker.run_once().await.unwrap();
        assert!(stats.claimed > 0, "nothing to claim after {done} steps");
        done += stats.completed;
    }
}

/// How many rows the planner believes each queue table holds (`reltuples`: -1 before the
/// table was first analyzed), in name order.
async fn believed_rows(conn: &mut sqlx::PgConnection) -> Vec<(String, f32)> {
    sqlx::query_as(
        "SELECT relname::text, reltuples FROM pg_class
        WHERE relname IN ('jobgraph_runs', 'jobgraph_steps', 'jobgraph_queue_elements')
        ORDER BY relname",
    )
    .fetch_all(conn)
    .await
    .unwrap()
}

/// A worker that connects while the database is empty keeps what it planned then: the store
/// plans each statement once per connection (`force_generic_plan`), and PostgreSQL plans again
/// only when a table's statistics change, which autovacuum does a minute or more after the
/// table grew (off here, so that the window stays open). Planned for empty tables, a commit's
/// statement making children ready read every pending step once per child (33 s for one
/// commit among 240,000 steps). A store that doubles a queue table analyzes it: the
/// submit of 4,000 runs analyzes the runs and steps, the expansion of their fan-outs the
/// elements, and the first worker's connection then reads steps through indexes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_store_that_grows_a_queue_table_analyzes_it_so_old_plans_are_made_again() {
    use jobgraph_tests::queue_jobs::Fan;
    use sqlx::Connection as _;
    let Some(db) = jobgraph_tests::pg::database().await else {
        return;
    };
    // One connection: the statements it planned while the tables were empty are the ones it
    // runs after they grew.
    let store = PgStore::connect_with(
        db.url(),
        jobgraph::store::PgOptions::new().with_max_connections(1),
    )
    .await
    .unwrap();
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE jobgraph_runs SET (autovacuum_enabled = false);
        ALTER TABLE jobgraph_steps SET (autovacuum_enabled = false);
        ALTER TABLE jobgraph_queue_elements SET (autovacuum_enabled = false);",
    )
    .execute(&mut admin)
    .await
    .unwrap();
    let worker = |store: &PgStore| Worker::new(store).job::<Fan>().concurrency(8).prefetch(400);
    // Every statement of claiming and committing planned on nearly empty tables: 2 runs, too
    // few to analyze for.
    Client::new(&store)
        .submit_batch("few", (0..2).map(|n| Fan { n }))
        .await
        .unwrap();
    let planner = worker(&store);
    while planner.run_once().await.unwrap().claimed > 0 {}
    let never = believed_rows(&mut admin).await;
    assert!(never.iter().all(|(_, rows)| *rows < 0.0), "{never:?}");
    // Another process submits 4,000 runs (24,000 steps) and runs their first steps: 10,000
    // elements of their fan-outs are ready.
    let other = PgStore::connect(db.url()).await.unwrap();
    Client::new(&other)
        .submit_batch("many", (0..4_000).map(|n| Fan { n }))
        .await
        .unwrap();
    let submitted = believed_rows(&mut admin).await;
    assert_eq!(
        submitted[1..],
        [
            ("jobgraph_runs".to_owned(), 4_002.0),
            ("jobgraph_steps".to_owned(), 24_012.0)
        ],
        "{submitted:?}"
    );
    complete_at_least(&worker(&other), 4_000).await;
    // Analyzed each time it doubled: last at 8,000 or more of its 10,000.
    let expanded = believed_rows(&mut admin).await;
    assert!(expanded[0].1 >= 5_000.0, "{expanded:?}");
    // The first worker, on its connection: steps and elements claimed and completed, children
    // made ready, fan-outs and runs ended.
    complete_at_least(&planner, 2_000).await;
    // One read of the steps whole (24,012 rows) is more than all of them together read while
    // the table was small.
    let read = steps_read_by_table_scans(&mut admin).await;
    assert!(
        read < 4_000,
        "sequential scans read {read} rows of jobgraph_steps: a statement read the whole table \
        (`JOBGRAPH_PG_SETTINGS` with `auto_explain` shows which)"
    );
}

/// A database of schema version 1 (the store before the queue) with a run: opening it migrates
/// it to the queue's schema, and the run is intact and not queued.
#[tokio::test]
async fn postgres_a_version_1_database_migrates_to_the_queue() {
    use sqlx::Connection as _;
    let Some(db) = jobgraph_tests::pg::database().await else {
        return;
    };
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::raw_sql(include_str!(
        "../../jobgraph/src/store/postgres_migrations/0001_runs_steps_elements.sql"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::raw_sql(
        r#"CREATE TABLE jobgraph_meta (key text NOT NULL PRIMARY KEY, value text NOT NULL);
        INSERT INTO jobgraph_meta VALUES ('schema_version', '1');
        INSERT INTO jobgraph_runs (id, job, input, graph, state, created_at, updated_at)
            VALUES ('old', 'Diamond', '{"n":1}',
                '{"steps":[{"name":"a","parents":[],"after":[]}]}', 'pending', now(), now());
        INSERT INTO jobgraph_steps (run_id, idx, name, state) VALUES ('old', 0, 'a', 'pending');"#,
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let store = PgStore::connect(db.url()).await.unwrap();
    let version: String =
        sqlx::query_scalar("SELECT value FROM jobgraph_meta WHERE key = 'schema_version'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(version, "19");
    let old = store.load_run("old").await.unwrap().unwrap();
    assert_eq!((old.state, old.steps.len()), (RunState::Pending, 1));
    // Not submitted through the queue: no worker claims it.
    assert!(
        store
            .claim(WORKER, &["Diamond"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let new = Client::new(&store).submit(&Diamond { n: 2 }).await.unwrap();
    let claims = store.claim(WORKER, &["Diamond"], 10, LEASE).await.unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].id.run, new.id);
}

/// A run the store says succeeded without one of its steps' outputs (rows written by hand, or by
/// a bug) is a clear error from `Client::result`, naming the step, not a panic building the
/// outputs.
#[tokio::test]
async fn a_succeeded_run_missing_an_output_is_an_error_not_a_panic() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let path = path.to_str().unwrap();
    let store = jobgraph::store::SqliteStore::open(path).await.unwrap();
    let client = Client::new(&store);
    let run = client.submit(&Diamond { n: 1 }).await.unwrap();
    let worker = Worker::new(&store).job::<Diamond>();
    while worker.run_once().await.unwrap().claimed > 0 {}
    client
        .wait::<Diamond>(&run.id, Duration::from_secs(5))
        .await
        .unwrap();
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query("UPDATE jobgraph_steps SET state = 'pending', output = NULL WHERE run_id = ? AND name = 'd'")
        .bind(&run.id)
        .execute(&mut conn)
        .await
        .unwrap();
    let err = client.result::<Diamond>(&run.id).await.unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Store(StoreError::NoSuchStep { step, .. }) if step == "d"
        ),
        "{err:?}"
    );
}

/// A step limited to one claim at a time with a 6 s TTR, that takes 3 s.
#[derive(Serialize, Deserialize)]
struct Lingering {
    n: u32,
}

#[job(durable)]
impl Lingering {
    #[step(concurrency = 1, timeout = Duration::from_secs(6))]
    async fn work(&self) -> u32 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        self.n
    }
}

/// A claim that comes back late is renewed at once: its lease counts from its transaction's
/// start, so a claim that waited 4 s for a lock (here the limit row another transaction holds,
/// as a stopped worker's claim would) holds its step for 2 s of its 6 s TTR when it arrives.
/// Its worker must beat a third of the TTR after it *sent* the claim (now), not after it
/// arrived: that beat came at the lease's very end, and another worker could have claimed the
/// step while it ran. The test watches the lease and asserts each renewal came with at least
/// 1 s of it left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claim_that_comes_back_late_is_renewed_at_once() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    let run = client.submit(&Lingering { n: 7 }).await.unwrap().id;
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let mut tx = admin.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobgraph_limits WHERE job = 'Lingering' FOR UPDATE")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let worker = Worker::new(store)
        .job::<Lingering>()
        .lease(Duration::from_secs(30))
        .poll_interval(Duration::from_millis(50));
    let (shutdown, running) = started(worker);
    // The worker's claim waits for the limit row; let it wait 4 s.
    let mut watch = sqlx::PgConnection::connect(db.url()).await.unwrap();
    waiting_for_locks(&mut watch, 1).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    tx.rollback().await.unwrap();
    // Each lease end seen, and how much of the one before was left when it changed.
    let mut last: Option<i64> = None;
    let mut renewals = Vec::new();
    within(30, async {
        loop {
            let ends = lease_ends(store).await;
            let clock = store.clock().await;
            let Some(&until) = ends.get(&(run.clone(), "work".to_owned(), None)) else {
                if last.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            if let Some(before) = last
                && until != before
            {
                renewals.push(before - clock);
            }
            last = Some(until);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let out = client
        .wait::<Lingering>(&run, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(out.work, 7);
    shutdown.cancel();
    let stats = within(30, running).await.unwrap().unwrap();
    assert_eq!((stats.claimed, stats.fenced), (1, 0), "{stats:?}");
    assert!(!renewals.is_empty(), "the claim was never renewed");
    assert!(
        renewals.iter().all(|&left| left >= 1_000),
        "ms of the lease left at each renewal: {renewals:?}"
    );
}

/// A claim's lease is the one stored, to the millisecond (the claim reads the stored
/// timestamps in PostgreSQL's binary format, not through `jobgraph_ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_claims_lease_is_the_stored_one() {
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    for n in 0..3 {
        client.submit(&Single { n }).await.unwrap();
    }
    let claims = store.claim(WORKER, &["Single"], 10, LEASE).await.unwrap();
    assert_eq!(claims.len(), 3);
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    for claim in &claims {
        let stored: i64 = sqlx::query_scalar(
            "SELECT jobgraph_ms(lease_until) FROM jobgraph_steps WHERE run_id = $1",
        )
        .bind(&claim.id.run)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(claim.lease_until, stored);
    }
}

/// The store's connections compile no statement (`jit = off`): planned once for parameters it
/// does not know, a claim is costed for a tenth of the backlog, and PostgreSQL compiled it at
/// every run once that passed `jit_above_cost` (40-50 ms for a claim that reads 15 pages). The
/// database here asks to compile everything.
#[tokio::test]
async fn postgres_the_stores_statements_are_never_compiled() {
    use sqlx::Connection as _;
    let Some(db) = jobgraph_tests::pg::database().await else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(&format!(
        "ALTER DATABASE {name} SET jit = on; ALTER DATABASE {name} SET jit_above_cost = 0"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let store = PgStore::connect(db.url()).await.unwrap();
    let plan = store.explain_claim(&["Diamond"], 10).await;
    assert!(!plan.contains("JIT"), "{plan}");
}

/// A claim of a limited step reads its live claims and the rows it takes, not the step's
/// backlog: 20 claims and completions of a step limited to 2 at once, with 3,000 of it ready,
/// read a few hundred rows of `jobgraph_steps` (each claim counted every ready step, and its
/// candidates were all read and sorted: 150,000 rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_limited_steps_claims_read_no_backlog() {
    let Some((db, mut admin)) =
        analyzed_backlog("limited", (0..3_000).map(|n| Limited { n })).await
    else {
        return;
    };
    let before = steps_read(&mut admin).await;
    let store = PgStore::connect(db.url()).await.unwrap();
    for _ in 0..20 {
        let claims = store.claim(WORKER, &["Limited"], 2, LEASE).await.unwrap();
        assert!(!claims.is_empty());
        for claim in &claims {
            store.complete(WORKER, &claim.id, "0", 0).await.unwrap();
        }
    }
    let read = steps_read(&mut admin).await - before;
    assert!(read < 2_000, "20 claims read {read} rows of jobgraph_steps");
}

/// A claim of a job whose limited steps are all at their limits reads none of their backlog:
/// with 3,000 runs of `Limited` ready (its two steps limited, one to 2 at once and one to a
/// bucket of 3 refilled hourly), once both are full, 20 claims find nothing and read a few rows
/// of `jobgraph_steps` (each read the 6,000 ready steps, to find no step it could take).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_of_full_limited_steps_read_no_backlog() {
    let Some((db, mut admin)) =
        analyzed_backlog("limited", (0..3_000).map(|n| Limited { n })).await
    else {
        return;
    };
    let store = PgStore::connect(db.url()).await.unwrap();
    let first = store.claim(WORKER, &["Limited"], 100, LEASE).await.unwrap();
    assert_eq!(first.len(), 5);
    let read = read_by_empty_claims(&db, &mut admin, "Limited", "jobgraph_steps").await;
    assert!(read < 1_000, "20 claims read {read} rows of jobgraph_steps");
}

/// The rows of `table` that 20 claims of `job` read (by a store connected after the count
/// began, so that its statistics are its own), each of which must find nothing to take.
async fn read_by_empty_claims(
    db: &jobgraph_tests::pg::TestDb,
    admin: &mut sqlx::PgConnection,
    job: &str,
    table: &str,
) -> i64 {
    let before = rows_read(admin, table).await;
    let store = PgStore::connect(db.url()).await.unwrap();
    for _ in 0..20 {
        let claims = store.claim(WORKER, &[job], 100, LEASE).await.unwrap();
        assert!(claims.is_empty(), "{claims:?}");
    }
    rows_read(admin, table).await - before
}

/// A claim of single-step jobs reads no run's row: each step carries its run's input (schema
/// version 19), so 20 claims of 10 read none of `jobgraph_runs` (each read its steps' runs by
/// key: 200 rows). A step without the copy is claimed with its run's input all the same: one
/// stored by a process of an older build (the column cleared here), and one queued again after
/// its completion cleared it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_of_single_step_jobs_read_no_run_rows() {
    let Some((db, mut admin)) = analyzed_backlog("single", (0..300).map(|n| Single { n })).await
    else {
        return;
    };
    let before = rows_read(&mut admin, "jobgraph_runs").await;
    let store = PgStore::connect(db.url()).await.unwrap();
    let mut claimed = Vec::new();
    for _ in 0..20 {
        claimed.extend(store.claim(WORKER, &["Single"], 10, LEASE).await.unwrap());
    }
    drop(store);
    let read = rows_read(&mut admin, "jobgraph_runs").await - before;
    assert!(read < 20, "20 claims read {read} rows of jobgraph_runs");
    assert_eq!(claimed.len(), 200);
    let inputs: std::collections::BTreeSet<String> =
        claimed.iter().map(|c| c.input.clone()).collect();
    let expected = (0..200).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    assert_eq!(inputs, expected);

    // The rest as an older build stores them.
    sqlx::query("UPDATE jobgraph_steps SET run_input = NULL WHERE worker IS NULL")
        .execute(&mut admin)
        .await
        .unwrap();
    let store = PgStore::connect(db.url()).await.unwrap();
    let rest = store.claim(WORKER, &["Single"], 100, LEASE).await.unwrap();
    let inputs: std::collections::BTreeSet<String> = rest.iter().map(|c| c.input.clone()).collect();
    let expected = (200..300).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
    assert_eq!(inputs, expected);

    // Completed (the copy cleared) and queued again.
    let first = &claimed[0];
    store.complete(WORKER, &first.id, "0", 0).await.unwrap();
    let kept: Option<String> =
        sqlx::query_scalar("SELECT run_input FROM jobgraph_steps WHERE run_id = $1")
            .bind(&first.id.run)
            .fetch_one(&mut admin)
            .await
            .unwrap();
    assert_eq!(kept, None, "a completion keeps its run's input in the step");
    store.reset_step(&first.id.run, "only").await.unwrap();
    let again = store.claim(WORKER, &["Single"], 10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (&again[0].id.run, &again[0].input),
        (&first.id.run, &first.input)
    );
}

/// The first submit of a job with limits marks the steps of its limited steps stored before
/// (none, for a new job) by reading the job's runs, not every step: with 12,000 steps of
/// another job stored, it reads a few rows of `jobgraph_steps` (planned for any job, the
/// statement read them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_first_submit_of_a_limited_job_reads_no_other_jobs_steps() {
    let Some((db, mut admin)) = analyzed_backlog("others", (0..3_000).map(|n| Diamond { n })).await
    else {
        return;
    };
    let before = steps_read(&mut admin).await;
    let store = PgStore::connect(db.url()).await.unwrap();
    Client::new(&store).submit(&Limited { n: 1 }).await.unwrap();
    let read = steps_read(&mut admin).await - before;
    assert!(read < 100, "the submit read {read} rows of jobgraph_steps");
}

/// A fresh database with `inputs` submitted as batch `batch` and the queue's tables analyzed
/// (their statistics current, as autovacuum leaves them), and a connection to it that counts
/// what the store's statements read ([`steps_read`]).
async fn analyzed_backlog<J: jobgraph::durable::DurableJob + Send + Sync>(
    batch: &str,
    inputs: impl IntoIterator<Item = J>,
) -> Option<(jobgraph_tests::pg::TestDb, sqlx::PgConnection)> {
    use sqlx::Connection as _;
    let db = jobgraph_tests::pg::database().await?;
    let mut admin = sqlx::PgConnection::connect(db.url()).await.unwrap();
    let submitter = PgStore::connect(db.url()).await.unwrap();
    Client::new(&submitter)
        .submit_batch(batch, inputs)
        .await
        .unwrap();
    sqlx::query("ANALYZE jobgraph_runs, jobgraph_steps")
        .execute(&mut admin)
        .await
        .unwrap();
    Some((db, admin))
}

/// The rows of `jobgraph_steps` read so far, by table and index scans: the store's sessions
/// are ended first, which sends their statistics.
async fn steps_read(conn: &mut sqlx::PgConnection) -> i64 {
    rows_read(conn, "jobgraph_steps").await
}

/// [`steps_read`] of `table`.
async fn rows_read(conn: &mut sqlx::PgConnection, table: &str) -> i64 {
    let by_scans = read_by_table_scans(conn, table).await;
    let by_index: i64 = sqlx::query_scalar(
        "SELECT coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    by_scans + by_index
}

/// A database of schema version 8 (no list of limited steps' claims) is migrated with its live
/// claims of limited steps listed: they count against the limits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_version_8_database_migrates_with_its_limited_claims_counted() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let client = Client::new(&stores[0]);
    client
        .submit_batch("limited", (0..5).map(|n| Limited { n }))
        .await
        .unwrap();
    let first = stores[0]
        .claim("w1", &["Limited"], 10, LEASE)
        .await
        .unwrap();
    assert_eq!(first.iter().filter(|c| c.id.step == "pooled").count(), 2);
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    // Versions 19, 18, 17, 16, 15, 14, 11 and 10 undone, then version 9 (12 and 13 apply again
    // as they are).
    sqlx::raw_sql(
        "ALTER TABLE jobgraph_steps DROP COLUMN run_input;
        DROP TRIGGER jobgraph_runs_reset ON jobgraph_runs;
        DROP FUNCTION jobgraph_count_reset();
        ALTER TABLE jobgraph_runs DROP COLUMN resets, DROP COLUMN plain;
        DROP INDEX jobgraph_runs_unfinished;
        DROP INDEX jobgraph_steps_failed;
        CREATE INDEX jobgraph_steps_failed ON jobgraph_steps (name) WHERE state = 'failed';
        DROP TRIGGER jobgraph_steps_limited ON jobgraph_steps;
        DROP TRIGGER jobgraph_queue_elements_limited ON jobgraph_queue_elements;
        DROP FUNCTION jobgraph_mark_limited_step();
        DROP FUNCTION jobgraph_mark_limited_element();
        ALTER TABLE jobgraph_queue_elements DROP COLUMN limited;
        CREATE INDEX jobgraph_queue_elements_ready ON jobgraph_queue_elements
            (job, priority DESC, ready_at, run_seq, position, idx)
            WHERE state = 'pending' AND ready_at IS NOT NULL;
        CREATE INDEX jobgraph_queue_elements_ready_by_name ON jobgraph_queue_elements
            (job, step, priority DESC, ready_at, run_seq, position, idx)
            WHERE state = 'pending' AND ready_at IS NOT NULL AND step IS NOT NULL;
        ALTER TABLE jobgraph_steps DROP COLUMN limited;
        CREATE INDEX jobgraph_steps_ready ON jobgraph_steps (job, priority DESC, ready_at, run_seq, idx)
            WHERE state = 'pending' AND ready_at IS NOT NULL;
        CREATE INDEX jobgraph_steps_ready_by_name ON jobgraph_steps (job, name);
        ALTER TABLE jobgraph_steps DROP COLUMN alone;
        DROP INDEX jobgraph_steps_by_name;
        ALTER TABLE jobgraph_queue_elements DROP CONSTRAINT jobgraph_queue_elements_run_id_position_fkey;
        ALTER TABLE jobgraph_steps ADD CONSTRAINT jobgraph_steps_run_id_name_key UNIQUE (run_id, name);
        ALTER TABLE jobgraph_queue_elements ADD CONSTRAINT jobgraph_queue_elements_run_id_step_fkey
            FOREIGN KEY (run_id, step) REFERENCES jobgraph_steps (run_id, name) ON DELETE CASCADE;
        DROP TABLE jobgraph_limit_claims;
        UPDATE jobgraph_meta SET value = '8' WHERE key = 'schema_version'",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let store = PgStore::connect(db.url()).await.unwrap();
    let listed: i64 = sqlx::query_scalar("SELECT count(*) FROM jobgraph_limit_claims")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // Both steps have limits: the two `pooled` and the three `metered` claims.
    assert_eq!(listed, 5);
    let next = store.claim("w2", &["Limited"], 10, LEASE).await.unwrap();
    assert!(next.iter().all(|c| c.id.step != "pooled"), "{next:?}");
}

/// Runs stored before schema version 8 have no graph key: claims and commits compute it from
/// the stored graph, and the runs complete as any other. A graph that is not the job's current
/// one (here: `b` and `c` swapped, as a job changed between submits would store) is read by its
/// own key, and so is each job's: one worker's claims and commits hold both jobs' runs (with one
/// key for every graph, the single step's graph would be taken for the diamond's, or the other
/// way round, and the diamonds would never finish).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_without_a_graph_key_and_runs_of_another_graph_complete_by_their_own() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(1).await else {
        return;
    };
    let store = &stores[0];
    let client = Client::new(store);
    let old = client.submit(&Diamond { n: 1 }).await.unwrap();
    let swapped = client.submit(&Diamond { n: 2 }).await.unwrap();
    let current = client.submit(&Diamond { n: 3 }).await.unwrap();
    let single = client.submit(&Single { n: 4 }).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE jobgraph_runs SET graph_key = NULL WHERE id = $1")
        .bind(&old.id)
        .execute(&mut conn)
        .await
        .unwrap();
    // The graph with `b` and `c` swapped (positions 1 and 2, and `d`'s parents in that order),
    // with the steps' positions and names to match, and its own key.
    sqlx::query(
        r#"UPDATE jobgraph_runs SET graph = '{"steps":[
              {"name":"a","parents":[],"after":[]},
              {"name":"c","parents":[0],"after":[]},
              {"name":"b","parents":[0],"after":[]},
              {"name":"d","parents":[2,1],"after":[]}]}',
            graph_key = NULL
           WHERE id = $1"#,
    )
    .bind(&swapped.id)
    .execute(&mut conn)
    .await
    .unwrap();
    for (from, to) in [("b", "tmp"), ("c", "b"), ("tmp", "c")] {
        sqlx::query("UPDATE jobgraph_steps SET name = $3 WHERE run_id = $1 AND name = $2")
            .bind(&swapped.id)
            .bind(from)
            .bind(to)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let keys: Vec<Option<Vec<u8>>> =
        sqlx::query_scalar("SELECT graph_key FROM jobgraph_runs WHERE id = $1")
            .bind(&current.id)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(keys[0].as_ref().map(Vec::len), Some(32), "a SHA-256");
    let worker = Worker::new(store).job::<Diamond>().job::<Single>();
    while worker.run_once().await.unwrap().claimed > 0 {}
    let only = client
        .wait::<Single>(&single.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(only.only, 4);
    for (run, n) in [(&old, 1), (&swapped, 2), (&current, 3)] {
        let outputs = client
            .wait::<Diamond>(&run.id, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (outputs.b, outputs.c, outputs.d),
            (n + 1, n * 10, n + 1 + n * 10)
        );
    }
}

async fn empty_bucket_crowds_out_nothing(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    // Many high-priority runs of a rate-limited step whose bucket (burst 3) is used up...
    client
        .submit_batch("metered", (0..30).map(|n| Limited { n }))
        .priority(100)
        .await
        .unwrap();
    let taken = store.claim(WORKER, &["Limited"], 100, LEASE).await.unwrap();
    assert_eq!(taken.iter().filter(|c| c.id.step == "metered").count(), 3);
    // ...and one low-priority step of another job: the claim reaches it.
    let run = client.submit(&Diamond { n: 1 }).await.unwrap();
    let next = store
        .claim(WORKER, &["Limited", "Diamond"], 1, LEASE)
        .await
        .unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].id.run.as_str(), next[0].id.step.as_str()),
        (run.id.as_str(), "a")
    );
}

async fn errors_are_not_expiries(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let run = client
        .submit(&Flaky {
            fail: 1,
            key: base + 7,
        })
        .max_attempts(1)
        .await
        .unwrap();
    // The first claim returns an error and is put back: not an expired lease.
    let worker = Worker::new(&store).job::<Flaky>();
    assert_eq!(worker.run_once().await.unwrap().retried, 1);
    // The second claim's lease expires: that is the one expiry `max_attempts(1)` allows...
    let claims = store.claim(WORKER, &["Flaky"], 1, LEASE).await.unwrap();
    assert_eq!(claims[0].id.attempt, 2);
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    assert!(
        store
            .claim(WORKER, &["Flaky"], 1, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let stored = store.load_run(&run.id).await.unwrap().unwrap();
    let call = stored.step("call").unwrap();
    assert_eq!(call.state, StepStatus::Failed);
    assert!(
        call.error
            .as_deref()
            .unwrap()
            .contains("on 1 of its claims"),
        "{:?}",
        call.error
    );
}

/// The database goes away under a running worker (every connection terminated, new ones refused
/// for a while): the worker does not end, it retries its claims and commits with backoff, and
/// every run completes once the database is back, each step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_worker_rides_out_a_database_outage() {
    use sqlx::Connection as _;
    let Some((db, stores)) = pg_stores(2).await else {
        return;
    };
    let key = 2050;
    let client = Client::new(&stores[1]);
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(client.submit(&Busy { key }).await.unwrap().id);
    }
    let worker = Worker::new(&stores[0])
        .job::<Busy>()
        .concurrency(2)
        .poll_interval(Duration::from_millis(20));
    let (shutdown, working) = started(worker);
    while count(key) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The outage: from the cluster's maintenance database, as its superuser.
    let mut admin = sqlx::PgConnection::connect(&db.url_of("postgres"))
        .await
        .unwrap();
    let name = db.name();
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await
        .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!terminated.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await
        .unwrap();
    for id in &ids {
        within(60, client.wait::<Busy>(id, Duration::from_secs(60)))
            .await
            .unwrap();
    }
    shutdown.cancel();
    let stats = within(60, working).await.unwrap().unwrap();
    assert!(stats.store_errors > 0, "{stats:?}");
    // Each step's output committed once; a step whose commit was lost ran again (at least once).
    assert_eq!(stats.completed + stats.fenced, 20, "{stats:?}");
    assert!(count(key) >= 20);
}

// ---- Fan-outs: `for_each` elements claimed one by one ------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("page {0} not found")]
struct NotFound(u32);

/// A fan-out between two steps: `fetch` runs once per page (counted in counter `key * 1000 +
/// page`); page 404 always fails, page 500 fails on its first execution only.
#[derive(Serialize, Deserialize)]
struct Pages {
    key: u64,
    pages: Vec<u32>,
}

#[job(durable)]
impl Pages {
    #[step]
    async fn list(&self) -> Vec<u32> {
        self.pages.clone()
    }

    #[step(for_each(list), retry = Retry::fixed(3, Duration::ZERO))]
    async fn fetch(&self, list: &u32) -> Result<String, NotFound> {
        let before = bump(self.key * 1000 + u64::from(*list));
        match (*list, before) {
            (404, _) | (500, 0) => Err(NotFound(*list)),
            (page, _) => Ok(format!("page {page}")),
        }
    }

    #[step]
    async fn index(&self, fetch: &[String]) -> String {
        fetch.join(",")
    }
}

/// The steps of `claims`, with their elements.
fn units(claims: &[jobgraph::store::queue::Claim]) -> BTreeSet<(String, Option<usize>)> {
    claims
        .iter()
        .map(|c| (c.id.step.clone(), c.id.element))
        .collect()
}

/// Submits `pages` (in batch `batch`), claims and completes `list`: its elements are ready.
async fn listed(store: &impl TestQueue, batch: &str, key: u64, pages: Vec<u32>) -> String {
    let client = Client::new(store);
    let ids = client
        .submit_batch(
            batch,
            [Pages {
                key,
                pages: pages.clone(),
            }],
        )
        .await
        .unwrap();
    let list = store.claim(WORKER, &["Pages"], 1, LEASE).await.unwrap();
    assert_eq!(units(&list), BTreeSet::from([("list".to_owned(), None)]));
    let output = serde_json::to_string(&pages).unwrap();
    store
        .complete(WORKER, &list[0].id, &output, 0)
        .await
        .unwrap();
    ids[0].clone()
}

async fn fan_out_spreads_over_workers(store: impl TestQueue, base: u64) {
    let key = base + 500;
    let run = listed(&store, "spread", key, vec![3, 1, 2, 7]).await;
    // Two claimers share the fan-out: disjoint elements, each with its element.
    let first = store.claim("w1", &["Pages"], 2, LEASE).await.unwrap();
    let second = store.claim("w2", &["Pages"], 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(second.len(), 2);
    let all: Vec<_> = first.iter().chain(&second).collect();
    let elements: BTreeSet<_> = all.iter().map(|c| c.id.element.unwrap()).collect();
    assert_eq!(elements, BTreeSet::from([0, 1, 2, 3]));
    for claim in &all {
        assert_eq!(claim.id.step, "fetch");
        assert_eq!(claim.id.attempt, 1);
        // The iterated parent's output is the claim's element alone.
        let page = [3, 1, 2, 7][claim.id.element.unwrap()];
        assert_eq!(claim.deps, [("list".to_owned(), format!("[{page}]"))]);
    }
    // Each element claim is a lease of its own; the step counts as running.
    let leases = store.leases().await.unwrap();
    let leased: BTreeSet<_> = leases
        .iter()
        .map(|l| (l.holder.as_str(), l.element.unwrap()))
        .collect();
    let expected: BTreeSet<_> = first
        .iter()
        .map(|c| ("w1", c.id.element.unwrap()))
        .chain(second.iter().map(|c| ("w2", c.id.element.unwrap())))
        .collect();
    assert_eq!(leased, expected);
    let counts = Client::new(&store).batch_counts("spread").await.unwrap();
    let fetch = counts.steps.iter().find(|s| s.name == "fetch").unwrap();
    assert_eq!((fetch.running, fetch.waiting), (1, 0));
    // Completed in any order, in two transactions: the step's output is in element order.
    let holder = |c: &&&jobgraph::store::queue::Claim| if first.contains(c) { "w1" } else { "w2" };
    let mut by_element: Vec<_> = all.clone();
    by_element.sort_by_key(|c| std::cmp::Reverse(c.id.element));
    let pages = [3, 1, 2, 7];
    for claim in &by_element {
        let output = format!("\"p{}\"", pages[claim.id.element.unwrap()]);
        let done = store
            .complete_many(
                holder(&claim),
                &[Completion {
                    claim: &claim.id,
                    output: &output,
                    started_at: 0,
                }],
            )
            .await
            .unwrap();
        assert_eq!(done, [true]);
    }
    let stored = store.load_run(&run).await.unwrap().unwrap();
    let step = stored.step("fetch").unwrap();
    assert_eq!(step.state, StepStatus::Completed);
    assert_eq!(step.output.as_deref(), Some(r#"["p3","p1","p2","p7"]"#));
    assert_eq!(step.attempts, 4);
    // Its child is ready exactly once.
    let index = store.claim("w3", &["Pages"], 10, LEASE).await.unwrap();
    assert_eq!(units(&index), BTreeSet::from([("index".to_owned(), None)]));
    assert_eq!(index[0].deps[0].1, r#"["p3","p1","p2","p7"]"#);
    assert!(
        store
            .claim("w3", &["Pages"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    store
        .complete("w3", &index[0].id, "\"x\"", 0)
        .await
        .unwrap();

    // Real workers: one runs `list`, then each runs part of the fan-out, then `index`.
    let client = Client::new(&store);
    let key = base + 510;
    let run = client
        .submit(&Pages {
            key,
            pages: (1..=6).collect(),
        })
        .await
        .unwrap();
    let one = Worker::new(&store)
        .job::<Pages>()
        .concurrency(2)
        .name("one");
    let two = Worker::new(&store)
        .job::<Pages>()
        .concurrency(8)
        .name("two");
    assert_eq!(one.run_once().await.unwrap().completed, 1);
    assert_eq!(one.run_once().await.unwrap().completed, 2);
    assert_eq!(two.run_once().await.unwrap().completed, 4);
    assert_eq!(one.run_once().await.unwrap().completed, 1);
    let out = client
        .wait::<Pages>(&run.id, Duration::from_secs(5))
        .await
        .unwrap();
    let expected: Vec<String> = (1..=6).map(|p| format!("page {p}")).collect();
    assert_eq!(out.fetch, expected);
    assert_eq!(out.index, expected.join(","));
    for page in 1..=6 {
        assert_eq!(count(key * 1000 + page), 1, "page {page}");
    }
}

async fn element_lease_expires(store: impl TestQueue, base: u64) {
    let run = listed(&store, "expiry", base + 520, vec![1, 2]).await;
    let slow = store.claim("slow", &["Pages"], 10, LEASE).await.unwrap();
    assert_eq!(slow.len(), 2);
    assert!(
        store
            .claim("fast", &["Pages"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // `slow` stalls past its leases: `fast` claims both elements again.
    store.age_leases(LEASE + Duration::from_secs(1)).await;
    let fast = store.claim("fast", &["Pages"], 10, LEASE).await.unwrap();
    assert_eq!(units(&fast), units(&slow));
    assert!(fast.iter().all(|c| c.id.attempt == 2));
    let ids: Vec<ClaimId> = slow.iter().map(|c| c.id.clone()).collect();
    assert_eq!(
        store.heartbeat("slow", &ids, LEASE).await.unwrap(),
        [Held::Lost, Held::Lost]
    );
    let late = store.complete("slow", &slow[0].id, "\"late\"", 0).await;
    assert!(
        matches!(late, Err(StoreError::ClaimLost { attempt: 1, .. })),
        "{late:?}"
    );
    let fast_ids: Vec<ClaimId> = fast.iter().map(|c| c.id.clone()).collect();
    assert_eq!(
        store.heartbeat("fast", &fast_ids, LEASE).await.unwrap(),
        [Held::Held, Held::Held]
    );
    for claim in &fast {
        let output = format!("\"e{}\"", claim.id.element.unwrap());
        store.complete("fast", &claim.id, &output, 0).await.unwrap();
    }
    let stored = store.load_run(&run).await.unwrap().unwrap();
    let fetch = stored.step("fetch").unwrap();
    assert_eq!(fetch.output.as_deref(), Some(r#"["e0","e1"]"#));
    assert_eq!(fetch.attempts, 4);
    // A settled element cannot be completed again.
    assert!(
        store
            .complete("fast", &fast[0].id, "\"x\"", 0)
            .await
            .is_err()
    );
}

async fn element_failures(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let worker = Worker::new(&store).job::<Pages>();
    // Page 500 fails once: only it runs again, through the queue.
    let key = base + 530;
    let run = client
        .submit(&Pages {
            key,
            pages: vec![1, 500, 2],
        })
        .await
        .unwrap();
    assert_eq!(worker.run_once().await.unwrap().completed, 1);
    let stats = worker.run_once().await.unwrap();
    assert_eq!((stats.claimed, stats.completed, stats.retried), (3, 2, 1));
    let stats = worker.run_once().await.unwrap();
    assert_eq!((stats.claimed, stats.completed), (1, 1));
    worker.run_once().await.unwrap();
    let out = client
        .wait::<Pages>(&run.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.fetch, ["page 1", "page 500", "page 2"]);
    assert_eq!(
        (
            count(key * 1000 + 1),
            count(key * 1000 + 500),
            count(key * 1000 + 2)
        ),
        (1, 2, 1)
    );

    // Page 404 fails every time: after its retries, the step fails naming it, `index` is
    // skipped, the run fails.
    let key = base + 540;
    let run = client
        .submit(&Pages {
            key,
            pages: vec![1, 404],
        })
        .await
        .unwrap();
    for _ in 0..6 {
        worker.run_once().await.unwrap();
    }
    let stored = client.status(&run.id).await.unwrap();
    assert_eq!(stored.state, RunState::Failed);
    let fetch = stored.step("fetch").unwrap();
    assert_eq!(fetch.state, StepStatus::Failed);
    assert_eq!(
        fetch.error.as_deref(),
        Some("element 1: returned an error: page 404 not found")
    );
    assert_eq!(stored.step("index").unwrap().state, StepStatus::Skipped);
    assert_eq!((count(key * 1000 + 1), count(key * 1000 + 404)), (1, 3));
}

async fn failed_element_cancels_the_others(store: impl TestQueue, base: u64) {
    let run = listed(&store, "cancels", base + 550, vec![1, 404, 2, 3]).await;
    let first = store.claim("w1", &["Pages"], 2, LEASE).await.unwrap();
    let second = store.claim("w2", &["Pages"], 2, LEASE).await.unwrap();
    let failing = first
        .iter()
        .chain(&second)
        .find(|c| c.id.element == Some(1))
        .unwrap();
    let holder = if first.contains(failing) { "w1" } else { "w2" };
    let failed = store
        .fail(
            holder,
            &failing.id,
            "element 1: returned an error: gone",
            0,
            None,
        )
        .await
        .unwrap();
    assert_eq!(failed, Failed::Failed);
    let stored = store.load_run(&run).await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Failed);
    let fetch = stored.step("fetch").unwrap();
    assert_eq!(
        (fetch.state, fetch.error.as_deref()),
        (
            StepStatus::Failed,
            Some("element 1: returned an error: gone")
        )
    );
    assert_eq!(stored.step("index").unwrap().state, StepStatus::Skipped);
    // The other elements' claims are over: their heartbeats say so, their results are refused.
    let others: Vec<ClaimId> = second.iter().map(|c| c.id.clone()).collect();
    if holder == "w1" {
        assert_eq!(
            store.heartbeat("w2", &others, LEASE).await.unwrap(),
            [Held::Lost, Held::Lost]
        );
        assert!(store.complete("w2", &others[0], "\"x\"", 0).await.is_err());
    }
    assert!(store.leases().await.unwrap().is_empty());
    assert!(
        store
            .claim("w3", &["Pages"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn empty_fan_out(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let run = client
        .submit(&Pages {
            key: base + 560,
            pages: Vec::new(),
        })
        .await
        .unwrap();
    let worker = Worker::new(&store).job::<Pages>();
    assert_eq!(worker.run_once().await.unwrap().completed, 1);
    // `fetch` completed with `list`: its child is ready.
    let stored = client.status(&run.id).await.unwrap();
    let fetch = stored.step("fetch").unwrap();
    assert_eq!(
        (fetch.state, fetch.output.as_deref()),
        (StepStatus::Completed, Some("[]"))
    );
    let stats = worker.run_once().await.unwrap();
    assert_eq!((stats.claimed, stats.completed), (1, 1));
    let out = client
        .wait::<Pages>(&run.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(out.fetch.is_empty());
    assert_eq!(out.index, "");
}

/// A job that ends with a fan-out (nothing after `each`).
#[derive(Serialize, Deserialize)]
struct Tail {
    items: Vec<u32>,
}

#[job(durable)]
impl Tail {
    #[step]
    async fn list(&self) -> Vec<u32> {
        self.items.clone()
    }

    #[step(for_each(list))]
    async fn each(&self, list: &u32) -> u32 {
        *list
    }
}

/// The commit of `list` completes the fan-out over its empty output at once, and with it the
/// run: the commit that made the fan-out's step ready must not take the run for unfinished.
async fn empty_fan_out_last(store: impl TestQueue, _: u64) {
    let client = Client::new(&store);
    let run = client.submit(&Tail { items: Vec::new() }).await.unwrap();
    let worker = Worker::new(&store).job::<Tail>();
    let stats = worker.run_once().await.unwrap();
    assert_eq!((stats.claimed, stats.completed), (1, 1));
    let stored = client.status(&run.id).await.unwrap();
    assert_eq!(stored.state, RunState::Succeeded);
    assert_eq!(stored.step("each").unwrap().output.as_deref(), Some("[]"));
    let out = client
        .wait::<Tail>(&run.id, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(out.each.is_empty());
}

/// Fan-outs with limits: `halves` at most 2 elements at once per run, `pooled` at most 3
/// element claims at once across every run and worker.
#[derive(Serialize, Deserialize)]
struct Bounded {
    n: u32,
}

#[job(durable)]
impl Bounded {
    #[step]
    async fn items(&self) -> Vec<u32> {
        (0..self.n).collect()
    }

    #[step(for_each(items, concurrency = 2))]
    async fn halves(&self, items: &u32) -> u32 {
        items / 2
    }

    #[step(for_each(items), concurrency = 3)]
    async fn pooled(&self, items: &u32) -> u32 {
        items * 2
    }
}

/// A fan-out limited to 3 element claims at once across every run and worker, and nothing else.
#[derive(Serialize, Deserialize)]
struct PooledFan {
    n: u32,
}

#[job(durable)]
impl PooledFan {
    #[step]
    async fn items(&self) -> Vec<u32> {
        (0..self.n).collect()
    }

    #[step(for_each(items), concurrency = 3)]
    async fn pooled(&self, items: &u32) -> u32 {
        *items
    }
}

async fn element_limits(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let a = client.submit(&Bounded { n: 5 }).await.unwrap().id;
    let b = client.submit(&Bounded { n: 5 }).await.unwrap().id;
    let jobs = ["Bounded"];
    for root in store.claim(WORKER, &jobs, 10, LEASE).await.unwrap() {
        store
            .complete(WORKER, &root.id, "[0,1,2,3,4]", 0)
            .await
            .unwrap();
    }
    // Two workers ask for everything: 2 `halves` elements per run, 3 `pooled` in all.
    let first = store.claim("w1", &jobs, 100, LEASE).await.unwrap();
    let second = store.claim("w2", &jobs, 100, LEASE).await.unwrap();
    let all: Vec<_> = first.iter().chain(&second).collect();
    let of = |run: &str, step: &str| {
        all.iter()
            .filter(|c| c.id.run == run && c.id.step == step)
            .count()
    };
    assert_eq!((of(&a, "halves"), of(&b, "halves")), (2, 2));
    assert_eq!(of(&a, "pooled") + of(&b, "pooled"), 3);
    assert!(
        store
            .claim("w3", &jobs, 100, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    // A completed element makes room: the next element of its run's `halves`, and one more
    // `pooled` element.
    let holder = |c: &jobgraph::store::queue::Claim| {
        if first.iter().any(|f| f.id == c.id) {
            "w1"
        } else {
            "w2"
        }
    };
    let halves = all
        .iter()
        .find(|c| c.id.run == a && c.id.step == "halves")
        .unwrap();
    let pooled = all.iter().find(|c| c.id.step == "pooled").unwrap();
    store
        .complete(holder(halves), &halves.id, "0", 0)
        .await
        .unwrap();
    store
        .complete(holder(pooled), &pooled.id, "0", 0)
        .await
        .unwrap();
    let next = store.claim("w3", &jobs, 100, LEASE).await.unwrap();
    let got: Vec<_> = next
        .iter()
        .map(|c| (c.id.run == a, c.id.step.as_str()))
        .collect();
    assert_eq!(next.len(), 2, "{got:?}");
    assert!(got.contains(&(true, "halves")), "{got:?}");
    assert!(got.iter().any(|(_, step)| *step == "pooled"), "{got:?}");
    let released = next.iter().find(|c| c.id.step == "halves").unwrap();
    assert_eq!(released.id.element, Some(2));
}

async fn elements_completed_together(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    client.submit(&Bounded { n: 5 }).await.unwrap();
    let jobs = ["Bounded"];
    let root = store.claim(WORKER, &jobs, 1, LEASE).await.unwrap();
    store
        .complete(WORKER, &root[0].id, "[0,1,2,3,4]", 0)
        .await
        .unwrap();
    let claimed = store.claim(WORKER, &jobs, 100, LEASE).await.unwrap();
    let halves: Vec<_> = claimed.iter().filter(|c| c.id.step == "halves").collect();
    assert_eq!(halves.len(), 2);
    // Both of the bound's elements complete in one call: the next two are ready, no more.
    let done: Vec<Completion<'_>> = halves
        .iter()
        .map(|c| Completion {
            claim: &c.id,
            output: "0",
            started_at: 0,
        })
        .collect();
    assert_eq!(
        store.complete_many(WORKER, &done).await.unwrap(),
        [true, true]
    );
    let next = store.claim(WORKER, &jobs, 100, LEASE).await.unwrap();
    let mut released: Vec<_> = next
        .iter()
        .filter(|c| c.id.step == "halves")
        .map(|c| c.id.element)
        .collect();
    released.sort();
    assert_eq!(released, [Some(2), Some(3)]);
}

/// A fan-out whose elements wait until cancelled: counts their starts in counter `key` and their
/// drops in `key + 1`.
#[derive(Serialize, Deserialize)]
struct SlowFan {
    key: u64,
}

#[job(durable)]
impl SlowFan {
    #[step]
    async fn items(&self) -> Vec<u32> {
        vec![1, 2]
    }

    #[step(for_each(items))]
    async fn each(&self, items: &u32) -> u32 {
        let _guard = CountDrop(self.key + 1);
        bump(self.key);
        std::future::pending::<()>().await;
        *items
    }
}

async fn abort_reaches_elements(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let key = base + 570;
    let run = client.submit(&SlowFan { key }).await.unwrap();
    let workers: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|name| {
            let worker = Worker::new(&store)
                .job::<SlowFan>()
                .name(name)
                .concurrency(1)
                .lease(Duration::from_millis(300))
                .poll_interval(Duration::from_millis(10));
            started(worker)
        })
        .collect();
    // Each worker runs one element (concurrency 1).
    while count(key) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let holders: BTreeSet<_> = store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.holder)
        .collect();
    assert_eq!(
        holders,
        BTreeSet::from(["one".to_owned(), "two".to_owned()])
    );
    assert!(client.abort(&run.id).await.unwrap());
    // The next heartbeats cancel both elements.
    while count(key + 1) < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut cancelled = 0;
    for (shutdown, working) in workers {
        shutdown.cancel();
        cancelled += working.await.unwrap().unwrap().cancelled;
    }
    assert_eq!(cancelled, 2);
    let stored = client.status(&run.id).await.unwrap();
    assert_eq!(stored.state, RunState::Cancelled);
    assert_eq!(stored.step("each").unwrap().state, StepStatus::Cancelled);
    assert!(store.leases().await.unwrap().is_empty());
}

async fn fan_out_expires(store: impl TestQueue, base: u64) {
    let client = Client::new(&store);
    let run = client
        .submit(&Pages {
            key: base + 580,
            pages: vec![1, 2],
        })
        .ttl(Duration::from_secs(60))
        .await
        .unwrap();
    let list = store.claim(WORKER, &["Pages"], 1, LEASE).await.unwrap();
    store
        .complete(WORKER, &list[0].id, "[1,2]", 0)
        .await
        .unwrap();
    let elements = store.claim(WORKER, &["Pages"], 10, LEASE).await.unwrap();
    assert_eq!(elements.len(), 2);
    // The run's time to live ends while its elements run: the next claim fails the run.
    store.age_leases(Duration::from_secs(61)).await;
    assert!(
        store
            .claim(WORKER, &["Pages"], 10, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let stored = client.status(&run.id).await.unwrap();
    assert_eq!(stored.state, RunState::Failed);
    assert_eq!(stored.step("fetch").unwrap().state, StepStatus::Cancelled);
    let ids: Vec<ClaimId> = elements.iter().map(|c| c.id.clone()).collect();
    assert_eq!(
        store.heartbeat(WORKER, &ids, LEASE).await.unwrap(),
        [Held::Lost, Held::Lost]
    );
    assert!(store.complete(WORKER, &ids[0], "\"x\"", 0).await.is_err());
    assert!(store.leases().await.unwrap().is_empty());
}

// ---- TTR: a claim is a lease of its step's time to run -----------------------------------------

/// Steps with and without timeouts: `quick` (its input's, in seconds; 1,000 or more panics) and
/// `each`, over `quick`'s list (4 s); `plain` (none: the worker's lease); `tiny` (10 ms: raised
/// to `MIN_TTR`).
#[derive(Serialize, Deserialize)]
struct Timed {
    quick_secs: u64,
}

#[job(durable)]
impl Timed {
    #[step(timeout = seconds(self.quick_secs))]
    async fn quick(&self) -> Vec<u32> {
        vec![1, 2]
    }

    #[step]
    async fn plain(&self) -> u32 {
        0
    }

    #[step(timeout = Duration::from_millis(10))]
    async fn tiny(&self) -> u32 {
        0
    }

    #[step(for_each(quick), timeout = Duration::from_secs(4))]
    async fn each(&self, quick: &u32) -> u32 {
        *quick
    }
}

/// `worker` running on its own task until the token is cancelled: the token, and the task.
fn started(
    worker: Worker,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<WorkerStats, StoreError>>,
) {
    let shutdown = CancellationToken::new();
    let running = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { worker.run(shutdown).await }
    });
    (shutdown, running)
}

/// `n` seconds, if fewer than 1,000.
fn seconds(n: u64) -> Duration {
    assert!(n < 1000, "no step takes {n} s");
    Duration::from_secs(n)
}

/// Each claim's lease end as the store lists it, by (run, step, element).
async fn lease_ends(store: &impl TestQueue) -> HashMap<(String, String, Option<usize>), i64> {
    store
        .leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| ((l.run, l.step.unwrap(), l.element), l.until))
        .collect()
}

/// Asserts that `until` is `ttr` after a moment of the store's clock between `before` and
/// `after` (ms; a few ms of rounding either way).
#[track_caller]
fn lease_of(until: i64, ttr: Duration, before: i64, after: i64, what: &str) {
    let ttr = i64::try_from(ttr.as_millis()).unwrap();
    assert!(
        until >= before + ttr - 5 && until <= after + ttr + 5,
        "{what}: lease until {until}, expected {ttr} ms after a moment in {before}..={after}"
    );
}

async fn claims_lease_their_ttr(store: impl TestQueue, _base: u64) {
    let client = Client::new(&store);
    let run = client.submit(&Timed { quick_secs: 2 }).await.unwrap().id;
    let before = store.clock().await;
    let claims = store.claim(WORKER, &["Timed"], 10, LEASE).await.unwrap();
    let after = store.clock().await;
    let secs = Duration::from_secs;
    let expected = [
        ("quick", secs(2)),
        ("plain", LEASE),
        ("tiny", jobgraph::MIN_TTR),
    ];
    assert_eq!(claims.len(), 3);
    let ends = lease_ends(&store).await;
    for (step, ttr) in expected {
        let claim = claims.iter().find(|c| c.id.step == step).unwrap();
        assert_eq!(claim.lease, ttr, "{step}");
        let until = ends[&(run.clone(), step.to_owned(), None)];
        assert_eq!(claim.lease_until, until, "{step}");
        lease_of(until, ttr, before, after, step);
    }

    // A heartbeat renews each by its own TTR, or by the worker's lease (60 s now) if it has
    // none; even from the past (the leases are 10 s over, and nobody took the steps).
    store.age_leases(secs(10)).await;
    let ids: Vec<ClaimId> = claims.iter().map(|c| c.id.clone()).collect();
    let before = store.clock().await;
    let held = store.heartbeat(WORKER, &ids, secs(60)).await.unwrap();
    let after = store.clock().await;
    assert_eq!(held, [Held::Held; 3]);
    let ends = lease_ends(&store).await;
    for (step, ttr) in expected {
        let ttr = if step == "plain" { secs(60) } else { ttr };
        lease_of(
            ends[&(run.clone(), step.to_owned(), None)],
            ttr,
            before,
            after,
            step,
        );
    }

    // A fan-out's elements take its step's TTR, on claims and heartbeats.
    let quick = claims.iter().find(|c| c.id.step == "quick").unwrap();
    store.complete(WORKER, &quick.id, "[1,2]", 0).await.unwrap();
    let before = store.clock().await;
    let elements = store.claim(WORKER, &["Timed"], 10, LEASE).await.unwrap();
    let after = store.clock().await;
    assert_eq!(units(&elements).len(), 2);
    let ends = lease_ends(&store).await;
    for element in &elements {
        assert_eq!((element.id.step.as_str(), element.lease), ("each", secs(4)));
        let until = ends[&(run.clone(), "each".to_owned(), element.id.element)];
        lease_of(until, secs(4), before, after, "an element");
    }
    store.age_leases(secs(10)).await;
    let ids: Vec<ClaimId> = elements.iter().map(|c| c.id.clone()).collect();
    let before = store.clock().await;
    let held = store.heartbeat(WORKER, &ids, secs(60)).await.unwrap();
    let after = store.clock().await;
    assert_eq!(held, [Held::Held; 2]);
    let ends = lease_ends(&store).await;
    for element in &elements {
        let until = ends[&(run.clone(), "each".to_owned(), element.id.element)];
        lease_of(until, secs(4), before, after, "a renewed element");
    }

    // A batch's runs take their own inputs' timeouts; a timeout whose expression panics is
    // none (the submit goes on; the step fails when it runs).
    let ids = client
        .submit_batch("timed", [3, 5, 5000].map(|quick_secs| Timed { quick_secs }))
        .await
        .unwrap();
    let claims = store.claim(WORKER, &["Timed"], 10, LEASE).await.unwrap();
    let quick: HashMap<&str, Duration> = claims
        .iter()
        .filter(|c| c.id.step == "quick")
        .map(|c| (c.id.run.as_str(), c.lease))
        .collect();
    assert_eq!(quick[ids[0].as_str()], secs(3));
    assert_eq!(quick[ids[1].as_str()], secs(5));
    assert_eq!(quick[ids[2].as_str()], LEASE);
    let plain: Vec<Duration> = claims
        .iter()
        .filter(|c| c.id.step == "plain")
        .map(|c| c.lease)
        .collect();
    assert_eq!(plain, [LEASE; 3]);
}

/// A step with a 3 s timeout (so a 3 s TTR) that takes `ms` (counted in counter `key`).
#[derive(Serialize, Deserialize)]
struct Brief {
    key: u64,
    ms: u64,
}

#[job(durable)]
impl Brief {
    #[step(timeout = Duration::from_secs(3))]
    async fn work(&self) -> u64 {
        bump(self.key);
        tokio::time::sleep(Duration::from_millis(self.ms)).await;
        self.ms
    }
}

async fn worker_beats_within_ttrs(store: impl TestQueue, base: u64) {
    // One step at a time and three prefetched: the last waits about 3.6 s in the worker, past
    // its 3 s TTR, so only heartbeats every third of that (not of the worker's 30 s lease)
    // keep the claims; a lost one would be claimed again (its step run twice). Real time, with
    // room: a beat may be 2 s late before a claim is lost.
    let key = base + 700;
    let client = Client::new(&store);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(client.submit(&Brief { key, ms: 1_200 }).await.unwrap().id);
    }
    let worker = Worker::new(&store)
        .job::<Brief>()
        .concurrency(1)
        .prefetch(3)
        .poll_interval(Duration::from_millis(50));
    let (shutdown, working) = started(worker);
    for id in &ids {
        client
            .wait::<Brief>(id, Duration::from_secs(30))
            .await
            .unwrap();
    }
    shutdown.cancel();
    let stats = working.await.unwrap().unwrap();
    assert_eq!(
        (stats.claimed, stats.completed, stats.fenced),
        (4, 4, 0),
        "{stats:?}"
    );
    assert_eq!(count(key), 4);
    for id in &ids {
        let run = client.status(id).await.unwrap();
        assert_eq!(run.step("work").unwrap().attempts, 1);
    }
}

// ---- Redrive of a queued run ---------------------------------------------------------------------

/// A fan-out whose elements' outputs name how many times each ran before (counter `key * 10 +
/// element`); `list` counts its runs in counter `key * 10`.
#[derive(Serialize, Deserialize)]
struct Redo {
    key: u64,
}

#[job(durable)]
impl Redo {
    #[step]
    async fn list(&self) -> Vec<u64> {
        bump(self.key * 10);
        vec![1, 2, 3]
    }

    #[step(for_each(list))]
    async fn each(&self, list: &u64) -> String {
        let before = bump(self.key * 10 + list);
        format!("{list}.{before}")
    }

    #[step]
    async fn total(&self, each: &[String]) -> String {
        each.join(",")
    }
}

/// Runs `worker` until a claim finds nothing.
async fn drain(worker: &Worker) {
    while worker.run_once().await.unwrap().claimed > 0 {}
}

async fn redriven_fan_out_runs_again(store: impl TestQueue, base: u64) {
    let key = base + 800;
    let client = Client::new(&store);
    let run = client.submit(&Redo { key }).await.unwrap().id;
    let worker = Worker::new(&store).job::<Redo>().concurrency(2);
    drain(&worker).await;
    let out = client
        .wait::<Redo>(&run, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.each, ["1.0", "2.0", "3.0"]);

    // Redrive the fan-out (its parent stays done): every element runs again, and the step's
    // output and its child's are the new ones.
    let reset = store.reset_step(&run, "each").await.unwrap();
    assert_eq!(reset, ["each", "total"]);
    assert_eq!(client.status(&run).await.unwrap().state, RunState::Pending);
    drain(&worker).await;
    let out = client
        .wait::<Redo>(&run, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.each, ["1.1", "2.1", "3.1"]);
    assert_eq!(out.total, "1.1,2.1,3.1");
    assert_eq!(count(key * 10), 1, "`list` did not run again");
    let stored = client.status(&run).await.unwrap();
    assert_eq!(stored.step("each").unwrap().attempts, 3);

    // Redrive from the root: the fan-out is made again from `list`'s new output.
    let reset = store.reset_step(&run, "list").await.unwrap();
    assert_eq!(reset, ["list", "each", "total"]);
    drain(&worker).await;
    let out = client
        .wait::<Redo>(&run, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(out.each, ["1.2", "2.2", "3.2"]);
    assert_eq!(count(key * 10), 2);
    for element in 1..=3 {
        assert_eq!(count(key * 10 + element), 3, "element {element}");
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the source was down")]
struct SourceDown;

/// `fetch` fails on its first run (counter `key`), then succeeds; `parse` and `save` follow it.
#[derive(Serialize, Deserialize)]
struct FailsOnce {
    key: u64,
}

#[job(durable)]
impl FailsOnce {
    #[step]
    async fn fetch(&self) -> Result<u64, SourceDown> {
        if bump(self.key) == 0 {
            return Err(SourceDown);
        }
        Ok(7)
    }

    #[step]
    async fn parse(&self, fetch: &u64) -> u64 {
        fetch * 2
    }

    #[step]
    async fn save(&self, parse: &u64) -> u64 {
        parse + 1
    }
}

async fn redrive_below_failure(store: impl TestQueue, base: u64) {
    let key = base + 900;
    let client = Client::new(&store);
    let run = client.submit(&FailsOnce { key }).await.unwrap().id;
    let worker = Worker::new(&store).job::<FailsOnce>();
    drain(&worker).await;
    assert_eq!(client.status(&run).await.unwrap().state, RunState::Failed);

    // Below the failure: the step would wait forever for `fetch`, so the store refuses, names
    // the step to redrive instead, and changes nothing.
    for (step, on, state) in [("parse", "fetch", "failed"), ("save", "parse", "skipped")] {
        match store.reset_step(&run, step).await {
            Err(StoreError::DependsOnEnded {
                run: r,
                step: s,
                on: o,
                state: st,
            }) => assert_eq!(
                (r.as_str(), s.as_str(), o.as_str(), st.as_str()),
                (run.as_str(), step, on, state)
            ),
            other => panic!("redrive of `{step}`: {other:?}"),
        }
    }
    assert_eq!(client.status(&run).await.unwrap().state, RunState::Failed);

    // Redriving the failed step runs it and what it skipped.
    let reset = store.reset_step(&run, "fetch").await.unwrap();
    assert_eq!(reset, ["fetch", "parse", "save"]);
    drain(&worker).await;
    let out = client
        .wait::<FailsOnce>(&run, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((out.fetch, out.parse, out.save), (7, 14, 15));
    assert_eq!(count(key), 2);
}
