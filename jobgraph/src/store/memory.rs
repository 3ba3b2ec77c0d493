//! `MemoryStore`: the [`Store`] contract on maps behind a mutex, for tests.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{self, BoxFuture, FutureExt};

use super::{
    GraphSpec, RunFilter, RunSpec, RunState, RunSummary, StepOutcome, StepStatus, StepTally, Store,
    StoreError, StoredRun, StoredStep, check_open, millis, now_ms, plus,
};

/// A [`Store`] in memory: same semantics as `SqliteStore`, leases and fencing included (on the
/// wall clock), and nothing survives the process. For tests. Clones share one store.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    inner: std::sync::Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    runs: HashMap<String, MemRun>,
    /// Creation order, the tie-break of "newest first" (SQLite's rowid).
    next_seq: u64,
}

#[derive(Debug)]
struct MemRun {
    seq: u64,
    run: StoredRun,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    /// Completed `for_each` elements, per step name.
    elements: HashMap<String, BTreeMap<usize, String>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves every lease's expiry `by` into the past, as if that much time had passed: protocol
    /// tests age leases instead of sleeping.
    #[doc(hidden)]
    pub async fn age_leases(&self, by: Duration) {
        let by = millis(by);
        for run in self.lock().runs.values_mut() {
            if let Some(until) = &mut run.lease_until {
                *until = until.saturating_sub(by);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-written run: every operation
        // checks before it writes. So a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A future that runs `f` on the store under its lock when first polled (like a
    /// transaction: all of `f` or, if it returns an error, none of it).
    fn with<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, StoreError>> {
        future::lazy(move |_| f(&mut self.lock())).boxed()
    }
}

impl Inner {
    fn run(&mut self, run_id: &str) -> Result<&mut MemRun, StoreError> {
        self.runs
            .get_mut(run_id)
            .ok_or_else(|| StoreError::NoSuchRun {
                run: run_id.to_owned(),
            })
    }

    /// The run, if `owner` holds its lease (fencing).
    fn fenced(&mut self, run_id: &str, owner: &str) -> Result<&mut MemRun, StoreError> {
        let run = self.run(run_id)?;
        if run.lease_owner.as_deref() != Some(owner) {
            return Err(StoreError::LeaseLost {
                run: run_id.to_owned(),
                owner: owner.to_owned(),
            });
        }
        Ok(run)
    }
}

impl MemRun {
    fn step_index(&self, step: &str) -> Result<usize, StoreError> {
        self.run
            .steps
            .iter()
            .position(|s| s.name == step)
            .ok_or_else(|| StoreError::NoSuchStep {
                run: self.run.id.clone(),
                step: step.to_owned(),
            })
    }

    fn touch(&mut self, now: i64) {
        self.run.updated_at = now;
    }
}

fn pending_step(name: &str) -> StoredStep {
    StoredStep {
        name: name.to_owned(),
        state: StepStatus::Pending,
        attempts: 0,
        output: None,
        error: None,
        started_at: None,
        ended_at: None,
    }
}

fn new_run(spec: &RunSpec<'_>, now: i64) -> StoredRun {
    StoredRun {
        id: spec.id.to_owned(),
        job: spec.job.to_owned(),
        batch: spec.batch.map(str::to_owned),
        input: spec.input.to_owned(),
        graph: GraphSpec::clone(spec.graph),
        state: RunState::Running,
        error: None,
        created_at: now,
        updated_at: now,
        steps: spec
            .graph
            .steps
            .iter()
            .map(|s| pending_step(&s.name))
            .collect(),
    }
}

impl Store for MemoryStore {
    fn open_run<'a>(
        &'a self,
        spec: RunSpec<'a>,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<StoredRun, StoreError>> {
        self.with(move |inner| {
            let now = now_ms();
            let until = plus(now, lease);
            let Some(run) = inner.runs.get_mut(spec.id) else {
                if let Some(reason) = spec.graph.check() {
                    return Err(StoreError::InvalidGraph {
                        run: spec.id.to_owned(),
                        reason,
                    });
                }
                let seq = inner.next_seq;
                inner.next_seq += 1;
                let run = new_run(&spec, now);
                inner.runs.insert(
                    spec.id.to_owned(),
                    MemRun {
                        seq,
                        run: run.clone(),
                        lease_owner: Some(owner.to_owned()),
                        lease_until: Some(until),
                        elements: HashMap::new(),
                    },
                );
                return Ok(run);
            };
            let live = run
                .lease_owner
                .as_deref()
                .zip(run.lease_until)
                .filter(|l| l.1 > now);
            check_open(spec.id, &run.run.job, false, live, spec.job, owner)?;
            run.lease_owner = Some(owner.to_owned());
            run.lease_until = Some(until);
            if !run.run.state.is_terminal() {
                run.run.state = RunState::Running;
                run.run.error = None;
                for step in &mut run.run.steps {
                    if step.state != StepStatus::Completed {
                        step.state = StepStatus::Pending;
                        step.error = None;
                    }
                }
            }
            run.touch(now);
            Ok(run.run.clone())
        })
    }

    fn renew_lease<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(move |inner| {
            let run = inner.fenced(run_id, owner)?;
            run.lease_until = Some(plus(now_ms(), lease));
            Ok(())
        })
    }

    fn step_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(move |inner| {
            let run = inner.fenced(run_id, owner)?;
            let i = run.step_index(outcome.step)?;
            run.run.steps[i] = StoredStep {
                name: outcome.step.to_owned(),
                state: StepStatus::Completed,
                attempts: outcome.attempts,
                output: outcome.output.map(str::to_owned),
                error: outcome.error.map(str::to_owned),
                started_at: outcome.started_at,
                ended_at: Some(outcome.ended_at),
            };
            run.touch(now_ms());
            Ok(())
        })
    }

    fn step_failed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
        skipped: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(move |inner| {
            let run = inner.fenced(run_id, owner)?;
            // Check every name before writing anything: one transaction.
            let i = run.step_index(outcome.step)?;
            let skipped = skipped
                .iter()
                .map(|name| run.step_index(name))
                .collect::<Result<Vec<_>, _>>()?;
            run.run.steps[i] = StoredStep {
                name: outcome.step.to_owned(),
                state: StepStatus::Failed,
                attempts: outcome.attempts,
                output: outcome.output.map(str::to_owned),
                error: outcome.error.map(str::to_owned),
                started_at: outcome.started_at,
                ended_at: Some(outcome.ended_at),
            };
            for j in skipped {
                run.run.steps[j].state = StepStatus::Skipped;
            }
            run.touch(now_ms());
            Ok(())
        })
    }

    fn element_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        step: &'a str,
        index: usize,
        output: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(move |inner| {
            let run = inner.fenced(run_id, owner)?;
            run.step_index(step)?;
            run.elements
                .entry(step.to_owned())
                .or_default()
                .insert(index, output.to_owned());
            run.touch(now_ms());
            Ok(())
        })
    }

    fn elements<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(usize, String)>, StoreError>> {
        self.with(move |inner| {
            let run = inner.run(run_id)?;
            run.step_index(step)?;
            Ok(run
                .elements
                .get(step)
                .map(|e| e.iter().map(|(&i, o)| (i, o.clone())).collect())
                .unwrap_or_default())
        })
    }

    fn finish_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        state: RunState,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.with(move |inner| {
            if !matches!(
                state,
                RunState::Succeeded | RunState::Failed | RunState::Cancelled
            ) {
                return Err(StoreError::NotTerminal {
                    run: run_id.to_owned(),
                    state,
                });
            }
            let run = inner.fenced(run_id, owner)?;
            run.run.state = state;
            run.run.error = error.map(str::to_owned);
            run.lease_owner = None;
            run.lease_until = None;
            run.touch(now_ms());
            Ok(())
        })
    }

    fn load_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRun>, StoreError>> {
        self.with(move |inner| Ok(inner.runs.get(run_id).map(|r| r.run.clone())))
    }

    fn list_runs<'a>(
        &'a self,
        filter: &'a RunFilter,
    ) -> BoxFuture<'a, Result<Vec<RunSummary>, StoreError>> {
        self.with(move |inner| {
            let mut runs: Vec<&MemRun> = inner
                .runs
                .values()
                .filter(|r| filter.job.as_ref().is_none_or(|job| &r.run.job == job))
                .filter(|r| filter.state.is_none_or(|state| r.run.state == state))
                .filter(|r| {
                    filter
                        .batch
                        .as_ref()
                        .is_none_or(|batch| r.run.batch.as_ref() == Some(batch))
                })
                .collect();
            runs.sort_by_key(|r| Reverse((r.run.created_at, r.seq)));
            runs.truncate(filter.limit.unwrap_or(usize::MAX));
            Ok(runs
                .into_iter()
                .map(|r| {
                    let mut steps = StepTally::default();
                    for step in &r.run.steps {
                        steps.add(step.state);
                    }
                    RunSummary {
                        id: r.run.id.clone(),
                        job: r.run.job.clone(),
                        batch: r.run.batch.clone(),
                        state: r.run.state,
                        created_at: r.run.created_at,
                        updated_at: r.run.updated_at,
                        steps,
                    }
                })
                .collect())
        })
    }

    fn reset_step<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.with(move |inner| {
            let now = now_ms();
            let run = inner.run(run_id)?;
            let Some(root) = run.run.graph.position(step) else {
                return Err(StoreError::NoSuchStep {
                    run: run_id.to_owned(),
                    step: step.to_owned(),
                });
            };
            if let (Some(holder), Some(until)) = (&run.lease_owner, run.lease_until)
                && until > now
            {
                return Err(StoreError::Busy {
                    run: run_id.to_owned(),
                    owner: holder.clone(),
                    until,
                });
            }
            let hit = run.run.graph.descendants(root);
            let names: Vec<String> = run
                .run
                .graph
                .steps
                .iter()
                .zip(&hit)
                .filter(|(_, hit)| **hit)
                .map(|(s, _)| s.name.clone())
                .collect();
            for name in &names {
                if let Some(stored) = run.run.steps.iter_mut().find(|s| &s.name == name) {
                    *stored = pending_step(name);
                }
                run.elements.remove(name);
            }
            if matches!(
                run.run.state,
                RunState::Succeeded | RunState::Failed | RunState::Cancelled
            ) {
                run.run.state = RunState::Pending;
                run.run.error = None;
            }
            run.touch(now);
            Ok(names)
        })
    }

    fn runs_where_failed<'a>(
        &'a self,
        job: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.with(move |inner| {
            let mut runs: Vec<&MemRun> = inner
                .runs
                .values()
                .filter(|r| r.run.job == job)
                .filter(|r| {
                    r.run
                        .steps
                        .iter()
                        .any(|s| s.name == step && s.state == StepStatus::Failed)
                })
                .collect();
            runs.sort_by_key(|r| Reverse((r.run.created_at, r.seq)));
            Ok(runs.into_iter().map(|r| r.run.id.clone()).collect())
        })
    }
}
