//! Batches: many inputs of one job type, a bounded number of runs at a time, in the caller's
//! task. Results in input order and as a stream; the concurrency bound; lazily taken inputs;
//! cancellation (by the run, a handle, a token, the first failure); the live status (per-step and per-run
//! counts), pollable and pushed to a listener; per-run configuration; `Send` and non-`Send` jobs.

use std::cell::Cell;
use std::error::Error as _;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::{FusedStream as _, Stream as _};
use jobgraph::{
    Batch, BatchStatus, BatchSummary, CancellationToken, RunCounts, StepContext, StepCounts,
    StepEvent, StepState, ZeroLimit, job,
};
use tokio::time::{sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("row {0} is broken")]
struct Broken(u32);

/// What the rows of one batch share with the test.
#[derive(Default)]
struct Probe {
    /// Runs whose first step started.
    started: AtomicUsize,
    /// Runs started whose input was not dropped yet: the runs in flight.
    in_flight: AtomicUsize,
    /// The most runs ever in flight at once.
    max_in_flight: AtomicUsize,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::default()
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }
}

/// One input: its number, whether it fails, how long it loads.
///
/// ```text
/// load (load_ms) ─┬─ double (20ms; fails at once if `fail`) ─┬─ total
///                 └─ square (5ms) ───────────────────────────┘
/// ```
struct Row {
    n: u32,
    fail: bool,
    load_ms: u64,
    probe: Arc<Probe>,
    /// Whether this row's run started, so that dropping the row ends it in the probe.
    started: AtomicBool,
}

impl Row {
    fn new(probe: &Arc<Probe>, n: u32) -> Self {
        Row {
            n,
            fail: false,
            load_ms: 10,
            probe: Arc::clone(probe),
            started: AtomicBool::new(false),
        }
    }

    fn failing(mut self, fail: bool) -> Self {
        self.fail = fail;
        self
    }

    fn load_ms(mut self, load_ms: u64) -> Self {
        self.load_ms = load_ms;
        self
    }
}

impl Drop for Row {
    fn drop(&mut self) {
        if *self.started.get_mut() {
            self.probe.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[job]
impl Row {
    #[step]
    async fn load(&self) -> u32 {
        if !self.started.swap(true, Ordering::SeqCst) {
            let probe = &self.probe;
            probe.started.fetch_add(1, Ordering::SeqCst);
            let now = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            probe.max_in_flight.fetch_max(now, Ordering::SeqCst);
        }
        sleep(ms(self.load_ms)).await;
        self.n
    }

    #[step]
    async fn double(&self, load: &u32) -> Result<u32, Broken> {
        if self.fail {
            return Err(Broken(self.n));
        }
        sleep(ms(20)).await;
        Ok(load * 2)
    }

    #[step]
    async fn square(&self, load: &u32) -> u32 {
        sleep(ms(5)).await;
        load * load
    }

    #[step]
    async fn total(&self, double: &u32, square: &u32) -> u32 {
        double + square
    }
}

fn expected_total(n: u32) -> u32 {
    2 * n + n * n
}

/// Asserts what every status must satisfy: each count adds up to the total.
fn assert_adds_up(status: &BatchStatus<RowStep>) {
    assert_eq!(status.runs.total(), status.total, "{status:#?}");
    assert_eq!(status.steps.len(), 4);
    for (counts, step) in status.steps.iter().zip(RowStep::ALL) {
        assert_eq!(counts.step, *step);
        assert_eq!(counts.total(), status.total, "{status:#?}");
    }
}

/// The counts of `step`, from the given `(waiting, running, completed, failed, skipped,
/// cancelled)`.
fn counts(step: RowStep, c: [usize; 6]) -> StepCounts<RowStep> {
    StepCounts {
        step,
        waiting: c[0],
        running: c[1],
        completed: c[2],
        failed: c[3],
        skipped: c[4],
        cancelled: c[5],
    }
}

fn runs(
    waiting: usize,
    running: usize,
    succeeded: usize,
    failed: usize,
    cancelled: usize,
) -> RunCounts {
    RunCounts {
        waiting,
        running,
        succeeded,
        failed,
        cancelled,
    }
}

/// Records every status a listener is told.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<BatchStatus<RowStep>>>>);

impl Recorder {
    fn listener(&self) -> impl Fn(&BatchStatus<RowStep>) + Send + 'static {
        let seen = Arc::clone(&self.0);
        move |status| seen.lock().unwrap().push(status.clone())
    }

    fn take(&self) -> Vec<BatchStatus<RowStep>> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

// ---------------------------------------------------------------------------------------------
// Results

#[tokio::test(start_paused = true)]
async fn results_are_in_input_order_with_each_failure_at_its_row() {
    let probe = Probe::new();
    // Later rows load faster, so runs end in another order than they start in.
    let rows = (0..20).map(|n| {
        Row::new(&probe, n)
            .failing(n % 3 == 1)
            .load_ms(100 - 5 * u64::from(n))
    });
    let batch = timeout(HANG, Batch::new(rows).concurrency(4).run())
        .await
        .expect("batch hung");
    assert_eq!(batch.results.len(), 20);
    for (n, result) in (0..).zip(&batch.results) {
        if n % 3 == 1 {
            let err = result.as_ref().unwrap_err();
            assert_eq!(err.step(), RowStep::Double);
            assert_eq!(err.skipped(), [RowStep::Total]);
            assert!(!err.is_cancelled());
            let source = err.source().unwrap().downcast_ref::<Broken>();
            assert_eq!(source, Some(&Broken(n)));
        } else {
            let out = result.as_ref().unwrap();
            assert_eq!((out.load, out.total), (n, expected_total(n)));
        }
    }
    assert_eq!(
        batch.summary,
        BatchSummary {
            total: 20,
            succeeded: 13,
            failed: 7,
            cancelled: 0,
            not_started: 0,
        }
    );
    assert!(!batch.is_success());
    assert_eq!(probe.started(), 20);
}

#[tokio::test(start_paused = true)]
async fn the_stream_yields_every_index_once_as_runs_end() {
    let probe = Probe::new();
    let rows = (0..30).map(|n| Row::new(&probe, n).load_ms((u64::from(n) * 7) % 30));
    let mut run = Batch::new(rows).concurrency(5).stream();
    assert_eq!(run.size_hint(), (30, Some(30)));
    let mut order = Vec::new();
    while let Some(item) = timeout(HANG, run.next()).await.expect("batch hung") {
        let out = item.result.expect("no row fails");
        assert_eq!(out.load as usize, item.index, "the result is its index's");
        order.push(item.index);
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..30).collect::<Vec<_>>());
    assert_ne!(
        order, sorted,
        "runs end out of input order and are yielded as they end"
    );
    assert!(run.is_terminated());
    assert!(run.next().await.is_none());
    assert!(run.summary().is_success());
}

#[tokio::test]
async fn an_empty_batch_ends_at_once_and_tells_its_listener() {
    let recorder = Recorder::default();
    let probe = Probe::new();
    let rows = (0..0).map(|n| Row::new(&probe, n));
    let batch = Batch::new(rows)
        .status_listener(recorder.listener())
        .run()
        .await;
    assert!(batch.results.is_empty());
    assert_eq!(batch.summary, BatchSummary::default());
    assert!(batch.is_success());
    let seen = recorder.take();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].finished && seen[0].total_known);
    assert_eq!(seen[0].total, 0);
}

// ---------------------------------------------------------------------------------------------
// Concurrency and lazy inputs

#[tokio::test(start_paused = true)]
async fn no_more_runs_than_the_concurrency_run_at_once() {
    let probe = Probe::new();
    let recorder = Recorder::default();
    let rows = (0..50).map(|n| Row::new(&probe, n).load_ms(u64::from(n % 7) * 3));
    let batch = timeout(
        HANG,
        Batch::new(rows)
            .concurrency(4)
            .status_listener(recorder.listener())
            .run(),
    )
    .await
    .expect("batch hung");
    assert!(batch.is_success());
    assert_eq!(probe.started(), 50);
    assert_eq!(
        probe.max_in_flight.load(Ordering::SeqCst),
        4,
        "the bound is reached, never passed"
    );
    assert_eq!(probe.in_flight.load(Ordering::SeqCst), 0);
    for status in recorder.take() {
        assert!(status.runs.running <= 4, "{:?}", status.runs);
    }
}

#[test]
fn a_zero_concurrency_is_refused() {
    let probe = Probe::new();
    let err = Batch::new([Row::new(&probe, 0)])
        .try_concurrency(0)
        .unwrap_err();
    assert_eq!(err, ZeroLimit::BatchConcurrency);
    assert_eq!(
        err.to_string(),
        "a batch's concurrency must be at least 1: with 0, no run could ever start"
    );
    assert!(Batch::new([Row::new(&probe, 0)]).try_concurrency(1).is_ok());
}

#[test]
#[should_panic(expected = "Batch::concurrency: the concurrency must be at least 1, got 0")]
fn concurrency_zero_panics() {
    let probe = Probe::new();
    let _ = Batch::new([Row::new(&probe, 0)]).concurrency(0);
}

#[tokio::test(start_paused = true)]
async fn inputs_are_taken_no_further_ahead_than_the_concurrency() {
    const CONCURRENCY: usize = 8;
    let probe = Probe::new();
    let taken = Arc::new(AtomicUsize::new(0));
    let rows = {
        let (probe, taken) = (Arc::clone(&probe), Arc::clone(&taken));
        (0..1000).map(move |n| {
            taken.fetch_add(1, Ordering::SeqCst);
            Row::new(&probe, n).load_ms(u64::from(n % 5))
        })
    };
    let mut run = Batch::new(rows).concurrency(CONCURRENCY).stream();
    assert_eq!(
        taken.load(Ordering::SeqCst),
        0,
        "nothing is taken before the first poll"
    );
    // The number of inputs is known from the iterator's exact size hint.
    assert_eq!(run.status().total, 1000);
    assert!(run.status().total_known);
    let mut received = 0;
    while let Some(item) = timeout(HANG, run.next()).await.expect("batch hung") {
        assert!(item.result.is_ok());
        received += 1;
        let now = taken.load(Ordering::SeqCst);
        assert!(
            now < received + CONCURRENCY,
            "{now} inputs taken when {received} runs have ended"
        );
        let status = run.status();
        assert_eq!(status.total, 1000);
        assert_eq!(status.runs.waiting, 1000 - now);
    }
    assert_eq!(received, 1000);
    assert_eq!(taken.load(Ordering::SeqCst), 1000);
}

// ---------------------------------------------------------------------------------------------
// Abort

#[tokio::test(start_paused = true)]
async fn cancel_starts_no_new_run_and_cancels_the_running_ones() {
    let probe = Probe::new();
    // Row `n` loads for `1000 + 100n` ms, so runs end one at a time: rows 0 to 3 end first,
    // then 4 and 5 (at 2450ms and 2650ms), while rows 6, 7 and 8 still load.
    let rows = (0..100).map(|n| Row::new(&probe, n).load_ms(1000 + 100 * u64::from(n)));
    let mut run = Batch::new(rows).concurrency(4).stream();
    let mut items = Vec::new();
    while let Some(item) = timeout(HANG, run.next()).await.expect("batch hung") {
        items.push(item);
        if items.len() == 6 {
            // Six runs ended; three run, and the slot of the sixth is refilled at the next poll:
            // 9 inputs were taken.
            assert!(!run.is_cancelled());
            run.cancel();
            assert!(run.is_cancelled());
        }
    }
    assert_eq!(
        items.len(),
        9,
        "every input taken yields one item, no other does"
    );
    for item in &items[..6] {
        assert!(item.result.is_ok());
    }
    for item in &items[6..] {
        let err = item.result.as_ref().unwrap_err();
        assert!(err.is_cancelled(), "{err}");
        assert_eq!(
            err.report().steps_in(StepState::Cancelled),
            RowStep::ALL,
            "every step was loading or waiting"
        );
    }
    let mut indices: Vec<usize> = items.iter().map(|i| i.index).collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..9).collect::<Vec<_>>());
    assert_eq!(probe.started(), 9);
    assert_eq!(
        probe.in_flight.load(Ordering::SeqCst),
        0,
        "cancelled runs dropped their input"
    );
    assert_eq!(
        run.summary(),
        BatchSummary {
            total: 100,
            succeeded: 6,
            failed: 0,
            cancelled: 94,
            not_started: 91,
        }
    );
    let status = run.status();
    assert_adds_up(&status);
    assert!(status.finished);
    assert_eq!(status.runs, runs(0, 0, 6, 0, 94));
    for counts in &status.steps {
        assert_eq!((counts.completed, counts.cancelled), (6, 94), "{counts:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancel_handle_cancels_from_another_task() {
    let probe = Probe::new();
    let rows = (0..100).map(|n| Row::new(&probe, n).load_ms(1000));
    let run = Batch::new(rows).concurrency(4).stream();
    let handle = run.cancel_handle();
    let canceller = tokio::spawn(async move {
        // The first four runs end at 1025ms; the next four load until 2025ms.
        sleep(ms(1500)).await;
        handle.cancel();
        handle
    });
    let batch = timeout(HANG, run.wait()).await.expect("batch hung");
    let handle = canceller.await.unwrap();
    assert!(handle.is_cancelled());
    assert_eq!(probe.started(), 8);
    assert_eq!(batch.results.len(), 8);
    assert!(batch.results[..4].iter().all(Result::is_ok));
    for result in &batch.results[4..] {
        let err = result.as_ref().unwrap_err();
        assert!(err.is_cancelled());
        let load = err.report().step(RowStep::Load);
        assert_eq!(
            (load.state(), load.attempts()),
            (StepState::Cancelled, 1),
            "it was loading"
        );
        assert_eq!(err.report().step(RowStep::Total).attempts(), 0);
    }
    assert_eq!(
        batch.summary,
        BatchSummary {
            total: 100,
            succeeded: 4,
            failed: 0,
            cancelled: 96,
            not_started: 92,
        }
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_on_failure_cancels_the_batch_at_the_first_failed_run() {
    let probe = Probe::new();
    // Two at a time, 30ms a run: rows 4 and 5 start at 60ms; row 5 fails at 70ms and its run
    // ends at 75ms, while row 4 is still doubling.
    let rows = (0..50).map(|n| Row::new(&probe, n).failing(n == 5));
    let batch = timeout(
        HANG,
        Batch::new(rows).concurrency(2).cancel_on_failure().run(),
    )
    .await
    .expect("batch hung");
    assert_eq!(batch.results.len(), 6);
    assert!(batch.results[..4].iter().all(Result::is_ok));
    assert!(batch.results[4].as_ref().unwrap_err().is_cancelled());
    let err = batch.results[5].as_ref().unwrap_err();
    assert_eq!((err.step(), err.is_cancelled()), (RowStep::Double, false));
    assert_eq!(
        batch.summary,
        BatchSummary {
            total: 50,
            succeeded: 4,
            failed: 1,
            cancelled: 45,
            not_started: 44,
        }
    );
    assert_eq!(probe.started(), 6);
}

#[tokio::test]
async fn a_cancelled_token_cancels_the_batch_before_it_starts() {
    let probe = Probe::new();
    let recorder = Recorder::default();
    let token = CancellationToken::new();
    token.cancel();
    let rows = (0..10).map(|n| Row::new(&probe, n));
    let mut run = Batch::new(rows)
        .cancel_on(&token)
        .status_listener(recorder.listener())
        .stream();
    assert!(run.is_cancelled());
    assert!(run.next().await.is_none());
    assert_eq!(probe.started(), 0);
    assert_eq!(
        run.summary(),
        BatchSummary {
            total: 10,
            succeeded: 0,
            failed: 0,
            cancelled: 10,
            not_started: 10,
        }
    );
    let last = recorder.take().pop().unwrap();
    assert_adds_up(&last);
    assert!(last.finished);
    assert_eq!(last.runs, runs(0, 0, 0, 0, 10));
    assert!(last.steps.iter().all(|c| c.cancelled == 10));
}

#[tokio::test(start_paused = true)]
async fn cancelling_inputs_of_unknown_number_leaves_the_rest_uncounted() {
    let probe = Probe::new();
    let rows = {
        let probe = Arc::clone(&probe);
        let mut n = 0;
        // An endless iterator: without the cancellation the batch would never end.
        std::iter::from_fn(move || {
            n += 1;
            Some(Row::new(&probe, n).load_ms(1000))
        })
    };
    let mut run = Batch::new(rows).concurrency(3).stream();
    let cancel = run.cancel_handle();
    tokio::spawn(async move {
        sleep(ms(500)).await;
        cancel.cancel();
    });
    let mut items = 0;
    while let Some(item) = timeout(HANG, run.next()).await.expect("batch hung") {
        assert!(item.result.unwrap_err().is_cancelled());
        items += 1;
    }
    assert_eq!(items, 3);
    assert_eq!(
        run.summary(),
        BatchSummary {
            total: 3,
            succeeded: 0,
            failed: 0,
            cancelled: 3,
            not_started: 0,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Status

#[tokio::test(start_paused = true)]
async fn the_final_status_counts_every_step_of_every_run() {
    use RowStep::*;
    let probe = Probe::new();
    let rows = (0..12).map(|n| Row::new(&probe, n).failing(n % 4 == 3));
    let mut run = Batch::new(rows).concurrency(5).stream();
    let initial = run.status();
    assert_adds_up(&initial);
    assert_eq!(
        (initial.total, initial.total_known, initial.finished),
        (12, true, false)
    );
    assert_eq!(initial.runs, runs(12, 0, 0, 0, 0));
    while timeout(HANG, run.next())
        .await
        .expect("batch hung")
        .is_some()
    {}
    let status = run.status();
    assert_adds_up(&status);
    assert_eq!(
        (status.total, status.total_known, status.finished),
        (12, true, true)
    );
    assert_eq!(status.runs, runs(0, 0, 9, 3, 0));
    assert_eq!(
        status.steps,
        [
            counts(Load, [0, 0, 12, 0, 0, 0]),
            counts(Double, [0, 0, 9, 3, 0, 0]),
            counts(Square, [0, 0, 12, 0, 0, 0]),
            counts(Total, [0, 0, 9, 0, 3, 0]),
        ]
    );
    assert_eq!(status.step(Total).skipped, 3);
}

#[tokio::test(start_paused = true)]
async fn the_status_mid_run_counts_waiting_running_and_done_steps() {
    use RowStep::*;
    let probe = Probe::new();
    // Two at a time. Each run: load 0-10ms, square 10-15ms, double 10-30ms, total at 30ms.
    let rows = (0..6).map(|n| Row::new(&probe, n));
    let run = Batch::new(rows).concurrency(2).stream();
    let handle = run.status_handle();
    let observer = tokio::spawn(async move {
        sleep(ms(12)).await;
        let first = handle.status();
        sleep(ms(23)).await;
        (first, handle.status())
    });
    let batch = timeout(HANG, run.wait()).await.expect("batch hung");
    assert!(batch.is_success());
    let (at_12ms, at_35ms) = observer.await.unwrap();
    assert_adds_up(&at_12ms);
    assert_eq!(at_12ms.runs, runs(4, 2, 0, 0, 0));
    assert_eq!(
        at_12ms.steps,
        [
            counts(Load, [4, 0, 2, 0, 0, 0]),
            counts(Double, [4, 2, 0, 0, 0, 0]),
            counts(Square, [4, 2, 0, 0, 0, 0]),
            counts(Total, [6, 0, 0, 0, 0, 0]),
        ]
    );
    // Runs 0 and 1 ended at 30ms; runs 2 and 3 load from 30ms to 40ms.
    assert_adds_up(&at_35ms);
    assert_eq!(at_35ms.runs, runs(2, 2, 2, 0, 0));
    assert_eq!(
        at_35ms.steps,
        [
            counts(Load, [2, 2, 2, 0, 0, 0]),
            counts(Double, [4, 0, 2, 0, 0, 0]),
            counts(Square, [4, 0, 2, 0, 0, 0]),
            counts(Total, [4, 0, 2, 0, 0, 0]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_listener_is_called_at_most_once_per_poll_and_last_with_the_final_status() {
    let probe = Probe::new();
    let recorder = Recorder::default();
    let rows = (0..40).map(|n| {
        Row::new(&probe, n)
            .failing(n % 10 == 9)
            .load_ms(u64::from(n % 3) * 4)
    });
    let mut run = Batch::new(rows)
        .concurrency(6)
        .status_listener(recorder.listener())
        .stream();
    let mut polls = 0;
    let mut items = 0;
    let stream = futures::stream::poll_fn(|cx| {
        polls += 1;
        run.poll_next_unpin(cx)
    });
    futures::pin_mut!(stream);
    while timeout(HANG, stream.next())
        .await
        .expect("batch hung")
        .is_some()
    {
        items += 1;
    }
    assert_eq!(items, 40);
    let seen = recorder.take();
    assert!(seen.len() <= polls, "{} calls in {polls} polls", seen.len());
    assert!(seen.len() > 1);
    for status in &seen {
        assert_adds_up(status);
        assert!(status.runs.running <= 6);
    }
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "called only when something changed");
    }
    let (last, before) = seen.split_last().unwrap();
    assert!(last.finished);
    assert!(before.iter().all(|s| !s.finished));
    assert_eq!(*last, run.status(), "the last call sees the final status");
    assert_eq!(last.runs, runs(0, 0, 36, 4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_handle_read_from_another_thread_always_adds_up() {
    let probe = Probe::new();
    let rows = {
        let probe = Arc::clone(&probe);
        (0..2000).map(move |n| Row::new(&probe, n).failing(n % 7 == 0).load_ms(0))
    };
    let run = Batch::new(rows).concurrency(64).stream();
    let handle = run.status_handle();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut reads = 0;
            while !done.load(Ordering::SeqCst) {
                assert_adds_up(&handle.status());
                reads += 1;
            }
            let last = handle.status();
            assert_adds_up(&last);
            (reads, last)
        })
    };
    let batch = tokio::spawn(run.wait()).await.unwrap();
    done.store(true, Ordering::SeqCst);
    let (reads, last) = reader.join().unwrap();
    assert!(reads > 0);
    assert!(last.finished);
    assert_eq!(last.runs, runs(0, 0, 1714, 286, 0));
    assert_eq!(batch.summary.failed, 286);
}

#[tokio::test(start_paused = true)]
async fn with_inputs_of_unknown_number_the_total_is_the_inputs_taken_so_far() {
    let probe = Probe::new();
    let recorder = Recorder::default();
    let taken = Arc::new(AtomicUsize::new(0));
    let rows = {
        let (probe, taken) = (Arc::clone(&probe), Arc::clone(&taken));
        std::iter::from_fn(move || {
            let n = taken.fetch_add(1, Ordering::SeqCst);
            (n < 10).then(|| Row::new(&probe, n as u32).load_ms(n as u64))
        })
    };
    let mut run = Batch::new(rows)
        .concurrency(3)
        .status_listener(recorder.listener())
        .stream();
    assert_eq!((run.status().total, run.status().total_known), (0, false));
    while let Some(item) = timeout(HANG, run.next()).await.expect("batch hung") {
        assert!(item.result.is_ok());
        let status = run.status();
        assert_adds_up(&status);
        if !status.total_known {
            assert_eq!(status.total, taken.load(Ordering::SeqCst));
            assert_eq!(
                status.runs.waiting, 0,
                "no input is known before it is taken"
            );
        }
    }
    let seen = recorder.take();
    assert_eq!((seen[0].total, seen[0].total_known), (3, false));
    let last = seen.last().unwrap();
    assert_eq!((last.total, last.total_known), (10, true));
    assert_eq!(last.runs, runs(0, 0, 10, 0, 0));
}

// ---------------------------------------------------------------------------------------------
// Configuration, Send and non-Send jobs

/// One step that tells the run's id.
struct Named;

#[job]
impl Named {
    #[step]
    async fn id(&self, ctx: &StepContext) -> String {
        ctx.job_id().to_owned()
    }
}

#[tokio::test]
async fn configure_sets_up_each_run_and_its_listener_sits_beside_the_batchs() {
    let events = Arc::new(AtomicUsize::new(0));
    let recorder = Arc::new(Mutex::new(None));
    let batch = {
        let (events, recorder) = (Arc::clone(&events), Arc::clone(&recorder));
        Batch::new((0..5).map(|_| Named))
            .concurrency(2)
            .configure(move |index, runner| {
                let events = Arc::clone(&events);
                runner
                    .job_id(format!("named-{index}"))
                    .listener(move |event| {
                        if let StepEvent::Completed { .. } = event {
                            events.fetch_add(1, Ordering::SeqCst);
                        }
                    })
            })
            .status_listener(move |status: &BatchStatus<NamedStep>| {
                *recorder.lock().unwrap() = Some(status.clone());
            })
            .run()
            .await
    };
    let ids: Vec<String> = batch.results.into_iter().map(|r| r.unwrap().id).collect();
    assert_eq!(ids, ["named-0", "named-1", "named-2", "named-3", "named-4"]);
    assert_eq!(
        events.load(Ordering::SeqCst),
        5,
        "the run's own listener heard every step"
    );
    let last = recorder.lock().unwrap().take().unwrap();
    assert_eq!(
        last.step(NamedStep::Id).completed,
        5,
        "and so did the batch's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_send_jobs_can_be_spawned_whole() {
    let probe = Probe::new();
    let rows = {
        let probe = Arc::clone(&probe);
        (0..20).map(move |n| Row::new(&probe, n).load_ms(1))
    };
    let batch = tokio::spawn(Batch::new(rows).concurrency(4).run())
        .await
        .unwrap();
    assert!(batch.is_success());

    let rows = (0..20).map(move |n| Row::new(&probe, n).load_ms(1));
    let run = Batch::new(rows).concurrency(4).stream();
    let status = run.status_handle();
    let indices = tokio::spawn(run.map(|item| item.index).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(indices.len(), 20);
    assert_eq!(status.status().runs.succeeded, 20);
}

/// A job that is neither `Send` nor `'static`: a batch runs it in place all the same.
struct Tally<'a> {
    seen: Rc<Cell<u32>>,
    values: &'a [u32],
}

#[job(local)]
impl Tally<'_> {
    #[step]
    async fn sum(&self) -> u32 {
        tokio::task::yield_now().await;
        let sum = self.values.iter().sum();
        self.seen.set(self.seen.get() + 1);
        sum
    }
}

#[tokio::test]
async fn jobs_that_are_not_send_or_static_run_in_a_batch() {
    let seen = Rc::new(Cell::new(0));
    let data = [1, 2, 3, 4, 5, 6];
    let inputs = data.chunks(2).map(|values| Tally {
        seen: Rc::clone(&seen),
        values,
    });
    let batch = Batch::new(inputs).concurrency(2).run().await;
    let sums: Vec<u32> = batch.results.into_iter().map(|r| r.unwrap().sum).collect();
    assert_eq!(sums, [3, 7, 11]);
    assert_eq!(seen.get(), 3);
}
