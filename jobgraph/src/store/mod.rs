//! Durable runs: where a run's input, its graph and every step's output are checkpointed.
//!
//! A [`Store`] holds runs. A runner [opens](Store::open_run) a run under a lease, commits each
//! step's output as it completes ([`Store::step_completed`]), and [finishes](Store::finish_run)
//! it; a run whose process died is opened again (once its lease has expired) and resumes from
//! what the store holds. Operators list runs, read them, and reset steps so that the next resume
//! runs them again ([`Store::reset_step`], "redrive").
//!
//! Three stores implement the one contract (and pass the one contract test suite):
//!
//! - `SqliteStore` (feature `sqlite`, on by default): an embedded SQLite database through
//!   `sqlx`, for runs that must survive a crash.
//! - `PgStore` (feature `postgres`): a PostgreSQL database through `sqlx`, shared by processes
//!   on many machines; leases expire on the database's clock.
//! - [`MemoryStore`]: maps behind a mutex, for tests; same semantics, including leases and
//!   fencing.
//!
//! # Leases and fencing
//!
//! A run is executed by one owner at a time. [`Store::open_run`] takes the run's lease for an
//! owner (a string unique to the process or runner, e.g. host, pid and a random part) until
//! `now + lease`; another owner gets [`StoreError::Busy`] until that lease expires (or the run is
//! finished), and then may take the run over. Every later write of the old owner is *fenced*: it
//! checks, in the same transaction, that its owner still holds the lease, and fails with
//! [`StoreError::LeaseLost`] otherwise, changing nothing. An owner whose lease expired but was
//! not taken over still holds it (nobody else can have written), and may renew it.
//!
//! "Now" is the store's clock: the process's for `MemoryStore` and `SqliteStore` (every process
//! of a SQLite file is on one machine), the database server's for `PgStore` (processes on many
//! machines compare leases against one clock, so their clocks' skew does not matter).
//!
//! # Data
//!
//! Inputs and outputs are JSON text (`&str` in, `String` out); the store never parses them.
//! Timestamps are Unix milliseconds (`i64`). The stored graph ([`GraphSpec`]) lets the store
//! compute a step's descendants without the job type (for [`Store::reset_step`]), and lets
//! inspection tools draw a run from the store alone ([`StoredRun::dot`],
//! [`StoredRun::mermaid_gantt`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

mod memory;
// The queue protocol: submitted runs executed one step at a time by workers.
pub mod queue;
// `StoredRun::dot`, `StoredRun::mermaid_gantt` and the report helpers: inherent methods.
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_graphs;
#[cfg(feature = "postgres")]
mod postgres_growth;
#[cfg(feature = "postgres")]
mod postgres_queue;
#[cfg(feature = "postgres")]
mod postgres_schema;
// What wakes an idle worker: the stores' readiness news.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod ready;
mod render;
#[cfg(feature = "sqlite")]
mod schema;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_queue;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgOptions, PgStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous};

/// Where durable runs are kept: runs, their steps' states and outputs, and `for_each` elements.
///
/// Object-safe (every method returns a [`BoxFuture`]), so runners and tools take a
/// `&dyn Store`. See the [module docs](self) for leases and fencing. Every method that writes on
/// behalf of a runner takes its `owner` and is fenced.
pub trait Store: Send + Sync + 'static {
    /// Creates run `spec.id` (state [`RunState::Running`]) with its input, graph and pending
    /// steps if it does not exist, or loads it; either way takes its lease for `owner` until
    /// now + `lease`.
    ///
    /// - [`StoreError::Busy`] if another owner's lease has not expired (the same owner may open
    ///   its run again).
    /// - [`StoreError::Mismatch`] if the stored run is of another job.
    /// - [`StoreError::InvalidGraph`] if a new run's graph has duplicate step names or edges to
    ///   steps that do not exist.
    ///
    /// A run in a terminal state ([`RunState::is_terminal`]: succeeded or failed) is returned as
    /// is (the caller returns its outputs without running anything), lease taken anyway. A
    /// resumable run (pending, running or cancelled) becomes running; its steps that are not
    /// completed (failed, skipped or cancelled by the interrupted attempt) become pending again,
    /// keeping their attempts; completed steps and `for_each` elements are kept.
    ///
    /// The stored graph is returned as stored: if it differs from `spec.graph`, the job's code
    /// changed since the run was created, and the caller decides.
    fn open_run<'a>(
        &'a self,
        spec: RunSpec<'a>,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<StoredRun, StoreError>>;

    /// Extends the lease to now + `lease`; [`StoreError::LeaseLost`] if `owner` no longer holds
    /// it.
    fn renew_lease<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// One transaction: the step is [`StepStatus::Completed`] with its output JSON, attempts and
    /// timings (renews nothing). Fenced: [`StoreError::LeaseLost`] unless `owner` holds the
    /// run's lease; [`StoreError::NoSuchStep`] if the run has no such step.
    fn step_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// One transaction: the step [`Failed`](StepStatus::Failed) with its error text and
    /// attempts, and `skipped` (names) are [`Skipped`](StepStatus::Skipped). Fenced.
    fn step_failed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        outcome: StepOutcome<'a>,
        skipped: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// One element (at `index`) of a `for_each` step completed with its output JSON; storing an
    /// index again replaces its output. Fenced.
    fn element_completed<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        step: &'a str,
        index: usize,
        output: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The completed elements of a `for_each` step: (index, output JSON), ascending.
    fn elements<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(usize, String)>, StoreError>>;

    /// The run ends in `state` (succeeded, failed or cancelled; a cancelled run may be resumed)
    /// with `error`, and its lease is released. Fenced. [`StoreError::NotTerminal`] if `state`
    /// is pending or running.
    fn finish_run<'a>(
        &'a self,
        run_id: &'a str,
        owner: &'a str,
        state: RunState,
        error: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The run with its steps (in graph order), or `None`.
    fn load_run<'a>(
        &'a self,
        run_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredRun>, StoreError>>;

    /// Runs matching `filter`, newest first: summaries with per-state step counts.
    fn list_runs<'a>(
        &'a self,
        filter: &'a RunFilter,
    ) -> BoxFuture<'a, Result<Vec<RunSummary>, StoreError>>;

    /// Redrive: `step` of run `run_id` and every step that depends on it (through `parents` or
    /// `after`, transitively, computed from the stored graph) become pending again, their
    /// outputs, errors, attempts, timings and elements cleared, and a terminal or cancelled run
    /// becomes resumable ([`RunState::Pending`]) so the next resume runs them. Returns the names
    /// reset, in graph order.
    ///
    /// A run submitted to a [queue](queue) is queued again instead, for workers: the reset
    /// steps' claims are cleared and the rows of their `for_each` elements deleted (a redriven
    /// fan-out runs every element again, over its parent's output as it is then), each waits
    /// for its dependencies that have not completed, and the redriven step is ready at once
    /// (its parent's elements made, for a fan-out). Its time to live is cleared.
    ///
    /// [`StoreError::NoSuchRun`] / [`StoreError::NoSuchStep`]; [`StoreError::Busy`] while an
    /// owner holds a live lease on the run (it is being executed: reset it after it ends), or,
    /// for a queued run, while a worker holds a live claim of one of its steps.
    fn reset_step<'a>(
        &'a self,
        run_id: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;

    /// The ids of the runs of `job` in which `step` failed, newest first.
    fn runs_where_failed<'a>(
        &'a self,
        job: &'a str,
        step: &'a str,
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
}

/// What [`Store::open_run`] creates if the run does not exist yet.
#[derive(Clone, Copy, Debug)]
pub struct RunSpec<'a> {
    /// The run's id, chosen by the caller (e.g. `import-7`).
    pub id: &'a str,
    /// The job's name (its type); a run id is bound to one job.
    pub job: &'a str,
    /// The job's input, JSON.
    pub input: &'a str,
    /// The job's graph, stored with the run.
    pub graph: &'a GraphSpec,
    /// The batch the run belongs to, if any.
    pub batch: Option<&'a str>,
}

/// A job's graph as stored with each run: its steps in graph order, and their edges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct GraphSpec {
    /// The steps; edges are indices into this list.
    pub steps: Vec<StepSpec>,
}

/// One step of a [`GraphSpec`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// The step's name, unique in its job.
    pub name: String,
    /// The steps whose outputs this one takes (indices into [`GraphSpec::steps`]).
    pub parents: Vec<usize>,
    /// The steps this one runs after without taking their outputs (indices).
    pub after: Vec<usize>,
}

impl GraphSpec {
    /// The index of the step named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }

    /// Why this graph cannot be stored (duplicate names, edges to steps that do not exist), or
    /// `None` if it can.
    pub fn check(&self) -> Option<String> {
        let n = self.steps.len();
        for (i, step) in self.steps.iter().enumerate() {
            if self.steps[..i].iter().any(|s| s.name == step.name) {
                return Some(format!("two steps are named `{}`", step.name));
            }
            if let Some(&bad) = step.parents.iter().chain(&step.after).find(|&&e| e >= n) {
                return Some(format!(
                    "step `{}` has an edge to step {bad}, but the graph has {n} steps",
                    step.name
                ));
            }
        }
        None
    }

    /// The steps `position` waits for: its parents and `after` steps, each once, ascending.
    pub fn dependencies(&self, position: usize) -> Vec<usize> {
        let step = &self.steps[position];
        let mut deps: Vec<usize> = step.parents.iter().chain(&step.after).copied().collect();
        deps.sort_unstable();
        deps.dedup();
        deps
    }

    /// How many steps `position` waits for: [`dependencies`](GraphSpec::dependencies)`.len()`,
    /// without building the list.
    #[cfg(feature = "postgres")]
    pub(crate) fn count_dependencies(&self, position: usize) -> usize {
        let step = &self.steps[position];
        let all = || step.parents.iter().chain(&step.after);
        all()
            .enumerate()
            .filter(|&(i, e)| !all().take(i).any(|earlier| earlier == e))
            .count()
    }

    /// The steps that wait for `position` (through `parents` or `after`), each once, ascending.
    pub fn children(&self, position: usize) -> Vec<usize> {
        (0..self.steps.len())
            .filter(|&c| {
                let step = &self.steps[c];
                step.parents.contains(&position) || step.after.contains(&position)
            })
            .collect()
    }

    /// Whether `position` is the graph's one last step: the only step no other waits for. Every
    /// other step is then one of its dependencies, directly or not, so once it has completed
    /// (which it does only after all of them completed), every step has.
    pub(crate) fn is_last(&self, position: usize) -> bool {
        let n = self.steps.len();
        let mut awaited = vec![false; n];
        for step in &self.steps {
            for &e in step.parents.iter().chain(&step.after) {
                if let Some(awaited) = awaited.get_mut(e) {
                    *awaited = true;
                }
            }
        }
        position < n && (0..n).all(|p| awaited[p] != (p == position))
    }

    /// Step `root` and every step that depends on it through `parents` or `after`, directly or
    /// not, as a mask over the steps (in graph order). Edges out of range are ignored.
    pub fn descendants(&self, root: usize) -> Vec<bool> {
        let n = self.steps.len();
        let mut hit = vec![false; n];
        if root >= n {
            return hit;
        }
        hit[root] = true;
        // Fixed point: the graph is small, and need not be topologically ordered.
        let mut changed = true;
        while changed {
            changed = false;
            for (i, step) in self.steps.iter().enumerate() {
                if !hit[i]
                    && step
                        .parents
                        .iter()
                        .chain(&step.after)
                        .any(|&e| e < n && hit[e])
                {
                    hit[i] = true;
                    changed = true;
                }
            }
        }
        hit
    }
}

/// What became of one step, as [`Store::step_completed`] and [`Store::step_failed`] record it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOutcome<'a> {
    /// The step's name.
    pub step: &'a str,
    /// How many attempts it took (1 if the first one settled it).
    pub attempts: u32,
    /// Its output, JSON (completed steps).
    pub output: Option<&'a str>,
    /// Its error, as text (failed steps).
    pub error: Option<&'a str>,
    /// When its first attempt started (Unix ms), if it started.
    pub started_at: Option<i64>,
    /// When it settled (Unix ms).
    pub ended_at: i64,
}

/// The state of a stored run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunState {
    /// Resumable, not being executed: reset by a redrive ([`Store::reset_step`]).
    Pending,
    /// Being executed (or its process died; its lease says which).
    Running,
    /// Every step completed.
    Succeeded,
    /// A step failed; the run ended.
    Failed,
    /// Cancelled by its caller; the next open resumes it.
    Cancelled,
}

impl RunState {
    /// Every state, in the order of its lifecycle.
    pub const ALL: [RunState; 5] = [
        RunState::Pending,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    /// The state's name as stored: `"pending"`, `"running"`, `"succeeded"`, `"failed"`,
    /// `"cancelled"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended for good (succeeded or failed): opening it runs nothing.
    /// Cancelled runs are resumable, so not terminal.
    pub const fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseStateError {
                found: s.to_owned(),
                expected: "pending, running, succeeded, failed or cancelled",
            })
    }
}

/// The state of a stored step.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum StepStatus {
    /// Not completed yet (or reset): the next resume runs it.
    Pending,
    /// Completed; its output is stored.
    Completed,
    /// Failed; its error is stored.
    Failed,
    /// Not run because a step it depends on failed.
    Skipped,
    /// Not run, or stopped, because the run was cancelled.
    Cancelled,
}

impl StepStatus {
    /// Every status.
    pub const ALL: [StepStatus; 5] = [
        StepStatus::Pending,
        StepStatus::Completed,
        StepStatus::Failed,
        StepStatus::Skipped,
        StepStatus::Cancelled,
    ];

    /// The status's name as stored: `"pending"`, `"completed"`, `"failed"`, `"skipped"`,
    /// `"cancelled"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for StepStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StepStatus {
    type Err = ParseStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StepStatus::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseStateError {
                found: s.to_owned(),
                expected: "pending, completed, failed, skipped or cancelled",
            })
    }
}

/// A string that names no [`RunState`] or [`StepStatus`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("unknown state `{found}`: expected one of {expected}")]
pub struct ParseStateError {
    /// The string given.
    pub found: String,
    /// The valid names.
    pub expected: &'static str,
}

/// A run as stored, with its steps.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredRun {
    /// The run's id.
    pub id: String,
    /// The job's name.
    pub job: String,
    /// The batch it belongs to, if any.
    pub batch: Option<String>,
    /// The job's input, JSON.
    pub input: String,
    /// The job's graph as it was when the run was created.
    pub graph: GraphSpec,
    /// The run's state.
    pub state: RunState,
    /// Why it failed (or was cancelled), if it did.
    pub error: Option<String>,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// When it was last written (Unix ms).
    pub updated_at: i64,
    /// Its steps, in graph order.
    pub steps: Vec<StoredStep>,
}

impl StoredRun {
    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StoredStep> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// A step as stored.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct StoredStep {
    /// The step's name.
    pub name: String,
    /// Its state.
    pub state: StepStatus,
    /// How many attempts it took (0 if it has not run).
    pub attempts: u32,
    /// Its output, JSON, once completed.
    pub output: Option<String>,
    /// Its error, once failed.
    pub error: Option<String>,
    /// When its first attempt started (Unix ms).
    pub started_at: Option<i64>,
    /// When it settled (Unix ms).
    pub ended_at: Option<i64>,
}

/// Which runs [`Store::list_runs`] returns; every field that is set must match.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this job.
    pub job: Option<String>,
    /// Only runs in this state.
    pub state: Option<RunState>,
    /// Only runs of this batch.
    pub batch: Option<String>,
    /// At most this many runs (the newest).
    pub limit: Option<usize>,
}

/// A run as [`Store::list_runs`] lists it.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    /// The run's id.
    pub id: String,
    /// The job's name.
    pub job: String,
    /// Its batch, if any.
    pub batch: Option<String>,
    /// Its state.
    pub state: RunState,
    /// When it was created (Unix ms).
    pub created_at: i64,
    /// When it was last written (Unix ms).
    pub updated_at: i64,
    /// How many of its steps are in each state.
    pub steps: StepTally,
}

/// How many steps are in each [`StepStatus`].
#[derive(Serialize, Default, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepTally {
    /// Pending steps.
    pub pending: usize,
    /// Completed steps.
    pub completed: usize,
    /// Failed steps.
    pub failed: usize,
    /// Skipped steps.
    pub skipped: usize,
    /// Cancelled steps.
    pub cancelled: usize,
}

impl StepTally {
    /// Counts one step in `state`.
    pub fn add(&mut self, state: StepStatus) {
        match state {
            StepStatus::Pending => self.pending += 1,
            StepStatus::Completed => self.completed += 1,
            StepStatus::Failed => self.failed += 1,
            StepStatus::Skipped => self.skipped += 1,
            StepStatus::Cancelled => self.cancelled += 1,
        }
    }

    /// All steps counted.
    pub fn total(&self) -> usize {
        self.pending + self.completed + self.failed + self.skipped + self.cancelled
    }
}

/// Why a [`Store`] operation failed. Each message says what to do.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// Another owner holds a live lease on the run.
    #[error(
        "run `{run}` is being executed by `{owner}` (its lease runs until {until} ms after the Unix \
         epoch); wait for that runner to finish, or for its lease to expire if it died"
    )]
    Busy {
        /// The run.
        run: String,
        /// The owner holding the lease.
        owner: String,
        /// When the lease expires (Unix ms).
        until: i64,
    },
    /// `owner` no longer holds the run's lease: it expired and another owner took the run over,
    /// or the run was finished. Nothing was written.
    #[error(
        "`{owner}` no longer holds the lease of run `{run}` (it expired and another runner took the \
         run over, or the run ended); stop executing this run: nothing was written"
    )]
    LeaseLost {
        /// The run.
        run: String,
        /// The owner that lost it.
        owner: String,
    },
    /// `worker` no longer holds claim `attempt` of the step: its lease expired and another
    /// claim took the step, the step was settled, or its run ended or was aborted. Nothing was
    /// written (a queue's fence).
    #[error(
        "worker `{worker}` no longer holds claim {attempt} of step `{step}` of run `{run}` (its \
         lease expired and the step was claimed again, or the run ended or was aborted); its \
         result was not stored"
    )]
    ClaimLost {
        /// The run.
        run: String,
        /// The step.
        step: String,
        /// The claim's number.
        attempt: u32,
        /// The worker that held it.
        worker: String,
    },
    /// A run's id is taken by another run: a submit's by any run, a runner's by a submitted
    /// run (which workers execute).
    #[error(
        "run id `{run}` is taken by another run; choose another id (or submit with an idempotency \
         key)"
    )]
    IdTaken {
        /// The run id.
        run: String,
    },
    /// A submission the queue refuses: say why.
    #[error("cannot submit a run of job `{job}`: {why}")]
    InvalidSubmission {
        /// The job.
        job: String,
        /// Why.
        why: String,
    },
    /// The run id is taken by a run of another job.
    #[error(
        "run `{run}` is stored as a run of job `{stored_job}`, not `{job}`; choose another run id"
    )]
    Mismatch {
        /// The run.
        run: String,
        /// The job it is stored as.
        stored_job: String,
        /// The job asked for.
        job: String,
    },
    /// No run has this id.
    #[error("no run `{run}` in the store; check the id (listing the runs shows them)")]
    NoSuchRun {
        /// The run id asked for.
        run: String,
    },
    /// The run has no step of this name.
    #[error("run `{run}` has no step `{step}`; check the name against the run's stored steps")]
    NoSuchStep {
        /// The run.
        run: String,
        /// The step asked for.
        step: String,
    },
    /// A step of a submitted run cannot be redriven alone: it depends on a step that ended
    /// without an output (failed, skipped or cancelled), so it would wait forever.
    #[error(
        "cannot redrive step `{step}` of run `{run}` alone: it depends on step `{on}`, which is \
         {state} and will not run again; redrive the step that failed (`{on}` or one above it), \
         which redrives `{step}` with it"
    )]
    DependsOnEnded {
        /// The run.
        run: String,
        /// The step asked for (or one of its descendants).
        step: String,
        /// The dependency that ended without an output.
        on: String,
        /// Its state: `failed`, `skipped` or `cancelled`.
        state: String,
    },
    /// The database was written with another schema version than this build of jobgraph
    /// knows (and cannot be migrated).
    #[error("{}", schema_message(*found, *expected))]
    Schema {
        /// The version the database has.
        found: i64,
        /// The version this build writes.
        expected: i64,
    },
    /// A new run's graph cannot be stored.
    #[error("run `{run}` has an invalid graph: {reason}; this is a bug in the job's definition")]
    InvalidGraph {
        /// The run.
        run: String,
        /// What is wrong.
        reason: String,
    },
    /// [`Store::finish_run`] was given a state a run cannot end in.
    #[error("run `{run}` cannot finish as `{state}`: a run ends succeeded, failed or cancelled")]
    NotTerminal {
        /// The run.
        run: String,
        /// The state given.
        state: RunState,
    },
    /// The database failed (I/O, locking past the busy timeout, a closed pool, a server that
    /// cannot be reached...).
    #[error(
        "the store's database failed; check its path or URL, that its server is up, permissions \
         and free disk space (the cause follows)"
    )]
    Database(#[source] BoxError),
    /// A stored value cannot be read back.
    #[error(
        "the store holds a corrupt value: {what}; repair or delete that row, or restore the \
         database from a backup"
    )]
    Corrupt {
        /// Which value, and why.
        what: String,
    },
}

/// The boxed cause of [`StoreError::Database`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

fn schema_message(found: i64, expected: i64) -> String {
    if found > expected {
        format!(
            "the store's database has schema version {found}, newer than this build of jobgraph \
             knows ({expected}); upgrade jobgraph to the version that wrote it, or use another \
             database"
        )
    } else {
        format!(
            "the store's database has schema version {found}, which this build of jobgraph \
             (schema version {expected}) cannot migrate; restore it from a backup, or use another \
             database"
        )
    }
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(Box::new(error))
    }
}

/// Whether `owner` may open stored run `run` (of job `stored_job`) as a run of `job`
/// ([`Store::open_run`]): [`StoreError::IdTaken`] if a client submitted it (workers execute it,
/// step by step), [`StoreError::Mismatch`] if it is of another job, [`StoreError::Busy`] if
/// another owner holds its live lease (`live_lease`: holder and end, Unix ms). Every store's
/// `open_run` asks it of a run it found.
pub(crate) fn check_open(
    run: &str,
    stored_job: &str,
    queued: bool,
    live_lease: Option<(&str, i64)>,
    job: &str,
    owner: &str,
) -> Result<(), StoreError> {
    if queued {
        return Err(StoreError::IdTaken {
            run: run.to_owned(),
        });
    }
    if stored_job != job {
        return Err(StoreError::Mismatch {
            run: run.to_owned(),
            stored_job: stored_job.to_owned(),
            job: job.to_owned(),
        });
    }
    match live_lease {
        Some((holder, until)) if holder != owner => Err(StoreError::Busy {
            run: run.to_owned(),
            owner: holder.to_owned(),
            until,
        }),
        _ => Ok(()),
    }
}

/// The wall clock, Unix milliseconds: the one clock of `MemoryStore` and `SqliteStore` (leases,
/// timestamps); `PgStore` uses the database server's.
pub(crate) fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// `at + d` in Unix ms, saturating.
pub(crate) fn plus(at: i64, d: Duration) -> i64 {
    at.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A [`Duration`] in ms, saturating (for [`MemoryStore::age_leases`] and its SQLite and PostgreSQL
/// twins, and `PgStore`'s leases).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{GraphSpec, StepSpec};

    fn step(name: &str, parents: &[usize], after: &[usize]) -> StepSpec {
        StepSpec {
            name: name.to_owned(),
            parents: parents.to_vec(),
            after: after.to_vec(),
        }
    }

    /// A step's children are the steps that wait for it through `parents` or `after`, each
    /// once (`d` both takes `b`'s output and runs after it), ascending; its dependencies the
    /// same the other way.
    #[test]
    fn children_and_dependencies_read_both_kinds_of_edge_once() {
        let graph = GraphSpec {
            steps: vec![
                step("a", &[], &[]),
                step("b", &[0], &[]),
                step("c", &[], &[0]),
                step("d", &[1], &[2, 1]),
            ],
        };
        assert_eq!(graph.children(0), [1, 2]);
        assert_eq!(graph.children(1), [3]);
        assert_eq!(graph.children(2), [3]);
        assert!(graph.children(3).is_empty());
        assert_eq!(graph.dependencies(3), [1, 2]);
        assert!(graph.dependencies(0).is_empty());
        #[cfg(feature = "postgres")]
        for p in 0..4 {
            assert_eq!(
                graph.count_dependencies(p),
                graph.dependencies(p).len(),
                "{p}"
            );
        }
    }
}
