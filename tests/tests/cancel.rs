//! Cancellation and ownership: dropping the run future drops every running step; the run future
//! is `Send` and spawnable; generic and borrowing jobs run.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use jobgraph::{Job, job};
use tokio::sync::Notify;
use tokio::time::{sleep, timeout};

/// Longer than any test waits: a step sleeping this long only ends by cancellation.
const FOREVER: Duration = Duration::from_secs(3600);

/// Counts the steps that started, finished, and were dropped (completed or cancelled).
#[derive(Default)]
struct Counters {
    started: AtomicUsize,
    completed: AtomicUsize,
    dropped: AtomicUsize,
    never: AtomicUsize,
}

/// Held by a step while it runs; its `Drop` proves the step's future was dropped.
struct Guard<'a>(&'a Counters);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Endless {
    counters: Counters,
    /// Signalled by `quick`; the test starts counting from there.
    quick_done: Notify,
}

#[job]
impl Endless {
    #[step]
    async fn quick(&self) -> u32 {
        let _guard = Guard(&self.counters);
        self.counters.started.fetch_add(1, Ordering::SeqCst);
        self.counters.completed.fetch_add(1, Ordering::SeqCst);
        self.quick_done.notify_one();
        1
    }

    #[step]
    async fn long_a(&self, quick: &u32) -> u32 {
        let _guard = Guard(&self.counters);
        self.counters.started.fetch_add(1, Ordering::SeqCst);
        sleep(FOREVER).await;
        self.counters.completed.fetch_add(1, Ordering::SeqCst);
        *quick
    }

    #[step]
    async fn long_b(&self) -> u32 {
        let _guard = Guard(&self.counters);
        self.counters.started.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<()>().await;
        self.counters.completed.fetch_add(1, Ordering::SeqCst);
        2
    }

    #[step]
    async fn never(&self, long_a: &u32, long_b: &u32) -> u32 {
        self.counters.never.fetch_add(1, Ordering::SeqCst);
        long_a + long_b
    }
}

impl Endless {
    fn assert_cancelled(&self) {
        let c = &self.counters;
        assert_eq!(c.started.load(Ordering::SeqCst), 3, "quick, long_a, long_b");
        assert_eq!(
            c.completed.load(Ordering::SeqCst),
            1,
            "only quick completed"
        );
        assert_eq!(
            c.dropped.load(Ordering::SeqCst),
            3,
            "every started step's future was dropped"
        );
        assert_eq!(c.never.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_around_run_cancels_every_running_step() {
    let job = Endless::default();
    let result = timeout(Duration::from_millis(50), job.run()).await;
    assert!(result.is_err(), "the run cannot finish");
    job.assert_cancelled();
}

#[tokio::test(start_paused = true)]
async fn select_dropping_the_run_cancels_every_running_step() {
    let job = Endless::default();
    let quick_done = job.quick_done.notified();
    tokio::select! {
        biased;
        _ = job.run() => panic!("the run cannot finish"),
        () = async {
            quick_done.await;
            // Let the run's next poll start the children.
            tokio::task::yield_now().await;
        } => {}
    }
    job.assert_cancelled();
}

#[tokio::test]
async fn dropping_a_polled_run_future_drops_its_steps() {
    let job = Endless::default();
    let mut run = Box::pin(job.run());
    // Polled by hand (inside the runtime, for the timers): one poll starts `quick`, which completes, and then `long_a` and `long_b` in the same poll.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(run.as_mut().poll(&mut cx).is_pending());
    assert_eq!(job.counters.started.load(Ordering::SeqCst), 3);
    assert_eq!(
        job.counters.dropped.load(Ordering::SeqCst),
        1,
        "only quick ended"
    );
    drop(run);
    job.assert_cancelled();
}

#[tokio::test]
async fn dropping_an_unpolled_run_future_runs_nothing() {
    let job = Endless::default();
    drop(job.run());
    assert_eq!(job.counters.started.load(Ordering::SeqCst), 0);
    assert_eq!(job.counters.dropped.load(Ordering::SeqCst), 0);
}

/// A job whose run future must be `Send`.
struct Spawnable {
    input: Vec<u32>,
}

#[job]
impl Spawnable {
    #[step]
    async fn sum(&self) -> u64 {
        tokio::task::yield_now().await;
        self.input.iter().copied().map(u64::from).sum()
    }

    #[step]
    async fn doubled(&self, sum: &u64) -> u64 {
        tokio::task::yield_now().await;
        sum * 2
    }
}

fn assert_send<T: Send>(value: T) -> T {
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_future_is_send_and_can_be_spawned() {
    let job = Arc::new(Spawnable {
        input: vec![1, 2, 3],
    });
    let handle = tokio::spawn(async move { assert_send(job.run()).await });
    let out = handle.await.unwrap().unwrap();
    assert_eq!((out.sum, out.doubled), (6, 12));
}

#[tokio::test(start_paused = true)]
async fn aborting_a_spawned_run_cancels_its_steps() {
    let job = Arc::new(Endless::default());
    let task = {
        let job = Arc::clone(&job);
        tokio::spawn(async move { job.run().await.map(|_| ()) })
    };
    job.quick_done.notified().await;
    // `quick` has completed; give the run a poll to start its children.
    tokio::task::yield_now().await;
    while job.counters.started.load(Ordering::SeqCst) < 3 {
        tokio::task::yield_now().await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    job.assert_cancelled();
}

/// A data source, with a test double below.
trait Db: Send + Sync {
    fn rows(&self, table: &str) -> Result<Vec<u32>, DbError>;
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("no table `{0}`")]
struct DbError(String);

struct FakeDb {
    calls: AtomicUsize,
}

impl Db for FakeDb {
    fn rows(&self, table: &str) -> Result<Vec<u32>, DbError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match table {
            "sales" => Ok(vec![10, 20, 30]),
            "refunds" => Ok(vec![5]),
            other => Err(DbError(other.to_owned())),
        }
    }
}

/// A job generic over its data source.
struct Report<D> {
    db: D,
    refunds_table: &'static str,
}

#[job]
impl<D: Db> Report<D> {
    #[step]
    async fn sales(&self) -> Result<Vec<u32>, DbError> {
        self.db.rows("sales")
    }

    #[step]
    async fn refunds(&self) -> Result<Vec<u32>, DbError> {
        self.db.rows(self.refunds_table)
    }

    #[step]
    async fn net(&self, sales: &Vec<u32>, refunds: &Vec<u32>) -> i64 {
        let total = |v: &Vec<u32>| v.iter().copied().map(i64::from).sum::<i64>();
        total(sales) - total(refunds)
    }
}

#[tokio::test]
async fn a_generic_job_runs_with_a_test_double() {
    let job = Report {
        db: FakeDb {
            calls: AtomicUsize::new(0),
        },
        refunds_table: "refunds",
    };
    let out: ReportOutputs<FakeDb> = job.run().await.unwrap();
    assert_eq!(out.sales, [10, 20, 30]);
    assert_eq!(out.refunds, [5]);
    assert_eq!(out.net, 55);
    assert_eq!(job.db.calls.load(Ordering::SeqCst), 2);
    assert_eq!(<Report<FakeDb> as Job>::NAME, "Report");
    assert_eq!(Report::<FakeDb>::STEPS.len(), 3);
}

#[tokio::test]
async fn a_generic_job_reports_its_double_failing() {
    let job = Report {
        db: FakeDb {
            calls: AtomicUsize::new(0),
        },
        refunds_table: "missing",
    };
    let err = job.run().await.unwrap_err();
    assert_eq!(err.step(), ReportStep::Refunds);
    assert_eq!(err.skipped(), [ReportStep::Net]);
    assert_eq!(
        err.to_string(),
        "job `Report` failed: step `refunds` returned an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generic_job_can_be_spawned() {
    let job = Arc::new(Report {
        db: FakeDb {
            calls: AtomicUsize::new(0),
        },
        refunds_table: "refunds",
    });
    let out = tokio::spawn(async move { job.run().await.map(|o| o.net) })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out, 55);
}

/// A job that borrows its input, and outputs values borrowing it too.
struct Borrowing<'a> {
    text: &'a str,
}

// A parent's output is lent as exactly `&T`, so clippy's `ptr_arg` advice (`&[&str]` for
// `&Vec<&str>`) would not compile.
#[job]
#[allow(clippy::ptr_arg)]
impl<'a> Borrowing<'a> {
    #[step]
    async fn words(&self) -> Vec<&'a str> {
        self.text.split_whitespace().collect()
    }

    #[step]
    async fn longest(&self, words: &Vec<&'a str>) -> &'a str {
        words.iter().copied().max_by_key(|w| w.len()).unwrap_or("")
    }

    #[step]
    async fn count(&self, words: &Vec<&'a str>) -> usize {
        words.len()
    }
}

#[tokio::test]
async fn a_job_with_a_lifetime_runs_and_its_outputs_borrow_the_input() {
    let text = String::from("the quick brown fox jumped");
    let out: BorrowingOutputs<'_> = Borrowing { text: &text }.run().await.unwrap();
    assert_eq!(out.words, ["the", "quick", "brown", "fox", "jumped"]);
    assert_eq!(out.count, 5);
    assert_eq!(out.longest, "jumped");
    // The output points into `text`: it was never copied.
    assert!(
        text.as_bytes()
            .as_ptr_range()
            .contains(&out.longest.as_ptr())
    );
}
