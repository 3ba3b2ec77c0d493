//! Step-level execution: runs seeded with outputs already known (`Runner::seed`), runs that stop
//! after one step (`Runner::until`), the partial outputs a failed run hands back, skips recorded
//! the moment a step fails, policies evaluated inside the step's failure boundary, and the graph
//! and policies as data (`StepInfo` by index, `Job::policies`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobgraph::{Job, JobStep, Retry, StepError, StepEvent, StepState, job};
use tokio::time::{Instant, sleep};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("broken")]
struct Broken;

/// `fetch` (slow) -> `parse` -> `index`; `audit` on its own; `report` after `index` and `audit`.
#[derive(Default)]
struct Pipeline {
    ran: Mutex<Vec<&'static str>>,
    fail_parse: bool,
}

impl Pipeline {
    fn ran(&self) -> Vec<&'static str> {
        self.ran.lock().unwrap().clone()
    }

    fn mark(&self, step: &'static str) {
        self.ran.lock().unwrap().push(step);
    }
}

#[job]
impl Pipeline {
    #[step]
    async fn fetch(&self) -> String {
        self.mark("fetch");
        sleep(ms(1000)).await;
        "<p>fetched</p>".to_owned()
    }

    #[step]
    async fn parse(&self, fetch: &str) -> Result<Vec<String>, Broken> {
        self.mark("parse");
        sleep(ms(10)).await;
        if self.fail_parse {
            return Err(Broken);
        }
        Ok(vec![fetch.trim_matches(['<', '>', '/', 'p']).to_owned()])
    }

    #[step]
    async fn index(&self, parse: &[String]) -> usize {
        self.mark("index");
        parse.len()
    }

    #[step]
    async fn audit(&self) -> u32 {
        self.mark("audit");
        sleep(ms(50)).await;
        7
    }

    #[step]
    async fn report(&self, index: &usize, audit: &u32) -> String {
        self.mark("report");
        format!("{index} page(s), audit {audit}")
    }
}

#[tokio::test(start_paused = true)]
async fn a_seeded_step_does_not_run_and_its_children_start_at_once() {
    let job = Pipeline::default();
    let started = Instant::now();
    let (result, report) = job
        .runner()
        .seed(PipelinePartial {
            fetch: Some("<p>given</p>".to_owned()),
            ..Default::default()
        })
        .run_with_report()
        .await;
    let out = result.unwrap();
    assert_eq!(out.fetch, "<p>given</p>");
    assert_eq!(out.parse, ["given"]);
    assert_eq!(out.report, "1 page(s), audit 7");
    assert!(
        !job.ran().contains(&"fetch"),
        "the seeded step ran: {:?}",
        job.ran()
    );
    // Without the seed the run takes `fetch`'s 1,000 ms; with it, `audit`'s 50 ms.
    assert_eq!(started.elapsed(), ms(50));
    // `parse` started with the run, not after anything.
    assert_eq!(
        report.step(PipelineStep::Parse).started(),
        Some(Duration::ZERO)
    );
    let fetch = report.step(PipelineStep::Fetch);
    assert_eq!((fetch.state(), fetch.attempts()), (StepState::Completed, 0));
}

/// A typed stand-in replaces a slow step in a test: the seed's type is the step's output type.
#[tokio::test(start_paused = true)]
async fn a_typed_stand_in_replaces_a_step() {
    let job = Pipeline::default();
    let stand_in = PipelinePartial {
        parse: Some(vec!["a".to_owned(), "b".to_owned()]),
        ..Default::default()
    };
    let out = job.runner().seed(stand_in).run().await.unwrap();
    assert_eq!(out.index, 2);
    assert_eq!(out.report, "2 page(s), audit 7");
    // `fetch` still runs: `parse`'s stand-in does not need it, but the outputs hold every step.
    let mut ran = job.ran();
    ran.sort_unstable();
    assert_eq!(ran, ["audit", "fetch", "index", "report"]);
}

#[tokio::test(start_paused = true)]
async fn until_runs_exactly_the_step_and_its_ancestors() {
    let job = Pipeline::default();
    let (result, report) = job
        .runner()
        .until(PipelineStep::Parse)
        .run_with_report()
        .await;
    let partial = result.unwrap();
    assert_eq!(job.ran(), ["fetch", "parse"]);
    assert_eq!(partial.parse.as_deref(), Some(&["fetched".to_owned()][..]));
    assert!(partial.fetch.is_some());
    assert!(partial.index.is_none() && partial.audit.is_none() && partial.report.is_none());
    for step in [
        PipelineStep::Index,
        PipelineStep::Audit,
        PipelineStep::Report,
    ] {
        assert_eq!(report.step(step).state(), StepState::Pending, "{step}");
    }
}

#[tokio::test(start_paused = true)]
async fn until_stops_at_seeded_ancestors() {
    let job = Pipeline::default();
    let partial = job
        .runner()
        .seed(PipelinePartial {
            parse: Some(vec!["x".to_owned()]),
            ..Default::default()
        })
        .until(PipelineStep::Index)
        .run()
        .await
        .unwrap();
    assert_eq!(
        job.ran(),
        ["index"],
        "`fetch` is not needed: `parse` is given"
    );
    assert_eq!(partial.index, Some(1));
    assert!(partial.fetch.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_hands_back_exactly_the_completed_outputs() {
    let job = Pipeline {
        fail_parse: true,
        ..Default::default()
    };
    let err = job.run().await.unwrap_err();
    assert_eq!(err.step(), PipelineStep::Parse);
    let partial = err.partial();
    assert_eq!(partial.fetch.as_deref(), Some("<p>fetched</p>"));
    assert_eq!(partial.audit, Some(7));
    assert!(partial.parse.is_none() && partial.index.is_none() && partial.report.is_none());
    assert_eq!(
        format!("{partial:?}"),
        "PipelinePartial { fetch: Some(\"..\"), parse: None, index: None, audit: Some(\"..\"), report: None }"
    );

    // Retry from what was done: only the failed step and what follows it run again.
    let retry = Pipeline::default();
    let out = retry.runner().seed(err.into_partial()).run().await.unwrap();
    assert_eq!(out.report, "1 page(s), audit 7");
    assert_eq!(retry.ran(), ["parse", "index", "report"]);
}

/// `fails` fails at once; `slow` runs on. Its descendants are skipped while `slow` still runs.
struct Eager;

#[job]
impl Eager {
    #[step]
    async fn fails(&self) -> Result<u32, Broken> {
        Err(Broken)
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
    async fn slow(&self) -> u32 {
        sleep(ms(100)).await;
        1
    }
}

#[tokio::test(start_paused = true)]
async fn skips_are_recorded_the_moment_a_step_fails() {
    let events = std::sync::Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let handle = Eager.start();
    // The handle's live report, while `slow` still runs.
    sleep(ms(10)).await;
    let report = handle.report();
    assert_eq!(report.step(EagerStep::Slow).state(), StepState::Running);
    for step in [EagerStep::Child, EagerStep::Grandchild] {
        let r = report.step(step);
        assert_eq!(r.state(), StepState::Skipped, "{step}");
        assert_eq!(r.skipped_because(), Some(EagerStep::Fails));
    }
    let err = handle.wait().await.unwrap_err();
    assert_eq!(err.skipped(), [EagerStep::Child, EagerStep::Grandchild]);

    // The listener hears of the skips before `slow` completes.
    let result = Eager
        .runner()
        .listener(move |event| {
            let what = match event {
                StepEvent::Skipped { step, because } => format!("skipped {step} ({because})"),
                StepEvent::Completed { step, .. } => format!("completed {step}"),
                _ => return,
            };
            seen.lock().unwrap().push(what);
        })
        .run()
        .await;
    assert!(result.is_err());
    assert_eq!(
        *events.lock().unwrap(),
        [
            "skipped child (fails)",
            "skipped grandchild (fails)",
            "completed slow"
        ]
    );
}

/// Policies whose values are bad only at run time.
struct BadPolicies {
    timeout_ms: u64,
    attempts: u32,
    calls: AtomicU32,
}

fn zero() -> Duration {
    Duration::ZERO
}

#[job]
impl BadPolicies {
    #[step(timeout = zero())]
    async fn zero_timeout(&self) -> u32 {
        self.calls.fetch_add(1, Ordering::Relaxed);
        1
    }

    #[step(timeout = Duration::from_millis(self.timeout_ms))]
    async fn configured_timeout(&self) -> u32 {
        2
    }

    #[step(retry = Retry::fixed(self.attempts, Duration::ZERO))]
    async fn configured_retry(&self) -> u32 {
        3
    }

    #[step(timeout = Duration::from_secs_f64(f64::NAN))]
    async fn nan_timeout(&self) -> u32 {
        4
    }

    #[step]
    async fn after_all(
        &self,
        zero_timeout: &u32,
        configured_timeout: &u32,
        configured_retry: &u32,
        nan_timeout: &u32,
    ) -> u32 {
        zero_timeout + configured_timeout + configured_retry + nan_timeout
    }
}

#[tokio::test]
async fn a_bad_policy_fails_its_step_and_never_panics_the_run() {
    let job = BadPolicies {
        timeout_ms: 0,
        attempts: 0,
        calls: AtomicU32::new(0),
    };
    // Awaited in a spawned task too: a panic would surface as a `JoinError`.
    let err = job.run().await.unwrap_err();
    assert_eq!(job.calls.load(Ordering::Relaxed), 0, "the step ran");
    let failures: Vec<(BadPoliciesStep, String)> = err
        .failures()
        .iter()
        .map(|f| (f.step(), f.error().to_string()))
        .collect();
    assert_eq!(failures.len(), 4, "{failures:?}");
    let zero = "has an invalid policy: its `#[step(timeout = ..)]` is zero: a timeout must be greater than zero";
    assert_eq!(failures[0], (BadPoliciesStep::ZeroTimeout, zero.to_owned()));
    assert_eq!(
        failures[1],
        (BadPoliciesStep::ConfiguredTimeout, zero.to_owned())
    );
    assert_eq!(failures[2].0, BadPoliciesStep::ConfiguredRetry);
    assert!(err.failures()[2].error().is_panic(), "{}", failures[2].1);
    assert_eq!(failures[3].0, BadPoliciesStep::NanTimeout);
    assert!(err.failures()[3].error().is_panic(), "{}", failures[3].1);
    assert_eq!(err.skipped(), [BadPoliciesStep::AfterAll]);
    assert_eq!(
        err.report().step(BadPoliciesStep::ZeroTimeout).state(),
        StepState::Failed
    );

    let spawned = tokio::spawn(async {
        let job = BadPolicies {
            timeout_ms: 0,
            attempts: 0,
            calls: AtomicU32::new(0),
        };
        job.run().await.is_err()
    });
    assert!(spawned.await.expect("the run's task did not panic"));
}

#[test]
fn policies_are_data_by_step() {
    let job = BadPolicies {
        timeout_ms: 250,
        attempts: 3,
        calls: AtomicU32::new(0),
    };
    let configured = job.policies(BadPoliciesStep::ConfiguredTimeout).unwrap();
    assert_eq!(configured.timeout, Some(ms(250)));
    assert!(configured.retry.is_none());
    let retry = job.policies(BadPoliciesStep::ConfiguredRetry).unwrap();
    let policy = retry.retry.expect("a retry policy");
    assert_eq!(
        policy.should_retry(1, &StepError::Cancelled),
        Some(Duration::ZERO)
    );
    assert_eq!(policy.should_retry(3, &StepError::Cancelled), None);
    let zero = job.policies(BadPoliciesStep::ZeroTimeout).unwrap_err();
    assert!(matches!(zero, StepError::Policy(_)), "{zero}");
    assert!(
        job.policies(BadPoliciesStep::NanTimeout)
            .unwrap_err()
            .is_panic()
    );
    let plain = job.policies(BadPoliciesStep::AfterAll).unwrap();
    assert!(plain.retry.is_none() && plain.timeout.is_none() && plain.limits.is_none());
}

#[test]
fn steps_list_their_edges_by_index() {
    let info = |step: PipelineStep| &<Pipeline as Job>::STEPS[step.index()];
    let index = |steps: &[PipelineStep]| steps.iter().map(|s| s.index()).collect::<Vec<_>>();
    assert_eq!(
        info(PipelineStep::Report).parent_indices(),
        index(&[PipelineStep::Index, PipelineStep::Audit])
    );
    assert_eq!(info(PipelineStep::Report).parents(), ["index", "audit"]);
    assert_eq!(
        info(PipelineStep::Fetch).children(),
        index(&[PipelineStep::Parse])
    );
    assert_eq!(
        info(PipelineStep::Audit).children(),
        index(&[PipelineStep::Report])
    );
    assert!(info(PipelineStep::Report).children().is_empty());
    assert_eq!(
        PipelineStep::ALL.len(),
        <PipelineStep as JobStep>::STEPS.len()
    );
}
