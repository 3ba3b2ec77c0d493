//! Nothing a user supplies panics a run: a panic in enrichment, a listener, a retry policy or
//! its `when` predicate, a batch's input iterator, `configure` closure or status listener, a
//! panic payload that panics when dropped, and a step future whose guard panics when the library
//! drops it (timeout, `fail_fast`, cancellation, a dropped run) each becomes a step's failure or
//! a logged error, with the run, its task and the batch intact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::{Batch, BatchStatus, Retry, RetryPolicy, StepContext, StepError, StepEvent, job};
use tokio::time::sleep;

/// Longer than any test waits: only a timeout or a cancellation ends it.
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
#[error("flaky")]
struct Flaky;

/// Panics when dropped: held by a step's future, or carried as a panic payload.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        // Never while unwinding: that would abort the test process, whatever the library does.
        if !std::thread::panicking() {
            panic!("bomb dropped");
        }
    }
}

fn panic_enrich(_: &mut StepContext) {
    panic!("enrichment panicked");
}

// ---------------------------------------------------------------------------------------------
// Enrichment

struct Enriched;

#[job(enrich = panic_enrich)]
impl Enriched {
    /// No policy: the lean path.
    #[step]
    async fn lean(&self) -> u32 {
        1
    }

    /// A retry policy: the general path.
    #[step(retry = Retry::fixed(3, Duration::ZERO))]
    async fn general(&self, ctx: &StepContext) -> u32 {
        ctx.attempt()
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_job_enrichment_fails_the_step_on_either_path() {
    let err = Enriched.run().await.unwrap_err();
    assert_eq!(err.failures().len(), 2, "{err:?}");
    for failure in err.failures() {
        assert!(failure.error().is_panic(), "{failure}");
        assert!(
            failure.to_string().contains("enrichment panicked"),
            "{failure}"
        );
    }
}

struct Plain;

#[job]
impl Plain {
    #[step]
    async fn first(&self) -> u32 {
        1
    }

    #[step]
    async fn second(&self, first: &u32) -> u32 {
        first + 1
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_runner_enrichment_fails_the_step_on_the_general_path() {
    let err = Plain
        .runner()
        // A run override takes the general path.
        .timeout(PlainStep::First, HOUR)
        .enrich(|ctx| {
            if ctx.step_name() == "first" {
                panic!("runner enrichment panicked");
            }
        })
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.step(), PlainStep::First);
    assert!(err.root_cause().error().is_panic());
    assert!(err.to_string().contains("panicked"), "{err}");
    assert_eq!(err.skipped(), [PlainStep::Second]);
}

// ---------------------------------------------------------------------------------------------
// Listeners

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_listener_loses_its_events_and_the_run_goes_on() {
    let heard = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&heard);
    let out = Plain
        .runner()
        .listener(|_| panic!("listener panicked"))
        .listener(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .run()
        .await
        .unwrap();
    assert_eq!(out.second, 2);
    // The listener after the panicking one still hears every event: 2 started, 2 completed.
    assert_eq!(heard.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_listener_panicking_on_failure_and_skip_events_leaves_the_error_intact() {
    let err = Broken
        .runner()
        .listener(|event| {
            if matches!(event, StepEvent::Failed { .. } | StepEvent::Skipped { .. }) {
                panic!("listener panicked");
            }
        })
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.step(), BrokenStep::Fail);
    assert_eq!(err.skipped(), [BrokenStep::After]);
}

// ---------------------------------------------------------------------------------------------
// Retry policies

struct Broken;

#[job]
impl Broken {
    #[step]
    async fn fail(&self) -> Result<u32, Flaky> {
        Err(Flaky)
    }

    #[step]
    async fn after(&self, fail: &u32) -> u32 {
        *fail
    }
}

struct PanickingPolicy;

impl RetryPolicy for PanickingPolicy {
    fn should_retry(&self, _: u32, _: &StepError) -> Option<Duration> {
        panic!("policy panicked");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_retry_policy_fails_the_step() {
    let err = Broken
        .runner()
        .retry(BrokenStep::Fail, PanickingPolicy)
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.step(), BrokenStep::Fail);
    let text = err.root_cause().error().to_string();
    assert!(text.contains("policy panicked"), "{text}");
    assert!(
        text.contains("flaky"),
        "the attempt's own error is kept: {text}"
    );
    assert_eq!(err.report().step(BrokenStep::Fail).attempts(), 1);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_when_predicate_fails_the_step() {
    let policy = Retry::fixed(3, Duration::ZERO).when(|_| panic!("predicate panicked"));
    let err = Broken
        .runner()
        .retry(BrokenStep::Fail, policy)
        .run()
        .await
        .unwrap_err();
    let text = err.root_cause().error().to_string();
    assert!(text.contains("predicate panicked"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Panic payloads and guards that panic when dropped

struct Payload;

#[job]
impl Payload {
    #[step]
    async fn lean(&self) -> u32 {
        std::panic::panic_any(Bomb)
    }

    #[step(timeout = HOUR)]
    async fn general(&self) -> u32 {
        std::panic::panic_any(Bomb)
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panic_payload_that_panics_when_dropped_is_the_steps_failure() {
    let err = Payload.run().await.unwrap_err();
    assert_eq!(err.failures().len(), 2, "{err:?}");
    assert!(err.failures().iter().all(|f| f.error().is_panic()));
}

struct Guarded;

#[job]
impl Guarded {
    #[step(timeout = Duration::from_millis(10))]
    async fn timed(&self) -> u32 {
        let _bomb = Bomb;
        sleep(HOUR).await;
        1
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_guard_panicking_when_a_timeout_drops_it_leaves_the_timeout() {
    let err = Guarded.run().await.unwrap_err();
    assert!(err.root_cause().error().is_timeout(), "{err}");
}

struct FailFast;

#[job]
impl FailFast {
    #[step]
    async fn held(&self) -> u32 {
        let _bomb = Bomb;
        sleep(HOUR).await;
        1
    }

    #[step(timeout = HOUR)]
    async fn held_general(&self) -> u32 {
        let _bomb = Bomb;
        sleep(HOUR).await;
        1
    }

    #[step]
    async fn fail(&self) -> Result<u32, Flaky> {
        sleep(Duration::from_millis(10)).await;
        Err(Flaky)
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn guards_panicking_when_fail_fast_drops_them_leave_the_run_intact() {
    let err = FailFast.runner().fail_fast().run().await.unwrap_err();
    assert_eq!(err.step(), FailFastStep::Fail);
    assert_eq!(err.failures().len(), 3, "{err:?}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn guards_panicking_when_cancel_drops_them_leave_the_task_intact() {
    let handle = FailFast.start();
    sleep(Duration::from_millis(1)).await;
    handle.cancel();
    let err = handle.wait().await.unwrap_err();
    assert!(err.is_cancelled(), "{err}");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn guards_panicking_when_the_run_future_is_dropped_stay_inside() {
    let mut run = Box::pin(FailFast.run());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(run.as_mut().poll(&mut cx).is_pending());
    drop(run);
}

// ---------------------------------------------------------------------------------------------
// Batches

struct Row {
    n: u32,
}

#[job]
impl Row {
    #[step]
    async fn load(&self) -> u32 {
        self.n
    }

    #[step]
    async fn double(&self, load: &u32) -> u32 {
        load * 2
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_input_iterator_ends_the_inputs_with_a_failed_run() {
    let inputs = (0..5).map(|n| {
        if n == 3 {
            panic!("input iterator panicked");
        }
        Row { n }
    });
    let done = Batch::new(inputs).concurrency(2).run().await;
    assert_eq!(done.results.len(), 4);
    assert!(done.results[..3].iter().all(Result::is_ok));
    let err = done.results[3].as_ref().unwrap_err();
    assert!(err.to_string().contains("panicked"), "{err}");
    assert!(
        err.root_cause()
            .error()
            .to_string()
            .contains("input iterator panicked"),
        "{err:?}"
    );
    let s = done.summary;
    assert_eq!((s.total, s.succeeded, s.failed, s.cancelled), (4, 3, 1, 0));
    assert!(!done.is_success());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_configure_closure_fails_that_run_only() {
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&statuses);
    let done = Batch::new((0..4).map(|n| Row { n }))
        .configure(|index, runner| {
            if index == 1 {
                panic!("configure panicked");
            }
            runner
        })
        .status_listener(move |status: &BatchStatus<RowStep>| {
            seen.lock().unwrap().push(status.clone());
        })
        .run()
        .await;
    assert!(done.results[1].is_err());
    let err = done.results[1].as_ref().unwrap_err();
    assert!(
        err.root_cause()
            .error()
            .to_string()
            .contains("configure panicked"),
        "{err:?}"
    );
    let s = done.summary;
    assert_eq!((s.total, s.succeeded, s.failed), (4, 3, 1));
    let last = statuses.lock().unwrap().last().cloned().unwrap();
    assert!(last.finished);
    assert_eq!(last.runs.running, 0);
    for step in &last.steps {
        assert_eq!((step.waiting, step.running), (0, 0), "{step:?}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_panicking_status_listener_loses_that_call_and_the_batch_goes_on() {
    let done = Batch::new((0..4).map(|n| Row { n }))
        .concurrency(2)
        .status_listener(|_: &BatchStatus<RowStep>| panic!("status listener panicked"))
        .run()
        .await;
    assert_eq!(done.results.len(), 4);
    assert!(done.is_success());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_batch_whose_run_listener_panicked_accounts_for_every_run() {
    let mut batch = Batch::new((0..4).map(|n| Row { n }))
        .concurrency(2)
        .configure(|_, runner| runner.listener(|_| panic!("run listener panicked")))
        .stream();
    let mut seen = 0;
    while let Some(item) = futures::StreamExt::next(&mut batch).await {
        assert!(item.result.is_ok());
        seen += 1;
    }
    assert_eq!(seen, 4);
    assert_eq!(batch.summary().succeeded, 4);
    let status = batch.status();
    assert!(status.finished);
    assert_eq!(status.runs.running, 0);
    assert_eq!(status.step(RowStep::Double).completed, 4);
}
