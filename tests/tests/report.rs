//! Run reports: each step's state, start, duration, attempts, error and skip cause after a run
//! with a failure, the same report in the error, and its DOT (filled by state, with tooltips) and
//! Mermaid Gantt renderings.

use std::time::{Duration, SystemTime};

use jobgraph::{JobReport, Retry, StepState, job};
use tokio::time::{Instant, sleep, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, thiserror::Error)]
#[error("disk full")]
struct DiskFull;

/// ```text
/// root (10ms) ── fails (20ms, Err) ── child ── grandchild
/// independent (50ms)
/// ```
struct Reported;

#[job]
impl Reported {
    #[step]
    async fn root(&self) -> u32 {
        sleep(Duration::from_millis(10)).await;
        1
    }

    #[step]
    async fn fails(&self, root: &u32) -> Result<u32, DiskFull> {
        sleep(Duration::from_millis(20)).await;
        let _ = root;
        Err(DiskFull)
    }

    #[step]
    async fn child(&self, fails: &u32) -> u32 {
        *fails
    }

    #[step]
    async fn grandchild(&self, child: &u32) -> u32 {
        *child
    }

    #[step]
    async fn independent(&self) -> u32 {
        sleep(Duration::from_millis(50)).await;
        5
    }
}

async fn failed_run() -> JobReport<ReportedStep> {
    let (result, report) = timeout(HANG, Reported.runner().job_id("r-1").run_with_report())
        .await
        .expect("run hung");
    let err = result.unwrap_err();
    assert_eq!(err.step(), ReportedStep::Fails);
    assert_eq!(
        err.skipped(),
        [ReportedStep::Child, ReportedStep::Grandchild]
    );
    // The error carries the same report.
    let states =
        |r: &JobReport<ReportedStep>| r.steps().iter().map(|s| s.state()).collect::<Vec<_>>();
    assert_eq!(states(err.report()), states(&report));
    report
}

#[tokio::test(start_paused = true)]
async fn the_report_has_each_steps_state_attempts_error_and_skip_cause() {
    let before = SystemTime::now();
    let report = failed_run().await;
    assert_eq!(report.job_name(), "Reported");
    assert_eq!(report.job_id(), "r-1");
    assert!(report.elapsed().is_some());
    assert!(report.started_at() <= SystemTime::now() && report.started_at() >= before);

    let rows: Vec<_> = report
        .steps()
        .iter()
        .map(|r| {
            (
                r.step(),
                r.state(),
                r.attempts(),
                r.error().map(str::to_owned),
                r.skipped_because(),
            )
        })
        .collect();
    use ReportedStep::*;
    assert_eq!(
        rows,
        [
            (Root, StepState::Completed, 1, None, None),
            (
                Fails,
                StepState::Failed,
                1,
                Some("returned an error: disk full".to_owned()),
                None
            ),
            (Child, StepState::Skipped, 0, None, Some(Fails)),
            (Grandchild, StepState::Skipped, 0, None, Some(Fails)),
            (Independent, StepState::Completed, 1, None, None),
        ]
    );
    for step in [Root, Fails, Independent] {
        let r = report.step(step);
        assert!(r.started().is_some(), "{step} started");
        assert!(r.duration().is_some(), "{step} ended");
    }
    for step in [Child, Grandchild] {
        let r = report.step(step);
        assert_eq!(
            (r.started(), r.duration()),
            (None, None),
            "{step} never ran"
        );
    }
    assert_eq!(report.steps_in(StepState::Completed), [Root, Independent]);
    assert_eq!(report.steps_in(StepState::Failed), [Fails]);
    assert_eq!(report.steps_in(StepState::Skipped), [Child, Grandchild]);
    assert!(StepState::Skipped.is_final() && !StepState::Running.is_final());
}

#[tokio::test(start_paused = true)]
async fn report_timings_follow_tokios_clock() {
    let report = failed_run().await;
    use ReportedStep::*;
    let timing = |s| (report.step(s).started(), report.step(s).duration());
    assert_eq!(timing(Root), (Some(ms(0)), Some(ms(10))));
    assert_eq!(timing(Fails), (Some(ms(10)), Some(ms(20))));
    assert_eq!(timing(Independent), (Some(ms(0)), Some(ms(50))));
    assert_eq!(report.elapsed(), Some(ms(50)));
}

#[tokio::test(start_paused = true)]
async fn dot_fills_each_step_by_state_with_a_tooltip() {
    let dot = failed_run().await.dot();
    assert!(dot.starts_with("digraph \"Reported\" {\n"), "{dot}");
    assert!(dot.ends_with("}\n"), "{dot}");
    let node = |name: &str| {
        dot.lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{name}\" [")))
            .unwrap_or_else(|| panic!("no node {name} in\n{dot}"))
            .to_owned()
    };
    let root = node("root");
    assert!(root.contains("fillcolor=palegreen"), "{root}");
    assert!(
        root.contains("tooltip=\"State: completed\\nStarted: +"),
        "{root}"
    );
    assert!(root.contains("\\nDuration: "), "{root}");
    assert!(root.contains("\\nAttempts: 1"), "{root}");

    let fails = node("fails");
    assert!(fails.contains("fillcolor=tomato"), "{fails}");
    assert!(fails.contains("tooltip=\"State: failed"), "{fails}");
    assert!(
        fails.contains("\\nError: returned an error: disk full\""),
        "{fails}"
    );

    let child = node("child");
    assert_eq!(
        child.trim(),
        "\"child\" [fillcolor=lightgrey, tooltip=\"State: skipped\\nSkipped because `fails` failed\"];"
    );
    let grandchild = node("grandchild");
    assert!(
        grandchild.contains("Skipped because `fails` failed"),
        "{grandchild}"
    );

    for edge in [
        "\"root\" -> \"fails\";",
        "\"fails\" -> \"child\";",
        "\"child\" -> \"grandchild\";",
    ] {
        assert!(dot.contains(edge), "no {edge} in\n{dot}");
    }
}

/// `fails` fails fast while `slow` runs and `after_slow` waits: cancelled steps are orange.
struct Cancelling;

#[job]
impl Cancelling {
    #[step]
    async fn slow(&self) -> u32 {
        sleep(Duration::from_secs(3600)).await;
        1
    }

    #[step(after(slow))]
    async fn after_slow(&self) -> u32 {
        2
    }

    #[step(retry = Retry::fixed(2, Duration::from_millis(1)))]
    async fn fails(&self) -> Result<u32, DiskFull> {
        Err(DiskFull)
    }
}

#[tokio::test(start_paused = true)]
async fn dot_shows_cancelled_steps_and_after_edges() {
    let err = timeout(HANG, Cancelling.runner().fail_fast().run())
        .await
        .expect("run hung")
        .unwrap_err();
    let report = err.report();
    assert_eq!(
        report.step(CancellingStep::Slow).state(),
        StepState::Cancelled
    );
    assert_eq!(
        report.step(CancellingStep::AfterSlow).state(),
        StepState::Cancelled
    );
    assert_eq!(report.step(CancellingStep::Fails).attempts(), 2);
    let dot = report.dot();
    let node = |name: &str| {
        dot.lines()
            .find(|l| l.trim_start().starts_with(&format!("\"{name}\" [")))
            .unwrap_or_else(|| panic!("no node {name} in\n{dot}"))
            .to_owned()
    };
    let slow = node("slow");
    assert!(slow.contains("fillcolor=orange"), "{slow}");
    assert!(slow.contains("tooltip=\"State: cancelled"), "{slow}");
    assert!(slow.contains("\\nError: was cancelled\""), "{slow}");
    assert!(node("fails").contains("\\nAttempts: 2"), "{dot}");
    assert!(node("after_slow").contains("fillcolor=orange"), "{dot}");
    assert!(
        dot.contains("\"slow\" -> \"after_slow\" [style=dashed];"),
        "{dot}"
    );
}

#[tokio::test(start_paused = true)]
async fn mermaid_gantt_has_a_bar_per_started_step_tagged_by_state() {
    let gantt = failed_run().await.mermaid_gantt();
    let lines: Vec<&str> = gantt.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "gantt",
            "    title Reported run r-1",
            "    dateFormat x",
            "    axisFormat %S.%L s"
        ]
    );
    let bars: Vec<(&str, &str)> = lines[4..]
        .iter()
        .map(|l| {
            let (name, rest) = l.trim().split_once(" :").expect("a bar");
            (name, rest.rsplitn(3, ", ").last().expect("tags"))
        })
        .collect();
    assert_eq!(
        bars,
        [
            ("root", "done, s0"),
            ("fails", "crit, s1"),
            ("independent", "done, s4")
        ],
        "{gantt}"
    );
}

#[tokio::test(start_paused = true)]
async fn mermaid_gantt_is_exact_under_a_paused_clock() {
    let gantt = failed_run().await.mermaid_gantt();
    assert_eq!(
        gantt,
        "gantt
    title Reported run r-1
    dateFormat x
    axisFormat %S.%L s
    root :done, s0, 0, 10
    fails :crit, s1, 10, 30
    independent :done, s4, 0, 50
"
    );
}

#[tokio::test(start_paused = true)]
async fn a_report_ends_when_its_run_does() {
    let start = Instant::now();
    let (result, report) = timeout(HANG, Cancelling.runner().run_with_report())
        .await
        .expect("run hung");
    assert_eq!(start.elapsed(), Duration::from_secs(3600));
    assert!(result.is_err());
    assert!(report.steps().iter().all(|r| r.state().is_final()));
    assert_eq!(
        report.step(CancellingStep::Slow).state(),
        StepState::Completed
    );
    // `after(slow)` orders without data: it runs once `slow` completes.
    assert_eq!(
        report.step(CancellingStep::AfterSlow).state(),
        StepState::Completed
    );
    assert_eq!(
        report.step(CancellingStep::Fails).state(),
        StepState::Failed
    );
}

/// ```text
/// source ─┬─ busy_a   (each blocks the thread 20 ms in its first poll, then yields)
///         └─ busy_b
/// ```
struct BusySiblings;

impl BusySiblings {
    async fn busy(&self) {
        std::thread::sleep(Duration::from_millis(20));
        tokio::task::yield_now().await;
    }
}

#[job]
impl BusySiblings {
    #[step]
    async fn source(&self) -> u32 {
        1
    }

    #[step]
    async fn busy_a(&self, source: &u32) -> u32 {
        self.busy().await;
        *source
    }

    #[step]
    async fn busy_b(&self, source: &u32) -> u32 {
        self.busy().await;
        *source
    }
}

/// A step's start is its first poll: the first step starts when the run does (its first pass
/// runs in the poll that began the run: the same clock reading), the first sibling polled when
/// their parent ended (again the same reading), the second only after the first's 20 ms poll. The
/// run ends when its last step does.
#[tokio::test]
async fn a_step_starts_at_its_first_poll() {
    let (result, report) = BusySiblings.runner().run_with_report().await;
    result.unwrap();
    use BusySiblingsStep::*;
    let source = report.step(Source);
    assert_eq!(source.started(), Some(Duration::ZERO));
    let source_end = source.started().unwrap() + source.duration().unwrap();
    let mut starts = [BusyA, BusyB].map(|s| report.step(s).started().unwrap());
    starts.sort();
    assert_eq!(starts[0], source_end);
    assert!(
        starts[1] >= source_end + Duration::from_millis(20),
        "{starts:?} after {source_end:?}"
    );
    let last_end = [BusyA, BusyB]
        .map(|s| report.step(s).started().unwrap() + report.step(s).duration().unwrap())
        .into_iter()
        .max();
    assert_eq!(report.elapsed(), last_end);
}
