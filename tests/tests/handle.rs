//! Start handles: the generated `start` spawns the run on tokio; its handle has the run's id, a
//! live report and DOT while steps run, `cancel` (running steps recorded as cancelled, the run's
//! token cancelled) and `wait`, which returns what `run` would have.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobgraph::{CancellationToken, StepContext, StepState, job};
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, timeout};

/// Turns a hang into a failure; with the paused clock it costs no real time.
const HANG: Duration = Duration::from_secs(24 * 3600);

/// What the test shares with a started `Gated` job.
#[derive(Default)]
struct Probe {
    /// Signalled once `gate` waits on its receiver.
    entered: Notify,
    /// Bumped when `gate`'s future is dropped.
    gate_dropped: AtomicUsize,
    /// The run's token, as `gate` saw it.
    token: Mutex<Option<CancellationToken>>,
    /// Ids the steps saw in their contexts.
    ids: Mutex<Vec<String>>,
}

/// Counts a drop of the future holding it.
struct Guard(Arc<Probe>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.gate_dropped.fetch_add(1, Ordering::SeqCst);
    }
}

/// ```text
/// quick
/// gate (waits for the test's oneshot) ── after_gate
/// ```
struct Gated {
    rx: Mutex<Option<oneshot::Receiver<u32>>>,
    probe: Arc<Probe>,
}

#[job]
impl Gated {
    #[step]
    async fn quick(&self, ctx: &StepContext) -> String {
        self.probe.ids.lock().unwrap().push(ctx.job_id().to_owned());
        "quick".to_owned()
    }

    #[step]
    async fn gate(&self, ctx: &StepContext) -> u32 {
        let _guard = Guard(Arc::clone(&self.probe));
        self.probe.ids.lock().unwrap().push(ctx.job_id().to_owned());
        *self.probe.token.lock().unwrap() = Some(ctx.cancellation_token().clone());
        let rx = self.rx.lock().unwrap().take().expect("one attempt");
        self.probe.entered.notify_one();
        rx.await.expect("the test sends")
    }

    #[step]
    async fn after_gate(&self, gate: &u32, quick: &String) -> String {
        format!("{quick}+{gate}")
    }
}

fn gated() -> (Gated, oneshot::Sender<u32>, Arc<Probe>) {
    let (tx, rx) = oneshot::channel();
    let probe = Arc::new(Probe::default());
    let job = Gated {
        rx: Mutex::new(Some(rx)),
        probe: Arc::clone(&probe),
    };
    (job, tx, probe)
}

#[tokio::test(start_paused = true)]
async fn the_live_report_shows_running_steps_and_wait_returns_runs_outputs() {
    let (job, tx, probe) = gated();
    let handle = job.start();
    let id = handle.id().to_owned();
    assert!(!id.is_empty());
    probe.entered.notified().await;

    assert!(!handle.is_finished());
    let report = handle.report();
    assert_eq!(report.job_id(), id);
    assert_eq!(report.elapsed(), None, "still running");
    assert_eq!(report.step(GatedStep::Quick).state(), StepState::Completed);
    let gate = report.step(GatedStep::Gate);
    assert_eq!(gate.state(), StepState::Running);
    assert_eq!(gate.attempts(), 1);
    assert!(gate.started().is_some());
    assert_eq!(gate.duration(), None);
    assert_eq!(
        report.step(GatedStep::AfterGate).state(),
        StepState::Pending
    );

    let dot = handle.dot();
    assert!(
        dot.contains("\"gate\" [fillcolor=gold, tooltip=\"State: running"),
        "{dot}"
    );
    assert!(
        dot.contains("\"after_gate\" [fillcolor=white, tooltip=\"State: pending\"]"),
        "{dot}"
    );
    let gantt = report.mermaid_gantt();
    assert!(gantt.contains("    gate :active, s1, "), "{gantt}");
    assert!(!gantt.contains("after_gate"), "{gantt}");

    tx.send(7).unwrap();
    let out = timeout(HANG, handle.wait())
        .await
        .expect("wait hung")
        .expect("the run succeeds");
    // The same outputs as `run` of the same job.
    let (job, tx, _) = gated();
    tx.send(7).unwrap();
    let ran = job.run().await.unwrap();
    assert_eq!(
        (&out.quick, out.gate, &out.after_gate),
        (&ran.quick, ran.gate, &ran.after_gate)
    );
    assert_eq!(out.after_gate, "quick+7");
    // The handle's id is the one every step's context saw.
    assert_eq!(*probe.ids.lock().unwrap(), [id.clone(), id]);
    assert_eq!(probe.gate_dropped.load(Ordering::SeqCst), 1);
    assert!(
        probe.token.lock().unwrap().as_ref().unwrap().is_cancelled(),
        "the token is cancelled once the run has ended"
    );
}

#[tokio::test(start_paused = true)]
async fn cancel_stops_running_steps_and_wait_reports_them_cancelled() {
    let (job, _tx, probe) = gated();
    let handle = job.start();
    let id = handle.id().to_owned();
    probe.entered.notified().await;
    let token = probe.token.lock().unwrap().clone().expect("gate started");
    assert!(!token.is_cancelled());

    let cancelled_at = Instant::now();
    handle.cancel();
    let err = timeout(HANG, handle.wait())
        .await
        .expect("wait hung")
        .unwrap_err();
    assert_eq!(cancelled_at.elapsed(), Duration::ZERO);
    assert!(err.is_cancelled());
    assert_eq!(err.job_id(), id);
    assert_eq!(err.step(), GatedStep::Gate);
    // Cancelled by its caller: not a failure.
    assert_eq!(
        err.to_string(),
        "job `Gated` was cancelled while step `gate` ran"
    );
    assert!(token.is_cancelled(), "the run's token is cancelled with it");
    assert_eq!(
        probe.gate_dropped.load(Ordering::SeqCst),
        1,
        "`gate` was dropped"
    );

    let report = err.report();
    assert_eq!(report.step(GatedStep::Quick).state(), StepState::Completed);
    let gate = report.step(GatedStep::Gate);
    assert_eq!(gate.state(), StepState::Cancelled);
    assert_eq!(gate.error(), Some("was cancelled"));
    assert_eq!(
        report.step(GatedStep::AfterGate).state(),
        StepState::Cancelled
    );
    assert!(report.elapsed().is_some());
}

#[tokio::test(start_paused = true)]
async fn cancel_after_the_end_changes_nothing() {
    let (job, tx, probe) = gated();
    tx.send(1).unwrap();
    let handle = job.start();
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    handle.cancel();
    let out = handle.wait().await.expect("the run had already succeeded");
    assert_eq!(out.after_gate, "quick+1");
    assert_eq!(probe.gate_dropped.load(Ordering::SeqCst), 1);
}

#[derive(Debug, thiserror::Error)]
#[error("no such table")]
struct NoTable;

/// Fails, with a skipped child.
struct Failing;

#[job(name = "failing-job")]
impl Failing {
    #[step]
    async fn load(&self) -> Result<u32, NoTable> {
        Err(NoTable)
    }

    #[step]
    async fn use_it(&self, load: &u32) -> u32 {
        *load
    }
}

#[tokio::test]
async fn wait_returns_the_error_run_would_have() {
    let handle = Failing.start();
    let id = handle.id().to_owned();
    let started = handle.wait().await.unwrap_err();
    let ran = Failing.run().await.unwrap_err();
    assert_eq!(started.to_string(), ran.to_string());
    assert_eq!(
        started.to_string(),
        "job `failing-job` failed: step `load` returned an error"
    );
    assert!(!started.is_cancelled());
    assert_eq!(started.step(), ran.step());
    assert_eq!(started.skipped(), ran.skipped());
    assert_eq!(started.skipped(), [FailingStep::UseIt]);
    assert_eq!(started.job_id(), id);
    assert_ne!(started.job_id(), ran.job_id(), "each run has its own id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_runs_on_a_multi_threaded_runtime() {
    let (job, tx, probe) = gated();
    let handle = job.start();
    probe.entered.notified().await;
    tx.send(3).unwrap();
    let out = timeout(HANG, handle.wait())
        .await
        .expect("wait hung")
        .unwrap();
    assert_eq!(out.after_gate, "quick+3");
}

/// `start_with` spawns a run with the runner's options: a job id, a seed, a listener.
#[tokio::test(start_paused = true)]
async fn start_with_takes_the_runners_options() {
    let (job, _tx, probe) = gated();
    let events = Arc::new(Mutex::new(Vec::new()));
    let heard = events.clone();
    let handle = job.start_with(|run| {
        run.job_id("gated-7")
            .seed(GatedPartial {
                gate: Some(5),
                ..Default::default()
            })
            .listener(move |event| heard.lock().unwrap().push(format!("{event:?}")))
    });
    assert_eq!(handle.id(), "gated-7");
    let out = timeout(HANG, handle.wait())
        .await
        .expect("wait hung")
        .unwrap();
    assert_eq!(out.gate, 5);
    assert_eq!(out.after_gate, "quick+5");
    assert!(
        probe.token.lock().unwrap().is_none(),
        "the seeded `gate` never ran"
    );
    assert_eq!(*probe.ids.lock().unwrap(), ["gated-7"]);
    assert!(
        !events.lock().unwrap().is_empty(),
        "the listener heard the run"
    );
}
