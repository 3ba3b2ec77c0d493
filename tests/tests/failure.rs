//! Failure: a failed or panicking step's descendants are skipped, independent branches finish,
//! and `JobError` names the root cause, every failure and every skipped step.

use std::error::Error as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use jobgraph::{JobError, StepContext, StepError, StepPanic, job};
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum BranchError {
    #[error("the early branch broke ({0})")]
    Early(u32),
    #[error("the late branch broke")]
    Late,
}

#[derive(Default)]
struct Calls {
    child_of_early: AtomicUsize,
    grandchild: AtomicUsize,
    after_early: AtomicUsize,
    child_of_late: AtomicUsize,
    independent_done: AtomicBool,
    independent_tail_done: AtomicBool,
}

/// ```text
/// root ─┬─ fail_early (10ms, Err) ─┬─ child_of_early ── grandchild
///       │                          └┄ after_early (after)
///       ├─ fail_late (30ms, Err) ──── child_of_late
///       └─ independent (50ms) ─────── independent_tail
/// ```
#[derive(Default)]
struct TwoFailures {
    calls: Calls,
}

#[job]
impl TwoFailures {
    #[step]
    async fn root(&self) -> u32 {
        3
    }

    #[step]
    async fn fail_late(&self, root: &u32) -> Result<u32, BranchError> {
        sleep(ms(30)).await;
        let _ = root;
        Err(BranchError::Late)
    }

    #[step]
    async fn fail_early(&self, root: &u32) -> Result<u32, BranchError> {
        sleep(ms(10)).await;
        Err(BranchError::Early(*root))
    }

    #[step]
    async fn child_of_early(&self, fail_early: &u32) -> u32 {
        self.calls.child_of_early.fetch_add(1, Ordering::SeqCst);
        *fail_early
    }

    #[step]
    async fn grandchild(&self, child_of_early: &u32) -> u32 {
        self.calls.grandchild.fetch_add(1, Ordering::SeqCst);
        *child_of_early
    }

    #[step(after(fail_early))]
    async fn after_early(&self) {
        self.calls.after_early.fetch_add(1, Ordering::SeqCst);
    }

    #[step]
    async fn child_of_late(&self, fail_late: &u32) -> u32 {
        self.calls.child_of_late.fetch_add(1, Ordering::SeqCst);
        *fail_late
    }

    #[step]
    async fn independent(&self, root: &u32) -> u32 {
        sleep(ms(50)).await;
        self.calls.independent_done.store(true, Ordering::SeqCst);
        root + 1
    }

    #[step]
    async fn independent_tail(&self, independent: &u32) -> u32 {
        self.calls
            .independent_tail_done
            .store(true, Ordering::SeqCst);
        independent + 1
    }
}

#[tokio::test(start_paused = true)]
async fn descendants_of_a_failure_are_skipped_and_other_branches_finish() {
    let job = TwoFailures::default();
    let t0 = Instant::now();
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .expect_err("the run must fail");

    // The independent branch ran to its end, past both failures.
    assert!(job.calls.independent_done.load(Ordering::SeqCst));
    assert!(job.calls.independent_tail_done.load(Ordering::SeqCst));
    assert_eq!(
        t0.elapsed(),
        ms(50),
        "the run ends when the last branch ends"
    );

    // Descendants of failed steps were never called.
    assert_eq!(job.calls.child_of_early.load(Ordering::SeqCst), 0);
    assert_eq!(job.calls.grandchild.load(Ordering::SeqCst), 0);
    assert_eq!(job.calls.after_early.load(Ordering::SeqCst), 0);
    assert_eq!(job.calls.child_of_late.load(Ordering::SeqCst), 0);

    // The root cause is the first failure in time, although `fail_late` is declared first.
    assert_eq!(err.step(), TwoFailuresStep::FailEarly);
    assert_eq!(err.root_cause().step(), TwoFailuresStep::FailEarly);
    let failed: Vec<_> = err.failures().iter().map(|f| f.step()).collect();
    assert_eq!(
        failed,
        [TwoFailuresStep::FailEarly, TwoFailuresStep::FailLate]
    );
    assert_eq!(
        err.skipped(),
        [
            TwoFailuresStep::ChildOfEarly,
            TwoFailuresStep::Grandchild,
            TwoFailuresStep::AfterEarly,
            TwoFailuresStep::ChildOfLate,
        ]
    );
    assert_eq!(err.job_name(), "TwoFailures");
    assert!(!err.job_id().is_empty());

    // Display names the job and the root cause, and counts the other failures.
    assert_eq!(
        err.to_string(),
        "job `TwoFailures` failed: step `fail_early` returned an error (and 1 more step failed)"
    );
    assert_eq!(
        err.root_cause().to_string(),
        "step `fail_early` returned an error: the early branch broke (3)"
    );
    assert_eq!(
        err.failures()[1].to_string(),
        "step `fail_late` returned an error: the late branch broke"
    );

    // The user's errors are recoverable by downcasting.
    let source = err.source().expect("JobError has a source");
    assert_eq!(
        source.downcast_ref::<BranchError>(),
        Some(&BranchError::Early(3))
    );
    assert!(matches!(err.root_cause().error(), StepError::Error(_)));
    assert_eq!(
        err.failures()[1]
            .error()
            .as_error()
            .downcast_ref::<BranchError>(),
        Some(&BranchError::Late)
    );
    // `StepError`'s text already names the user's error, so its source is that error's own
    // source (here none), not the error again.
    assert!(err.root_cause().error().source().is_none());
}

#[tokio::test(start_paused = true)]
async fn failure_order_follows_time_not_declaration() {
    // Same job, run twice: the verdict is deterministic under the paused clock.
    for _ in 0..2 {
        let err = TwoFailures::default().run().await.unwrap_err();
        assert_eq!(err.step(), TwoFailuresStep::FailEarly);
        assert_eq!(err.failures().len(), 2);
    }
}

/// One failing step with no descendants: the simplest `JobError`.
struct Single;

#[derive(Debug, thiserror::Error)]
#[error("disk full")]
struct DiskFull;

#[job]
impl Single {
    #[step]
    async fn ok(&self) -> u8 {
        1
    }

    #[step]
    async fn write(&self, ctx: &StepContext) -> Result<(), DiskFull> {
        assert_eq!(ctx.step_name(), "write");
        Err(DiskFull)
    }
}

#[tokio::test]
async fn a_single_failure_has_no_suffix_and_no_skipped_steps() {
    let err: JobError<SingleStep, SinglePartial> = Single.run().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "job `Single` failed: step `write` returned an error"
    );
    assert_eq!(err.step(), SingleStep::Write);
    assert_eq!(err.failures().len(), 1);
    assert!(err.skipped().is_empty());
    assert!(err.source().unwrap().is::<DiskFull>());
    // `JobError` is a normal error: boxable, `Send + Sync`, usable with `?`.
    let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(err);
    assert!(boxed.to_string().starts_with("job `Single` failed"));
}

/// Three failures at different times: the suffix counts the two that are not the root cause.
struct Three;

#[derive(Debug, thiserror::Error)]
#[error("bad {0}")]
struct Bad(u8);

#[job]
impl Three {
    #[step]
    async fn x(&self) -> Result<(), Bad> {
        sleep(ms(3)).await;
        Err(Bad(1))
    }
    #[step]
    async fn y(&self) -> Result<(), Bad> {
        sleep(ms(1)).await;
        Err(Bad(2))
    }
    #[step]
    async fn z(&self) -> Result<(), Bad> {
        sleep(ms(2)).await;
        Err(Bad(3))
    }
}

#[tokio::test(start_paused = true)]
async fn every_failure_is_listed_in_time_order() {
    let err = Three.run().await.unwrap_err();
    let failed: Vec<_> = err.failures().iter().map(|f| f.step()).collect();
    assert_eq!(failed, [ThreeStep::Y, ThreeStep::Z, ThreeStep::X]);
    assert_eq!(
        err.to_string(),
        "job `Three` failed: step `y` returned an error (and 2 more steps failed)"
    );
}

/// A step that panics, beside a branch that must still complete.
#[derive(Default)]
struct Panicky {
    after_panic_calls: AtomicUsize,
    survivor_done: AtomicBool,
}

#[job]
impl Panicky {
    #[step]
    async fn boom(&self) -> u32 {
        sleep(ms(5)).await;
        let n = 7;
        panic!("kaboom {n}");
    }

    #[step]
    async fn after_boom(&self, boom: &u32) -> u32 {
        self.after_panic_calls.fetch_add(1, Ordering::SeqCst);
        *boom
    }

    #[step]
    async fn survivor(&self) -> &'static str {
        sleep(ms(20)).await;
        self.survivor_done.store(true, Ordering::SeqCst);
        "alive"
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_the_step_failure_and_other_branches_complete() {
    let job = Panicky::default();
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .expect_err("a panicking step fails the run");
    assert!(job.survivor_done.load(Ordering::SeqCst));
    assert_eq!(job.after_panic_calls.load(Ordering::SeqCst), 0);

    assert_eq!(err.step(), PanickyStep::Boom);
    assert_eq!(err.failures().len(), 1);
    assert_eq!(err.skipped(), [PanickyStep::AfterBoom]);
    assert_eq!(
        err.to_string(),
        "job `Panicky` failed: step `boom` panicked"
    );
    let StepError::Panic(panic) = err.root_cause().error() else {
        panic!(
            "expected a caught panic, got {:?}",
            err.root_cause().error()
        );
    };
    assert_eq!(panic.message(), "kaboom 7");
    let source = err.source().unwrap();
    assert_eq!(
        source.downcast_ref::<StepPanic>().map(StepPanic::message),
        Some("kaboom 7")
    );
}

/// Panics with a `&'static str` payload and a non-string payload.
struct OddPanics;

#[job]
impl OddPanics {
    #[step]
    async fn literal(&self) {
        panic!("static message");
    }

    #[step]
    async fn payload(&self) {
        sleep(ms(1)).await;
        std::panic::panic_any(42_u32);
    }
}

#[tokio::test(start_paused = true)]
async fn panic_payloads_become_messages() {
    let err = OddPanics.run().await.unwrap_err();
    let messages: Vec<String> = err
        .failures()
        .iter()
        .map(|f| match f.error() {
            StepError::Panic(p) => p.message().to_owned(),
            other => panic!("expected a panic, got {other:?}"),
        })
        .collect();
    assert_eq!(messages, ["static message", "<non-string panic payload>"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_a_spawned_run_is_still_an_error() {
    let handle = tokio::spawn(async { Panicky::default().run().await.map(|_| ()) });
    let err = handle
        .await
        .expect("the task must not panic: the step's panic is caught")
        .unwrap_err();
    assert_eq!(err.step(), PanickyStep::Boom);
}

/// The user's error has a source of its own: a chain of three errors under the `JobError`.
struct Chained;

#[derive(Debug, thiserror::Error)]
#[error("cannot load the config")]
struct ConfigError(#[source] std::io::Error);

#[job]
impl Chained {
    #[step]
    async fn load(&self) -> Result<u8, ConfigError> {
        Err(ConfigError(std::io::Error::other("permission denied")))
    }
}

/// Each error's text, from `error` down its `source()` chain.
fn chain(error: &(dyn std::error::Error + 'static)) -> Vec<String> {
    std::iter::successors(Some(error), |&e| e.source())
        .map(ToString::to_string)
        .collect()
}

#[tokio::test]
async fn the_error_chain_names_the_users_error_once() {
    let err = Chained.run().await.unwrap_err();
    assert_eq!(
        chain(&err),
        [
            "job `Chained` failed: step `load` returned an error",
            "cannot load the config",
            "permission denied",
        ]
    );
    // `StepError` names the user's error itself, so its chain goes on from that error's source.
    assert_eq!(
        chain(err.root_cause().error()),
        [
            "returned an error: cannot load the config",
            "permission denied"
        ]
    );
    assert_eq!(
        format!("{:#}", anyhow::Error::from(err)),
        "job `Chained` failed: step `load` returned an error: cannot load the config: \
         permission denied"
    );

    // A caught panic is the source of a `JobError`, its message said once.
    let panicked = Panicky::default().run().await.unwrap_err();
    assert_eq!(
        format!("{:#}", anyhow::Error::from(panicked)),
        "job `Panicky` failed: step `boom` panicked: kaboom 7"
    );
}
