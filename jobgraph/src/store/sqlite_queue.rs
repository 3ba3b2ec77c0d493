//! The [`Queue`] protocol on SQLite: several worker processes on one machine, no server.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction, so claims are disjoint without `SKIP
//! LOCKED`: SQLite has one writer at a time, and a claim reads and updates its steps in one
//! statement.
//!
//! A claim reads the ready steps and elements of each job in the queue's order from their
//! indexes, which split on `limited` (a limit row of the step exists): the unlimited ones from
//! `jobgraph_steps_ready` and `jobgraph_queue_elements_ready`, and, for each limited step with
//! room under its concurrency and rate, as many as that room from the `_limited` twins. A step
//! at its limit is not read at all, however many of it wait. The flag is set as rows are
//! inserted (a submit stores its limits first) and, for rows stored before, by the submit that
//! creates the limit row; with one writer at a time nothing is inserted in between.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use sqlx::{Row, SqliteConnection};

use super::queue::{
    BatchCounts, Claim, ClaimId, Completion, Failed, Held, Lease, Queue, StepCount, Submission,
    Submitted,
};
use super::sqlite::{SqliteStore, get, graph};
use super::{GraphSpec, StoreError, now_ms, plus};

impl SqliteStore {
    /// A step `failed` and is tried again: ready now, news to the idle workers of this process
    /// (one retried later is found by their polls).
    fn retried(&self, failed: &Failed) {
        if matches!(failed, Failed::Retrying { at } if *at <= now_ms()) {
            self.news().heard(None);
        }
    }
}

impl Queue for SqliteStore {
    fn submit<'a>(&'a self, s: Submission<'a>) -> BoxFuture<'a, Result<Submitted, StoreError>> {
        async move {
            s.check()?;
            let mut tx = self.begin().await?;
            if let Some(key) = s.key {
                let found: Option<String> = sqlx::query_scalar(SELECT_BY_KEY)
                    .bind(s.job)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(id) = found {
                    return Ok(Submitted { id, created: false });
                }
            }
            let graph_json = s.graph_json()?;
            let now = now_ms();
            upsert_limits(&mut tx, &s, now).await?;
            insert_submission(&mut tx, &s, 0, &graph_json, now).await?;
            tx.commit().await?;
            self.news().heard(Some(s.job));
            Ok(Submitted {
                id: s.id.to_owned(),
                created: true,
            })
        }
        .boxed()
    }

    fn claim<'a>(
        &'a self,
        worker: &'a str,
        jobs: &'a [&'a str],
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claim>, StoreError>> {
        async move {
            if limit == 0 || jobs.is_empty() {
                return Ok(Vec::new());
            }
            // Before anything this claim can see: news after this is news to its worker.
            self.news().claiming(jobs);
            let jobs_json = serde_json::to_string(jobs).expect("names serialize");
            let now = now_ms();
            let mut tx = self.begin().await?;
            expire_runs(&mut tx, now).await?;
            exhaust_steps(&mut tx, &jobs_json, now).await?;
            let chosen = choose(&mut tx, jobs, &jobs_json, limit, now).await?;
            if chosen.is_empty() {
                tx.commit().await?;
                return Ok(Vec::new());
            }
            let mut taken = Vec::with_capacity(chosen.len());
            let steps: Vec<i64> = chosen
                .iter()
                .filter(|c| !c.element)
                .map(|c| c.rowid)
                .collect();
            let elements: Vec<i64> = chosen
                .iter()
                .filter(|c| c.element)
                .map(|c| c.rowid)
                .collect();
            for (statement, rowids) in [(CLAIM, steps), (CLAIM_ELEMENTS, elements)] {
                if rowids.is_empty() {
                    continue;
                }
                let rows = sqlx::query(statement)
                    .bind(worker)
                    .bind(now)
                    .bind(serde_json::to_string(&rowids).expect("row ids serialize"))
                    .bind(super::queue::lease_ms(lease))
                    .fetch_all(&mut *tx)
                    .await?;
                for row in rows {
                    taken.push(Taken::read(&row, lease)?);
                }
            }
            // `RETURNING` has no order: claim in the queue's.
            taken.sort_by_key(|t| t.order);
            let claims = claims_of(&mut tx, taken, now).await?;
            tx.commit().await?;
            Ok(claims)
        }
        .boxed()
    }

    fn heartbeat<'a>(
        &'a self,
        worker: &'a str,
        claims: &'a [ClaimId],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Held>, StoreError>> {
        async move {
            let now = now_ms();
            let lease = super::queue::lease_ms(lease);
            let mut tx = self.begin().await?;
            let mut held = Vec::with_capacity(claims.len());
            for claim in claims {
                let renewed = match claim.element {
                    None => sqlx::query(RENEW_CLAIM)
                        .bind(&claim.run)
                        .bind(&claim.step)
                        .bind(worker)
                        .bind(i64::from(claim.attempt))
                        .bind(now)
                        .bind(lease)
                        .bind(position_of(claim)),
                    Some(element) => sqlx::query(RENEW_ELEMENT)
                        .bind(&claim.run)
                        .bind(&claim.step)
                        .bind(worker)
                        .bind(i64::from(claim.attempt))
                        .bind(now)
                        .bind(lease)
                        .bind(element_index(element))
                        .bind(position_of(claim)),
                }
                .execute(&mut *tx)
                .await?
                .rows_affected();
                held.push(if renewed == 1 {
                    Held::Held
                } else {
                    let state: Option<String> = sqlx::query_scalar(SELECT_RUN_STATE)
                        .bind(&claim.run)
                        .fetch_optional(&mut *tx)
                        .await?;
                    match state.as_deref() {
                        Some("cancelled") => Held::Aborted,
                        _ => Held::Lost,
                    }
                });
            }
            tx.commit().await?;
            Ok(held)
        }
        .boxed()
    }

    fn complete_many<'a>(
        &'a self,
        worker: &'a str,
        done: &'a [Completion<'a>],
    ) -> BoxFuture<'a, Result<Vec<bool>, StoreError>> {
        async move {
            if done.is_empty() {
                return Ok(Vec::new());
            }
            let now = now_ms();
            let mut tx = self.begin().await?;
            // The steps in one statement, the elements in another.
            let committed = complete_steps(&mut tx, worker, done, now).await?;
            // The runs of what it stored, and their graphs.
            let mut touched: Vec<&str> = done
                .iter()
                .zip(&committed)
                .filter(|(_, stored)| **stored)
                .map(|(c, _)| c.claim.run.as_str())
                .collect();
            touched.sort_unstable();
            touched.dedup();
            if !touched.is_empty() {
                let touched_json = serde_json::to_string(&touched).expect("ids serialize");
                let heads = run_heads(&mut tx, &touched_json, false).await?;
                let specs: HashMap<&str, &GraphSpec> = heads
                    .iter()
                    .map(|(run, (_, spec))| (run.as_str(), &**spec))
                    .collect();
                let mut steps = Vec::new();
                // Each fan-out's elements stored here, counted (in the order first met).
                let mut fans: Vec<(&str, &str, usize, i64)> = Vec::new();
                for (c, _) in done.iter().zip(&committed).filter(|(_, stored)| **stored) {
                    let claim = c.claim;
                    let spec = specs
                        .get(claim.run.as_str())
                        .ok_or_else(|| super::sqlite::no_such_run(&claim.run))?;
                    let position = spec
                        .position(&claim.step)
                        .ok_or_else(|| super::sqlite::no_such_step(&claim.run, &claim.step))?;
                    let (run, step) = (claim.run.as_str(), claim.step.as_str());
                    if claim.element.is_none() {
                        steps.push((run, position));
                    } else if let Some(fan) = fans.iter_mut().find(|f| (f.0, f.1) == (run, step)) {
                        fan.3 += 1;
                    } else {
                        fans.push((run, step, position, 1));
                    }
                }
                // A fan-out completes with its last element.
                for (run, step, position, n) in fans {
                    if elements_done(&mut tx, run, step, n, now).await? {
                        steps.push((run, position));
                    }
                }
                steps_done(&mut tx, &specs, steps, now).await?;
                settle_runs(&mut tx, &touched_json, now).await?;
            }
            let any = !touched.is_empty();
            tx.commit().await?;
            // Children of what it stored may be ready: of which jobs, this does not count.
            if any {
                self.news().heard(None);
            }
            Ok(committed)
        }
        .boxed()
    }

    fn fail<'a>(
        &'a self,
        worker: &'a str,
        claim: &'a ClaimId,
        error: &'a str,
        started_at: i64,
        retry_in: Option<Duration>,
    ) -> BoxFuture<'a, Result<Failed, StoreError>> {
        async move {
            let now = now_ms();
            let mut tx = self.begin().await?;
            if let Some(element) = claim.element {
                let failed = fail_element(
                    &mut tx,
                    worker,
                    claim,
                    element,
                    error,
                    started_at,
                    retry_in.map(|delay| plus(now, delay)),
                    now,
                )
                .await?;
                tx.commit().await?;
                self.retried(&failed);
                return Ok(failed);
            }
            if let Some(delay) = retry_in {
                let at = plus(now, delay);
                let retried = sqlx::query(RETRY_STEP)
                    .bind(&claim.run)
                    .bind(&claim.step)
                    .bind(worker)
                    .bind(i64::from(claim.attempt))
                    .bind(error)
                    .bind(started_at)
                    .bind(at)
                    .bind(position_of(claim))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if retried == 1 {
                    tx.commit().await?;
                    let failed = Failed::Retrying { at };
                    self.retried(&failed);
                    return Ok(failed);
                }
            }
            let failed = sqlx::query(FAIL_STEP)
                .bind(&claim.run)
                .bind(&claim.step)
                .bind(worker)
                .bind(i64::from(claim.attempt))
                .bind(error)
                .bind(started_at)
                .bind(now)
                .bind(position_of(claim))
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if failed != 1 {
                return Err(claim.lost(worker));
            }
            skip_descendants(&mut tx, &claim.run, &claim.step).await?;
            settle_run(&mut tx, &claim.run, now).await?;
            tx.commit().await?;
            Ok(Failed::Failed)
        }
        .boxed()
    }

    fn submit_batch<'a>(
        &'a self,
        batch: &'a str,
        template: Submission<'a>,
        inputs: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            template.check()?;
            template.check_batch(inputs.len())?;
            let graph_json = template.graph_json()?;
            let now = now_ms();
            let mut tx = self.begin().await?;
            let stored: i64 = sqlx::query_scalar(COUNT_BATCH)
                .bind(batch)
                .fetch_one(&mut *tx)
                .await?;
            let first = usize::try_from(stored).unwrap_or(0);
            upsert_limits(&mut tx, &template, now).await?;
            let mut ids = Vec::with_capacity(inputs.len());
            for (i, input) in inputs.iter().enumerate() {
                let id = crate::durable::batch_run_id(batch, first + i);
                let submission = Submission {
                    id: &id,
                    input,
                    batch: Some(batch),
                    key: None,
                    ..template
                };
                insert_submission(&mut tx, &submission, i, &graph_json, now).await?;
                ids.push(id);
            }
            tx.commit().await?;
            self.news().heard(Some(template.job));
            Ok(ids)
        }
        .boxed()
    }

    fn release<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let now = now_ms();
            let mut tx = self.begin().await?;
            sqlx::query(RELEASE_STEPS)
                .bind(batch)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            let released = sqlx::query(RELEASE_RUNS)
                .bind(batch)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            if released > 0 {
                self.news().heard(None);
            }
            Ok(released)
        }
        .boxed()
    }

    fn abort_batch<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let now = now_ms();
            let mut tx = self.begin().await?;
            let runs: Vec<String> = sqlx::query_scalar(ABORT_BATCH)
                .bind(batch)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            for run in &runs {
                cancel_pending(&mut tx, run, now).await?;
            }
            tx.commit().await?;
            Ok(runs.len() as u64)
        }
        .boxed()
    }

    fn batch_counts<'a>(
        &'a self,
        batch: &'a str,
    ) -> BoxFuture<'a, Result<BatchCounts, StoreError>> {
        async move {
            let now = now_ms();
            let mut conn = self.pool().acquire().await?;
            let mut counts = BatchCounts::default();
            let rows = sqlx::query(COUNT_BATCH_RUNS)
                .bind(batch)
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                let state: String = get(&row, "state", "jobgraph_runs")?;
                let held: i64 = get(&row, "held", "jobgraph_runs")?;
                let n = u64::try_from(get::<i64>(&row, "n", "jobgraph_runs")?).unwrap_or(0);
                match state.as_str() {
                    "pending" => {
                        counts.pending += n;
                        if held == 1 {
                            counts.held += n;
                        }
                    }
                    "running" => counts.running += n,
                    "succeeded" => counts.succeeded += n,
                    "failed" => counts.failed += n,
                    _ => counts.cancelled += n,
                }
            }
            let rows = sqlx::query(COUNT_BATCH_STEPS)
                .bind(batch)
                .bind(now)
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                const T: &str = "jobgraph_steps";
                let name: String = get(&row, "name", T)?;
                let state: String = get(&row, "state", T)?;
                let n = u64::try_from(get::<i64>(&row, "n", T)?).unwrap_or(0);
                let index = match counts.steps.iter().position(|s| s.name == name) {
                    Some(index) => index,
                    None => {
                        counts.steps.push(StepCount {
                            name,
                            ..StepCount::default()
                        });
                        counts.steps.len() - 1
                    }
                };
                let step = &mut counts.steps[index];
                match state.as_str() {
                    "running" => step.running += n,
                    "completed" => step.completed += n,
                    "failed" => step.failed += n,
                    "skipped" => step.skipped += n,
                    "cancelled" => step.cancelled += n,
                    _ => step.waiting += n,
                }
            }
            Ok(counts)
        }
        .boxed()
    }

    fn wait_ready<'a>(&'a self, jobs: &'a [&'a str], timeout: Duration) -> BoxFuture<'a, ()> {
        async move { self.news().wait(jobs, timeout).await }.boxed()
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        async move {
            let rows = sqlx::query(SELECT_LEASES).fetch_all(self.pool()).await?;
            let mut leases = Vec::with_capacity(rows.len());
            for row in rows {
                const T: &str = "jobgraph_steps";
                let attempt: Option<i64> = get(&row, "attempt", T)?;
                let element: Option<i64> = get(&row, "element", T)?;
                leases.push(Lease {
                    holder: get(&row, "holder", T)?,
                    run: get(&row, "run", T)?,
                    step: get(&row, "step", T)?,
                    attempt: attempt.map(|a| u32::try_from(a).unwrap_or(u32::MAX)),
                    element: element.and_then(|e| usize::try_from(e).ok()),
                    until: get(&row, "until", T)?,
                });
            }
            Ok(leases)
        }
        .boxed()
    }

    fn abort<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let now = now_ms();
            let mut tx = self.begin().await?;
            let state: Option<String> = sqlx::query_scalar(SELECT_RUN_STATE)
                .bind(run)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(state) = state else {
                return Err(super::sqlite::no_such_run(run));
            };
            if !matches!(state.as_str(), "pending" | "running") {
                return Ok(false);
            }
            sqlx::query(ABORT_RUN)
                .bind(run)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            cancel_pending(&mut tx, run, now).await?;
            tx.commit().await?;
            Ok(true)
        }
        .boxed()
    }
}

/// A limited step with ready steps or elements: how many more of it this claim may take.
struct Room {
    job: String,
    step: String,
    left: i64,
    /// The rate's bucket after refilling, to store less what is taken.
    tokens: Option<f64>,
    taken: i64,
    /// Whether it has ready rows in `jobgraph_steps`.
    steps_ready: bool,
    /// Whether it has ready rows in `jobgraph_queue_elements`.
    elements_ready: bool,
}

/// A ready step or element a claim chose: its row id in `jobgraph_steps`, or in
/// `jobgraph_queue_elements` if `element`.
struct Chosen {
    rowid: i64,
    element: bool,
}

/// The ready steps and elements to claim, in the queue's order (priority, then ready time), at
/// most `limit`, within each step's concurrency and rate (an element counts as a claim of its
/// step); updates the rate buckets. The rows of steps without limits are read from their
/// indexes, and of each limited step with room, as many as its room: a step at its limit is not
/// read, however many of it wait.
async fn choose(
    conn: &mut SqliteConnection,
    jobs: &[&str],
    jobs_json: &str,
    limit: usize,
    now: i64,
) -> Result<Vec<Chosen>, StoreError> {
    let want = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut rooms = Vec::new();
    for row in sqlx::query(READY_LIMITS)
        .bind(jobs_json)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?
    {
        rooms.push(room(&row, now)?);
    }
    // Each candidate with its table and, if limited, its room. One query per job and table (or
    // per limited step and table), so each reads its index in order and stops at its limit;
    // their rows are merged in the queue's order here.
    let mut candidates = Vec::new();
    for job in jobs {
        for (statement, element) in [(CANDIDATES, false), (ELEMENT_CANDIDATES, true)] {
            for row in sqlx::query(statement)
                .bind(job)
                .bind(now)
                .bind(want)
                .fetch_all(&mut *conn)
                .await?
            {
                candidates.push((row, element, None));
            }
        }
    }
    for (index, room) in rooms.iter().enumerate().filter(|(_, r)| r.left > 0) {
        for (statement, element, ready) in [
            (LIMITED_CANDIDATES, false, room.steps_ready),
            (LIMITED_ELEMENT_CANDIDATES, true, room.elements_ready),
        ] {
            if !ready {
                continue;
            }
            for row in sqlx::query(statement)
                .bind(&room.job)
                .bind(now)
                .bind(room.left.min(want))
                .bind(&room.step)
                .fetch_all(&mut *conn)
                .await?
            {
                candidates.push((row, element, Some(index)));
            }
        }
    }
    // Stable: a query's rows keep their order (an element's index) among equals.
    candidates.sort_by_key(|(row, _, _)| {
        let priority: i64 = row.try_get("priority").unwrap_or(0);
        let ready_at: i64 = row.try_get("ready_at").unwrap_or(0);
        (std::cmp::Reverse(priority), ready_at)
    });
    let mut chosen = Vec::with_capacity(limit);
    for (row, element, room) in &candidates {
        if chosen.len() == limit {
            break;
        }
        if let Some(index) = room {
            let room = &mut rooms[*index];
            if room.left <= 0 {
                continue;
            }
            room.left -= 1;
            room.taken += 1;
        }
        chosen.push(Chosen {
            rowid: get(row, "rid", "jobgraph_steps")?,
            element: *element,
        });
    }
    for room in rooms.iter().filter(|r| r.taken > 0) {
        if let Some(tokens) = room.tokens {
            sqlx::query(TAKE_TOKENS)
                .bind(&room.job)
                .bind(&room.step)
                .bind(tokens - room.taken as f64)
                .bind(now)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(chosen)
}

/// The room of the limited step of `row` (a row of `READY_LIMITS`) at `now`: its concurrency
/// less its live claims, and the tokens its rate's bucket holds once refilled.
fn room(row: &sqlx::sqlite::SqliteRow, now: i64) -> Result<Room, StoreError> {
    const T: &str = "jobgraph_limits";
    let concurrency: Option<i64> = get(row, "concurrency", T)?;
    let rate_count: Option<i64> = get(row, "rate_count", T)?;
    let period: Option<i64> = get(row, "rate_period_ms", T)?;
    let burst: Option<i64> = get(row, "burst", T)?;
    let mut left = i64::MAX;
    if let Some(concurrency) = concurrency {
        let running: i64 = get(row, "running", T)?;
        left = left.min(concurrency - running);
    }
    let mut bucket = None;
    if let (Some(count), Some(period), Some(burst)) = (rate_count, period, burst) {
        let tokens: f64 = get(row, "tokens", T)?;
        let refilled_at: i64 = get(row, "refilled_at", T)?;
        let elapsed = (now - refilled_at).max(0) as f64;
        let refilled = (tokens + elapsed * count as f64 / period as f64).min(burst as f64);
        left = left.min(refilled.floor() as i64);
        bucket = Some(refilled);
    }
    Ok(Room {
        job: get(row, "job", T)?,
        step: get(row, "step", T)?,
        left,
        tokens: bucket,
        taken: 0,
        steps_ready: get(row, "steps_ready", T)?,
        elements_ready: get(row, "elements_ready", T)?,
    })
}

/// Inserts run `s` (input `run` of its batch; 0 if none) and its steps, with their TTRs: each
/// step with no dependency ready at `s.run_at` (or `now`; unless the run is held), the others
/// waiting for theirs. The run expires `s.ttl` after `now`.
async fn insert_submission(
    conn: &mut SqliteConnection,
    s: &Submission<'_>,
    run: usize,
    graph_json: &str,
    now: i64,
) -> Result<(), StoreError> {
    let inserted = sqlx::query(INSERT_QUEUED_RUN)
        .bind(s.id)
        .bind(s.job)
        .bind(s.batch)
        .bind(s.input)
        .bind(graph_json)
        .bind(now)
        .bind(s.key)
        .bind(s.priority)
        .bind(s.ttl.map(|ttl| plus(now, ttl)))
        .bind(i64::from(s.max_attempts))
        .bind(s.max_fails.map(i64::from))
        .bind(i64::from(s.held))
        .execute(&mut *conn)
        .await;
    if let Err(sqlx::Error::Database(e)) = &inserted
        && e.is_unique_violation()
    {
        return Err(StoreError::IdTaken {
            run: s.id.to_owned(),
        });
    }
    inserted?;
    for (position, step) in s.graph.steps.iter().enumerate() {
        let waiting = s.graph.dependencies(position).len();
        let ready_at = (waiting == 0 && !s.held).then_some(s.run_at.unwrap_or(now));
        let fan = s.fan_out(position);
        sqlx::query(INSERT_QUEUED_STEP)
            .bind(s.id)
            .bind(&step.name)
            .bind(position as i64)
            .bind(s.job)
            .bind(waiting as i64)
            .bind(ready_at)
            .bind(s.priority)
            .bind(fan.map(|f| f.over as i64))
            .bind(fan.and_then(|f| f.bound).map(i64::from))
            .bind(s.ttr_ms(run, position))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Stores the limits a submission declares for its job's steps (keeping their rate buckets),
/// before its steps, which record whether their step has limits (`limited`: which index of ready
/// steps holds them). A limit row it creates marks the step's rows and elements stored before.
async fn upsert_limits(
    conn: &mut SqliteConnection,
    s: &Submission<'_>,
    now: i64,
) -> Result<(), StoreError> {
    for (step, limits) in s.limits {
        let created: bool = sqlx::query_scalar(NO_LIMITS)
            .bind(s.job)
            .bind(step)
            .fetch_one(&mut *conn)
            .await?;
        if created {
            for statement in [MARK_LIMITED, MARK_LIMITED_ELEMENTS] {
                sqlx::query(statement)
                    .bind(s.job)
                    .bind(step)
                    .execute(&mut *conn)
                    .await?;
            }
        }
        let rate = limits.rate();
        sqlx::query(UPSERT_LIMITS)
            .bind(s.job)
            .bind(step)
            .bind(limits.concurrency().map(i64::from))
            .bind(rate.map(|r| i64::from(r.count())))
            .bind(rate.map(|r| super::millis(r.period()).max(1)))
            .bind(rate.map(|r| i64::from(r.burst_size())))
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn run_graph(conn: &mut SqliteConnection, run: &str) -> Result<GraphSpec, StoreError> {
    let json: Option<String> = sqlx::query_scalar(SELECT_GRAPH)
        .bind(run)
        .fetch_optional(conn)
        .await?;
    let json = json.ok_or_else(|| super::sqlite::no_such_run(run))?;
    graph(&json, run)
}

/// Fails the queued runs whose time to live is over, cancelling their pending steps.
async fn expire_runs(conn: &mut SqliteConnection, now: i64) -> Result<(), StoreError> {
    let expired: Vec<String> = sqlx::query_scalar(EXPIRE_RUNS)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    for run in expired {
        cancel_pending(conn, &run, now).await?;
    }
    Ok(())
}

/// Fails the steps whose claims expired `max_attempts` times (their last lease is over too).
async fn exhaust_steps(
    conn: &mut SqliteConnection,
    jobs_json: &str,
    now: i64,
) -> Result<(), StoreError> {
    let rows = sqlx::query(EXHAUST_STEPS)
        .bind(jobs_json)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        let run: String = get(&row, "run_id", "jobgraph_steps")?;
        let step: String = get(&row, "name", "jobgraph_steps")?;
        skip_descendants(conn, &run, &step).await?;
        settle_run(conn, &run, now).await?;
    }
    let rows = sqlx::query(EXHAUST_ELEMENTS)
        .bind(jobs_json)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    for row in rows {
        const T: &str = "jobgraph_queue_elements";
        let run: String = get(&row, "run_id", T)?;
        let step: String = get(&row, "step", T)?;
        let error: String = get(&row, "error", T)?;
        fail_fan_out(conn, &run, &step, &error, now).await?;
    }
    Ok(())
}

async fn skip_descendants(
    conn: &mut SqliteConnection,
    run: &str,
    step: &str,
) -> Result<(), StoreError> {
    let spec = run_graph(conn, run).await?;
    let Some(position) = spec.position(step) else {
        return Ok(());
    };
    for (index, skipped) in spec.descendants(position).into_iter().enumerate() {
        if skipped && index != position {
            sqlx::query(SKIP_STEP)
                .bind(run)
                .bind(index as i64)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// A step or element a claim took, as its `RETURNING` row says.
struct Taken {
    run: String,
    step: String,
    position: i64,
    element: Option<i64>,
    /// An element's parent (its position) and the element (JSON).
    input: Option<(i64, String)>,
    attempt: i64,
    fails: i64,
    job: String,
    lease_until: i64,
    /// The step's TTR, or the worker's lease.
    lease: Duration,
    /// The queue's order: (priority descending, ready time, the element's index).
    order: (std::cmp::Reverse<i64>, i64, i64),
}

impl Taken {
    /// `row`, claimed with the worker's `lease`.
    fn read(row: &sqlx::sqlite::SqliteRow, lease: Duration) -> Result<Taken, StoreError> {
        const T: &str = "jobgraph_steps";
        let element: Option<i64> = get(row, "element", T)?;
        let over: Option<i64> = get(row, "over", T)?;
        let input: Option<String> = get(row, "input", T)?;
        Ok(Taken {
            run: get(row, "run_id", T)?,
            step: get(row, "name", T)?,
            position: get(row, "position", T)?,
            element,
            input: over.zip(input),
            attempt: get(row, "claims", T)?,
            fails: get(row, "fails", T)?,
            job: get(row, "job", T)?,
            lease_until: get(row, "lease_until", T)?,
            lease: super::queue::claim_lease(get(row, "ttr_ms", T)?, lease),
            order: (
                std::cmp::Reverse(get(row, "priority", T)?),
                get(row, "ready_at", T)?,
                element.unwrap_or(0),
            ),
        })
    }
}

/// The claims of the steps `taken` (in the queue's order): their runs marked running, each
/// with its run's input and its dependencies' outputs. Three statements, whatever the number of
/// steps: the runs' start, their heads, the outputs.
async fn claims_of(
    conn: &mut SqliteConnection,
    taken: Vec<Taken>,
    now: i64,
) -> Result<Vec<Claim>, StoreError> {
    let mut runs: Vec<&str> = taken.iter().map(|t| t.run.as_str()).collect();
    runs.sort_unstable();
    runs.dedup();
    let runs_json = serde_json::to_string(&runs).expect("ids serialize");
    sqlx::query(START_RUNS)
        .bind(&runs_json)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let heads = run_heads(conn, &runs_json, true).await?;
    // Each claim's position, and the outputs it needs: (claim, dependency) in the order of the
    // statement's list, which numbers its rows (`key`, from 0).
    let mut claims = Vec::with_capacity(taken.len());
    let mut wanted: Vec<(usize, usize)> = Vec::new();
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for t in &taken {
        let (_, spec) = heads
            .get(&t.run)
            .ok_or_else(|| super::sqlite::no_such_run(&t.run))?;
        let position = usize::try_from(t.position)
            .ok()
            .filter(|&p| p < spec.steps.len())
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("the position of step `{}` of run `{}`", t.step, t.run),
            })?;
        let c = claims.len();
        let mut deps = Vec::new();
        for dep in spec.dependencies(position) {
            let name = &spec.steps[dep].name;
            // An element's claim carries its element of the parent it iterates, as a list of
            // one.
            if let Some((over, input)) = &t.input
                && usize::try_from(*over).ok() == Some(dep)
            {
                deps.push((name.clone(), format!("[{input}]")));
                continue;
            }
            wanted.push((c, deps.len()));
            pairs.push((&t.run, name));
            deps.push((name.clone(), String::new()));
        }
        claims.push((position, deps));
    }
    if !pairs.is_empty() {
        let rows = sqlx::query(SELECT_OUTPUTS)
            .bind(serde_json::to_string(&pairs).expect("names serialize"))
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            let key: i64 = get(row, "key", "jobgraph_steps")?;
            let &(c, d) = usize::try_from(key)
                .ok()
                .and_then(|k| wanted.get(k))
                .ok_or_else(|| StoreError::Corrupt {
                    what: format!("an output was read for entry {key} of {}", wanted.len()),
                })?;
            claims[c].1[d].1 = get(row, "output", "jobgraph_steps")?;
        }
    }
    taken
        .into_iter()
        .zip(claims)
        .map(|(t, (position, deps))| {
            if let Some((name, _)) = deps.iter().find(|(_, output)| output.is_empty()) {
                return Err(StoreError::Corrupt {
                    what: format!(
                        "step `{}` of run `{}` was ready without the output of `{name}`",
                        t.step, t.run
                    ),
                });
            }
            let (input, spec) = &heads[&t.run];
            Ok(Claim {
                id: ClaimId {
                    only_step: spec.steps.len() == 1 && t.element.is_none(),
                    run: t.run,
                    step: t.step,
                    position,
                    attempt: u32::try_from(t.attempt).unwrap_or(u32::MAX),
                    element: t.element.and_then(|e| usize::try_from(e).ok()),
                    handed_over: None,
                },
                job: t.job,
                fails: u32::try_from(t.fails).unwrap_or(u32::MAX),
                input: input.clone().unwrap_or_default(),
                deps,
                lease_until: t.lease_until,
                lease: t.lease,
            })
        })
        .collect()
}

/// The heads of the runs of `runs_json` (a JSON list of ids): each run's graph, and, if
/// `inputs`, its input. One statement; each distinct graph parsed once.
async fn run_heads(
    conn: &mut SqliteConnection,
    runs_json: &str,
    inputs: bool,
) -> Result<HashMap<String, (Option<String>, Arc<GraphSpec>)>, StoreError> {
    let rows = sqlx::query(if inputs { SELECT_HEADS } else { SELECT_GRAPHS })
        .bind(runs_json)
        .fetch_all(&mut *conn)
        .await?;
    const T: &str = "jobgraph_runs";
    let mut parsed: HashMap<String, Arc<GraphSpec>> = HashMap::new();
    let mut heads = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: String = get(row, "id", T)?;
        let json: String = get(row, "graph", T)?;
        let spec = match parsed.get(&json) {
            Some(spec) => Arc::clone(spec),
            None => {
                let spec = Arc::new(graph(&json, &id)?);
                parsed.insert(json, Arc::clone(&spec));
                spec
            }
        };
        let input = if inputs {
            Some(get(row, "input", T)?)
        } else {
            None
        };
        heads.insert(id, (input, spec));
    }
    Ok(heads)
}

/// An element's index as stored.
fn element_index(element: usize) -> i64 {
    i64::try_from(element).unwrap_or(i64::MAX)
}

/// The position of a claim's step, as stored: each statement of a claim's step (or element)
/// checks it beside the step's name, so an id whose two disagree matches nothing.
fn position_of(claim: &ClaimId) -> i64 {
    i64::try_from(claim.position).unwrap_or(i64::MAX)
}

/// `n` elements of fan-out `step` of `run` completed: lets as many of the elements the step's
/// bound held back be claimed, and, if they were the last, completes the step with the
/// elements' outputs in their order (a JSON list). Whether the step completed.
async fn elements_done(
    conn: &mut SqliteConnection,
    run: &str,
    step: &str,
    n: i64,
    now: i64,
) -> Result<bool, StoreError> {
    let Some(counted) = sqlx::query(COUNT_ELEMENTS_DONE)
        .bind(run)
        .bind(step)
        .bind(n)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(false);
    };
    const T: &str = "jobgraph_steps";
    let done: i64 = get(&counted, "fan_done", T)?;
    let size: Option<i64> = get(&counted, "fan_size", T)?;
    if let Some(bound) = get::<Option<i64>>(&counted, "fan_bound", T)? {
        // The elements are made ready in index order, one per completion after the first
        // `bound`: these completions' are the next `n`.
        sqlx::query(RELEASE_ELEMENTS)
            .bind(run)
            .bind(step)
            .bind(bound + done - n)
            .bind(bound + done)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    let size = size.ok_or_else(|| StoreError::Corrupt {
        what: format!("fan-out `{step}` of run `{run}` has elements but no count of them"),
    })?;
    if done < size {
        return Ok(false);
    }
    let rows = sqlx::query(SELECT_ELEMENT_OUTPUTS)
        .bind(run)
        .bind(step)
        .fetch_all(&mut *conn)
        .await?;
    let mut output = String::from("[");
    let (mut attempts, mut started) = (0_i64, None::<i64>);
    for (i, row) in rows.iter().enumerate() {
        const T: &str = "jobgraph_queue_elements";
        if i > 0 {
            output.push(',');
        }
        output.push_str(&get::<String>(row, "output", T)?);
        attempts += get::<i64>(row, "claims", T)?;
        if let Some(at) = get::<Option<i64>>(row, "started_at", T)? {
            started = Some(started.map_or(at, |s| s.min(at)));
        }
    }
    output.push(']');
    let completed = sqlx::query(COMPLETE_FAN_OUT)
        .bind(run)
        .bind(step)
        .bind(&output)
        .bind(attempts)
        .bind(started)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(completed == 1)
}

/// Each child, per run, with how many of its dependencies completed.
type Kids<'r> = std::collections::BTreeMap<(&'r str, usize), i64>;

/// Steps `done` (run, position) completed (their outputs are stored), their runs' graphs in
/// `specs`: [`count_down`] of their children (two parents of one child may be among `done`).
async fn steps_done<'r>(
    conn: &mut SqliteConnection,
    specs: &HashMap<&'r str, &GraphSpec>,
    done: Vec<(&'r str, usize)>,
    now: i64,
) -> Result<(), StoreError> {
    let mut kids = Kids::new();
    add_children(&mut kids, specs, done)?;
    count_down(conn, specs, kids, now).await
}

/// Counts each child of `done` (run, position) in `kids`.
fn add_children<'r>(
    kids: &mut Kids<'r>,
    specs: &HashMap<&'r str, &GraphSpec>,
    done: Vec<(&'r str, usize)>,
) -> Result<(), StoreError> {
    for (run, position) in done {
        let spec = specs
            .get(run)
            .ok_or_else(|| super::sqlite::no_such_run(run))?;
        for child in spec.children(position) {
            *kids.entry((run, child)).or_default() += 1;
        }
    }
    Ok(())
}

/// `n` more dependencies of each step of `kids` completed: the last makes it ready, or, for a
/// fan-out, gives it its elements; a fan-out over an empty list completes at once, with `[]`,
/// and its children are counted down next. One statement per level.
async fn count_down<'r>(
    conn: &mut SqliteConnection,
    specs: &HashMap<&'r str, &GraphSpec>,
    mut kids: Kids<'r>,
    now: i64,
) -> Result<(), StoreError> {
    while !kids.is_empty() {
        let entries: Vec<(&str, i64, i64)> = std::mem::take(&mut kids)
            .into_iter()
            .map(|((run, child), n)| (run, i64::try_from(child).unwrap_or(i64::MAX), n))
            .collect();
        let rows = sqlx::query(DEPENDENCIES_DONE)
            .bind(serde_json::to_string(&entries).expect("children serialize"))
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        const T: &str = "jobgraph_steps";
        let mut done = Vec::new();
        for row in &rows {
            let waiting: i64 = get(row, "waiting", T)?;
            let over: Option<i64> = get(row, "fan_over", T)?;
            let (0, Some(over)) = (waiting, over) else {
                continue;
            };
            let run: String = get(row, "run_id", T)?;
            let (&run, _) = specs
                .get_key_value(run.as_str())
                .ok_or_else(|| super::sqlite::no_such_run(&run))?;
            if expand(conn, run, row, over, now).await? {
                let position: i64 = get(row, "position", T)?;
                done.push((run, usize::try_from(position).unwrap_or(usize::MAX)));
            }
        }
        add_children(&mut kids, specs, done)?;
    }
    Ok(())
}

/// Fan-out step `row` of `run` became ready: one element row per element of its parent `over`'s
/// output, the first `fan_bound` of them ready now. Over an empty list the step completes at
/// once with `[]` (`true`: its children are next); over an output that is not a list it is
/// claimed whole, as a step (its worker's decoding then says what is wrong).
async fn expand(
    conn: &mut SqliteConnection,
    run: &str,
    row: &sqlx::sqlite::SqliteRow,
    over: i64,
    now: i64,
) -> Result<bool, StoreError> {
    const T: &str = "jobgraph_steps";
    let step: String = get(row, "name", T)?;
    let position: i64 = get(row, "position", T)?;
    let parent = sqlx::query(SELECT_LIST_LENGTH)
        .bind(run)
        .bind(over)
        .fetch_optional(&mut *conn)
        .await?;
    let length: Option<i64> = match &parent {
        Some(parent) => get(parent, "n", T)?,
        None => None,
    };
    match length {
        None => {
            sqlx::query(READY_WHOLE)
                .bind(run)
                .bind(position)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            Ok(false)
        }
        Some(0) => {
            let completed = sqlx::query(COMPLETE_FAN_OUT)
                .bind(run)
                .bind(&step)
                .bind("[]")
                .bind(0_i64)
                .bind(now)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(completed == 1)
        }
        Some(n) => {
            let bound: Option<i64> = get(row, "fan_bound", T)?;
            sqlx::query(SET_FAN_SIZE)
                .bind(run)
                .bind(position)
                .bind(n)
                .execute(&mut *conn)
                .await?;
            sqlx::query(INSERT_ELEMENTS)
                .bind(run)
                .bind(&step)
                .bind(position)
                .bind(over)
                .bind(get::<String>(row, "job", T)?)
                .bind(get::<i64>(row, "priority", T)?)
                .bind(now)
                .bind(bound)
                .execute(&mut *conn)
                .await?;
            Ok(false)
        }
    }
}

/// Element `element` of `claim.step` returned `error`: ready again at `retry_at` if its retry
/// policy asks and `max_fails` allows, else it fails, and so does its step (fenced).
#[allow(clippy::too_many_arguments)]
async fn fail_element(
    conn: &mut SqliteConnection,
    worker: &str,
    claim: &ClaimId,
    element: usize,
    error: &str,
    started_at: i64,
    retry_at: Option<i64>,
    now: i64,
) -> Result<Failed, StoreError> {
    if let Some(at) = retry_at {
        let retried = sqlx::query(RETRY_ELEMENT)
            .bind(&claim.run)
            .bind(&claim.step)
            .bind(worker)
            .bind(i64::from(claim.attempt))
            .bind(error)
            .bind(started_at)
            .bind(at)
            .bind(element_index(element))
            .bind(position_of(claim))
            .execute(&mut *conn)
            .await?
            .rows_affected();
        if retried == 1 {
            return Ok(Failed::Retrying { at });
        }
    }
    let failed = sqlx::query(FAIL_ELEMENT)
        .bind(&claim.run)
        .bind(&claim.step)
        .bind(worker)
        .bind(i64::from(claim.attempt))
        .bind(error)
        .bind(started_at)
        .bind(now)
        .bind(element_index(element))
        .bind(position_of(claim))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if failed != 1 {
        return Err(claim.lost(worker));
    }
    fail_fan_out(conn, &claim.run, &claim.step, error, now).await?;
    Ok(Failed::Failed)
}

/// An element of fan-out `step` of `run` failed for good with `error` (which names it): the
/// step fails, its other elements are cancelled (their workers learn it at their next
/// heartbeat), its descendants are skipped, and the run ends if no step is left.
async fn fail_fan_out(
    conn: &mut SqliteConnection,
    run: &str,
    step: &str,
    error: &str,
    now: i64,
) -> Result<(), StoreError> {
    let failed = sqlx::query(FAIL_FAN_OUT)
        .bind(run)
        .bind(step)
        .bind(error)
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query(CANCEL_FAN_OUT_ELEMENTS)
        .bind(run)
        .bind(step)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    if failed == 1 {
        skip_descendants(conn, run, step).await?;
        settle_run(conn, run, now).await?;
    }
    Ok(())
}

/// Cancels the pending steps and elements of `run` (aborted or expired).
async fn cancel_pending(
    conn: &mut SqliteConnection,
    run: &str,
    now: i64,
) -> Result<(), StoreError> {
    for statement in [CANCEL_PENDING_STEPS, CANCEL_PENDING_ELEMENTS] {
        sqlx::query(statement)
            .bind(run)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// [`StoreError::Busy`] if a worker holds a live claim of a step or element of queued run
/// `run`: a redrive waits for it (as for a runner's lease), so that no claim it clears could
/// still be committed.
pub(super) async fn check_unclaimed(
    conn: &mut SqliteConnection,
    run: &str,
    now: i64,
) -> Result<(), StoreError> {
    let held = sqlx::query(SELECT_LIVE_CLAIM)
        .bind(run)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await?;
    match held {
        None => Ok(()),
        Some(row) => Err(StoreError::Busy {
            run: run.to_owned(),
            owner: get(&row, "worker", "jobgraph_steps")?,
            until: get(&row, "lease_until", "jobgraph_steps")?,
        }),
    }
}

/// Redrive of queued run `run`: its steps `hits` (by position: the redriven step and its
/// descendants, reset by the store) are queued again. Their elements' rows are deleted (a
/// fan-out is expanded anew, from its parent's output then), their claims, errors and leases
/// cleared, and each waits for its dependencies that have not completed; one that waits for
/// none is ready now (a fan-out gets its elements). The run's time to live is cleared: it ran
/// out or the run ended, and a redrive is the operator's new start.
pub(super) async fn requeue(
    conn: &mut SqliteConnection,
    run: &str,
    spec: &GraphSpec,
    hits: &[bool],
    now: i64,
) -> Result<(), StoreError> {
    let ended: Vec<(i64, String)> = sqlx::query_as(SELECT_ENDED)
        .bind(run)
        .fetch_all(&mut *conn)
        .await?;
    let ended: Vec<(usize, String)> = ended
        .into_iter()
        .filter_map(|(p, state)| Some((usize::try_from(p).ok()?, state)))
        .collect();
    let mut ready = Vec::new();
    for (position, waiting) in super::queue::redrive_waits(run, spec, hits, &ended)? {
        sqlx::query(DELETE_QUEUE_ELEMENTS)
            .bind(run)
            .bind(&spec.steps[position].name)
            .execute(&mut *conn)
            .await?;
        // One that waits for nothing waits for one, made done below as if it just completed.
        if waiting == 0 {
            ready.push(position);
        }
        sqlx::query(REQUEUE_STEP)
            .bind(run)
            .bind(position as i64)
            .bind(waiting.max(1) as i64)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(CLEAR_TTL).bind(run).execute(&mut *conn).await?;
    let specs = HashMap::from([(run, spec)]);
    let kids = ready
        .into_iter()
        .map(|position| ((run, position), 1))
        .collect();
    count_down(conn, &specs, kids, now).await?;
    Ok(())
}

/// Ends run `run` if none of its steps is pending: failed if one failed, else succeeded.
async fn settle_run(conn: &mut SqliteConnection, run: &str, now: i64) -> Result<(), StoreError> {
    let runs = serde_json::to_string(&[run]).expect("ids serialize");
    settle_runs(conn, &runs, now).await
}

/// [`settle_run`] of each run of `runs_json` (a JSON list of ids), in one statement.
async fn settle_runs(
    conn: &mut SqliteConnection,
    runs_json: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(END_SETTLED_RUNS)
        .bind(runs_json)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

/// Completes the steps and elements of `done` that `worker` still holds, in a statement for
/// the steps and one for the elements: for each completion, whether it was stored.
async fn complete_steps(
    conn: &mut SqliteConnection,
    worker: &str,
    done: &[Completion<'_>],
    now: i64,
) -> Result<Vec<bool>, StoreError> {
    let mut committed = vec![false; done.len()];
    // Each completion by its claim, keyed as its statement's rows say what they stored: the
    // first such entry is stored (a worker that sends one twice in one call stored it once).
    type Key<'k> = (&'k str, &'k str, i64, i64, i64);
    let key = |c: &Completion<'_>| -> (i64, i64, i64) {
        let claim = c.claim;
        let element = claim.element.map_or(-1, element_index);
        (position_of(claim), element, i64::from(claim.attempt))
    };
    let (steps, elements): (Vec<_>, Vec<_>) = done
        .iter()
        .enumerate()
        .partition(|(_, c)| c.claim.element.is_none());
    let mut stored: Vec<(String, String, i64, i64, i64)> = Vec::new();
    const T: &str = "jobgraph_steps";
    for (statement, entries) in [(COMPLETE_STEPS, &steps), (COMPLETE_ELEMENTS, &elements)] {
        if entries.is_empty() {
            continue;
        }
        let listed: Vec<(&str, &str, i64, i64, u32, &str, i64)> = entries
            .iter()
            .map(|(_, c)| {
                let (position, element, _) = key(c);
                let claim = c.claim;
                (
                    claim.run.as_str(),
                    claim.step.as_str(),
                    position,
                    element,
                    claim.attempt,
                    c.output,
                    c.started_at,
                )
            })
            .collect();
        let rows = sqlx::query(statement)
            .bind(worker)
            .bind(serde_json::to_string(&listed).expect("completions serialize"))
            .bind(now)
            .fetch_all(&mut *conn)
            .await?;
        for row in &rows {
            stored.push((
                get(row, "run_id", T)?,
                get(row, "name", T)?,
                get(row, "position", T)?,
                get(row, "element", T)?,
                get(row, "claims", T)?,
            ));
        }
    }
    let mut by_claim: HashMap<Key<'_>, Vec<usize>> = HashMap::new();
    for (at, c) in done.iter().enumerate().rev() {
        let (position, element, attempt) = key(c);
        let claim = c.claim;
        by_claim
            .entry((
                claim.run.as_str(),
                claim.step.as_str(),
                position,
                element,
                attempt,
            ))
            .or_default()
            .push(at);
    }
    for (run, step, position, element, claims) in &stored {
        let at = by_claim
            .get_mut(&(run.as_str(), step.as_str(), *position, *element, *claims))
            .and_then(Vec::pop)
            .ok_or_else(|| StoreError::Corrupt {
                what: format!(
                    "a completion stored step `{step}` of run `{run}`, which none asked for"
                ),
            })?;
        committed[at] = true;
    }
    Ok(committed)
}

// ---- Statements ---------------------------------------------------------------------------------

const SELECT_BY_KEY: &str = "SELECT id FROM jobgraph_runs WHERE job = ?1 AND idem_key = ?2";

const INSERT_QUEUED_RUN: &str = "INSERT INTO jobgraph_runs
    (id, job, batch, input, graph, state, created_at, updated_at,
     queued, idem_key, priority, expires_at, max_attempts, max_fails, held)
    VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6, 1, ?7, ?8, ?9, ?10, ?11, ?12)";

const SELECT_LEASES: &str = "SELECT worker AS holder, run_id AS run, name AS step,
        claims AS attempt, NULL AS element, lease_until AS until
    FROM jobgraph_steps WHERE state = 'pending' AND worker IS NOT NULL
    UNION ALL
    SELECT worker, run_id, step, claims, idx, lease_until
    FROM jobgraph_queue_elements WHERE state = 'pending' AND worker IS NOT NULL
    UNION ALL
    SELECT lease_owner, id, NULL, NULL, NULL, lease_until
    FROM jobgraph_runs WHERE state = 'running' AND lease_owner IS NOT NULL
    ORDER BY 1, 2, 3, 5";

const COUNT_BATCH: &str = "SELECT COUNT(*) FROM jobgraph_runs WHERE batch = ?1";

const RELEASE_STEPS: &str = "UPDATE jobgraph_steps SET ready_at = ?2
    WHERE run_id IN (SELECT id FROM jobgraph_runs WHERE batch = ?1 AND held = 1)
      AND state = 'pending' AND waiting = 0 AND ready_at IS NULL AND fan_over IS NULL";

const RELEASE_RUNS: &str = "UPDATE jobgraph_runs SET held = 0 WHERE batch = ?1 AND held = 1";

const ABORT_BATCH: &str = "UPDATE jobgraph_runs
    SET state = 'cancelled', error = 'aborted', updated_at = ?2
    WHERE batch = ?1 AND state IN ('pending', 'running')
    RETURNING id";

const COUNT_BATCH_RUNS: &str = "SELECT state, held, COUNT(*) AS n FROM jobgraph_runs
    WHERE batch = ?1 GROUP BY state, held";

const COUNT_BATCH_STEPS: &str = "SELECT s.name AS name,
        CASE WHEN s.state = 'pending' AND s.worker IS NOT NULL AND s.lease_until > ?2
             THEN 'running'
             -- A fan-out runs from its first element to its last.
             WHEN s.state = 'pending' AND s.fan_over IS NOT NULL AND EXISTS (
                 SELECT 1 FROM jobgraph_queue_elements e
                 WHERE e.run_id = s.run_id AND e.step = s.name)
             THEN 'running' ELSE s.state END AS state,
        COUNT(*) AS n, MIN(s.position) AS position
    FROM jobgraph_steps s JOIN jobgraph_runs r ON r.id = s.run_id
    WHERE r.batch = ?1
    GROUP BY 1, 2
    ORDER BY position";

/// A queued step; `limited` if its step has a limit row (stored before the steps).
const INSERT_QUEUED_STEP: &str = "INSERT INTO jobgraph_steps
    (run_id, name, position, state, job, waiting, ready_at, priority, fan_over, fan_bound, ttr_ms,
     limited)
    VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?6, ?7, ?8, ?9, ?10,
        EXISTS (SELECT 1 FROM jobgraph_limits WHERE job = ?4 AND step = ?2))";

/// Whether step `?2` of job `?1` has no limit row yet.
const NO_LIMITS: &str =
    "SELECT NOT EXISTS (SELECT 1 FROM jobgraph_limits WHERE job = ?1 AND step = ?2)";

/// Marks the rows of step `?2` of job `?1` stored before its limit row, in every state (a
/// redrive puts a failed step back as it is), found through the job's runs.
const MARK_LIMITED: &str = "UPDATE jobgraph_steps SET limited = 1
    WHERE run_id IN (SELECT id FROM jobgraph_runs WHERE job = ?1) AND name = ?2 AND limited = 0";

/// The same of the step's fan-out elements.
const MARK_LIMITED_ELEMENTS: &str = "UPDATE jobgraph_queue_elements SET limited = 1
    WHERE run_id IN (SELECT id FROM jobgraph_runs WHERE job = ?1) AND step = ?2 AND limited = 0";

const EXPIRE_RUNS: &str = "UPDATE jobgraph_runs
    SET state = 'failed', error = 'its time to live expired', updated_at = ?1
    WHERE queued = 1 AND expires_at IS NOT NULL AND expires_at <= ?1
      AND state IN ('pending', 'running')
    RETURNING id";

const EXHAUST_STEPS: &str = "UPDATE jobgraph_steps
    SET state = 'failed', ready_at = NULL, worker = NULL, lease_until = NULL, ended_at = ?2,
        attempts = claims,
        error = 'its worker stopped answering (lease expired) on ' || (claims - fails)
            || ' of its claims'
    WHERE state = 'pending' AND worker IS NOT NULL AND lease_until <= ?2
      AND job IN (SELECT value FROM json_each(?1))
      AND claims - fails >= (SELECT max_attempts FROM jobgraph_runs r WHERE r.id = run_id)
    RETURNING run_id, name";

/// The elements of `?1`'s fan-outs whose claims expired `max_attempts` times: each fails,
/// naming itself in its error (which fails its step).
const EXHAUST_ELEMENTS: &str = "UPDATE jobgraph_queue_elements
    SET state = 'failed', ready_at = NULL, worker = NULL, lease_until = NULL, ended_at = ?2,
        error = 'element ' || idx || ': its worker stopped answering (lease expired) on '
            || (claims - fails) || ' of its claims'
    WHERE state = 'pending' AND worker IS NOT NULL AND lease_until <= ?2
      AND job IN (SELECT value FROM json_each(?1))
      AND claims - fails >= (SELECT max_attempts FROM jobgraph_runs r WHERE r.id = run_id)
    RETURNING run_id, step, error";

/// The claimable rows of job `?1` at `?2` in `$table` that `$which` (an SQL condition on `s`
/// that picks one of its two indexes of ready rows) selects, best first (`$order`: after
/// priority and ready time), at most `?3`. Each walks its index in order and stops at its limit.
macro_rules! candidates {
    ($table:literal, $which:literal, $order:literal) => {
        concat!(
            "SELECT s.rowid AS rid, s.priority AS priority, s.ready_at AS ready_at
            FROM ",
            $table,
            " s
            WHERE s.job = ?1 AND ",
            $which,
            "
              AND s.state = 'pending' AND s.ready_at IS NOT NULL AND s.ready_at <= ?2
              AND (s.worker IS NULL OR s.lease_until <= ?2)
            ORDER BY s.priority DESC, s.ready_at",
            $order,
            "
            LIMIT ?3"
        )
    };
}

/// The ready steps of job `?1` without limits (`jobgraph_steps_ready`).
const CANDIDATES: &str = candidates!("jobgraph_steps", "s.limited = 0", "");

/// The ready steps of limited step `?4` of job `?1` (`jobgraph_steps_ready_limited`).
const LIMITED_CANDIDATES: &str = candidates!("jobgraph_steps", "s.name = ?4 AND s.limited = 1", "");

/// The ready elements of job `?1`'s fan-outs without limits, then by index
/// (`jobgraph_queue_elements_ready`).
const ELEMENT_CANDIDATES: &str = candidates!("jobgraph_queue_elements", "s.limited = 0", ", s.idx");

/// The ready elements of limited fan-out `?4` of job `?1`
/// (`jobgraph_queue_elements_ready_limited`).
const LIMITED_ELEMENT_CANDIDATES: &str = candidates!(
    "jobgraph_queue_elements",
    "s.step = ?4 AND s.limited = 1",
    ", s.idx"
);

/// The limit rows of jobs `?1` (a JSON list) whose step has a ready step or element at `?2`
/// (held or not: the room says how many more), with the step's live claims (`running`, if it
/// has a concurrency) and which of the two tables has its ready rows: all a claim needs to
/// know of its limited steps, in one statement.
const READY_LIMITS: &str = "SELECT l.*, CASE WHEN l.concurrency IS NOT NULL THEN
        (SELECT COUNT(*) FROM jobgraph_steps
         WHERE job = l.job AND name = l.step AND state = 'pending' AND worker IS NOT NULL
           AND lease_until > ?2)
        + (SELECT COUNT(*) FROM jobgraph_queue_elements
         WHERE job = l.job AND step = l.step AND state = 'pending' AND worker IS NOT NULL
           AND lease_until > ?2) END AS running
    FROM (SELECT l.job, l.step, l.concurrency, l.rate_count, l.rate_period_ms, l.burst, l.tokens,
            l.refilled_at,
            EXISTS (SELECT 1 FROM jobgraph_steps s
                WHERE s.job = l.job AND s.name = l.step AND s.limited = 1
                  AND s.state = 'pending' AND s.ready_at IS NOT NULL AND s.ready_at <= ?2)
                AS steps_ready,
            EXISTS (SELECT 1 FROM jobgraph_queue_elements s
                WHERE s.job = l.job AND s.step = l.step AND s.limited = 1
                  AND s.state = 'pending' AND s.ready_at IS NOT NULL AND s.ready_at <= ?2)
                AS elements_ready
        FROM jobgraph_limits l
        WHERE l.job IN (SELECT value FROM json_each(?1))) l
    WHERE l.steps_ready OR l.elements_ready
    ORDER BY l.job, l.step";

const TAKE_TOKENS: &str = "UPDATE jobgraph_limits SET tokens = ?3, refilled_at = ?4
    WHERE job = ?1 AND step = ?2";

const UPSERT_LIMITS: &str = "INSERT INTO jobgraph_limits
    (job, step, concurrency, rate_count, rate_period_ms, burst, tokens, refilled_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?6, 0), ?7)
    ON CONFLICT (job, step) DO UPDATE SET
        concurrency = excluded.concurrency, rate_count = excluded.rate_count,
        rate_period_ms = excluded.rate_period_ms, burst = excluded.burst";

/// Claims the steps `?3` (row ids) for `?1` at `?2`, each until then + its TTR, or + `?4` ms (the
/// worker's lease) for a step without one.
const CLAIM: &str = "UPDATE jobgraph_steps
    SET worker = ?1, lease_until = ?2 + COALESCE(ttr_ms, ?4), claims = claims + 1
    WHERE rowid IN (SELECT value FROM json_each(?3))
    RETURNING run_id, name, position, NULL AS element, NULL AS over, NULL AS input, claims, fails,
        job, priority, ready_at, lease_until, ttr_ms";

/// `CLAIM` of elements: each takes its step's TTR (copied at expansion).
const CLAIM_ELEMENTS: &str = "UPDATE jobgraph_queue_elements
    SET worker = ?1, lease_until = ?2 + COALESCE(ttr_ms, ?4), claims = claims + 1
    WHERE rowid IN (SELECT value FROM json_each(?3))
    RETURNING run_id, step AS name, position, idx AS element, over, input, claims, fails, job,
        priority, ready_at, lease_until, ttr_ms";

/// The runs of `?1` (a JSON list of ids) that are pending are running (at `?2`).
const START_RUNS: &str = "UPDATE jobgraph_runs SET state = 'running', updated_at = ?2
    WHERE id IN (SELECT value FROM json_each(?1)) AND state = 'pending'";

/// The input and graph of each run of `?1` (a JSON list of ids).
const SELECT_HEADS: &str = "SELECT id, input, graph FROM jobgraph_runs
    WHERE id IN (SELECT value FROM json_each(?1))";

/// The graph of each run of `?1` (a JSON list of ids).
const SELECT_GRAPHS: &str = "SELECT id, graph FROM jobgraph_runs
    WHERE id IN (SELECT value FROM json_each(?1))";

/// The output of each completed step of `?1` (a JSON list of [run, name] pairs), with the
/// pair's place in the list (`key`, from 0).
const SELECT_OUTPUTS: &str = "SELECT p.key AS key, s.output AS output
    FROM json_each(?1) AS p
    JOIN jobgraph_steps s ON s.run_id = json_extract(p.value, '$[0]')
        AND s.name = json_extract(p.value, '$[1]') AND s.state = 'completed'";

const SELECT_GRAPH: &str = "SELECT graph FROM jobgraph_runs WHERE id = ?1";

/// A heartbeat: the claim's lease runs until `?5` (now) + its TTR, or + `?6` ms (the worker's
/// lease) for a step without one.
const RENEW_CLAIM: &str = "UPDATE jobgraph_steps SET lease_until = ?5 + COALESCE(ttr_ms, ?6)
    WHERE run_id = ?1 AND name = ?2 AND position = ?7 AND worker = ?3 AND claims = ?4
      AND state = 'pending'";

const RENEW_ELEMENT: &str = "UPDATE jobgraph_queue_elements
    SET lease_until = ?5 + COALESCE(ttr_ms, ?6)
    WHERE run_id = ?1 AND step = ?2 AND idx = ?7 AND position = ?8 AND worker = ?3
      AND claims = ?4 AND state = 'pending'";

const SELECT_RUN_STATE: &str = "SELECT state FROM jobgraph_runs WHERE id = ?1";

/// A live claim of a step or element of run `?1` at `?2`, if any.
const SELECT_LIVE_CLAIM: &str = "SELECT worker, lease_until FROM jobgraph_steps
    WHERE run_id = ?1 AND state = 'pending' AND worker IS NOT NULL AND lease_until > ?2
    UNION ALL
    SELECT worker, lease_until FROM jobgraph_queue_elements
    WHERE run_id = ?1 AND state = 'pending' AND worker IS NOT NULL AND lease_until > ?2
    LIMIT 1";

const SELECT_ENDED: &str =
    "SELECT position, state FROM jobgraph_steps WHERE run_id = ?1 AND state <> 'pending'";

const DELETE_QUEUE_ELEMENTS: &str =
    "DELETE FROM jobgraph_queue_elements WHERE run_id = ?1 AND step = ?2";

/// A redriven step is queued again, waiting for `?3` dependencies.
const REQUEUE_STEP: &str = "UPDATE jobgraph_steps
    SET waiting = ?3, ready_at = NULL, claims = 0, fails = 0, worker = NULL, lease_until = NULL,
        fan_size = NULL, fan_done = 0
    WHERE run_id = ?1 AND position = ?2";

const CLEAR_TTL: &str = "UPDATE jobgraph_runs SET expires_at = NULL WHERE id = ?1";

/// Each step of `?2` (a JSON list of [run, name, position, -1, claim, output, started at]) that
/// `?1` holds under its claim completed at `?3` with its output: the rows it stored (their
/// run, position and claim).
const COMPLETE_STEPS: &str = "UPDATE jobgraph_steps
    SET state = 'completed', output = c.done_output, attempts = claims, error = NULL,
        started_at = COALESCE(started_at, c.done_started), ended_at = ?3,
        worker = NULL, lease_until = NULL, ready_at = NULL
    FROM (SELECT json_extract(value, '$[0]') AS done_run,
            json_extract(value, '$[1]') AS done_name,
            json_extract(value, '$[2]') AS done_position,
            json_extract(value, '$[4]') AS done_claims,
            json_extract(value, '$[5]') AS done_output,
            json_extract(value, '$[6]') AS done_started
        FROM json_each(?2)) AS c
    WHERE run_id = c.done_run AND name = c.done_name AND position = c.done_position
      AND worker = ?1 AND claims = c.done_claims AND state = 'pending'
    RETURNING run_id, name, position, -1 AS element, claims";

/// [`COMPLETE_STEPS`] of elements: each of `?2` is [run, step, position, element, claim,
/// output, started at].
const COMPLETE_ELEMENTS: &str = "UPDATE jobgraph_queue_elements
    SET state = 'completed', output = c.done_output, error = NULL,
        started_at = COALESCE(started_at, c.done_started), ended_at = ?3,
        worker = NULL, lease_until = NULL, ready_at = NULL
    FROM (SELECT json_extract(value, '$[0]') AS done_run,
            json_extract(value, '$[1]') AS done_step,
            json_extract(value, '$[2]') AS done_position,
            json_extract(value, '$[3]') AS done_element,
            json_extract(value, '$[4]') AS done_claims,
            json_extract(value, '$[5]') AS done_output,
            json_extract(value, '$[6]') AS done_started
        FROM json_each(?2)) AS c
    WHERE run_id = c.done_run AND step = c.done_step AND idx = c.done_element
      AND position = c.done_position AND worker = ?1 AND claims = c.done_claims
      AND state = 'pending'
    RETURNING run_id, step AS name, position, idx AS element, claims";

/// `n` more dependencies of each step of `?1` (a JSON list of [run, position, n]) completed:
/// the last makes it ready at `?2`, unless it is a fan-out (its elements are made instead).
/// What each is now.
const DEPENDENCIES_DONE: &str = "UPDATE jobgraph_steps
    SET waiting = MAX(waiting - d.dep_n, 0),
        ready_at = CASE WHEN waiting <= d.dep_n AND fan_over IS NULL THEN ?2 ELSE NULL END
    FROM (SELECT json_extract(value, '$[0]') AS dep_run,
            json_extract(value, '$[1]') AS dep_position, json_extract(value, '$[2]') AS dep_n
        FROM json_each(?1)) AS d
    WHERE run_id = d.dep_run AND position = d.dep_position AND state = 'pending'
      AND waiting > 0
    RETURNING run_id, name, position, waiting, fan_over, fan_bound, job, priority";

/// The length of step `?2`'s output, if it is a list.
const SELECT_LIST_LENGTH: &str = "SELECT CASE WHEN json_type(output) = 'array'
        THEN json_array_length(output) END AS n
    FROM jobgraph_steps WHERE run_id = ?1 AND position = ?2 AND state = 'completed'";

/// A fan-out whose parent's output is not a list is claimed whole.
const READY_WHOLE: &str = "UPDATE jobgraph_steps SET ready_at = ?3
    WHERE run_id = ?1 AND position = ?2 AND state = 'pending'";

/// One element of fan-out `?2` (at `?3`) of run `?1` per element of its parent `?4`'s output
/// (each cut out as JSON), the first `?8` (all if NULL) ready at `?7`; each with the step's TTR
/// and `limited`.
const INSERT_ELEMENTS: &str = "INSERT INTO jobgraph_queue_elements
        (run_id, step, position, idx, over, input, job, priority, state, ready_at, ttr_ms,
         limited)
    SELECT ?1, ?2, ?3, j.key, ?4, p.output -> j.key, ?5, ?6, 'pending',
        CASE WHEN ?8 IS NULL OR j.key < ?8 THEN ?7 END, f.ttr_ms, f.limited
    FROM jobgraph_steps f, jobgraph_steps p, json_each(p.output) AS j
    WHERE f.run_id = ?1 AND f.position = ?3
      AND p.run_id = ?1 AND p.position = ?4 AND p.state = 'completed'
    ORDER BY j.key";

const SET_FAN_SIZE: &str = "UPDATE jobgraph_steps SET fan_size = ?3, fan_done = 0
    WHERE run_id = ?1 AND position = ?2";

/// `?3` more elements of fan-out `?2` completed: how many have, of how many, and its bound.
const COUNT_ELEMENTS_DONE: &str = "UPDATE jobgraph_steps SET fan_done = fan_done + ?3
    WHERE run_id = ?1 AND name = ?2 AND state = 'pending'
    RETURNING fan_done, fan_size, fan_bound";

/// Elements `?3..?4`, held back by their step's bound, are ready at `?5`.
const RELEASE_ELEMENTS: &str = "UPDATE jobgraph_queue_elements SET ready_at = ?5
    WHERE run_id = ?1 AND step = ?2 AND idx >= ?3 AND idx < ?4 AND state = 'pending'
      AND ready_at IS NULL";

const SELECT_ELEMENT_OUTPUTS: &str = "SELECT output, claims, started_at
    FROM jobgraph_queue_elements WHERE run_id = ?1 AND step = ?2 ORDER BY idx";

/// Fan-out `?2` completed with output `?3` (its elements' outputs, in order), after `?4` claims.
const COMPLETE_FAN_OUT: &str = "UPDATE jobgraph_steps
    SET state = 'completed', output = ?3, attempts = ?4, error = NULL,
        started_at = COALESCE(started_at, ?5), ended_at = ?6,
        worker = NULL, lease_until = NULL, ready_at = NULL
    WHERE run_id = ?1 AND name = ?2 AND state = 'pending'";

const RETRY_ELEMENT: &str = "UPDATE jobgraph_queue_elements
    SET fails = fails + 1, error = ?5, started_at = COALESCE(started_at, ?6),
        worker = NULL, lease_until = NULL, ready_at = ?7
    WHERE run_id = ?1 AND step = ?2 AND idx = ?8 AND position = ?9 AND worker = ?3
      AND claims = ?4 AND state = 'pending'
      AND fails + 1 < COALESCE((SELECT max_fails FROM jobgraph_runs r WHERE r.id = run_id),
                               9223372036854775807)";

const FAIL_ELEMENT: &str = "UPDATE jobgraph_queue_elements
    SET state = 'failed', fails = fails + 1, error = ?5, started_at = COALESCE(started_at, ?6),
        ended_at = ?7, worker = NULL, lease_until = NULL, ready_at = NULL
    WHERE run_id = ?1 AND step = ?2 AND idx = ?8 AND position = ?9 AND worker = ?3
      AND claims = ?4 AND state = 'pending'";

/// Fan-out `?2` failed with its element's error `?3`; its attempts are its elements' claims.
const FAIL_FAN_OUT: &str = "UPDATE jobgraph_steps
    SET state = 'failed', error = ?3, ended_at = ?4, ready_at = NULL,
        attempts = (SELECT COALESCE(SUM(e.claims), 0) FROM jobgraph_queue_elements e
            WHERE e.run_id = ?1 AND e.step = ?2),
        started_at = COALESCE(started_at, (SELECT MIN(e.started_at)
            FROM jobgraph_queue_elements e WHERE e.run_id = ?1 AND e.step = ?2))
    WHERE run_id = ?1 AND name = ?2 AND state = 'pending'";

const CANCEL_FAN_OUT_ELEMENTS: &str = "UPDATE jobgraph_queue_elements
    SET state = 'cancelled', ready_at = NULL, ended_at = ?3
    WHERE run_id = ?1 AND step = ?2 AND state = 'pending'";

const CANCEL_PENDING_ELEMENTS: &str = "UPDATE jobgraph_queue_elements
    SET state = 'cancelled', ready_at = NULL, ended_at = ?2
    WHERE run_id = ?1 AND state = 'pending'";

pub(super) const AGE_ELEMENT_CLAIMS: &str = "UPDATE jobgraph_queue_elements
    SET lease_until = lease_until - ?1 WHERE lease_until IS NOT NULL";

const RETRY_STEP: &str = "UPDATE jobgraph_steps
    SET fails = fails + 1, error = ?5, attempts = claims, started_at = COALESCE(started_at, ?6),
        worker = NULL, lease_until = NULL, ready_at = ?7
    WHERE run_id = ?1 AND name = ?2 AND position = ?8 AND worker = ?3 AND claims = ?4
      AND state = 'pending'
      AND fails + 1 < COALESCE((SELECT max_fails FROM jobgraph_runs r WHERE r.id = run_id),
                               9223372036854775807)";

const FAIL_STEP: &str = "UPDATE jobgraph_steps
    SET state = 'failed', fails = fails + 1, error = ?5, attempts = claims,
        started_at = COALESCE(started_at, ?6), ended_at = ?7,
        worker = NULL, lease_until = NULL, ready_at = NULL
    WHERE run_id = ?1 AND name = ?2 AND position = ?8 AND worker = ?3 AND claims = ?4
      AND state = 'pending'";

const SKIP_STEP: &str = "UPDATE jobgraph_steps
    SET state = 'skipped', ready_at = NULL, worker = NULL, lease_until = NULL
    WHERE run_id = ?1 AND position = ?2 AND state = 'pending'";

/// Ends each run of `?1` (a JSON list of ids) none of whose steps is pending, at `?2`: failed,
/// naming its first failed step (by byte order), if one failed; else succeeded.
const END_SETTLED_RUNS: &str = "UPDATE jobgraph_runs
    SET state = CASE WHEN t.failed IS NULL THEN 'succeeded' ELSE 'failed' END,
        error = CASE WHEN t.failed IS NULL THEN NULL ELSE 'step `' || t.failed || '` failed' END,
        updated_at = ?2
    FROM (SELECT run_id, COUNT(*) FILTER (WHERE state = 'pending') AS pending,
            MIN(name) FILTER (WHERE state = 'failed') AS failed
        FROM jobgraph_steps WHERE run_id IN (SELECT value FROM json_each(?1))
        GROUP BY run_id) AS t
    WHERE jobgraph_runs.id = t.run_id AND t.pending = 0
      AND jobgraph_runs.state IN ('pending', 'running')";

const ABORT_RUN: &str = "UPDATE jobgraph_runs
    SET state = 'cancelled', error = 'aborted', updated_at = ?2 WHERE id = ?1";

const CANCEL_PENDING_STEPS: &str = "UPDATE jobgraph_steps
    SET state = 'cancelled', ready_at = NULL, ended_at = ?2
    WHERE run_id = ?1 AND state = 'pending'";

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan of a statement (of a job, a time, a limit and, if `named`, a step): one
    /// line per step (`EXPLAIN QUERY PLAN`'s `detail`).
    async fn plan(store: &SqliteStore, statement: &str, named: bool) -> String {
        let explain = format!("EXPLAIN QUERY PLAN {statement}");
        let mut query = sqlx::query_as(&explain)
            .bind("job")
            .bind(0_i64)
            .bind(500_i64);
        if named {
            query = query.bind("step");
        }
        let rows: Vec<(i64, i64, i64, String)> = query.fetch_all(store.pool()).await.unwrap();
        rows.into_iter().map(|row| row.3 + "\n").collect()
    }

    /// A claim reads the ready steps and elements of a job in the queue's order from their
    /// index, and stops after the ones it takes: no sort of every ready row.
    #[tokio::test(flavor = "current_thread")]
    async fn claims_read_the_queue_in_its_indexs_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("jobs.db").to_str().unwrap())
            .await
            .unwrap();
        for (statement, index, named) in [
            (CANDIDATES, "jobgraph_steps_ready", false),
            (LIMITED_CANDIDATES, "jobgraph_steps_ready_limited", true),
            (ELEMENT_CANDIDATES, "jobgraph_queue_elements_ready", false),
            (
                LIMITED_ELEMENT_CANDIDATES,
                "jobgraph_queue_elements_ready_limited",
                true,
            ),
        ] {
            let plan = plan(&store, statement, named).await;
            assert!(plan.contains(&format!("USING INDEX {index} ")), "{plan}");
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
        }
    }
}
