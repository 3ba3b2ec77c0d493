//! The runner's per-run options and the step context: `job_id`, enrichment (`#[job(enrich)]`
//! then `Runner::enrich`, before every attempt), `sequential`, `fail_fast`, the event listener,
//! and what `StepContext` tells a step (job name and id, step name, attempt, cancellation token,
//! typed values).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::{CancellationToken, Retry, StepContext, StepEvent, StepState, job};
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("broken ({0})")]
struct Broken(&'static str);

// ---------------------------------------------------------------------------------------------
// Context and job id

/// Everything a context told its step.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    job_name: &'static str,
    job_id: String,
    step_name: &'static str,
    attempt: u32,
}

impl Seen {
    fn of(ctx: &StepContext) -> Self {
        Seen {
            job_name: ctx.job_name(),
            job_id: ctx.job_id().to_owned(),
            step_name: ctx.step_name(),
            attempt: ctx.attempt(),
        }
    }
}

#[derive(Default)]
struct Introspect {
    seen: Mutex<Vec<Seen>>,
    tokens: Mutex<Vec<CancellationToken>>,
}

#[job(name = "introspection")]
impl Introspect {
    #[step]
    async fn first(&self, ctx: &StepContext) -> String {
        self.seen.lock().unwrap().push(Seen::of(ctx));
        ctx.job_id().to_owned()
    }

    /// Fails twice, then succeeds.
    #[step(retry = Retry::fixed(3, Duration::from_millis(1)))]
    async fn second(&self, first: &String, ctx: &StepContext) -> Result<u32, Broken> {
        assert!(
            !ctx.cancellation_token().is_cancelled(),
            "the token is live while the run runs"
        );
        self.tokens
            .lock()
            .unwrap()
            .push(ctx.cancellation_token().clone());
        self.seen.lock().unwrap().push(Seen::of(ctx));
        assert_eq!(*first, ctx.job_id());
        match ctx.attempt() {
            3 => Ok(3),
            _ => Err(Broken("not yet")),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_context_names_the_job_the_run_the_step_and_the_attempt() {
    let job = Introspect::default();
    let out = timeout(HANG, job.runner().job_id("nightly-42").run())
        .await
        .expect("run hung")
        .unwrap();
    assert_eq!(out.first, "nightly-42");
    assert_eq!(out.second, 3);
    let seen = job.seen.lock().unwrap();
    let expected: Vec<Seen> = [("first", 1), ("second", 1), ("second", 2), ("second", 3)]
        .into_iter()
        .map(|(step_name, attempt)| Seen {
            job_name: "introspection",
            job_id: "nightly-42".to_owned(),
            step_name,
            attempt,
        })
        .collect();
    assert_eq!(*seen, expected);
    // Every attempt shares the run's token, cancelled once the run has ended.
    let tokens = job.tokens.lock().unwrap();
    assert_eq!(tokens.len(), 3);
    assert!(tokens.iter().all(CancellationToken::is_cancelled));
}

#[tokio::test(start_paused = true)]
async fn without_job_id_each_run_gets_a_distinct_generated_id() {
    let job = Introspect::default();
    let (a, report_a) = job.runner().run_with_report().await;
    let (b, report_b) = job.runner().run_with_report().await;
    let (a, b) = (a.unwrap().first, b.unwrap().first);
    assert!(!a.is_empty());
    assert_ne!(a, b);
    assert_eq!(report_a.job_id(), a);
    assert_eq!(report_b.job_id(), b);
    assert_eq!(report_a.job_name(), "introspection");
}

#[derive(Default)]
struct FailsWithId {
    ids: Mutex<Vec<String>>,
}

#[job]
impl FailsWithId {
    #[step]
    async fn only(&self, ctx: &StepContext) -> Result<(), Broken> {
        self.ids.lock().unwrap().push(ctx.job_id().to_owned());
        Err(Broken("only"))
    }
}

#[tokio::test]
async fn job_id_is_in_the_context_the_error_and_its_report() {
    let job = FailsWithId::default();
    let err = job.runner().job_id("run-7").run().await.unwrap_err();
    assert_eq!(*job.ids.lock().unwrap(), ["run-7"]);
    assert_eq!(err.job_id(), "run-7");
    assert_eq!(err.report().job_id(), "run-7");
    assert_eq!(err.job_name(), "FailsWithId");
}

#[test]
#[should_panic(expected = "a job id must not be empty")]
fn an_empty_job_id_is_refused() {
    let job = FailsWithId::default();
    let _ = job.runner().job_id("");
}

// ---------------------------------------------------------------------------------------------
// Enrichment

/// The trail of enrichment calls one attempt's context went through.
#[derive(Debug, Clone, PartialEq)]
struct Trail(Vec<String>);

/// Counts calls of `from_the_job`: only `Enriched` uses it, so tests do not share it.
static JOB_ENRICH_CALLS: AtomicUsize = AtomicUsize::new(0);

/// The `#[job(enrich = ..)]` of `Enriched`.
fn from_the_job(ctx: &mut StepContext) {
    JOB_ENRICH_CALLS.fetch_add(1, Ordering::SeqCst);
    assert!(
        ctx.get::<Trail>().is_none(),
        "the job's enrichment runs first"
    );
    ctx.insert(Trail(vec![format!(
        "job:{}#{}",
        ctx.step_name(),
        ctx.attempt()
    )]));
    ctx.record("tenant", "acme");
}

#[derive(Default)]
struct Enriched {
    trails: Mutex<Vec<Trail>>,
}

#[job(enrich = from_the_job)]
impl Enriched {
    /// Fails on its first attempt: enrichment must run again for the second.
    #[step(retry = Retry::fixed(2, Duration::from_millis(1)))]
    async fn fetch(&self, ctx: &StepContext) -> Result<u32, Broken> {
        let trail = ctx.get::<Trail>().expect("enriched").clone();
        self.trails.lock().unwrap().push(trail);
        assert_eq!(ctx.get::<u64>(), None, "no value of a type never inserted");
        match ctx.attempt() {
            1 => Err(Broken("first attempt")),
            n => Ok(n),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn job_enrichment_then_runner_enrichment_run_before_every_attempt() {
    let job = Enriched::default();
    let runner_calls = Arc::new(AtomicUsize::new(0));
    let calls = Arc::clone(&runner_calls);
    let before = JOB_ENRICH_CALLS.load(Ordering::SeqCst);
    let out = timeout(
        HANG,
        job.runner()
            .enrich(move |ctx| {
                calls.fetch_add(1, Ordering::SeqCst);
                let mut trail = ctx
                    .get::<Trail>()
                    .expect("the job's enrichment ran")
                    .clone();
                trail
                    .0
                    .push(format!("runner:{}#{}", ctx.step_name(), ctx.attempt()));
                // Replaces the job's value of the same type.
                ctx.insert(trail);
            })
            .enrich(|ctx| {
                let mut trail = ctx.get::<Trail>().expect("earlier enrichment ran").clone();
                trail.0.push("second runner enrichment".to_owned());
                ctx.insert(trail);
            })
            .run(),
    )
    .await
    .expect("run hung")
    .unwrap();
    assert_eq!(out.fetch, 2);
    assert_eq!(JOB_ENRICH_CALLS.load(Ordering::SeqCst) - before, 2);
    assert_eq!(runner_calls.load(Ordering::SeqCst), 2);
    let trail = |n: u32| {
        Trail(vec![
            format!("job:fetch#{n}"),
            format!("runner:fetch#{n}"),
            "second runner enrichment".to_owned(),
        ])
    };
    assert_eq!(*job.trails.lock().unwrap(), [trail(1), trail(2)]);
}

#[tokio::test]
async fn record_collects_span_fields_replacing_a_key() {
    let job = Enriched::default();
    let fields = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&fields);
    job.runner()
        .enrich(|ctx| {
            ctx.record("tenant", "globex");
            ctx.record("region", 7);
        })
        .enrich(move |ctx| {
            let pairs: Vec<(String, String)> = ctx
                .fields()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            seen.lock().unwrap().push(pairs);
        })
        .run()
        .await
        .unwrap();
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let expected = vec![pair("tenant", "globex"), pair("region", "7")];
    assert_eq!(*fields.lock().unwrap(), [expected.clone(), expected]);
}

// ---------------------------------------------------------------------------------------------
// Sequential

/// Two independent steps that each sleep, recording when they ran.
struct Sleepers {
    origin: Instant,
    spans: Mutex<Vec<(&'static str, Duration, Duration)>>,
}

impl Sleepers {
    fn new() -> Self {
        Sleepers {
            origin: Instant::now(),
            spans: Mutex::new(Vec::new()),
        }
    }

    async fn nap(&self, name: &'static str, length: Duration) {
        let start = self.origin.elapsed();
        sleep(length).await;
        let end = self.origin.elapsed();
        self.spans.lock().unwrap().push((name, start, end));
    }

    fn spans(&self) -> Vec<(&'static str, Duration, Duration)> {
        let mut spans = self.spans.lock().unwrap().clone();
        spans.sort_by_key(|s| (s.1, s.2));
        spans
    }
}

#[job]
impl Sleepers {
    #[step]
    async fn left(&self) {
        self.nap("left", ms(100)).await;
    }

    #[step]
    async fn right(&self) {
        self.nap("right", ms(50)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn by_default_independent_steps_overlap() {
    let job = Sleepers::new();
    timeout(HANG, job.run()).await.expect("run hung").unwrap();
    assert_eq!(
        job.spans(),
        [("right", ms(0), ms(50)), ("left", ms(0), ms(100))]
    );
}

#[tokio::test(start_paused = true)]
async fn sequential_runs_one_step_at_a_time() {
    let job = Sleepers::new();
    let start = Instant::now();
    timeout(HANG, job.runner().sequential().run())
        .await
        .expect("run hung")
        .unwrap();
    assert_eq!(start.elapsed(), ms(150));
    let spans = job.spans();
    assert_eq!(spans.len(), 2);
    let (first, second) = (spans[0], spans[1]);
    assert!(
        first.2 <= second.1,
        "{} ran until {:?} but {} started at {:?}",
        first.0,
        first.2,
        second.0,
        second.1
    );
}

// ---------------------------------------------------------------------------------------------
// Fail fast

/// Held by `long` while it runs; its `Drop` proves the step's future was dropped.
struct Guard<'a>(&'a AtomicUsize);

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `fails` fails at 10ms while the independent `long` would run for an hour.
#[derive(Default)]
struct Racing {
    long_dropped: AtomicUsize,
    long_finished: AtomicUsize,
}

#[job]
impl Racing {
    #[step]
    async fn long(&self) -> u32 {
        let _guard = Guard(&self.long_dropped);
        sleep(Duration::from_secs(3600)).await;
        self.long_finished.fetch_add(1, Ordering::SeqCst);
        1
    }

    #[step]
    async fn fails(&self) -> Result<u32, Broken> {
        sleep(Duration::from_millis(10)).await;
        Err(Broken("fails"))
    }

    #[step]
    async fn after_long(&self, long: &u32) -> u32 {
        *long
    }
}

#[tokio::test(start_paused = true)]
async fn fail_fast_cancels_running_branches_when_a_step_fails() {
    let job = Racing::default();
    let start = Instant::now();
    let err = timeout(HANG, job.runner().fail_fast().run())
        .await
        .expect("run hung")
        .unwrap_err();
    assert_eq!(start.elapsed(), ms(10));
    assert_eq!(
        job.long_dropped.load(Ordering::SeqCst),
        1,
        "`long` was dropped"
    );
    assert_eq!(job.long_finished.load(Ordering::SeqCst), 0);
    assert!(
        !err.is_cancelled(),
        "a step's own failure is the root cause"
    );
    let failures: Vec<_> = err
        .failures()
        .iter()
        .map(|f| (f.step(), f.error().is_cancelled()))
        .collect();
    assert_eq!(
        failures,
        [(RacingStep::Fails, false), (RacingStep::Long, true)],
        "root cause first, then the cancelled step"
    );
    let report = err.report();
    assert_eq!(report.step(RacingStep::Fails).state(), StepState::Failed);
    assert_eq!(report.step(RacingStep::Long).state(), StepState::Cancelled);
    assert_eq!(report.step(RacingStep::Long).error(), Some("was cancelled"));
    assert_ne!(
        report.step(RacingStep::AfterLong).state(),
        StepState::Completed
    );
}

#[tokio::test(start_paused = true)]
async fn without_fail_fast_independent_branches_finish() {
    let job = Racing::default();
    let start = Instant::now();
    let err = timeout(HANG, job.run())
        .await
        .expect("run hung")
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(3600));
    assert_eq!(job.long_finished.load(Ordering::SeqCst), 1);
    assert_eq!(err.failures().len(), 1);
    let report = err.report();
    assert_eq!(report.step(RacingStep::Long).state(), StepState::Completed);
    assert_eq!(
        report.step(RacingStep::AfterLong).state(),
        StepState::Completed
    );
}

// ---------------------------------------------------------------------------------------------
// Listener

/// `flaky` succeeds on its second attempt; `broken` then fails; `downstream` is skipped.
#[derive(Default)]
struct Eventful {
    flaky_calls: AtomicUsize,
}

#[job]
impl Eventful {
    #[step(retry = Retry::fixed(2, Duration::from_millis(10)))]
    async fn flaky(&self) -> Result<u32, Broken> {
        match self.flaky_calls.fetch_add(1, Ordering::SeqCst) {
            0 => Err(Broken("flaky")),
            _ => Ok(1),
        }
    }

    #[step]
    async fn broken(&self, flaky: &u32) -> Result<u32, Broken> {
        let _ = flaky;
        Err(Broken("broken"))
    }

    #[step]
    async fn downstream(&self, broken: &u32) -> u32 {
        *broken
    }
}

fn describe(event: &StepEvent<'_, EventfulStep>) -> String {
    match event {
        StepEvent::Started { step, attempt } => format!("started {step} #{attempt}"),
        StepEvent::Retrying {
            step,
            attempt,
            delay,
            error,
        } => format!("retrying {step} #{attempt} in {delay:?}: {error}"),
        StepEvent::Completed { step, attempts, .. } => {
            format!("completed {step} after {attempts}")
        }
        StepEvent::Failed {
            step,
            attempts,
            error,
        } => format!("failed {step} after {attempts}: {error}"),
        StepEvent::Skipped { step, because } => format!("skipped {step} because {because}"),
        StepEvent::Cancelled { step } => format!("cancelled {step}"),
        other => format!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_listener_hears_every_event_in_order() {
    let job = Eventful::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let err = timeout(
        HANG,
        job.runner()
            .listener(move |event| seen.lock().unwrap().push(describe(event)))
            .run(),
    )
    .await
    .expect("run hung")
    .unwrap_err();
    assert_eq!(err.step(), EventfulStep::Broken);
    assert_eq!(
        *events.lock().unwrap(),
        [
            "started flaky #1",
            "retrying flaky #1 in 10ms: returned an error: broken (flaky)",
            "started flaky #2",
            "completed flaky after 2",
            "started broken #1",
            "failed broken after 1: returned an error: broken (broken)",
            "skipped downstream because broken",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_listener_hears_cancelled_steps() {
    let job = Racing::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let _ = timeout(
        HANG,
        job.runner()
            .fail_fast()
            .listener(move |event| {
                let line = match event {
                    StepEvent::Started { step, .. } => format!("started {step}"),
                    StepEvent::Failed { step, .. } => format!("failed {step}"),
                    StepEvent::Cancelled { step } => format!("cancelled {step}"),
                    StepEvent::Skipped { step, .. } => format!("skipped {step}"),
                    other => format!("other {other:?}"),
                };
                seen.lock().unwrap().push(line);
            })
            .run(),
    )
    .await
    .expect("run hung");
    let events = events.lock().unwrap();
    let mut started: Vec<_> = events[..2].to_vec();
    started.sort();
    assert_eq!(started, ["started fails", "started long"]);
    assert_eq!(
        events[2..],
        ["failed fails", "cancelled long", "cancelled after_long"]
    );
}
