//! Retry and timeouts under tokio's paused clock: `Retry::fixed` and `Retry::exponential` delays
//! (first try counted, `max_delay` cap, jitter, `when` predicate, panics not retried), custom
//! `RetryPolicy` impls, per-run overrides of `retry` and `timeout`, attempts seen by the context
//! and the report, back-off ended at once by cancellation, and per-attempt timeouts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::{Retry, RetryPolicy, StepContext, StepError, StepEvent, StepState, job};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// Longer than any test waits: only a timeout or a cancellation ends it.
const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum Flaky {
    #[error("transient failure on attempt {0}")]
    Transient(u32),
    #[error("permanent failure")]
    Permanent,
}

/// What every attempt saw: its `ctx.attempt()` and its start, in virtual time since `origin`.
struct Log {
    origin: Instant,
    attempts: Mutex<Vec<(u32, Duration)>>,
}

impl Log {
    fn new() -> Self {
        Log {
            origin: Instant::now(),
            attempts: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, ctx: &StepContext) -> u32 {
        let attempt = ctx.attempt();
        self.attempts
            .lock()
            .unwrap()
            .push((attempt, self.origin.elapsed()));
        attempt
    }

    fn attempts(&self) -> Vec<(u32, Duration)> {
        self.attempts.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Exponential and fixed back-off

struct Exponential {
    log: Log,
}

#[job]
impl Exponential {
    #[step(retry = Retry::exponential(3, Duration::from_millis(100)))]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        Err(Flaky::Transient(self.log.record(ctx)))
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_counts_the_first_try_and_doubles_the_delay() {
    let job = Exponential { log: Log::new() };
    let start = Instant::now();
    let (result, report) = timeout(HANG, job.runner().run_with_report())
        .await
        .expect("run hung");
    // 3 attempts in all: waits of 100ms then 200ms, so the failure ends at exactly 300ms.
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(job.log.attempts(), [(1, ms(0)), (2, ms(100)), (3, ms(300))]);
    let err = result.expect_err("the step always fails");
    assert_eq!(err.step(), ExponentialStep::Fetch);
    assert_eq!(
        err.root_cause().error().downcast_ref::<Flaky>(),
        Some(&Flaky::Transient(3)),
        "the last attempt's error is the step's failure"
    );
    for report in [&report, err.report()] {
        let fetch = report.step(ExponentialStep::Fetch);
        assert_eq!(fetch.state(), StepState::Failed);
        assert_eq!(fetch.attempts(), 3);
        assert_eq!(
            fetch.error(),
            Some("returned an error: transient failure on attempt 3")
        );
    }
}

struct Fixed {
    log: Log,
}

#[job]
impl Fixed {
    /// Succeeds on its third attempt.
    #[step(retry = Retry::fixed(3, Duration::from_millis(100)))]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        let attempt = self.log.record(ctx);
        if attempt < 3 {
            Err(Flaky::Transient(attempt))
        } else {
            Ok(attempt * 10)
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fixed_waits_the_same_delay_and_a_late_success_completes() {
    let job = Fixed { log: Log::new() };
    let start = Instant::now();
    let (result, report) = timeout(HANG, job.runner().run_with_report())
        .await
        .expect("run hung");
    assert_eq!(start.elapsed(), ms(200));
    assert_eq!(job.log.attempts(), [(1, ms(0)), (2, ms(100)), (3, ms(200))]);
    assert_eq!(result.expect("the third attempt succeeds").fetch, 30);
    let fetch = report.step(FixedStep::Fetch);
    assert_eq!(fetch.state(), StepState::Completed);
    assert_eq!(fetch.attempts(), 3);
    assert_eq!(fetch.error(), None);
}

struct Capped {
    log: Log,
}

#[job]
impl Capped {
    #[step(retry = Retry::exponential(4, Duration::from_millis(100)).max_delay(Duration::from_millis(150)))]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        Err(Flaky::Transient(self.log.record(ctx)))
    }
}

#[tokio::test(start_paused = true)]
async fn max_delay_caps_the_exponential_delays() {
    let job = Capped { log: Log::new() };
    let delays = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&delays);
    let start = Instant::now();
    let result = timeout(
        HANG,
        job.runner()
            .listener(move |event| {
                if let StepEvent::Retrying { delay, .. } = event {
                    seen.lock().unwrap().push(*delay);
                }
            })
            .run(),
    )
    .await
    .expect("run hung");
    assert!(result.is_err());
    // 100ms, then 200ms and 400ms capped at 150ms.
    assert_eq!(*delays.lock().unwrap(), [ms(100), ms(150), ms(150)]);
    assert_eq!(
        job.log.attempts(),
        [(1, ms(0)), (2, ms(100)), (3, ms(250)), (4, ms(400))]
    );
    assert_eq!(start.elapsed(), ms(400));
}

struct Jittered {
    log: Log,
}

#[job]
impl Jittered {
    #[step(retry = Retry::fixed(2, Duration::from_millis(100)).jitter())]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        Err(Flaky::Transient(self.log.record(ctx)))
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_draws_each_delay_from_the_upper_half() {
    let delays = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..16 {
        let job = Jittered { log: Log::new() };
        let seen = Arc::clone(&delays);
        let result = timeout(
            HANG,
            job.runner()
                .listener(move |event| {
                    if let StepEvent::Retrying { delay, .. } = event {
                        seen.lock().unwrap().push(*delay);
                    }
                })
                .run(),
        )
        .await
        .expect("run hung");
        assert!(result.is_err());
        let delay = *delays.lock().unwrap().last().expect("one retry per run");
        assert!(
            delay >= ms(50) && delay <= ms(100),
            "{delay:?} is outside [50ms, 100ms]"
        );
        let attempts = job.log.attempts();
        assert_eq!(attempts.len(), 2);
        // The back-off really is the drawn delay (timers have millisecond resolution).
        let waited = attempts[1].1;
        assert!(
            waited >= delay && waited <= delay + ms(1),
            "waited {waited:?} for a delay of {delay:?}"
        );
    }
    let delays = delays.lock().unwrap();
    assert_eq!(delays.len(), 16);
    let distinct: HashSet<Duration> = delays.iter().copied().collect();
    assert!(
        distinct.len() > 1,
        "jitter drew the same delay every time: {delays:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Which failures are retried

fn is_transient(err: &StepError) -> bool {
    matches!(err.downcast_ref::<Flaky>(), Some(Flaky::Transient(_)))
}

struct Selective {
    permanent: Log,
    transient_first: Log,
}

#[job]
impl Selective {
    /// Fails permanently at once: the predicate refuses a retry.
    #[step(retry = Retry::fixed(5, Duration::from_millis(10)).when(is_transient))]
    async fn permanent(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        self.permanent.record(ctx);
        Err(Flaky::Permanent)
    }

    /// Fails transiently, then permanently: one retry only.
    #[step(retry = Retry::fixed(5, Duration::from_millis(10)).when(is_transient))]
    async fn transient_first(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        match self.transient_first.record(ctx) {
            1 => Err(Flaky::Transient(1)),
            _ => Err(Flaky::Permanent),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_when_predicate_stops_retries_of_other_errors() {
    let job = Selective {
        permanent: Log::new(),
        transient_first: Log::new(),
    };
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .expect_err("both steps fail");
    assert_eq!(job.permanent.attempts(), [(1, ms(0))]);
    assert_eq!(job.transient_first.attempts(), [(1, ms(0)), (2, ms(10))]);
    let report = err.report();
    assert_eq!(report.step(SelectiveStep::Permanent).attempts(), 1);
    assert_eq!(report.step(SelectiveStep::TransientFirst).attempts(), 2);
    assert_eq!(err.failures().len(), 2);
}

struct Panicky {
    log: Log,
}

#[job]
impl Panicky {
    #[step(retry = Retry::fixed(3, Duration::from_millis(10)))]
    async fn buggy(&self, ctx: &StepContext) -> u32 {
        self.log.record(ctx);
        panic!("a bug, not a transient failure");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_not_retried_by_default() {
    let job = Panicky { log: Log::new() };
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .expect_err("the step panics");
    assert_eq!(job.log.attempts(), [(1, ms(0))]);
    assert!(err.root_cause().error().is_panic());
    assert_eq!(err.report().step(PanickyStep::Buggy).attempts(), 1);
}

// ---------------------------------------------------------------------------------------------
// Custom policies

/// Retries until `self.0` attempts, waiting 7ms times the attempt that failed.
struct Countdown(u32);

impl RetryPolicy for Countdown {
    fn should_retry(&self, attempt: u32, _error: &StepError) -> Option<Duration> {
        (attempt < self.0).then(|| ms(7 * u64::from(attempt)))
    }
}

/// Records what it was asked; retries once after 5ms.
#[derive(Default)]
struct Recording {
    asked: Mutex<Vec<(u32, String)>>,
}

impl RetryPolicy for Recording {
    fn should_retry(&self, attempt: u32, error: &StepError) -> Option<Duration> {
        self.asked
            .lock()
            .unwrap()
            .push((attempt, error.to_string()));
        (attempt == 1).then_some(ms(5))
    }
}

struct Custom {
    log: Log,
}

#[job]
impl Custom {
    #[step(retry = Countdown(3))]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        Err(Flaky::Transient(self.log.record(ctx)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_retry_policy_in_the_attribute_is_honoured() {
    let job = Custom { log: Log::new() };
    let start = Instant::now();
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .expect_err("the step always fails");
    assert_eq!(job.log.attempts(), [(1, ms(0)), (2, ms(7)), (3, ms(21))]);
    assert_eq!(start.elapsed(), ms(21));
    assert_eq!(err.report().step(CustomStep::Fetch).attempts(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_custom_retry_policy_given_to_the_runner_is_asked_with_the_attempt_and_error() {
    let job = Custom { log: Log::new() };
    let policy = Arc::new(Recording::default());
    let err = timeout(
        HANG,
        job.runner()
            .retry(CustomStep::Fetch, Arc::clone(&policy))
            .run(),
    )
    .await
    .expect("run hung")
    .expect_err("the step always fails");
    assert_eq!(job.log.attempts(), [(1, ms(0)), (2, ms(5))]);
    assert_eq!(
        *policy.asked.lock().unwrap(),
        [
            (
                1,
                "returned an error: transient failure on attempt 1".to_owned()
            ),
            (
                2,
                "returned an error: transient failure on attempt 2".to_owned()
            ),
        ]
    );
    assert_eq!(err.report().step(CustomStep::Fetch).attempts(), 2);
}

// ---------------------------------------------------------------------------------------------
// Per-run overrides

struct Overridable {
    with_retry: Log,
    without_retry: Log,
}

#[job]
impl Overridable {
    #[step(retry = Retry::fixed(5, Duration::from_millis(10)))]
    async fn with_retry(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        Err(Flaky::Transient(self.with_retry.record(ctx)))
    }

    #[step]
    async fn without_retry(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        Err(Flaky::Transient(self.without_retry.record(ctx)))
    }
}

impl Overridable {
    fn new() -> Self {
        Overridable {
            with_retry: Log::new(),
            without_retry: Log::new(),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn without_overrides_the_attribute_policies_apply() {
    let job = Overridable::new();
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .unwrap_err();
    assert_eq!(job.with_retry.attempts().len(), 5);
    assert_eq!(job.without_retry.attempts(), [(1, ms(0))]);
    assert_eq!(err.report().step(OverridableStep::WithRetry).attempts(), 5);
    assert_eq!(
        err.report().step(OverridableStep::WithoutRetry).attempts(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn runner_retry_overrides_the_attribute_for_one_run() {
    let job = Overridable::new();
    let err = timeout(
        HANG,
        job.runner()
            .retry(OverridableStep::WithRetry, Retry::fixed(2, ms(1000)))
            .retry(OverridableStep::WithoutRetry, Retry::exponential(3, ms(20)))
            .run(),
    )
    .await
    .expect("run hung")
    .unwrap_err();
    assert_eq!(job.with_retry.attempts(), [(1, ms(0)), (2, ms(1000))]);
    assert_eq!(
        job.without_retry.attempts(),
        [(1, ms(0)), (2, ms(20)), (3, ms(60))]
    );
    assert_eq!(err.report().step(OverridableStep::WithRetry).attempts(), 2);
    assert_eq!(
        err.report().step(OverridableStep::WithoutRetry).attempts(),
        3
    );

    // The override was for that run only.
    let job = Overridable::new();
    let _ = timeout(HANG, job.run()).await.expect("run hung");
    assert_eq!(job.with_retry.attempts().len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Cancellation during back-off

/// Fails at once, then waits an hour before its next attempt.
#[derive(Default)]
struct LongBackoff {
    failed: Notify,
    attempts: Mutex<Vec<u32>>,
}

#[job]
impl LongBackoff {
    #[step(retry = Retry::fixed(3, Duration::from_secs(3600)))]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        self.attempts.lock().unwrap().push(ctx.attempt());
        self.failed.notify_one();
        Err(Flaky::Transient(ctx.attempt()))
    }
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_handle_ends_a_back_off_sleep_at_once() {
    let job = Arc::new(LongBackoff::default());
    let handle = ArcJob(Arc::clone(&job)).start();
    job.failed.notified().await;
    // The spawned run is now sleeping through its hour of back-off.
    tokio::task::yield_now().await;
    let cancelled_at = Instant::now();
    handle.cancel();
    let err = timeout(HANG, handle.wait())
        .await
        .expect("wait hung")
        .unwrap_err();
    assert_eq!(
        cancelled_at.elapsed(),
        Duration::ZERO,
        "the back-off sleep ended at once"
    );
    assert!(err.is_cancelled());
    assert_eq!(*job.attempts.lock().unwrap(), [1]);
    let fetch = err.report().step(ArcJobStep::Fetch);
    assert_eq!(fetch.state(), StepState::Cancelled);
    assert_eq!(fetch.attempts(), 1);
}

/// `LongBackoff` behind an `Arc`, so the test keeps a reference while `start` owns the job.
struct ArcJob(Arc<LongBackoff>);

#[job]
impl ArcJob {
    #[step(retry = Retry::fixed(3, Duration::from_secs(3600)))]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        self.0.fetch(ctx).await
    }
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_during_back_off_cancels_its_token() {
    let job = LongBackoff::default();
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&tokens);
    let run = job
        .runner()
        .enrich(move |ctx| seen.lock().unwrap().push(ctx.cancellation_token().clone()))
        .run();
    let start = Instant::now();
    assert!(
        timeout(ms(10), run).await.is_err(),
        "dropped during back-off"
    );
    assert_eq!(start.elapsed(), ms(10));
    assert_eq!(*job.attempts.lock().unwrap(), [1]);
    let tokens = tokens.lock().unwrap();
    assert_eq!(tokens.len(), 1);
    assert!(
        tokens[0].is_cancelled(),
        "dropping the run cancels its token"
    );
}

/// One branch sleeps through a long back-off while the other fails.
#[derive(Default)]
struct BackoffAndFailure {
    log: Mutex<Vec<u32>>,
}

#[job]
impl BackoffAndFailure {
    #[step(retry = Retry::fixed(3, Duration::from_secs(3600)))]
    async fn retrying(&self, ctx: &StepContext) -> Result<u32, Flaky> {
        self.log.lock().unwrap().push(ctx.attempt());
        Err(Flaky::Transient(ctx.attempt()))
    }

    #[step]
    async fn failing(&self) -> Result<u32, Flaky> {
        sleep(Duration::from_millis(10)).await;
        Err(Flaky::Permanent)
    }
}

#[tokio::test(start_paused = true)]
async fn fail_fast_ends_a_back_off_sleep_at_once() {
    let job = BackoffAndFailure::default();
    let start = Instant::now();
    let err = timeout(HANG, job.runner().fail_fast().run())
        .await
        .expect("run hung")
        .unwrap_err();
    assert_eq!(start.elapsed(), ms(10));
    assert_eq!(*job.log.lock().unwrap(), [1]);
    assert_eq!(err.step(), BackoffAndFailureStep::Failing);
    let retrying = err.report().step(BackoffAndFailureStep::Retrying);
    assert_eq!(retrying.state(), StepState::Cancelled);
    assert_eq!(retrying.attempts(), 1);
}

// ---------------------------------------------------------------------------------------------
// Timeouts

struct Slow {
    log: Log,
}

#[job]
impl Slow {
    /// Hangs on every attempt.
    #[step(timeout = Duration::from_millis(50))]
    async fn hang(&self, ctx: &StepContext) -> u32 {
        self.log.record(ctx);
        sleep(HOUR).await;
        0
    }
}

#[tokio::test(start_paused = true)]
async fn an_attempt_longer_than_its_timeout_fails_with_timed_out() {
    let job = Slow { log: Log::new() };
    let start = Instant::now();
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .unwrap_err();
    assert_eq!(start.elapsed(), ms(50));
    assert_eq!(err.step(), SlowStep::Hang);
    let error = err.root_cause().error();
    assert!(error.is_timeout());
    assert!(
        matches!(error, StepError::Timeout(d) if *d == ms(50)),
        "{error:?}"
    );
    let text = err.to_string();
    assert!(text.contains("timed out after 50ms"), "{text}");
    let hang = err.report().step(SlowStep::Hang);
    assert_eq!(hang.state(), StepState::Failed);
    assert_eq!(hang.attempts(), 1);
    assert_eq!(hang.error(), Some("timed out after 50ms"));
}

struct SlowThenFast {
    log: Log,
}

#[job]
impl SlowThenFast {
    /// Hangs on its first attempt, answers after 5ms on the next.
    #[step(timeout = Duration::from_millis(50), retry = Retry::fixed(3, Duration::from_millis(10)))]
    async fn fetch(&self, ctx: &StepContext) -> u32 {
        let attempt = self.log.record(ctx);
        if attempt == 1 {
            sleep(HOUR).await;
        }
        sleep(Duration::from_millis(5)).await;
        attempt
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_retried_and_the_next_succeeds() {
    let job = SlowThenFast { log: Log::new() };
    let start = Instant::now();
    let (result, report) = timeout(HANG, job.runner().run_with_report())
        .await
        .expect("run hung");
    assert_eq!(result.expect("the second attempt succeeds").fetch, 2);
    // 50ms timeout, 10ms back-off, 5ms of work.
    assert_eq!(start.elapsed(), ms(65));
    assert_eq!(job.log.attempts(), [(1, ms(0)), (2, ms(60))]);
    let fetch = report.step(SlowThenFastStep::Fetch);
    assert_eq!(fetch.state(), StepState::Completed);
    assert_eq!(fetch.attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn every_attempt_timing_out_fails_with_timed_out() {
    let job = Slow { log: Log::new() };
    let start = Instant::now();
    let err = timeout(
        HANG,
        job.runner()
            .retry(SlowStep::Hang, Retry::fixed(2, ms(10)))
            .run(),
    )
    .await
    .expect("run hung")
    .unwrap_err();
    assert_eq!(job.log.attempts(), [(1, ms(0)), (2, ms(60))]);
    assert_eq!(start.elapsed(), ms(110));
    assert!(err.root_cause().error().is_timeout());
    assert!(err.to_string().contains("timed out after 50ms"), "{err}");
    assert_eq!(err.report().step(SlowStep::Hang).attempts(), 2);
}

/// Three steps of 100ms each: one with a generous timeout, one with a tight one, one without.
struct Timeouts;

#[job]
impl Timeouts {
    #[step(timeout = Duration::from_secs(3600))]
    async fn generous(&self) -> u32 {
        sleep(Duration::from_millis(100)).await;
        1
    }

    #[step(timeout = Duration::from_millis(10))]
    async fn tight(&self) -> u32 {
        sleep(Duration::from_millis(100)).await;
        2
    }

    #[step]
    async fn unlimited(&self) -> u32 {
        sleep(Duration::from_millis(100)).await;
        3
    }
}

#[tokio::test(start_paused = true)]
async fn without_overrides_the_attribute_timeouts_apply() {
    let err = timeout(HANG, Timeouts.run())
        .await
        .expect("run hung")
        .unwrap_err();
    assert_eq!(err.failures().len(), 1);
    assert_eq!(err.step(), TimeoutsStep::Tight);
    assert!(err.to_string().contains("timed out after 10ms"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn runner_timeout_overrides_the_attribute_for_one_run() {
    let start = Instant::now();
    let err = timeout(
        HANG,
        Timeouts
            .runner()
            .timeout(TimeoutsStep::Generous, ms(20))
            .timeout(TimeoutsStep::Tight, ms(1000))
            .timeout(TimeoutsStep::Unlimited, ms(30))
            .run(),
    )
    .await
    .expect("run hung")
    .unwrap_err();
    assert_eq!(start.elapsed(), ms(100), "`tight` ran to its end");
    let failed: Vec<_> = err
        .failures()
        .iter()
        .map(|f| (f.step(), f.error().to_string()))
        .collect();
    assert_eq!(
        failed,
        [
            (TimeoutsStep::Generous, "timed out after 20ms".to_owned()),
            (TimeoutsStep::Unlimited, "timed out after 30ms".to_owned()),
        ]
    );
    let report = err.report();
    assert_eq!(
        report.step(TimeoutsStep::Tight).state(),
        StepState::Completed
    );
}
