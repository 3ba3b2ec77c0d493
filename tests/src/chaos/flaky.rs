//! [`Flaky`]: a store that reports every answer the worker gets to the witness, and now and
//! then answers a completion or a failure with an error although it was committed (an
//! *ambiguous commit*: the connection died after `COMMIT` reached the server). The worker then
//! tries the commit again; nothing may be lost and nothing committed twice.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use jobgraph::store::queue::{
    BatchCounts, Claim, ClaimId, Completion, Failed, Held, Lease, Queue, Submission, Submitted,
};
use jobgraph::store::{
    RunFilter, RunSpec, RunState, RunSummary, StepOutcome, Store, StoreError, StoredRun,
};

use super::witness::{Ack, Witness};
use crate::kill::mix;

/// A [`Queue`] over `S` that records the answers to completions and failures, and turns one in
/// `1000 / permille` of the committed ones into an error.
#[derive(Clone)]
pub struct Flaky<S> {
    inner: S,
    witness: Arc<Witness>,
    permille: u64,
    rng: Arc<Mutex<u64>>,
    /// How many answers were turned into errors.
    pub injected: Arc<AtomicU64>,
}

impl<S: Queue + Clone> Flaky<S> {
    /// Wraps `inner`; `seed` chooses which commits become ambiguous.
    pub fn new(inner: S, witness: Arc<Witness>, permille: u64, seed: u64) -> Self {
        Flaky {
            inner,
            witness,
            permille,
            rng: Arc::new(Mutex::new(mix(seed) | 1)),
            injected: Arc::default(),
        }
    }

    /// Whether to turn this answer into an error.
    fn strike(&self) -> bool {
        if self.permille == 0 {
            return false;
        }
        let mut state = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        *state = mix(*state);
        let hit = *state % 1000 < self.permille;
        if hit {
            self.injected.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }
}

/// The error an ambiguous commit returns.
fn ambiguous_error() -> StoreError {
    StoreError::Database("chaos: the connection was lost after COMMIT (injected)".into())
}

impl<S: Queue + Clone> Store for Flaky<S> {
    fn open_run<'a>(
        &'a self,
        spec: RunSpec<'a>,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<StoredRun, StoreError>> {
        self.inner.open_run(spec, owner, lease)
    }

    fn renew_lease<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.renew_lease(run_id, owner, lease)
    }

    fn step_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.step_completed(run_id, owner, outcome)
    }

    fn step_failed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
        skipped: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.step_failed(run_id, owner, outcome, skipped)
    }

    fn element_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        step: &'a str,
        index: usize,
        output: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner
            .element_completed(run_id, owner, step, index, output)
    }

    fn elements<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(usize, String)>, StoreError>> {
        self.inner.elements(run_id, step)
    }

    fn finish_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        state: RunState,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.finish_run(run_id, owner, state, error)
    }

    fn load_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRun>, StoreError>> {
        self.inner.load_run(run_id)
    }

    fn list_runs<'a>(
        &'a self,
        filter: &'a RunFilter,
    ) -> BoxFuture<'a, Result<Vec<RunSummary>, StoreError>> {
        self.inner.list_runs(filter)
    }

    fn reset_step<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.inner.reset_step(run_id, step)
    }

    fn runs_where_failed<'a>(
        &'a self,
        job: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.inner.runs_where_failed(job, step)
    }
}

impl<S: Queue + Clone> Queue for Flaky<S> {
    fn submit<'a>(
        &'a self,
        submission: Submission<'a>,
    ) -> BoxFuture<'a, Result<Submitted, StoreError>> {
        self.inner.submit(submission)
    }

    fn claim<'a>(
        &'a self,
        worker: &'a str,
        jobs: &'a [&'a str],
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        self.inner.claim(worker, jobs, limit, lease)
    }

    fn heartbeat<'a>(
        &'a self,
        worker: &'a str,
        claims: &'a [ClaimId],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Held>, StoreError>> {
        self.inner.heartbeat(worker, claims, lease)
    }

    fn complete_many<'a>(
        &'a self,
        worker: &'a str,
        done: &'a [Completion<'a>],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        Box::pin(async move {
            let stored = self.inner.complete_many(worker, done).await?;
            let ambiguous = self.strike();
            for (completion, &stored) in done.iter().zip(&stored) {
                self.witness
                    .ack(Ack {
                        run: &completion.claim.run,
                        step: &unit(completion.claim),
                        claim: completion.claim.attempt,
                        kind: "complete",
                        stored,
                        ambiguous,
                    })
                    .await;
            }
            if ambiguous {
                return Err(ambiguous_error());
            }
            Ok(stored)
        })
    }

    fn fail<'a>(
        &'a self,
        worker: &'a str,
        claim: &'a ClaimId,
        error: &'a str,
        started_at: i64,
        retry_in: Option<Duration>,
    ) -> BoxFuture<'a, Result<Failed, StoreError>> {
        Box::pin(async move {
            let answer = self
                .inner
                .fail(worker, claim, error, started_at, retry_in)
                .await;
            let stored = match &answer {
                Ok(_) => true,
                Err(StoreError::ClaimLost { .. }) => false,
                Err(_) => return answer,
            };
            let ambiguous = stored && self.strike();
            self.witness
                .ack(Ack {
                    run: &claim.run,
                    step: &unit(claim),
                    claim: claim.attempt,
                    kind: "fail",
                    stored,
                    ambiguous,
                })
                .await;
            if ambiguous {
                return Err(ambiguous_error());
            }
            answer
        })
    }

    fn abort<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.abort(run)
    }

    fn submit_batch<'a>(
        &'a self,
        batch: &'a str,
        template: Submission<'a>,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.inner.submit_batch(batch, template, inputs)
    }

    fn release<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.release(batch)
    }

    fn abort_batch<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.abort_batch(batch)
    }

    fn batch_counts<'a>(
        &'a self,
        batch: &'a str,
    ) -> BoxFuture<'a, Result<BatchCounts, StoreError>> {
        self.inner.batch_counts(batch)
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        self.inner.leases()
    }

    fn wait_ready<'a>(&'a self, jobs: &'a [&'a str], timeout: Duration) -> BoxFuture<'a, ()> {
        self.inner.wait_ready(jobs, timeout)
    }
}

/// What the witness calls a claim's work: its step, or `step[i]` for an element of a fan-out.
fn unit(claim: &ClaimId) -> String {
    match claim.element {
        Some(i) => format!("{}[{i}]", claim.step),
        None => claim.step.clone(),
    }
}
