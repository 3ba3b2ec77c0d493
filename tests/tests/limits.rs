//! Per-step limits: `#[step(concurrency = N)]` never exceeded under load (and used fully), shared
//! by every run of a job type through a `LimitRegistry` registry (the global one by default, or one per
//! run), `#[step(rate = "..")]` and `burst` spacing starts exactly under the paused clock, retries
//! re-acquiring their permit after the back-off, the wait kept out of the timeout, cancelled runs
//! (and `fail_fast`) giving permits and turns back, `LimitRegistry` overrides, `Rate` parse errors, and
//! the report and events of a step that waited.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use jobgraph::{LimitRegistry, Rate, Retry, StepContext, StepEvent, StepState, job};
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// Longer than any test waits: only a cancellation ends it.
const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("transient failure on attempt {0}")]
struct Transient(u32);

/// How many are inside a step now, and the most there ever were at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
    entered: AtomicUsize,
}

impl Gauge {
    /// Counts one more inside until the returned guard is dropped (by the step's end or its
    /// cancellation).
    fn enter(&self) -> Inside<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        self.entered.fetch_add(1, Ordering::SeqCst);
        Inside(self)
    }

    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

struct Inside<'a>(&'a Gauge);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// When each attempt started, in virtual time since `origin`, tagged by run or step.
struct Starts {
    origin: Instant,
    seen: Mutex<Vec<(&'static str, Duration)>>,
}

impl Starts {
    fn new() -> Self {
        Starts {
            origin: Instant::now(),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, tag: &'static str) {
        let at = self.origin.elapsed();
        self.seen.lock().unwrap().push((tag, at));
    }

    /// Every start, in the order they happened.
    fn all(&self) -> Vec<(&'static str, Duration)> {
        self.seen.lock().unwrap().clone()
    }

    /// The starts tagged `tag`, earliest first.
    fn of(&self, tag: &str) -> Vec<Duration> {
        let mut times: Vec<Duration> = self
            .all()
            .into_iter()
            .filter(|(t, _)| *t == tag)
            .map(|(_, at)| at)
            .collect();
        times.sort();
        times
    }
}

/// `n` times `at`.
fn all_at(n: usize, at: Duration) -> Vec<Duration> {
    vec![at; n]
}

/// `n` starts `every` apart from 0.
fn spaced(n: u32, every: Duration) -> Vec<Duration> {
    (0..n).map(|i| every * i).collect()
}

// ---------------------------------------------------------------------------------------------
// Concurrency under load

/// `fetch` is limited to 3 attempts in flight; `warm`, independent of it, is not limited.
struct Crawl {
    fetching: Gauge,
    warming: Gauge,
}

#[job]
impl Crawl {
    #[step]
    async fn warm(&self) {
        let _inside = self.warming.enter();
        sleep(ms(10)).await;
    }

    #[step(concurrency = 3)]
    async fn fetch(&self) -> u32 {
        let _inside = self.fetching.enter();
        sleep(ms(10)).await;
        1
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_never_exceeded_and_used_fully_by_100_runs() {
    let job = Crawl {
        fetching: Gauge::default(),
        warming: Gauge::default(),
    };
    let limits = LimitRegistry::new();
    let start = Instant::now();
    let runs = (0..100).map(|_| job.runner().limits(&limits).run());
    let results = timeout(HANG, join_all(runs)).await.expect("runs hung");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|o| o.fetch == 1))
    );

    assert_eq!(job.fetching.entered(), 100);
    assert_eq!(
        job.fetching.max(),
        3,
        "at most 3 `fetch` in flight, and 3 whenever enough runs wait"
    );
    // The unlimited step of the same runs all overlapped.
    assert_eq!(job.warming.entered(), 100);
    assert_eq!(job.warming.max(), 100);
    // 100 attempts of 10ms, 3 at a time: 34 rounds, each starting as the previous one ends.
    assert_eq!(start.elapsed(), ms(340));
}

/// Each attempt waits (in real time) until 3 attempts were in flight at once, or `deadline`, so
/// that a limit of 3 is reached deterministically on a multi-thread runtime.
struct Parallel {
    inside: Gauge,
    deadline: std::time::Instant,
}

#[job]
impl Parallel {
    #[step(concurrency = 3)]
    async fn work(&self) -> u32 {
        let _inside = self.inside.enter();
        while self.inside.max() < 3 && std::time::Instant::now() < self.deadline {
            sleep(ms(1)).await;
        }
        sleep(ms(1)).await;
        1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_holds_across_threads() {
    let job = Arc::new(Parallel {
        inside: Gauge::default(),
        // Only reached if the limit is below 3.
        deadline: std::time::Instant::now() + Duration::from_secs(5),
    });
    let limits = LimitRegistry::new();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (job, limits) = (Arc::clone(&job), limits.clone());
            tokio::spawn(async move { job.runner().limits(&limits).run().await.map(|o| o.work) })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 1);
    }
    assert_eq!(job.inside.entered(), 100);
    assert_eq!(job.inside.max(), 3);
}

// ---------------------------------------------------------------------------------------------
// Who shares a limit

/// One attempt of `work` in flight at once.
struct Single {
    name: &'static str,
    starts: Arc<Starts>,
}

#[job]
impl Single {
    #[step(concurrency = 1)]
    async fn work(&self) {
        self.starts.record(self.name);
        sleep(ms(10)).await;
    }
}

/// The same limit on a step of the same index, in another job type.
struct OtherSingle {
    name: &'static str,
    starts: Arc<Starts>,
}

#[job]
impl OtherSingle {
    #[step(concurrency = 1)]
    async fn work(&self) {
        self.starts.record(self.name);
        sleep(ms(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn runs_sharing_a_registry_share_the_limit() {
    let starts = Arc::new(Starts::new());
    let single = |name| Single {
        name,
        starts: Arc::clone(&starts),
    };
    let (a, b, c) = (single("a"), single("b"), single("c"));
    let limits = LimitRegistry::new();
    // Different instances of one job type, one registry (and a clone of it): one at a time.
    let (ra, rb, rc) = timeout(
        HANG,
        futures::future::join3(
            a.runner().limits(&limits).run(),
            b.runner().limits(&limits).run(),
            c.runner().limits(&limits.clone()).run(),
        ),
    )
    .await
    .expect("runs hung");
    assert!(ra.is_ok() && rb.is_ok() && rc.is_ok());
    assert_eq!(
        starts.all(),
        [("a", ms(0)), ("b", ms(10)), ("c", ms(20))],
        "served in the order they asked"
    );
}

#[tokio::test(start_paused = true)]
async fn separate_registries_and_job_types_do_not_share() {
    let starts = Arc::new(Starts::new());
    let a = Single {
        name: "a",
        starts: Arc::clone(&starts),
    };
    let b = Single {
        name: "b",
        starts: Arc::clone(&starts),
    };
    let other = OtherSingle {
        name: "other",
        starts: Arc::clone(&starts),
    };
    let shared = LimitRegistry::new();
    let (ra, rb, ro) = timeout(
        HANG,
        futures::future::join3(
            a.runner().limits(&shared).run(),
            b.runner().limits(&LimitRegistry::new()).run(),
            other.runner().limits(&shared).run(),
        ),
    )
    .await
    .expect("runs hung");
    assert!(ra.is_ok() && rb.is_ok() && ro.is_ok());
    assert_eq!(starts.all(), [("a", ms(0)), ("b", ms(0)), ("other", ms(0))]);
}

/// Used by `the_global_registry_is_the_default` only: the global registry is process-wide.
struct GlobalOnly {
    name: &'static str,
    starts: Arc<Starts>,
}

#[job]
impl GlobalOnly {
    #[step(concurrency = 1)]
    async fn work(&self) {
        self.starts.record(self.name);
        sleep(ms(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_global_registry_is_the_default() {
    let starts = Arc::new(Starts::new());
    let global = |name| GlobalOnly {
        name,
        starts: Arc::clone(&starts),
    };
    let (a, b, c, d) = (global("a"), global("b"), global("c"), global("d"));
    // `run`, a spawned `start` and `runner().limits(LimitRegistry::global())` share the global
    // registry; a run with its own registry does not.
    let started = b.start();
    let (ra, rb, rc, rd) = timeout(
        HANG,
        futures::future::join4(
            a.run(),
            started.wait(),
            c.runner().limits(LimitRegistry::global()).run(),
            d.runner().limits(&LimitRegistry::new()).run(),
        ),
    )
    .await
    .expect("runs hung");
    assert!(ra.is_ok() && rb.is_ok() && rc.is_ok() && rd.is_ok());
    assert_eq!(starts.of("a"), [ms(0)]);
    assert_eq!(starts.of("d"), [ms(0)]);
    let mut global_starts = [starts.of("b")[0], starts.of("c")[0]];
    global_starts.sort();
    assert_eq!(global_starts, [ms(10), ms(20)]);
}

// ---------------------------------------------------------------------------------------------
// Rates

/// Every step has its own rate; each records when it started, tagged with its name.
struct Paced {
    starts: Starts,
}

#[job]
impl Paced {
    #[step(rate = "10/s")]
    async fn per_second(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
    }

    #[step(rate = "10/s", burst = 5)]
    async fn burst_option(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
    }

    #[step(rate = "10/s burst 5")]
    async fn burst_in_string(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
    }

    #[step(rate = "60/m")]
    async fn per_minute(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
    }

    #[step(rate = "3600 / h")]
    async fn per_hour(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
    }

    /// Both limits: one at a time, each attempt lasting 250ms, at most 4 starts a second; ready
    /// every 100ms (after `per_second`).
    #[step(rate = "4/s", concurrency = 1, after(per_second))]
    async fn both(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
        sleep(ms(250)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn rates_space_starts_exactly() {
    let job = Paced {
        starts: Starts::new(),
    };
    let limits = LimitRegistry::new();
    let runs = (0..20).map(|_| job.runner().limits(&limits).run());
    let results = timeout(HANG, join_all(runs)).await.expect("runs hung");
    assert!(results.iter().all(Result::is_ok));

    assert_eq!(job.starts.of("per_second"), spaced(20, ms(100)));
    // A burst of 5 at once, then the rate.
    let burst: Vec<Duration> = all_at(5, ms(0))
        .into_iter()
        .chain((1..=15).map(|i| ms(100) * i))
        .collect();
    assert_eq!(job.starts.of("burst_option"), burst);
    assert_eq!(job.starts.of("burst_in_string"), burst);
    assert_eq!(job.starts.of("per_minute"), spaced(20, secs(1)));
    assert_eq!(job.starts.of("per_hour"), spaced(20, secs(1)));
    // `per_second` of run i is done at i * 100ms; 4/s spaces `both` 250ms apart.
    assert_eq!(job.starts.of("both"), spaced(20, ms(250)));
}

// ---------------------------------------------------------------------------------------------
// Rates on the real clock

/// One call per run, at most 1000 a second with bursts of 5; the run with `stall` blocks its
/// thread for 50ms as it starts, as a step doing blocking work on the executor would.
struct Stalling {
    stall: bool,
    starts: Arc<Mutex<Vec<std::time::Instant>>>,
}

#[job]
impl Stalling {
    #[step(rate = "1000/s burst 5")]
    async fn call(&self) {
        self.starts.lock().unwrap().push(std::time::Instant::now());
        if self.stall {
            std::thread::sleep(ms(50));
        }
    }
}

/// The most of `starts` (sorted) that fall in any closed window `width` long.
fn most_in_any_window(starts: &[std::time::Instant], width: Duration) -> usize {
    (0..starts.len())
        .map(|i| {
            starts[i..]
                .iter()
                .take_while(|t| t.duration_since(starts[i]) <= width)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// After the executor stalls, runs whose turn passed during the stall still start at the rate:
/// in any window `w`, at most `burst + 1 + w / interval`, on the real clock.
#[test]
fn rates_hold_on_the_real_clock_after_the_executor_stalls() {
    const RUNS: usize = 200;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let jobs: Vec<Stalling> = (0..RUNS)
        .map(|i| Stalling {
            stall: i == 10,
            starts: starts.clone(),
        })
        .collect();
    let limits = LimitRegistry::new();
    let runs = jobs.iter().map(|job| job.runner().limits(&limits).run());
    let results = runtime.block_on(join_all(runs));
    assert!(results.iter().all(Result::is_ok));

    let mut starts = starts.lock().unwrap().clone();
    assert_eq!(starts.len(), RUNS);
    starts.sort();
    // The bound is 5 + 1 + 10 = 16; the slack of 9 absorbs starts measured late on a loaded
    // machine. Releasing every run whose turn passed during the stall starts about 50 at once.
    let most = most_in_any_window(&starts, ms(10));
    assert!(most <= 25, "{most} starts within 10ms, at most 16 allowed");
}

// ---------------------------------------------------------------------------------------------
// Retries

/// Fails its first `fails` attempts; one attempt in flight at once across runs.
struct OneAtATime {
    name: &'static str,
    fails: u32,
    starts: Arc<Starts>,
}

#[job]
impl OneAtATime {
    #[step(concurrency = 1, retry = Retry::fixed(3, Duration::from_millis(10)))]
    async fn call(&self, ctx: &StepContext) -> Result<u32, Transient> {
        self.starts.record(self.name);
        sleep(ms(5)).await;
        if ctx.attempt() <= self.fails {
            Err(Transient(ctx.attempt()))
        } else {
            Ok(ctx.attempt())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_slot_is_released_during_the_back_off_and_taken_again() {
    let starts = Arc::new(Starts::new());
    let flaky = OneAtATime {
        name: "flaky",
        fails: 2,
        starts: Arc::clone(&starts),
    };
    let steady = OneAtATime {
        name: "steady",
        fails: 0,
        starts: Arc::clone(&starts),
    };
    let limits = LimitRegistry::new();
    let ((flaky_result, flaky_report), (steady_result, steady_report)) = timeout(
        HANG,
        futures::future::join(
            flaky.runner().limits(&limits).run_with_report(),
            steady.runner().limits(&limits).run_with_report(),
        ),
    )
    .await
    .expect("runs hung");
    assert_eq!(flaky_result.unwrap().call, 3);
    assert_eq!(steady_result.unwrap().call, 1);
    // `flaky` fails at 5ms and backs off until 15ms: `steady` runs in its slot meanwhile
    // (5..10ms), then `flaky` takes the slot again for each retry.
    assert_eq!(
        starts.all(),
        [
            ("flaky", ms(0)),
            ("steady", ms(5)),
            ("flaky", ms(15)),
            ("flaky", ms(30)),
        ]
    );
    let flaky = flaky_report.step(OneAtATimeStep::Call);
    assert_eq!(
        (flaky.attempts(), flaky.started(), flaky.duration()),
        (3, Some(ms(0)), Some(ms(35)))
    );
    let steady = steady_report.step(OneAtATimeStep::Call);
    assert_eq!(
        (steady.attempts(), steady.started(), steady.duration()),
        (1, Some(ms(5)), Some(ms(5)))
    );
}

#[tokio::test(start_paused = true)]
async fn the_retry_waits_for_its_slot_behind_runs_that_asked_first() {
    let starts = Arc::new(Starts::new());
    let flaky = OneAtATime {
        name: "flaky",
        fails: 1,
        starts: Arc::clone(&starts),
    };
    let steady: Vec<_> = ["s1", "s2", "s3"]
        .into_iter()
        .map(|name| OneAtATime {
            name,
            fails: 0,
            starts: Arc::clone(&starts),
        })
        .collect();
    let limits = LimitRegistry::new();
    let runs = std::iter::once(&flaky)
        .chain(&steady)
        .map(|job| job.runner().limits(&limits).run());
    let results = timeout(HANG, join_all(runs)).await.expect("runs hung");
    assert!(results.iter().all(Result::is_ok));
    // The retry, due at 15ms, queues behind `s3`, which has waited for the slot since 0.
    assert_eq!(
        starts.all(),
        [
            ("flaky", ms(0)),
            ("s1", ms(5)),
            ("s2", ms(10)),
            ("s3", ms(15)),
            ("flaky", ms(20)),
        ]
    );
}

/// Fails twice; limited by a rate slower than its back-off.
struct PacedRetry {
    starts: Starts,
}

#[job]
impl PacedRetry {
    #[step(rate = "10/s", retry = Retry::fixed(3, Duration::from_millis(10)))]
    async fn call(&self, ctx: &StepContext) -> Result<u32, Transient> {
        self.starts.record("call");
        if ctx.attempt() < 3 {
            Err(Transient(ctx.attempt()))
        } else {
            Ok(ctx.attempt())
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_retry_is_a_start_under_the_rate() {
    let job = PacedRetry {
        starts: Starts::new(),
    };
    let result = timeout(HANG, job.runner().limits(&LimitRegistry::new()).run())
        .await
        .expect("run hung");
    assert_eq!(result.unwrap().call, 3);
    // The back-off is 10ms, but the rate allows a start every 100ms.
    assert_eq!(job.starts.of("call"), [ms(0), ms(100), ms(200)]);
}

// ---------------------------------------------------------------------------------------------
// Cancellation

/// One attempt in flight at once; each holds its slot for `hold`.
struct Hold {
    name: &'static str,
    hold: Duration,
    starts: Arc<Starts>,
}

#[job]
impl Hold {
    #[step(concurrency = 1)]
    async fn work(&self) {
        self.starts.record(self.name);
        sleep(self.hold).await;
    }
}

#[tokio::test(start_paused = true)]
async fn cancelled_runs_give_their_slot_back() {
    let starts = Arc::new(Starts::new());
    let hold = |name, hold| Hold {
        name,
        hold,
        starts: Arc::clone(&starts),
    };
    let limits = LimitRegistry::new();

    // A run holding the slot is dropped at 5ms: the next one starts then.
    let (stuck, next) = (hold("stuck", HOUR), hold("next", ms(10)));
    let (cancelled, done) = futures::future::join(
        timeout(ms(5), stuck.runner().limits(&limits).run()),
        timeout(HANG, next.runner().limits(&limits).run()),
    )
    .await;
    assert!(cancelled.is_err(), "the first run is cancelled at 5ms");
    assert!(done.expect("run hung").is_ok());
    assert_eq!(starts.of("next"), [ms(5)]);

    // A run waiting for the slot is dropped: it never starts, and takes no turn from the next.
    let origin = starts.origin.elapsed();
    let (first, impatient, patient) = (
        hold("first", ms(10)),
        hold("impatient", ms(10)),
        hold("patient", ms(10)),
    );
    let (a, b, c) = futures::future::join3(
        timeout(HANG, first.runner().limits(&limits).run()),
        timeout(ms(5), impatient.runner().limits(&limits).run()),
        timeout(HANG, patient.runner().limits(&limits).run()),
    )
    .await;
    assert!(a.expect("run hung").is_ok());
    assert!(b.is_err(), "gave up waiting at 5ms");
    assert!(c.expect("run hung").is_ok());
    assert_eq!(starts.of("first"), [origin]);
    assert!(starts.of("impatient").is_empty());
    assert_eq!(starts.of("patient"), [origin + ms(10)]);
}

/// One attempt in flight at once, each 10ms under a 15ms timeout.
struct Timed;

#[job]
impl Timed {
    #[step(concurrency = 1, timeout = Duration::from_millis(15))]
    async fn work(&self) -> u32 {
        sleep(ms(10)).await;
        1
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_for_a_limit_is_not_part_of_the_timeout() {
    let limits = LimitRegistry::new();
    let start = Instant::now();
    let runs = (0..5).map(|_| Timed.runner().limits(&limits).run());
    let results = timeout(HANG, join_all(runs)).await.expect("runs hung");
    // The last run waited 40ms for the slot, longer than its timeout.
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|o| o.work == 1))
    );
    assert_eq!(start.elapsed(), ms(50));
}

/// `boom` fails at 5ms; `queued` holds the one slot of its step for 10ms.
struct Doomed;

#[job]
impl Doomed {
    #[step]
    async fn boom(&self) -> Result<(), Transient> {
        sleep(ms(5)).await;
        Err(Transient(1))
    }

    #[step(concurrency = 1)]
    async fn queued(&self) {
        sleep(ms(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn fail_fast_cancels_a_step_waiting_for_a_limit() {
    let limits = LimitRegistry::new();
    let ((_, holder), (_, cancelled), (_, later)) = timeout(
        HANG,
        futures::future::join3(
            Doomed.runner().limits(&limits).run_with_report(),
            Doomed
                .runner()
                .limits(&limits)
                .fail_fast()
                .run_with_report(),
            Doomed.runner().limits(&limits).run_with_report(),
        ),
    )
    .await
    .expect("runs hung");
    let holder = holder.step(DoomedStep::Queued);
    assert_eq!(
        (holder.state(), holder.started()),
        (StepState::Completed, Some(ms(0)))
    );
    // Cancelled at 5ms while waiting: it never started, and took no turn.
    let cancelled = cancelled.step(DoomedStep::Queued);
    assert_eq!(
        (cancelled.state(), cancelled.started(), cancelled.attempts()),
        (StepState::Cancelled, None, 0)
    );
    let later = later.step(DoomedStep::Queued);
    assert_eq!(
        (later.state(), later.started()),
        (StepState::Completed, Some(ms(10)))
    );
}

// ---------------------------------------------------------------------------------------------
// Overrides

/// `free` declares no limit; `capped` declares one attempt at a time.
struct Open {
    starts: Starts,
}

#[job]
impl Open {
    #[step]
    async fn free(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
        sleep(ms(10)).await;
    }

    #[step(concurrency = 1)]
    async fn capped(&self, ctx: &StepContext) {
        self.starts.record(ctx.step_name());
        sleep(ms(10)).await;
    }
}

/// Runs `Open` 5 times at once through `limits`: when `free` and `capped` started in each run,
/// from the start of the first.
async fn open_starts(limits: &LimitRegistry) -> (Vec<Duration>, Vec<Duration>) {
    let job = Open {
        starts: Starts::new(),
    };
    let runs = (0..5).map(|_| job.runner().limits(limits).run());
    let results = timeout(HANG, join_all(runs)).await.expect("runs hung");
    assert!(results.iter().all(Result::is_ok));
    (job.starts.of("free"), job.starts.of("capped"))
}

#[tokio::test(start_paused = true)]
async fn overrides_replace_the_declared_limits_and_clear_restores_them() {
    let limits = LimitRegistry::new();
    let declared = (all_at(5, ms(0)), spaced(5, ms(10)));
    assert_eq!(open_starts(&limits).await, declared);

    // A concurrency limit on a step that declares none, and a larger one on a step that does.
    limits.set_concurrency(OpenStep::Free, 1).unwrap();
    limits.set_concurrency(OpenStep::Capped, 5).unwrap();
    assert_eq!(
        open_starts(&limits).await,
        (spaced(5, ms(10)), all_at(5, ms(0)))
    );
    // Only in that registry.
    assert_eq!(open_starts(&LimitRegistry::new()).await, declared);

    // A rate, with the concurrency override still in force, and one parsed at run time.
    limits.set_rate(OpenStep::Free, Rate::per_second(10));
    limits.set_rate(OpenStep::Capped, "20/s burst 2".parse().unwrap());
    assert_eq!(
        open_starts(&limits).await,
        (
            spaced(5, ms(100)),
            vec![ms(0), ms(0), ms(50), ms(100), ms(150)]
        )
    );

    // Zero is refused, with a message naming the step, and changes nothing.
    let error = limits.set_concurrency(OpenStep::Free, 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "concurrency limit of step `free` is zero: at least 1 attempt must be allowed in flight, or the step never runs"
    );
    let error = limits.set_concurrency(OpenStep::Capped, 0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "concurrency limit of step `capped` is zero: at least 1 attempt must be allowed in flight, or the step never runs"
    );
    // (Quiet for a while, so that the rates' last reservations are long past.)
    sleep(secs(10)).await;
    assert_eq!(
        open_starts(&limits).await,
        (
            spaced(5, ms(100)),
            vec![ms(0), ms(0), ms(50), ms(100), ms(150)]
        )
    );

    // Back to what the attributes declare.
    limits.clear(OpenStep::Free);
    limits.clear(OpenStep::Capped);
    assert_eq!(open_starts(&limits).await, declared);
}

#[tokio::test(start_paused = true)]
async fn overrides_of_the_global_registry_need_no_runner_option() {
    // `Open` is run through the global registry by this test only.
    LimitRegistry::global()
        .set_concurrency(OpenStep::Free, 2)
        .unwrap();
    let job = Open {
        starts: Starts::new(),
    };
    let results = timeout(HANG, join_all((0..4).map(|_| job.run())))
        .await
        .expect("runs hung");
    LimitRegistry::global().clear(OpenStep::Free);
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(job.starts.of("free"), [ms(0), ms(0), ms(10), ms(10)]);
}

// ---------------------------------------------------------------------------------------------
// Rate strings at run time

#[test]
fn bad_rate_strings_say_what_is_wrong() {
    let error = |text: &str| text.parse::<Rate>().unwrap_err().to_string();
    assert_eq!(
        error("10/x"),
        "rate `10/x`: unknown unit `x`; expected `s`, `m` or `h`, as in `10/s`"
    );
    assert_eq!(
        error("10"),
        "rate `10`: expected `<count>/<unit>`, as in `10/s`"
    );
    assert_eq!(
        error("0/m"),
        "rate `0/m` is zero: at least 1 start per period must be allowed, as in `1/s`; to remove the limit, leave the rate out"
    );
    assert_eq!(
        " 10 / s burst 5 ".parse::<Rate>(),
        Ok(Rate::per_second(10).burst(5))
    );
}

// ---------------------------------------------------------------------------------------------
// Report and events

#[tokio::test(start_paused = true)]
async fn a_step_that_waited_starts_after_the_wait_in_the_report_and_events() {
    let starts = Arc::new(Starts::new());
    let (first, second) = (
        Single {
            name: "first",
            starts: Arc::clone(&starts),
        },
        Single {
            name: "second",
            starts: Arc::clone(&starts),
        },
    );
    let limits = LimitRegistry::new();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let origin = Instant::now();
    let ((first_result, first_report), (second_result, second_report)) = timeout(
        HANG,
        futures::future::join(
            first.runner().limits(&limits).run_with_report(),
            second
                .runner()
                .limits(&limits)
                .listener(move |event| {
                    let kind = match event {
                        StepEvent::Started { .. } => "started",
                        StepEvent::Completed { .. } => "completed",
                        _ => "other",
                    };
                    seen.lock().unwrap().push((kind, origin.elapsed()));
                })
                .run_with_report(),
        ),
    )
    .await
    .expect("runs hung");
    assert!(first_result.is_ok() && second_result.is_ok());

    let first = first_report.step(SingleStep::Work);
    assert_eq!(
        (first.state(), first.started(), first.duration()),
        (StepState::Completed, Some(ms(0)), Some(ms(10)))
    );
    // The 10ms spent waiting for the slot are not part of the step's run.
    let second = second_report.step(SingleStep::Work);
    assert_eq!(
        (second.state(), second.started(), second.duration()),
        (StepState::Completed, Some(ms(10)), Some(ms(10)))
    );
    assert_eq!(second.attempts(), 1);
    assert_eq!(second_report.elapsed(), Some(ms(20)));
    assert_eq!(
        *events.lock().unwrap(),
        [("started", ms(10)), ("completed", ms(20))]
    );
}

/// A rate-limited step after an unlimited one, to see the wait in the report.
struct PacedReport;

#[job]
impl PacedReport {
    #[step]
    async fn prepare(&self) -> u32 {
        sleep(ms(30)).await;
        1
    }

    #[step(rate = "5/s")]
    async fn call(&self, prepare: &u32) -> u32 {
        *prepare + 1
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_that_waited_for_the_rate_starts_after_the_wait() {
    let limits = LimitRegistry::new();
    let runs = (0..3).map(|_| PacedReport.runner().limits(&limits).run_with_report());
    let outcomes = timeout(HANG, join_all(runs)).await.expect("runs hung");
    let mut started: Vec<_> = outcomes
        .iter()
        .map(|(result, report)| {
            assert_eq!(result.as_ref().unwrap().call, 2);
            let call = report.step(PacedReportStep::Call);
            assert_eq!(call.duration(), Some(Duration::ZERO));
            call.started()
        })
        .collect();
    started.sort();
    // Every `call` is ready at 30ms; 5/s lets one start every 200ms.
    assert_eq!(started, [Some(ms(30)), Some(ms(230)), Some(ms(430))]);
}
