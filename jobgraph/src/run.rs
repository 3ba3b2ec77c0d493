//! The state of one run, shared by the scheduler, the steps and a [`JobHandle`](crate::JobHandle):
//! its identity, its options, and the live report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::context::{Enrich, RunInfo};
use crate::report::{JobReport, Listener, StepEvent, StepReport, StepState};
use crate::{JobError, JobStep, RetryPolicy, StepContext, StepError, StepFailure};

/// Per-run options, set through [`Runner`](crate::Runner).
pub(crate) struct RunOptions<S> {
    pub(crate) job_id: Option<Arc<str>>,
    pub(crate) retry: Vec<(S, Arc<dyn RetryPolicy>)>,
    pub(crate) timeout: Vec<(S, Duration)>,
    pub(crate) job_enrich: Option<fn(&mut StepContext)>,
    pub(crate) enrich: Vec<Enrich>,
    pub(crate) sequential: bool,
    pub(crate) fail_fast: bool,
    pub(crate) listener: Option<Listener<S>>,
}

impl<S> Default for RunOptions<S> {
    fn default() -> Self {
        RunOptions {
            job_id: None,
            retry: Vec::new(),
            timeout: Vec::new(),
            job_enrich: None,
            enrich: Vec::new(),
            sequential: false,
            fail_fast: false,
            listener: None,
        }
    }
}

/// One run's shared state. Not public API: generated code reaches it through `__private`.
#[doc(hidden)]
pub struct RunCore<S: JobStep> {
    pub(crate) info: RunInfo,
    pub(crate) options: RunOptions<S>,
    /// Whether a [`JobHandle`](crate::JobHandle) may cancel the run, so the scheduler watches.
    pub(crate) cancellable: bool,
    started: Instant,
    report: Mutex<JobReport<S>>,
}

fn next_job_id() -> Arc<str> {
    static PROCESS: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let process = *PROCESS.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish() as u32
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Arc::from(format!("{process:08x}-{n}"))
}

impl<S: JobStep> RunCore<S> {
    /// The state of a new run of `J`, with `J`'s own enrichment before the options' ones.
    pub(crate) fn for_job<J: crate::Job<Step = S>>(
        mut options: RunOptions<S>,
        cancellable: bool,
    ) -> Self {
        options.job_enrich = J::__ENRICH;
        Self::new(J::NAME, options, cancellable)
    }

    fn new(job_name: &'static str, mut options: RunOptions<S>, cancellable: bool) -> Self {
        let job_id = options.job_id.take().unwrap_or_else(next_job_id);
        RunCore {
            info: RunInfo {
                job_name,
                job_id: job_id.clone(),
                cancel: CancellationToken::new(),
            },
            options,
            cancellable,
            started: Instant::now(),
            report: Mutex::new(JobReport {
                job_name,
                job_id,
                started_at: SystemTime::now(),
                elapsed: None,
                steps: S::ALL.iter().map(|&s| StepReport::pending(s)).collect(),
            }),
        }
    }

    pub(crate) fn job_id(&self) -> &str {
        &self.info.job_id
    }

    /// A snapshot of the report.
    pub(crate) fn report(&self) -> JobReport<S> {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, JobReport<S>> {
        // A listener that panicked while we held the lock poisons nothing we rely on.
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    pub(crate) fn update(&self, step: S, f: impl FnOnce(&mut StepReport<S>)) {
        f(&mut self.lock().steps[step.index()]);
    }

    pub(crate) fn emit(&self, event: &StepEvent<'_, S>) {
        if let Some(listener) = &self.options.listener {
            listener(event);
        }
    }

    pub(crate) fn retry_override(&self, step: S) -> Option<&dyn RetryPolicy> {
        self.options
            .retry
            .iter()
            .rev()
            .find(|(s, _)| *s == step)
            .map(|(_, p)| &**p as &dyn RetryPolicy)
    }

    pub(crate) fn timeout_override(&self, step: S) -> Option<Duration> {
        self.options
            .timeout
            .iter()
            .rev()
            .find(|(s, _)| *s == step)
            .map(|(_, d)| *d)
    }

    /// Runs the enrichment functions, the job's first, on a new attempt's context.
    pub(crate) fn enrich(&self, ctx: &mut StepContext) {
        if let Some(f) = self.options.job_enrich {
            f(ctx);
        }
        for f in &self.options.enrich {
            f(ctx);
        }
    }

    /// Records that `step` was running when the run stopped.
    pub(crate) fn cancel_step(&self, step: S) {
        let now = Instant::now();
        self.update(step, |r| {
            r.state = StepState::Cancelled;
            r.duration = r.started.map(|s| self.since_start(now).saturating_sub(s));
            r.error = Some(StepError::Cancelled.to_string());
        });
        tracing::warn!(step = step.name(), "step cancelled");
        self.emit(&StepEvent::Cancelled { step });
    }

    /// The error of a run whose future was dropped before it ended.
    pub(crate) fn abandon(&self) -> JobError<S> {
        let running: Vec<S> = self
            .lock()
            .steps
            .iter()
            .filter(|r| r.state == StepState::Running)
            .map(|r| r.step)
            .collect();
        let failures = running
            .iter()
            .map(|&s| {
                self.cancel_step(s);
                StepFailure::new(s, StepError::Cancelled)
            })
            .collect();
        match self.finish(failures) {
            Err(error) => error,
            // Every step had completed: only the task's result was lost.
            Ok(()) => JobError::new(
                vec![StepFailure::new(S::ALL[0], StepError::Cancelled)],
                self.report(),
            ),
        }
    }

    /// Ends the run: steps that never started are skipped (a step they depend on failed) or
    /// cancelled; `Ok` only if every step completed.
    pub(crate) fn finish(&self, mut failures: Vec<StepFailure<S>>) -> Result<(), JobError<S>> {
        let mut report = self.lock();
        report.elapsed = Some(self.since_start(Instant::now()));
        let mut events = Vec::new();
        // A step that never started is skipped if a step it waits for failed or was skipped;
        // repeat until nothing changes, so the cause propagates down any depth.
        let mut changed = true;
        while changed {
            changed = false;
            for &step in S::ALL {
                if report.steps[step.index()].state != StepState::Pending {
                    continue;
                }
                if let Some(because) = failed_dependency(&report, step) {
                    let r = &mut report.steps[step.index()];
                    r.state = StepState::Skipped;
                    r.skipped_because = Some(because);
                    events.push(StepEvent::Skipped { step, because });
                    changed = true;
                }
            }
        }
        // What is still pending was waiting when the run was cancelled.
        for r in report
            .steps
            .iter_mut()
            .filter(|r| r.state == StepState::Pending)
        {
            r.state = StepState::Cancelled;
            events.push(StepEvent::Cancelled { step: r.step });
        }
        let all_completed = report.steps.iter().all(|r| r.state == StepState::Completed);
        if failures.is_empty() && !all_completed {
            // Cancelled before any step ran: the first cancelled step stands for the run.
            if let Some(r) = report
                .steps
                .iter()
                .find(|r| r.state == StepState::Cancelled)
            {
                failures.push(StepFailure::new(r.step, StepError::Cancelled));
            }
        }
        let snapshot = (!failures.is_empty()).then(|| report.clone());
        drop(report);
        for event in &events {
            self.emit(event);
        }
        match snapshot {
            None => Ok(()),
            Some(report) => Err(JobError::new(failures, report)),
        }
    }
}

/// The failed step behind `step`: a dependency that failed, or the cause of one that was skipped.
fn failed_dependency<S: JobStep>(report: &JobReport<S>, step: S) -> Option<S> {
    let info = &S::STEPS[step.index()];
    info.parents()
        .iter()
        .chain(info.after())
        .filter_map(|name| S::ALL.iter().find(|s| s.name() == *name))
        .find_map(|dep| {
            let r = &report.steps[dep.index()];
            match r.state {
                StepState::Failed => Some(*dep),
                StepState::Skipped => r.skipped_because,
                _ => None,
            }
        })
}
