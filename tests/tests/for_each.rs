//! Fan-out steps, `#[step(for_each(param))]`: the step runs once per element of its parent's
//! output and outputs a `Vec` in the elements' order (whatever order they finish in); children
//! take that `Vec`. Elements run at once unless `for_each(.., concurrency = n)` bounds them (a
//! sequential run runs them one at a time); `retry`, `timeout` and the step's global
//! `concurrency` apply per element; the first element that fails (after its own retries) fails
//! the step with `StepError::Element` and drops the others; the listener and the report see one
//! step; a started run cancels its elements.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::{LimitRegistry, Retry, StepContext, StepError, StepEvent, StepState, job};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// Longer than any test waits: only a cancellation or a timeout ends it.
const FOREVER: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("row {0} is corrupt")]
struct Corrupt(u32);

/// Counts elements in flight and the most ever in flight at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
    started: AtomicUsize,
    dropped: AtomicUsize,
}

impl InFlight {
    /// Marks one element in flight until the guard drops (completed or cancelled).
    fn enter(&self) -> InFlightGuard<'_> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        InFlightGuard(self)
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Order, children, empty input

/// `ids` → `fetch` (once per id) → `total` (`&[u64]`) and `count` (`&Vec<u64>`).
///
/// Element `i` sleeps `(len - i) * 10ms`: the last finishes first.
struct Reverse {
    ids: Vec<u32>,
    finished: Mutex<Vec<u32>>,
}

#[job]
impl Reverse {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        self.ids.clone()
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &u32) -> u64 {
        let len = self.ids.len() as u64;
        sleep(ms((len - u64::from(*ids)) * 10)).await;
        self.finished.lock().unwrap().push(*ids);
        u64::from(*ids) * 100
    }

    #[step]
    async fn total(&self, fetch: &[u64]) -> u64 {
        fetch.iter().sum()
    }

    #[step]
    async fn count(&self, fetch: &Vec<u64>) -> usize {
        fetch.len()
    }
}

#[tokio::test(start_paused = true)]
async fn outputs_are_in_the_elements_order_whatever_order_they_finish_in() {
    let job = Reverse {
        ids: (0..5).collect(),
        finished: Mutex::new(Vec::new()),
    };
    let start = Instant::now();
    let (result, report) = timeout(HANG, job.runner().run_with_report())
        .await
        .expect("run hung");
    let out = result.expect("every element succeeds");
    assert_eq!(
        *job.finished.lock().unwrap(),
        [4, 3, 2, 1, 0],
        "the last element finishes first"
    );
    assert_eq!(out.fetch, [0, 100, 200, 300, 400]);
    assert_eq!(out.total, 1000, "a child takes the Vec as a slice");
    assert_eq!(out.count, 5, "a child takes the Vec itself");
    // All at once: the run takes as long as the slowest element, 50ms.
    assert_eq!(start.elapsed(), ms(50));
    let fetch = report.step(ReverseStep::Fetch);
    assert_eq!(fetch.state(), StepState::Completed);
    assert_eq!(fetch.attempts(), 5, "one attempt per element");
    assert_eq!(fetch.duration(), Some(ms(50)));
}

#[tokio::test(start_paused = true)]
async fn a_sequential_run_runs_one_element_at_a_time_in_order() {
    let job = Reverse {
        ids: (0..5).collect(),
        finished: Mutex::new(Vec::new()),
    };
    let start = Instant::now();
    let out = timeout(HANG, job.runner().sequential().run())
        .await
        .expect("run hung")
        .expect("every element succeeds");
    assert_eq!(
        *job.finished.lock().unwrap(),
        [0, 1, 2, 3, 4],
        "each element waits for the one before it"
    );
    assert_eq!(out.fetch, [0, 100, 200, 300, 400]);
    // One after another: 50 + 40 + 30 + 20 + 10 ms.
    assert_eq!(start.elapsed(), ms(150));
}

#[tokio::test(start_paused = true)]
async fn an_empty_input_completes_with_an_empty_vec_and_children_run() {
    let job = Reverse {
        ids: Vec::new(),
        finished: Mutex::new(Vec::new()),
    };
    let (result, report) = timeout(HANG, job.runner().run_with_report())
        .await
        .expect("run hung");
    let out = result.expect("no element, no failure");
    assert!(out.fetch.is_empty());
    assert_eq!((out.total, out.count), (0, 0), "the children ran");
    assert!(job.finished.lock().unwrap().is_empty());
    for &step in ReverseStep::ALL {
        assert_eq!(report.step(step).state(), StepState::Completed, "{step}");
    }
}

/// A `for_each` step's output feeds another `for_each` step.
struct Chained;

#[job]
impl Chained {
    #[step]
    async fn words(&self) -> Vec<String> {
        vec!["a".into(), "bb".into(), "ccc".into()]
    }

    #[step(for_each(words))]
    async fn lengths(&self, words: &String) -> usize {
        words.len()
    }

    #[step(for_each(lengths, concurrency = 1))]
    async fn squares(&self, lengths: &usize) -> usize {
        lengths * lengths
    }
}

#[tokio::test]
async fn a_for_each_output_can_feed_another_for_each_step() {
    let out = Chained.run().await.unwrap();
    assert_eq!(out.lengths, [1, 2, 3]);
    assert_eq!(out.squares, [1, 4, 9]);
}

// ---------------------------------------------------------------------------------------------
// Parents of every kind, other parameters beside the element

struct Shapes;

#[job]
impl Shapes {
    #[step]
    async fn array(&self) -> [u32; 3] {
        [1, 2, 3]
    }

    #[step]
    async fn boxed(&self) -> Box<[u32]> {
        vec![10, 20].into_boxed_slice()
    }

    #[step(for_each(array))]
    async fn per_array(&self, array: &u32) -> u32 {
        array + 1
    }

    #[step(for_each(boxed))]
    async fn per_boxed(&self, boxed: &u32) -> u32 {
        boxed + 1
    }
}

#[tokio::test]
async fn arrays_and_boxed_slices_are_run_over_too() {
    let out = Shapes.run().await.unwrap();
    assert_eq!(out.per_array, vec![2, 3, 4]);
    assert_eq!(out.per_boxed, vec![11, 21]);
}

struct Config {
    factor: u32,
}

struct WithConfig;

#[job]
impl WithConfig {
    #[step]
    async fn config(&self) -> Config {
        Config { factor: 10 }
    }

    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    /// The element first, another parent's whole output after it.
    #[step(for_each(ids))]
    async fn scaled(&self, ids: &u32, config: &Config) -> u32 {
        ids * config.factor
    }

    /// The element last, after another parent, the context between them.
    #[step(for_each(ids, concurrency = 2))]
    async fn labelled(&self, config: &Config, ctx: &StepContext, ids: &u32) -> String {
        format!("{}:{}x{}", ctx.step_name(), ids, config.factor)
    }
}

#[tokio::test]
async fn the_element_sits_beside_other_parents_and_the_context() {
    let out = WithConfig.run().await.unwrap();
    assert_eq!(out.scaled, [10, 20, 30]);
    assert_eq!(
        out.labelled,
        ["labelled:1x10", "labelled:2x10", "labelled:3x10"]
    );
}

// ---------------------------------------------------------------------------------------------
// The context

struct Indexed;

#[job]
impl Indexed {
    #[step]
    async fn ids(&self, ctx: &StepContext) -> Vec<u32> {
        assert_eq!(ctx.element(), None, "not a for_each step");
        vec![7, 8, 9]
    }

    #[step(for_each(ids))]
    async fn seen(&self, ids: &u32, ctx: &StepContext) -> (u32, Option<usize>, u32) {
        (*ids, ctx.element(), ctx.attempt())
    }
}

#[tokio::test]
async fn the_context_names_the_element_by_its_index() {
    let out = Indexed.run().await.unwrap();
    assert_eq!(
        out.seen,
        [(7, Some(0), 1), (8, Some(1), 1), (9, Some(2), 1)]
    );
}

// ---------------------------------------------------------------------------------------------
// Retry and failure, per element

/// Element 2 fails on its first two attempts; the others succeed at once.
struct PerElementRetry {
    attempts: Mutex<Vec<(usize, u32)>>,
    events: Arc<Mutex<Vec<String>>>,
}

#[job]
impl PerElementRetry {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![0, 1, 2, 3]
    }

    #[step(for_each(ids), retry = Retry::fixed(3, Duration::from_millis(10)))]
    async fn fetch(&self, ids: &u32, ctx: &StepContext) -> Result<u32, Corrupt> {
        let element = ctx.element().expect("a for_each step");
        self.attempts.lock().unwrap().push((element, ctx.attempt()));
        if *ids == 2 && ctx.attempt() < 3 {
            return Err(Corrupt(*ids));
        }
        Ok(*ids * 10)
    }
}

#[tokio::test(start_paused = true)]
async fn each_element_retries_on_its_own() {
    let job = PerElementRetry {
        attempts: Mutex::new(Vec::new()),
        events: Arc::default(),
    };
    let events = Arc::clone(&job.events);
    let start = Instant::now();
    let (result, report) = timeout(
        HANG,
        job.runner()
            .listener(move |event| {
                if let StepEvent::Retrying { step, attempt, .. } = event {
                    events
                        .lock()
                        .unwrap()
                        .push(format!("{step} retry {attempt}"));
                }
            })
            .run_with_report(),
    )
    .await
    .expect("run hung");
    let out = result.expect("element 2 succeeds on its third attempt");
    assert_eq!(out.fetch, [0, 10, 20, 30]);
    assert_eq!(
        start.elapsed(),
        ms(20),
        "two back-offs of 10ms, for element 2 only"
    );
    let mut attempts = job.attempts.lock().unwrap().clone();
    attempts.sort();
    assert_eq!(
        attempts,
        [(0, 1), (1, 1), (2, 1), (2, 2), (2, 3), (3, 1)],
        "only element 2 was tried again, its attempts numbered from 1"
    );
    let fetch = report.step(PerElementRetryStep::Fetch);
    assert_eq!(fetch.state(), StepState::Completed);
    assert_eq!(fetch.attempts(), 4 + 2, "every element's attempts, summed");
    assert_eq!(
        *job.events.lock().unwrap(),
        ["fetch retry 1", "fetch retry 2"]
    );
}

/// Element 1 fails on its first attempt; the step declares no retry.
struct Overridden;

#[job]
impl Overridden {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![0, 1, 2]
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &u32, ctx: &StepContext) -> Result<u32, Corrupt> {
        if *ids == 1 && ctx.attempt() == 1 {
            return Err(Corrupt(*ids));
        }
        Ok(ctx.attempt())
    }
}

#[tokio::test(start_paused = true)]
async fn the_runners_retry_override_applies_per_element() {
    let err = Overridden
        .run()
        .await
        .expect_err("no retry: element 1 fails");
    assert_eq!(err.root_cause().error().element(), Some(1));

    let (result, report) = Overridden
        .runner()
        .retry(OverriddenStep::Fetch, Retry::fixed(2, ms(10)))
        .run_with_report()
        .await;
    assert_eq!(result.unwrap().fetch, [1, 2, 1]);
    assert_eq!(report.step(OverriddenStep::Fetch).attempts(), 4);
}

/// Element 2 always fails, fast; the others take long: they are still running when it fails.
struct OneBad {
    elements: InFlight,
    summarized: AtomicUsize,
}

#[job]
impl OneBad {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![0, 1, 2, 3]
    }

    #[step(for_each(ids), retry = Retry::fixed(2, Duration::from_millis(5)))]
    async fn fetch(&self, ids: &u32) -> Result<u32, Corrupt> {
        let _guard = self.elements.enter();
        if *ids == 2 {
            sleep(ms(1)).await;
            return Err(Corrupt(*ids));
        }
        sleep(FOREVER).await;
        Ok(*ids)
    }

    #[step]
    async fn summarize(&self, fetch: &[u32]) -> usize {
        self.summarized.fetch_add(1, Ordering::SeqCst);
        fetch.len()
    }

    /// Independent of `fetch`: still completes.
    #[step]
    async fn unrelated(&self) -> u32 {
        5
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_element_fails_the_step_and_drops_the_others() {
    let job = OneBad {
        elements: InFlight::default(),
        summarized: AtomicUsize::new(0),
    };
    let start = Instant::now();
    let err = timeout(HANG, job.run())
        .await
        .expect("the failure must not wait for the other elements")
        .expect_err("element 2 always fails");
    assert_eq!(start.elapsed(), ms(1 + 5 + 1), "two attempts of element 2");

    assert_eq!(err.step(), OneBadStep::Fetch);
    let error = err.root_cause().error();
    assert!(
        matches!(error, StepError::Element { index: 2, error } if matches!(**error, StepError::Error(_))),
        "{error:?}"
    );
    assert_eq!(error.element(), Some(2));
    assert_eq!(error.downcast_ref::<Corrupt>(), Some(&Corrupt(2)));
    assert!(!error.is_panic() && !error.is_timeout() && !error.is_cancelled());
    assert_eq!(
        error.to_string(),
        "element 2: returned an error: row 2 is corrupt"
    );
    assert_eq!(
        err.to_string(),
        "job `OneBad` failed: step `fetch` element 2: returned an error"
    );
    let source = std::error::Error::source(&err).expect("the root cause's error");
    assert_eq!(source.downcast_ref::<Corrupt>(), Some(&Corrupt(2)));

    assert_eq!(err.skipped(), [OneBadStep::Summarize]);
    assert_eq!(job.summarized.load(Ordering::SeqCst), 0);
    assert_eq!(
        err.report().step(OneBadStep::Unrelated).state(),
        StepState::Completed
    );
    let fetch = err.report().step(OneBadStep::Fetch);
    assert_eq!(fetch.state(), StepState::Failed);
    assert_eq!(
        fetch.attempts(),
        3 + 2,
        "one attempt of each other element, two of element 2"
    );
    assert_eq!(
        fetch.error(),
        Some("element 2: returned an error: row 2 is corrupt")
    );
    assert_eq!(job.elements.started(), 5);
    assert_eq!(
        job.elements.dropped(),
        5,
        "the elements still running were dropped"
    );
}

struct Panicky;

#[job]
impl Panicky {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![0, 1, 2]
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &u32) -> u32 {
        if *ids == 1 {
            panic!("element {ids} exploded");
        }
        *ids
    }
}

#[tokio::test]
async fn an_element_panic_is_caught_as_the_step_failure() {
    let err = Panicky.run().await.expect_err("element 1 panics");
    assert_eq!(err.step(), PanickyStep::Fetch);
    let error = err.root_cause().error();
    assert!(error.is_panic(), "{error:?}");
    assert_eq!(error.element(), Some(1));
    assert_eq!(error.to_string(), "element 1: panicked: element 1 exploded");
}

/// Each element takes 30ms; the timeout is 50ms per element, less than all three together.
struct Slow;

#[job]
impl Slow {
    #[step]
    async fn delays(&self) -> Vec<u64> {
        vec![30, 30, 30]
    }

    #[step(for_each(delays, concurrency = 1), timeout = Duration::from_millis(50))]
    async fn wait(&self, delays: &u64) -> u64 {
        sleep(ms(*delays)).await;
        *delays
    }

    #[step]
    async fn too_slow(&self) -> Vec<u64> {
        vec![10, 80, 10]
    }

    #[step(for_each(too_slow), timeout = Duration::from_millis(50))]
    async fn wait_too_long(&self, too_slow: &u64) -> u64 {
        sleep(ms(*too_slow)).await;
        *too_slow
    }
}

#[tokio::test(start_paused = true)]
async fn the_timeout_applies_to_each_element() {
    let start = Instant::now();
    let (result, report) = timeout(HANG, Slow.runner().run_with_report())
        .await
        .expect("run hung");
    let err = result.expect_err("element 1 of wait_too_long times out");
    assert_eq!(
        report.step(SlowStep::Wait).state(),
        StepState::Completed,
        "90ms in all, but each element within its 50ms"
    );
    assert_eq!(start.elapsed(), ms(90));
    assert_eq!(err.step(), SlowStep::WaitTooLong);
    let error = err.root_cause().error();
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(error.element(), Some(1));
    assert_eq!(error.to_string(), "element 1: timed out after 50ms");
    assert_eq!(report.step(SlowStep::WaitTooLong).duration(), Some(ms(50)));
}

// ---------------------------------------------------------------------------------------------
// How many elements run at once

/// Ten elements of 10ms each: `bounded` at most 2 at once, `unbounded` all at once.
#[derive(Default)]
struct Fan {
    bounded_in_flight: InFlight,
    unbounded_in_flight: InFlight,
}

#[job]
impl Fan {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        (0..10).collect()
    }

    #[step(for_each(ids, concurrency = 2))]
    async fn bounded(&self, ids: &u32) -> u32 {
        let _guard = self.bounded_in_flight.enter();
        sleep(ms(10)).await;
        *ids
    }

    #[step(for_each(ids), after(bounded))]
    async fn unbounded(&self, ids: &u32) -> u32 {
        let _guard = self.unbounded_in_flight.enter();
        sleep(ms(10)).await;
        *ids
    }
}

#[tokio::test(start_paused = true)]
async fn for_each_concurrency_bounds_the_elements_in_flight() {
    let job = Fan::default();
    let start = Instant::now();
    let (result, report) = timeout(HANG, job.runner().run_with_report())
        .await
        .expect("run hung");
    let out = result.unwrap();
    assert_eq!(out.bounded, (0..10).collect::<Vec<_>>());
    assert_eq!(out.unbounded, (0..10).collect::<Vec<_>>());
    assert_eq!(job.bounded_in_flight.max(), 2);
    assert_eq!(job.unbounded_in_flight.max(), 10, "no bound: all at once");
    assert_eq!(
        report.step(FanStep::Bounded).duration(),
        Some(ms(50)),
        "five rounds of two"
    );
    assert_eq!(report.step(FanStep::Unbounded).duration(), Some(ms(10)));
    assert_eq!(start.elapsed(), ms(60));
}

/// The step's own `concurrency` is global: it bounds elements across runs.
#[derive(Default)]
struct Shared {
    in_flight: InFlight,
}

const GLOBAL: u32 = 3;

#[job]
impl Shared {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        (0..10).collect()
    }

    #[step(concurrency = GLOBAL, for_each(ids))]
    async fn fetch(&self, ids: &u32) -> u32 {
        let _guard = self.in_flight.enter();
        sleep(ms(10)).await;
        *ids
    }
}

#[tokio::test(start_paused = true)]
async fn the_step_concurrency_limits_elements_across_runs() {
    let job = Shared::default();
    let limits = LimitRegistry::new();
    let start = Instant::now();
    let (a, b) = timeout(HANG, async {
        tokio::join!(
            job.runner().limits(&limits).run(),
            job.runner().limits(&limits).run()
        )
    })
    .await
    .expect("runs hung");
    assert_eq!(a.unwrap().fetch, (0..10).collect::<Vec<_>>());
    assert_eq!(b.unwrap().fetch, (0..10).collect::<Vec<_>>());
    assert_eq!(
        job.in_flight.max(),
        3,
        "3 at once over both runs' 20 elements"
    );
    assert_eq!(job.in_flight.started(), 20);
    assert_eq!(
        start.elapsed(),
        ms(70),
        "20 elements, 3 at a time, 10ms each"
    );
}

// ---------------------------------------------------------------------------------------------
// Listener, start, cancellation

struct Heard;

#[job]
impl Heard {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &u32) -> u32 {
        *ids
    }
}

#[tokio::test]
async fn the_listener_hears_the_step_once_not_each_element() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = Arc::clone(&events);
    Heard
        .runner()
        .listener(move |event| {
            let line = match event {
                StepEvent::Started { step, attempt } => format!("{step} started {attempt}"),
                StepEvent::Completed { step, attempts, .. } => {
                    format!("{step} completed {attempts}")
                }
                other => format!("{other:?}"),
            };
            heard.lock().unwrap().push(line);
        })
        .run()
        .await
        .unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        [
            "ids started 1",
            "ids completed 1",
            "fetch started 1",
            "fetch completed 3",
        ]
    );
}

struct Spawned {
    base: u32,
}

#[job]
impl Spawned {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids, concurrency = 2))]
    async fn fetch(&self, ids: &u32, ctx: &StepContext) -> String {
        tokio::task::yield_now().await;
        format!("{}:{}", ctx.element().unwrap(), self.base + ids)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_spawns_a_run_with_for_each_steps() {
    let out = Spawned { base: 10 }.start().wait().await.unwrap();
    assert_eq!(out.fetch, ["0:11", "1:12", "2:13"]);
}

/// What a started `Endless` run shares with the test.
#[derive(Default)]
struct Probe {
    elements: InFlight,
    all_started: Notify,
    after: AtomicUsize,
}

/// `start` takes the job by value: it holds its probe by `Arc`.
struct Endless(Arc<Probe>);

#[job]
impl Endless {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        (0..5).collect()
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &u32) -> u32 {
        let _guard = self.0.elements.enter();
        if self.0.elements.started() == 5 {
            self.0.all_started.notify_one();
        }
        sleep(FOREVER).await;
        *ids
    }

    #[step]
    async fn after(&self, fetch: &[u32]) -> usize {
        self.0.after.fetch_add(1, Ordering::SeqCst);
        fetch.len()
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_started_run_drops_its_running_elements() {
    let probe = Arc::new(Probe::default());
    let all_started = probe.all_started.notified();
    let handle = Endless(Arc::clone(&probe)).start();
    timeout(HANG, all_started).await.expect("elements started");
    assert_eq!(probe.elements.dropped(), 0);
    handle.cancel();
    let err = timeout(HANG, handle.wait())
        .await
        .expect("wait hung")
        .expect_err("cancelled");
    assert!(err.is_cancelled());
    assert_eq!(err.step(), EndlessStep::Fetch);
    let fetch = err.report().step(EndlessStep::Fetch);
    assert_eq!(fetch.state(), StepState::Cancelled);
    assert_eq!(err.skipped(), [], "nothing failed: `after` never started");
    assert_ne!(
        err.report().step(EndlessStep::After).state(),
        StepState::Completed
    );
    assert_eq!(probe.elements.started(), 5);
    assert_eq!(
        probe.elements.dropped(),
        5,
        "every element's future was dropped"
    );
    assert_eq!(probe.after.load(Ordering::SeqCst), 0);
}
