//! The checker: reads the store's tables and the witness tables after the heal phase and checks
//! the promise, invariant by invariant; and the figures of the run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row as _;

use super::harness::{Admin, BATCH, Injected};
use super::jobs::{expected, parents_of, steps_of};
use super::{Backend, Fault, Profile};

/// 1. Every submitted run exists and succeeded (the workload never fails for good).
pub const LOST: &str = "1. no run lost: every run ended, and succeeded";
/// 2. Each run moved to a terminal state exactly once.
pub const ONE_END: &str = "2. exactly one terminal state per run";
/// 3. Each step of a completed run was committed exactly once.
pub const ONE_COMMIT: &str = "3. every step committed exactly once";
/// 4. Each unit (step, or fan-out element) has a witnessed execution.
pub const WITNESSED: &str = "4. every step executed at least once (witnessed)";
/// 5. No step started before its parents were committed.
pub const ORDER: &str = "5. no step started before its parents committed";
/// 6. The outputs, stored and committed, equal a pure evaluation.
pub const PURE: &str = "6. outputs equal a pure evaluation";
/// 7. Every commit was made by the holder of the step's latest claim.
pub const FENCE: &str = "7. no committed output from a fenced claim";
/// 8. Each re-execution is explained by a fault, and no claim executed a unit twice.
pub const BOUNDED: &str = "8. duplicates bounded by the faults";

/// What the checker needs besides the database.
pub struct Context<'a> {
    /// The backend.
    pub backend: Backend,
    /// The profile run.
    pub profile: &'a Profile,
    /// The nemesis's seed.
    pub seed: u64,
    /// How many runs were submitted.
    pub submitted: u64,
    /// The faults injected.
    pub injected: &'a [Injected],
    /// The last line of each worker process that ended by itself.
    pub done_lines: &'a [String],
    /// From the workers' start to their end.
    pub wall: Duration,
    /// How long the heal phase took.
    pub heal_time: Duration,
}

/// The failed checks, by invariant: how many, and the first few.
#[derive(Debug, Default)]
pub struct Violations(pub BTreeMap<&'static str, (usize, Vec<String>)>);

impl Violations {
    fn check(&mut self, invariant: &'static str, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            return;
        }
        let (count, examples) = self.0.entry(invariant).or_default();
        *count += 1;
        if examples.len() < 5 {
            examples.push(what());
        }
    }

    /// Whether every invariant held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many checks of `invariant` failed.
    pub fn count(&self, invariant: &str) -> usize {
        self.0.get(invariant).map_or(0, |v| v.0)
    }
}

/// The figures of a run: the README's table.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Faults injected, by kind (ambiguous commits: the answers replaced by an error).
    pub faults: BTreeMap<&'static str, usize>,
    /// Runs submitted.
    pub runs: u64,
    /// Runs that did not succeed.
    pub lost: u64,
    /// Terminal transitions recorded, per run.
    pub ends_per_run: f64,
    /// Executions of units beyond their first.
    pub duplicates: u64,
    /// Completions the store refused (a claim lost: fenced).
    pub fenced: u64,
    /// Steps that started before a parent committed.
    pub order_violations: u64,
    /// Time from a kill or a stop to the commit of the last step its worker held (ms).
    pub recovery_ms: Vec<i64>,
    /// Steps committed.
    pub steps: u64,
    /// First submit to last run end (s).
    pub span_s: f64,
    /// The heal phase (s).
    pub heal_s: f64,
}

impl Figures {
    /// The `p`th percentile of the recovery times (ms), by nearest rank.
    pub fn recovery(&self, p: f64) -> Option<i64> {
        let mut times = self.recovery_ms.clone();
        times.sort_unstable();
        let rank = ((p / 100.0) * times.len() as f64).ceil() as usize;
        times.get(rank.saturating_sub(1)).copied()
    }

    /// The faults, `kind n` joined.
    pub fn faults_text(&self) -> String {
        let text: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if text.is_empty() {
            "none".to_owned()
        } else {
            text.join(", ")
        }
    }
}

/// What a chaos run found.
#[derive(Debug)]
pub struct Outcome {
    /// The backend.
    pub backend: Backend,
    /// The profile's name.
    pub profile: String,
    /// The seed.
    pub seed: u64,
    /// The figures.
    pub figures: Figures,
    /// The invariants that failed.
    pub violations: Violations,
}

impl Outcome {
    /// The header of [`row`](Outcome::row)'s table (Markdown).
    pub const HEADER: &'static str = "| backend | profile | faults injected | runs | lost | \
        terminal transitions per run | duplicates | fenced completions | order violations | \
        recovery p50 / p99 | throughput |\n|---|---|---|---|---|---|---|---|---|---|---|";

    /// A row of the README's table (Markdown).
    pub fn row(&self) -> String {
        let f = &self.figures;
        let recovery = match (f.recovery(50.0), f.recovery(99.0)) {
            (Some(p50), Some(p99)) => {
                format!("{:.1} s / {:.1} s", p50 as f64 / 1e3, p99 as f64 / 1e3)
            }
            _ => "-".to_owned(),
        };
        format!(
            "| {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {:.1} runs/s ({:.0} steps/s) |",
            self.backend.name(),
            self.profile,
            f.faults_text(),
            f.runs,
            f.lost,
            f.ends_per_run,
            f.duplicates,
            f.fenced,
            f.order_violations,
            recovery,
            f.runs as f64 / f.span_s.max(1e-3),
            f.steps as f64 / f.span_s.max(1e-3),
        )
    }

    /// What failed, for a panic message: each invariant with examples, and the seed.
    pub fn failure(&self) -> Option<String> {
        if self.violations.is_empty() {
            return None;
        }
        let mut text = format!(
            "the chaos run ({} {}) broke the promise; replay it with {}={:#x}:",
            self.backend.name(),
            self.profile,
            super::SEED_ENV,
            self.seed
        );
        for (invariant, (count, examples)) in &self.violations.0 {
            let _ = write!(text, "\n{invariant}: {count} violations, e.g.");
            for example in examples {
                let _ = write!(text, "\n    {example}");
            }
        }
        Some(text)
    }
}

/// Runs the rows `$sql` returns on `$admin`, each mapped by `$map` (a closure over a row of
/// either backend).
macro_rules! fetch {
    ($admin:expr, $sql:expr, $map:expr) => {
        match $admin {
            Admin::Pg(pool) => sqlx::query($sql)
                .fetch_all(pool)
                .await
                .map(|rows| rows.iter().map($map).collect::<Vec<_>>()),
            Admin::Sqlite(pool) => sqlx::query($sql)
                .fetch_all(pool)
                .await
                .map(|rows| rows.iter().map($map).collect::<Vec<_>>()),
        }
        .unwrap_or_else(|e| panic!("the checker cannot read `{}`: {e}", $sql))
    };
}

struct Run {
    id: String,
    job: String,
    n: u64,
    state: String,
}

struct Step {
    state: String,
    output: Option<String>,
    claims: i64,
    fails: i64,
}

struct Commit {
    run: String,
    step: String,
    claim: Option<i64>,
    holder: Option<String>,
    committer: Option<String>,
    output: Option<String>,
    at_ms: i64,
}

struct Execution {
    run: String,
    unit: String,
    step: String,
    worker: String,
    /// The step's claim number when it recorded this (an element's: its step's).
    claim_seen: Option<i64>,
    /// The step's holder then.
    holder_seen: Option<String>,
    committed_seen: Option<String>,
    /// When the step began, by its worker's clock.
    began_ms: i64,
    /// When its record landed, by the database's clock.
    at_ms: i64,
}

/// One execution as invariant 8 sees it: the worker, when its step began (by the worker's
/// clock) and when its record landed (by the database's), Unix ms.
#[derive(Clone, Copy)]
struct Ran<'a> {
    worker: &'a str,
    began_ms: i64,
    at_ms: i64,
}

impl<'a> From<&'a Execution> for Ran<'a> {
    fn from(execution: &'a Execution) -> Self {
        Ran {
            worker: &execution.worker,
            began_ms: execution.began_ms,
            at_ms: execution.at_ms,
        }
    }
}

/// The harness's and the workers' clocks are read apart: a fault's bounds are this far off.
const SLACK_MS: i64 = 50;

/// Whether `fault` explains that a unit run by `before` ran again in `after`, which began
/// later (invariant 8), leases being `lease_ms`:
///
/// - the fault cost `before` its claim: it hit `before`'s worker (or every worker) and lasted
///   until `before` began or later (a worker does not start a claim it queued once its lease
///   may have lapsed, so a stale execution began before or during the fault that cost the
///   claim). When it began is the worker's clock as the step started, not when its record
///   landed: that insert may wait out the fault's end (a new connection after the database
///   came back), and land after `after`'s although the step began before;
/// - or `after` ran first: a step records its execution with its first statement, not as it
///   starts, so a worker stopped between the two records it once continued, after the
///   execution that took its lapsed claim meanwhile. The stop covered `before`, and `after`
///   was recorded within a lease of the worker's continuing.
fn explains(
    fault: &Injected,
    backend: Backend,
    lease_ms: i64,
    before: Ran<'_>,
    after: Ran<'_>,
) -> bool {
    let victim = fault.victim.as_deref();
    let lost = (fault.fault.is_global(backend) || victim == Some(before.worker))
        && fault.until_ms >= before.began_ms - SLACK_MS
        && fault.at_ms <= after.at_ms;
    let recorded_late = fault.fault == Fault::Stop
        && victim == Some(after.worker)
        && fault.at_ms <= before.at_ms + SLACK_MS
        && fault.until_ms >= before.at_ms - SLACK_MS
        && after.at_ms <= fault.until_ms + lease_ms;
    lost || recorded_late
}

/// Each execution of one unit after its first, with the one before it, in the order they began
/// (their workers' clocks), not the order their records landed: a record waits for the
/// database, so an execution that began first, lost its claim to a fault, and recorded itself
/// once the database answered again lands after the execution that took its claim.
fn reruns<'e>(executions: &[&'e Execution]) -> Vec<(&'e Execution, &'e Execution)> {
    let mut began = executions.to_vec();
    began.sort_by_key(|e| (e.began_ms, e.at_ms));
    began.windows(2).map(|pair| (pair[0], pair[1])).collect()
}

/// The faults that began or ended within 10 s of `at_ms`, each as `kind [victim] from..to`
/// in ms relative to it: what a violation of invariant 8 reports, to say what came near.
fn nearest(injected: &[Injected], at_ms: i64) -> String {
    let near: Vec<String> = injected
        .iter()
        .filter(|f| (f.at_ms - at_ms).abs() < 10_000 || (f.until_ms - at_ms).abs() < 10_000)
        .map(|f| {
            format!(
                "{}{} {:+}..{:+} ms",
                f.fault.name(),
                f.victim
                    .as_deref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default(),
                f.at_ms - at_ms,
                f.until_ms - at_ms
            )
        })
        .collect();
    if near.is_empty() {
        "none within 10 s".to_owned()
    } else {
        near.join(", ")
    }
}

/// Reads the database and checks every invariant.
///
/// # Panics
///
/// If the database cannot be read.
pub async fn check(admin: &Admin, cx: Context<'_>) -> Outcome {
    let mut v = Violations::default();
    let mut f = Figures {
        runs: cx.submitted,
        heal_s: cx.heal_time.as_secs_f64(),
        ..Figures::default()
    };
    for fault in cx.injected {
        *f.faults.entry(fault.fault.name()).or_default() += 1;
    }

    let runs: Vec<Run> = fetch!(
        admin,
        concat!(
            "SELECT r.id, r.job, r.input, ",
            shown_run_state!(),
            " AS state FROM jobgraph_runs r WHERE r.batch = 'chaos'"
        ),
        |row| {
            let input: String = row.get("input");
            let input: Value = serde_json::from_str(&input).expect("a run's input is JSON");
            Run {
                id: row.get("id"),
                job: row.get("job"),
                n: input["n"].as_u64().expect("a chaos input has `n`"),
                state: row.get("state"),
            }
        }
    );
    // Steps, and the elements of fan-outs (claimed one by one) as units `step[i]`.
    let steps: HashMap<(String, String), Step> = fetch!(
        admin,
        "SELECT run_id, name, state, output, claims, fails FROM jobgraph_steps
         UNION ALL
         SELECT run_id, step || '[' || idx || ']', state, output, claims, fails
         FROM jobgraph_queue_elements",
        |row| (
            (row.get::<String, _>("run_id"), row.get::<String, _>("name")),
            Step {
                state: row.get("state"),
                output: row.get("output"),
                claims: row.get("claims"),
                fails: row.get("fails"),
            }
        )
    )
    .into_iter()
    .collect();
    let commits: Vec<Commit> = fetch!(
        admin,
        "SELECT run_id, step, claim, holder, committer, output, at_ms FROM chaos_commits \
         ORDER BY seq",
        |row| Commit {
            run: row.get("run_id"),
            step: row.get("step"),
            claim: row.get("claim"),
            holder: row.get("holder"),
            committer: row.get("committer"),
            output: row.get("output"),
            at_ms: row.get("at_ms"),
        }
    );
    let ends: Vec<(String, String, i64)> = fetch!(
        admin,
        "SELECT run_id, new_state, at_ms FROM chaos_ends ORDER BY seq",
        |row| (row.get("run_id"), row.get("new_state"), row.get("at_ms"))
    );
    let executions: Vec<Execution> = fetch!(
        admin,
        "SELECT run_id, step, unit, worker, claim_seen, holder_seen, committed_seen, began_ms,
            at_ms
         FROM chaos_witness ORDER BY seq",
        |row| Execution {
            run: row.get("run_id"),
            step: row.get("step"),
            unit: row.get("unit"),
            worker: row.get("worker"),
            claim_seen: row.get("claim_seen"),
            holder_seen: row.get("holder_seen"),
            committed_seen: row.get("committed_seen"),
            began_ms: row.get("began_ms"),
            at_ms: row.get("at_ms"),
        }
    );
    // (run, step, claim, worker, kind, stored, ambiguous)
    type AckRow = (String, String, i64, String, String, bool, bool);
    let acks: Vec<AckRow> = fetch!(
        admin,
        "SELECT run_id, step, claim, worker, kind, stored, ambiguous FROM chaos_acks",
        |row| (
            row.get("run_id"),
            row.get("step"),
            row.get("claim"),
            row.get("worker"),
            row.get("kind"),
            row.get("stored"),
            row.get("ambiguous"),
        )
    );
    let ambiguous = acks.iter().filter(|a| a.6).count();
    if ambiguous > 0 {
        f.faults.insert("ambiguous", ambiguous);
    }
    f.fenced = acks.iter().filter(|a| a.4 == "complete" && !a.5).count() as u64;

    // 1. Nothing lost.
    let by_id: HashMap<&str, &Run> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
    for n in 0..cx.submitted {
        let id = format!("{BATCH}/{n}");
        let state = by_id.get(id.as_str()).map(|r| r.state.as_str());
        let ok = state == Some("succeeded");
        if !ok {
            f.lost += 1;
        }
        v.check(LOST, ok, || format!("run {id} is {state:?}"));
    }
    v.check(LOST, runs.len() as u64 == cx.submitted, || {
        format!("{} runs stored, {} submitted", runs.len(), cx.submitted)
    });

    // 2. One terminal state per run.
    let mut ends_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for (run, state, _) in &ends {
        ends_of.entry(run).or_default().push(state);
    }
    for run in &runs {
        let of = ends_of.get(run.id.as_str()).cloned().unwrap_or_default();
        v.check(ONE_END, of.len() == 1, || {
            format!(
                "run {} moved to a terminal state {} times: {of:?}",
                run.id,
                of.len()
            )
        });
    }
    f.ends_per_run = ends.len() as f64 / runs.len().max(1) as f64;
    let first = ends.iter().map(|e| e.2).min();
    let last = ends.iter().map(|e| e.2).max();
    let starts = executions.iter().map(|e| e.at_ms).min();
    if let (Some(from), Some(to)) = (starts.min(first), last) {
        f.span_s = (to - from) as f64 / 1e3;
    }

    // 3. One commit per step; 6. outputs equal a pure evaluation.
    let mut commits_of: HashMap<(&str, &str), Vec<&Commit>> = HashMap::new();
    for commit in &commits {
        commits_of
            .entry((commit.run.as_str(), commit.step.as_str()))
            .or_default()
            .push(commit);
    }
    f.steps = commits.len() as u64;
    let mut units_of: HashMap<&str, Vec<String>> = HashMap::new();
    for run in &runs {
        let (outputs, units) = expected(&run.job, run.n);
        units_of.insert(run.id.as_str(), units);
        for (step, _) in steps_of(&run.job) {
            let key = (run.id.clone(), (*step).to_owned());
            let stored = steps.get(&key);
            let expect = &outputs[step];
            let of = commits_of
                .get(&(run.id.as_str(), *step))
                .cloned()
                .unwrap_or_default();
            if run.state == "succeeded" {
                v.check(ONE_COMMIT, of.len() == 1, || {
                    let by: Vec<_> = of.iter().map(|c| (&c.holder, c.claim)).collect();
                    format!(
                        "step {step} of run {} committed {} times: {by:?}",
                        run.id,
                        of.len()
                    )
                });
                v.check(
                    ONE_COMMIT,
                    stored.is_some_and(|s| s.state == "completed"),
                    || {
                        format!(
                            "step {step} of run {} is {:?}",
                            run.id,
                            stored.map(|s| &s.state)
                        )
                    },
                );
                let output = stored.and_then(|s| s.output.as_deref()).map(json);
                v.check(PURE, output.as_ref() == Some(expect), || {
                    format!(
                        "step {step} of run {}: stored {output:?}, expected {expect}",
                        run.id
                    )
                });
            }
            for commit in &of {
                let output = commit.output.as_deref().map(json);
                v.check(PURE, output.as_ref() == Some(expect), || {
                    format!(
                        "step {step} of run {}: {:?} committed {output:?}, expected {expect}",
                        run.id, commit.holder
                    )
                });
            }
        }
    }

    // 4. Witnessed; 5. in order.
    let mut executed: HashMap<(&str, &str), Vec<&Execution>> = HashMap::new();
    for e in &executions {
        executed
            .entry((e.run.as_str(), e.unit.as_str()))
            .or_default()
            .push(e);
        let Some(run) = by_id.get(e.run.as_str()) else {
            v.check(WITNESSED, false, || {
                format!("{} ran for no run of the batch", e.run)
            });
            continue;
        };
        let seen: HashSet<&str> = e
            .committed_seen
            .as_deref()
            .unwrap_or("")
            .split(',')
            .collect();
        for parent in parents_of(&run.job, &e.unit) {
            let ok = seen.contains(parent);
            if !ok {
                f.order_violations += 1;
            }
            v.check(ORDER, ok, || {
                format!(
                    "{} of run {} started (worker {}) before its parent {parent} committed \
                     (committed then: {:?})",
                    e.unit, e.run, e.worker, e.committed_seen
                )
            });
        }
    }
    for run in runs.iter().filter(|r| r.state == "succeeded") {
        for unit in &units_of[run.id.as_str()] {
            let ok = executed.contains_key(&(run.id.as_str(), unit.as_str()));
            v.check(WITNESSED, ok, || {
                format!("{unit} of run {} never ran", run.id)
            });
        }
    }

    // 7. Fencing: each commit by the holder of the claim it was made under; each completion a
    // worker was told was stored is that commit. A fan-out claimed element by element is
    // committed by its last element's commit, under no claim of its own: its elements' commits
    // are checked instead.
    let fanned: HashSet<(&str, &str)> = commits
        .iter()
        .filter_map(|c| {
            let (step, _) = c.step.split_once('[')?;
            Some((c.run.as_str(), step))
        })
        .collect();
    for commit in &commits {
        if commit.holder.is_none() && fanned.contains(&(commit.run.as_str(), commit.step.as_str()))
        {
            continue;
        }
        v.check(
            FENCE,
            commit.holder.is_some() && commit.claim.is_some(),
            || {
                format!(
                    "step {} of run {} committed under no claim",
                    commit.step, commit.run
                )
            },
        );
        if let (Some(committer), Some(holder)) = (&commit.committer, &commit.holder)
            && committer.starts_with('w')
        {
            v.check(FENCE, committer == holder, || {
                format!(
                    "step {} of run {}: committed by {committer}'s session while {holder} held \
                     claim {:?}",
                    commit.step, commit.run, commit.claim
                )
            });
        }
    }
    for (run, step, claim, worker, kind, stored, _) in &acks {
        if kind != "complete" || !stored {
            continue;
        }
        let of = commits_of
            .get(&(run.as_str(), step.as_str()))
            .cloned()
            .unwrap_or_default();
        let ok = of
            .iter()
            .any(|c| c.claim == Some(*claim) && c.holder.as_deref() == Some(worker.as_str()));
        v.check(FENCE, ok, || {
            let by: Vec<_> = of.iter().map(|c| (&c.holder, c.claim)).collect();
            format!(
                "{worker} was told claim {claim} of step {step} of run {run} was stored, but \
                 the commits are {by:?}"
            )
        });
    }

    // 8. Duplicates: each execution after a unit's first (in the order they began) is explained
    // by a fault between the two (its worker killed or stopped, the database cut, restarted,
    // full or locked) or a failed attempt of its step; no unit ran more often than its step was
    // claimed.
    let lease_ms = cx.profile.lease.as_millis() as i64;
    for ((run, unit), list) in &executed {
        f.duplicates += list.len() as u64 - 1;
        let step = &list[0].step;
        // An element claimed on its own is counted in its own row.
        let row = steps
            .get(&((*run).to_owned(), (*unit).to_owned()))
            .or_else(|| steps.get(&((*run).to_owned(), step.clone())));
        let claims = row.map_or(0, |s| s.claims);
        let fails = row.map_or(0, |s| s.fails);
        v.check(BOUNDED, list.len() as i64 <= claims, || {
            format!(
                "{unit} of run {run} ran {} times in {claims} claims",
                list.len()
            )
        });
        for (before, after) in reruns(list) {
            let explained = fails > 0
                || cx.injected.iter().any(|fault| {
                    explains(fault, cx.backend, lease_ms, before.into(), after.into())
                });
            v.check(BOUNDED, explained, || {
                // What the store said of the unit: each commit's claim, holder and time.
                let committed: Vec<_> = commits_of
                    .get(&(*run, *unit))
                    .into_iter()
                    .flatten()
                    .map(|c| (c.claim, c.holder.as_deref(), c.at_ms))
                    .collect();
                format!(
                    "{unit} of run {run} ran again on {} (began at {}, recorded at {}, claim \
                     {:?} held by {:?}) after {} began at {} (recorded at {}, claim {:?} held \
                     by {:?}), with no fault of {} between; the faults near its beginning: \
                     {}; its commits (claim, holder, at): {committed:?}",
                    after.worker,
                    after.began_ms,
                    after.at_ms,
                    after.claim_seen,
                    after.holder_seen,
                    before.worker,
                    before.began_ms,
                    before.at_ms,
                    before.claim_seen,
                    before.holder_seen,
                    before.worker,
                    nearest(cx.injected, before.began_ms)
                )
            });
        }
    }

    // Recovery: from each kill or stop to the commit of the last step its worker held.
    for fault in cx.injected {
        let Some(held) = &fault.held else { continue };
        let recovered = held
            .iter()
            .map(|(run, step)| {
                commits_of
                    .get(&(run.as_str(), step.as_str()))
                    .and_then(|c| c.first())
                    .map(|c| c.at_ms)
            })
            .collect::<Option<Vec<i64>>>();
        if let Some(at) = recovered.and_then(|times| times.into_iter().max()) {
            f.recovery_ms.push((at - fault.at_ms).max(0));
        }
    }
    let _ = (cx.done_lines, cx.wall);

    Outcome {
        backend: cx.backend,
        profile: cx.profile.name.to_owned(),
        seed: cx.seed,
        figures: f,
        violations: v,
    }
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(format!("not JSON: {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(victim: &str, at_ms: i64, until_ms: i64) -> Injected {
        Injected {
            fault: Fault::Stop,
            at_ms,
            until_ms,
            victim: Some(victim.to_owned()),
            held: None,
        }
    }

    /// An execution recorded as it began.
    fn ran(worker: &str, at_ms: i64) -> Ran<'_> {
        Ran {
            worker,
            began_ms: at_ms,
            at_ms,
        }
    }

    /// `explains` on PostgreSQL with the profiles' 3 s lease.
    fn explained(fault: &Injected, before: Ran<'_>, after: Ran<'_>) -> bool {
        explains(fault, Backend::Postgres, 3_000, before, after)
    }

    /// A worker stopped while it holds a claim: the one that takes the lapsed claim runs the
    /// unit again.
    #[test]
    fn a_stop_of_the_first_worker_explains_the_second_execution() {
        let fault = stop("w3.0", 1_000, 5_000);
        assert!(explained(&fault, ran("w3.0", 990), ran("w1.0", 4_100)));
        // The other worker's stop explains nothing.
        assert!(!explained(&fault, ran("w1.0", 990), ran("w2.0", 4_100)));
        // Nor a stop that ended before the first execution.
        assert!(!explained(&fault, ran("w3.0", 5_100), ran("w1.0", 9_000)));
    }

    /// Seen in the `stop` profile (seed 0x5eed0fc4a02): w3.0 started `parts[4]` and was stopped
    /// before its step recorded it; w1.0 took the lapsed claim and recorded its execution at
    /// 902,539; w3.0 was continued and recorded its own at 903,454. Ordered by records, w1.0
    /// ran first with no fault of its own: the stop of w3.0 explains the pair.
    #[test]
    fn a_stop_that_delayed_the_first_executions_record_explains_the_pair() {
        let fault = stop("w3.0", 899_530, 903_440);
        assert!(explained(
            &fault,
            ran("w1.0", 902_539),
            ran("w3.0", 903_454)
        ));
        // Not if the stopped worker recorded it long after it continued: that is a new run.
        assert!(!explained(
            &fault,
            ran("w1.0", 902_539),
            ran("w3.0", 907_000)
        ));
        // Not if the stop began after the other worker's execution.
        let late = stop("w3.0", 902_700, 906_000);
        assert!(!explained(
            &late,
            ran("w1.0", 902_539),
            ran("w3.0", 906_100)
        ));
    }

    /// A fault of every worker (connections cut, slots taken) that cost a claim: the step
    /// began during it, but its record waited for a connection and landed after it ended,
    /// after the execution that took the lapsed claim.
    #[test]
    fn a_fault_that_ended_before_the_record_landed_explains_a_step_that_began_during_it() {
        let pressure = Injected {
            fault: Fault::Pressure,
            at_ms: 1_000,
            until_ms: 3_000,
            victim: None,
            held: None,
        };
        let before = Ran {
            worker: "w1.1",
            began_ms: 2_900,
            at_ms: 3_200,
        };
        assert!(explained(&pressure, before, ran("w1.1", 3_500)));
        // Not a step that began after the fault ended.
        let later = Ran {
            began_ms: 3_100,
            ..before
        };
        assert!(!explained(&pressure, later, ran("w1.1", 3_500)));
    }

    /// Seen in the short PostgreSQL profile (seed 0xc4a05eed, under a workspace test run):
    /// w2.0 began `left` of chaos/37 during a pressure fault, under a claim the fault then cost
    /// it; its record waited 3.3 s for the database and landed after w0.0, which had taken the
    /// lapsed claim and begun after the fault, recorded its own. In the order the records
    /// landed, w0.0 ran first with no fault after it began; in the order they began, the
    /// pressure explains the pair.
    #[test]
    fn a_rerun_is_judged_in_the_order_the_executions_began() {
        let execution = |worker: &str, began_ms, at_ms| Execution {
            run: "chaos/37".to_owned(),
            unit: "left".to_owned(),
            step: "left".to_owned(),
            worker: worker.to_owned(),
            claim_seen: Some(2),
            holder_seen: None,
            committed_seen: None,
            began_ms,
            at_ms,
        };
        let (late, first) = (
            execution("w2.0", 919_025, 922_342),
            execution("w0.0", 922_028, 922_029),
        );
        let pressure = Injected {
            fault: Fault::Pressure,
            at_ms: 918_476,
            until_ms: 921_407,
            victim: None,
            held: None,
        };
        // As the records landed: w0.0's first.
        let pairs = reruns(&[&first, &late]);
        assert_eq!(pairs.len(), 1);
        let (before, after) = pairs[0];
        assert_eq!(
            (before.worker.as_str(), after.worker.as_str()),
            ("w2.0", "w0.0")
        );
        assert!(explained(&pressure, before.into(), after.into()));
        // The order of the records would have left it unexplained.
        assert!(!explained(&pressure, (&first).into(), (&late).into()));
    }
}
