//! The [`Queue`] protocol on PostgreSQL: workers on many machines sharing one database, with the
//! semantics of the SQLite queue (`sqlite_queue.rs`), where one writer at a time made every
//! question of concurrency moot. Here transactions run at once (`READ COMMITTED`), so each
//! method says what it locks, and the locks are taken in one order so that no two transactions
//! ever wait for each other (PostgreSQL would end one of them with a deadlock error):
//!
//! - **The run's row first.** Every transaction that changes the state of steps (complete,
//!   fail, abort, expiry, exhaustion, release) locks their run's row first (`FOR UPDATE`), and
//!   the steps after. The run's row is thus the mutex of its steps' states: a fan-in whose two
//!   parents complete at once is made ready by the second, which waited for the first's commit
//!   and then sees `waiting` at 1 (and ending the run counts the steps left under the same lock,
//!   so two last steps completing at once cannot both see the other pending; a run whose graph
//!   has one last step, which waits for every other, ends with it uncounted). A transaction that
//!   writes several runs (`complete_many`, `release`, `abort_batch`) locks them in id order.
//! - **But the only step of a run is completed by its row alone** (`alone`, marked at submit;
//!   the claim says so in [`ClaimId::only_step`]): no other step of its run waits for it, so its
//!   completion locks and writes neither the run's row nor anything else, and readers see the run
//!   succeeded from its step (`shown_run_state!`). What else ends such a run orders itself
//!   against that completion by the step's row: an abort (of the run or its batch) and an expiry
//!   lock the run, then cancel its pending steps (locking them in run and position order, as a
//!   worker completes several runs' only steps), and only then write the run's state, leaving
//!   one whose step completed ended (an expiry writes it `succeeded`).
//! - **Claims never wait for rows, and read one index.** A claim picks its steps with `FOR
//!   UPDATE SKIP LOCKED` from `jobgraph_steps_ready` (limited steps with room from their own
//!   index, below), in the index's order (priority, ready
//!   time, the run's creation, the step's index: every column on the step's row), one job at a
//!   time, so it reads about as many rows as it claims, whatever the backlog. With no limited
//!   step ready it is one statement. A step another claim (or a completion, an abort...) holds
//!   is passed over, so concurrent workers neither block each other nor claim one step twice;
//!   and so is a row whose version another transaction marked (`xmax`) since it was written,
//!   which includes every step other claims took since the claim's snapshot, but for the claims
//!   that read every row: the one after a claim that may have left marks, and a sweep once a
//!   second (`CLAIM_UNLIMITED`). A claim changes no step's state
//!   (only `worker`, `lease_until`, `claims`), and writes no run, so it needs no run lock. A
//!   queued run is stored `pending` until it ends (the transaction that ends it writes its
//!   end): readers see a pending run with a claimed step, a step that failed an attempt or one
//!   that ended as running (`shown_run_state!`), so that a run is written once, by its end (a
//!   run of one step not even then). The one thing a claim waits for is a
//!   limit row (below), and whoever holds one never waits for a claim's rows.
//! - **Limits: the `jobgraph_limits` row, `FOR UPDATE`.** A claim locks the limit rows of the
//!   limited steps that have ready steps, in (job, step) order (so two claims never lock two of
//!   them in opposite orders), and only then counts the step's live claims and reads its rate
//!   bucket: every claim of a limited step holds its row, so the count sees every claim committed
//!   before, and no other is in flight. Each such claim lists what it took in
//!   `jobgraph_limit_claims`, which the count reads (not the step's whole backlog). A step whose limit row the claim did not lock is not
//!   claimed by it. (An advisory lock per (job, step) would serialize the same way, but the row
//!   is there anyway, holds the bucket the claim updates, and a row lock needs no hash.)
//!   Unlimited steps take no lock but their own. The ready steps are in two indexes, split on
//!   `limited` (their limit row exists): the unlimited in `jobgraph_steps_ready`, the limited
//!   in `jobgraph_steps_ready_by_name`, read step by step and only for steps with room, so a
//!   claim never walks the backlog of a step at its limit; fan-out elements the same, in their
//!   table's two indexes. A step in neither is never claimed, so the flag is exact: submits
//!   insert steps under their job's advisory lock, shared, and the one that creates a limit row
//!   takes it exclusively to mark the step's rows and elements stored before, their runs locked
//!   first ([`store_limits`]); an element copies its step row's flag when its fan-out's commit
//!   inserts it, under its run's lock. A row a process of an older build inserts, without the
//!   flag, is marked from the limit rows by a trigger that runs for such rows only (schema
//!   version 16).
//! - **An exhausted step is failed by the claim that reaches it.** A claim takes a step whose
//!   lease expired like any other, `max_attempts` times or not: no index reads the leases
//!   (claims are HOT updates), so finding exhausted steps apart from claims would read every
//!   ready step (a scan of the whole backlog, once a second by every worker: 28–100 ms each at
//!   40,000–100,000 ready steps). The claim returns the ones whose expired leases ran out of
//!   attempts (`exhausted`), and its store fails each, fenced by the claim it just took, in a
//!   transaction of its own under the run's lock, before it hands the worker the rest.
//! - **A commit hands its worker the steps it makes ready, without writing them**
//!   ([`dependencies_done`]). Under the run's lock it holds, it leaves each such step's row as
//!   it was: pending, unclaimed, out of the claims' indexes. A child all of whose dependencies
//!   completed in the commit is not even read: the graph says it was waiting for just them, and
//!   the run's row, locked, says whether a claim could take it with the worker's lease
//!   ([`Locked`]); a child that waited for others too is read and counted down
//!   ([`DEPENDENCIES_DONE`]). The claim is the run's count of resets ([`ClaimId::handed_over`]):
//!   the worker's writes under it (completion, failure, heartbeat) are stored only while the
//!   row is as the commit left it and no reset came since ([`held_unwritten!`]; every other
//!   write to the row marks it, and a reset, which leaves it looking the same, counts itself in
//!   the run's row, read under the run's lock). Its holder and lease are on its last
//!   dependency's completed row, which keeps its worker and the worker's lease
//!   ([`complete_steps!`]). What needs the claims held reads them from the runs' rows and graphs
//!   ([`ImplicitClaims`]): the claims' sweeps find the unfinished runs
//!   (`jobgraph_runs_unfinished`, a bounded number of runs per sweep, each sweep going on where
//!   the last stopped) with such a claim whose lease ended, and write it into its row as the
//!   lapsed claim it is, in the claims' index (`SKIP LOCKED`, no run lock: the write is fenced
//!   by the row's `xmin` as it read it), where the next claim takes it as an expired claim; the
//!   list of leases shows them; a reset is refused while one is live; new
//!   limits write them into their rows before marking them, and count them. A heartbeat writes
//!   its claim into its row: a long step's claim is an ordinary one from its first heartbeat
//!   (the row's `ready_at` stays NULL, and [`READY_LAPSED_HANDOFFS`] sweeps it as before). A
//!   hand-off writes nothing, and its completion is a HOT update.
//! - **Heartbeats renew one claim per statement**, outside any transaction: a heartbeat never
//!   holds a row while waiting for another.
//! - **Numbering a batch** takes a transaction-scoped advisory lock on the batch's name, so two
//!   appends to one batch number their runs one after the other.
//! - **Idempotent submits** insert `ON CONFLICT DO NOTHING` on the unique (job, key) index: a
//!   duplicate waits for the first to commit, inserts nothing, and reads the first's run.
//!
//! Leases, time to live and readiness are compared with the database's `now()` (the time the
//! transaction began), and the delays a client or worker gives (a time to live, a retry's
//! delay) are added to it, so a client or worker whose clock is off moves no deadline. Only a
//! `run_at` the user chose is stored as given.
//!
//! **LISTEN/NOTIFY.** A transaction that makes a step ready (submit, complete, release, retry)
//! sends `NOTIFY jobgraph_ready` with the job's name (delivered at commit). The first idle worker
//! of a store starts one listening connection for all its clones ([`Ready`]); each claim notes
//! the generation of the news it began after, and [`Queue::wait_ready`] returns when news of one
//! of its jobs came after the last claim of that job began (or if the listener reconnected, when
//! news may have been lost). So a notification sent between a worker's empty claim and its wait
//! is not lost: the wait returns at once. Polling stays the fallback (a lease that expires, a
//! `run_at` that comes, a listener that cannot connect).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt as _, HashSet};
use futures::future::{BoxFuture, FutureExt};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Row as _};
use tokio::sync::watch;

use super::postgres::{
    At, PgStore, alone_completed, get, get_ms, graph, no_such_run, shown_run_state,
};
use super::postgres_graphs::{self as graphs, Graph, graph_key, key_of_graph};
use super::postgres_growth::Table;
use super::queue::{
    BatchCounts, Claim, ClaimId, Committed, Completion, Failed, HANDOFF_SWEEP_RUNS, Held, Lease,
    Queue, StepCount, Submission, Submitted, Sweeps, lease_ms,
};
use super::ready::{self, Claimed, News};
use super::{GraphSpec, StoreError, millis};

/// The channel of the readiness notifications; the payload is the job's name.
const CHANNEL: &str = "jobgraph_ready";

/// The listening connection's `application_name`, in `pg_stat_activity`.
const LISTENER_NAME: &str = "jobgraph-listener";

/// The first key of the advisory locks that number a batch's runs ("jgba"); the second is the
/// hash of the batch's name. Two-key advisory locks do not overlap one-key ones (the migration's).
const BATCH_LOCK: i32 = i32::from_be_bytes(*b"jgba");

/// The first key of the advisory locks under which submits insert a job's steps ("jgst"); the
/// second is the hash of the job's name. See [`store_limits`].
const JOB_STEPS_LOCK: i32 = i32::from_be_bytes(*b"jgst");

impl Queue for PgStore {
    fn submit<'a>(&'a self, s: Submission<'a>) -> BoxFuture<'a, Result<Submitted, StoreError>> {
        async move {
            s.check()?;
            let graph_json = s.graph_json()?;
            let mut tx = self.begin().await?;
            if let Some(key) = s.key
                && let Some(id) = select_by_key(&mut tx, s.job, key).await?
            {
                return Ok(Submitted { id, created: false });
            }
            let inserted = insert_runs(&mut tx, &s, &graph_json, &[s.id], &[s.input]).await?;
            if inserted.is_empty() {
                // Another submit inserted the key (or the id) since the read above; the insert
                // waited for it to commit, so the read now sees it.
                if let Some(key) = s.key
                    && let Some(id) = select_by_key(&mut tx, s.job, key).await?
                {
                    return Ok(Submitted { id, created: false });
                }
                return Err(StoreError::IdTaken {
                    run: s.id.to_owned(),
                });
            }
            store_limits(&mut tx, &s).await?;
            insert_steps(&mut tx, &s, &inserted).await?;
            if !s.held {
                notify(&mut tx, s.job).await?;
            }
            tx.commit().await?;
            self.grew(&[(Table::Runs, 1), (Table::Steps, s.graph.steps.len())])
                .await;
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
            self.ready().claiming(jobs);
            let sweep = self.sweeps().due();
            if sweep {
                expire_runs(self.pool()).await?;
                ready_lapsed_handoffs(self.pool(), self.sweeps()).await?;
            }
            let every = sweep || self.sweeps().take_marked();
            let mut claims = Vec::new();
            // Each round fails at least one exhausted step, or is the last.
            loop {
                let mut conn = self.kept().claims.take(self.pool()).await?;
                let asked = limit - claims.len();
                let taking = claim_on(&mut conn, worker, jobs, asked, lease, every).await;
                let taking = match taking {
                    Ok(taking) => taking,
                    Err(error) => {
                        // Its locks (and any update) ended with it, their marks left.
                        self.sweeps().marked();
                        return Err(error);
                    }
                };
                self.kept().claims.put(conn);
                // Fewer than asked: the rows it passed over may be all there is.
                if taking.marked || taking.claims.len() + taking.exhausted.len() < asked {
                    self.sweeps().marked();
                }
                claims.extend(taking.claims);
                if taking.exhausted.is_empty() {
                    return Ok(claims);
                }
                for step in &taking.exhausted {
                    match self.exhaust(worker, step).await {
                        // A failed element fails its fan-out, whose other elements' claims are
                        // cancelled: this worker's too.
                        Ok(true) if step.element.is_some() => {
                            claims.retain(|c| (&c.id.run, &c.id.step) != (&step.run, &step.step))
                        }
                        Ok(_) => {}
                        // Not the claim's error: the steps it took are this worker's now. A
                        // step left is held by this claim until its lease expires, and
                        // exhausted by the claim that takes it then.
                        Err(error) => tracing::warn!(
                            %error, run = %step.run, step = %step.step,
                            "could not fail a step whose leases expired; a later claim will"
                        ),
                    }
                }
                if claims.len() >= limit {
                    return Ok(claims);
                }
            }
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
            let mut conn = self.pool().acquire().await?;
            let mut held = Vec::with_capacity(claims.len());
            for claim in claims {
                // One statement each, no transaction: a heartbeat holds no row while it waits
                // for another. But a claim a commit handed over without writing its step's row
                // is fenced by its run's count of resets: read under the run's lock, shared,
                // which a reset waits for (and this for a reset in flight), in a transaction
                // with the write.
                let renewed = match claim.element {
                    None if claim.handed_over.is_some() => {
                        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                        let resets: Option<i64> = sqlx::query_scalar(SHARE_RESETS)
                            .bind(&claim.run)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let renewed = renew_claim(worker, claim, lease)
                            .bind(resets.and_then(|resets| fence(claim, resets)))
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        renewed
                    }
                    None => {
                        renew_claim(worker, claim, lease)
                            .bind(None::<i64>)
                            .execute(&mut *conn)
                            .await?
                    }
                    Some(element) => {
                        sqlx::query(RENEW_ELEMENT)
                            .bind(&claim.run)
                            .bind(&claim.step)
                            .bind(worker)
                            .bind(i64::from(claim.attempt))
                            .bind(lease_ms(lease))
                            .bind(element_index(element))
                            .bind(idx_of(claim.position))
                            .execute(&mut *conn)
                            .await?
                    }
                }
                .rows_affected();
                held.push(if renewed == 1 {
                    Held::Held
                } else {
                    let state: Option<String> = sqlx::query_scalar(SELECT_RUN_STATE)
                        .bind(&claim.run)
                        .fetch_optional(&mut *conn)
                        .await?;
                    match state.as_deref() {
                        Some("cancelled") => Held::Aborted,
                        _ => Held::Lost,
                    }
                });
            }
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
            let committed = self
                .complete_and_claim(worker, done, 0, Duration::ZERO)
                .await?;
            Ok(committed.stored)
        }
        .boxed()
    }

    fn complete_and_claim<'a>(
        &'a self,
        worker: &'a str,
        done: &'a [Completion<'a>],
        limit: usize,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Committed, StoreError>> {
        async move {
            if done.is_empty() {
                return Ok(Committed::default());
            }
            let mut conn = self.kept().commits.take(self.pool()).await?;
            // Which completions were stored, by claim: a worker may settle a stale and a live
            // claim of one step together (the stale one's commit waited for the database), and
            // only the live one is stored. The statements say which of their arrays' entries
            // they stored (its ordinal, from 1).
            let mut committed = vec![false; done.len()];
            // Each completion with its place in `done`.
            let (mut alone, mut rest): (Vec<(usize, &Completion<'a>)>, Vec<_>) = done
                .iter()
                .enumerate()
                .partition(|(_, c)| c.claim.only_step && c.claim.element.is_none());
            // The only steps of their runs first, in a statement of their own: each is
            // completed by its row alone, locked in run order (as an abort of several runs
            // locks their steps), and its run is neither locked nor written (readers see it
            // succeeded). One no longer held, or not its run's only step, goes the usual way.
            if !alone.is_empty() {
                alone.sort_unstable_by(|(_, x), (_, y)| x.claim.run.cmp(&y.claim.run));
                // No step alone is handed over: no claim of one is fenced by its run's resets.
                let stored = step_completions(COMPLETE_ALONE, worker, &alone, lease, |_| None)
                    .fetch_all(&mut *conn)
                    .await?;
                for row in &stored {
                    stored_entry(
                        &mut committed,
                        get(row, "ordinal", "jobgraph_steps")?,
                        &alone,
                    )?;
                }
                rest.extend(alone.into_iter().filter(|(at, _)| !committed[*at]));
            }
            if rest.is_empty() {
                self.kept().commits.put(conn);
                return Ok(Committed {
                    stored: committed,
                    claims: Vec::new(),
                });
            }
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            // The runs first, in id order (as every writer of several runs locks them).
            let mut runs: Vec<&str> = rest.iter().map(|(_, c)| c.claim.run.as_str()).collect();
            runs.sort_unstable();
            runs.dedup();
            let locked = sqlx::query(LOCK_RUNS)
                .bind(&runs)
                .fetch_all(&mut *tx)
                .await?;
            let heads = heads_of(&mut tx, &locked, "job").await?;
            let locked = Locked::of(locked)?;
            let (elements, mut steps): (Vec<(usize, &Completion<'a>)>, Vec<_>) =
                rest.iter().partition(|(_, c)| c.claim.element.is_some());
            // In key order, as the children below.
            steps.sort_unstable_by(|(_, x), (_, y)| {
                (&x.claim.run, x.claim.position).cmp(&(&y.claim.run, y.claim.position))
            });
            // Each child's dependencies that completed here, counted (two parents of one child
            // may complete in one call); and the runs whose last step completed here.
            let mut kids: HashMap<(String, i32), i32> = HashMap::new();
            let mut last: HashSet<String> = HashSet::default();
            let mut add_kids = |run: &str, position: i32| -> Result<(), StoreError> {
                let (_, spec) = heads.get(run).ok_or_else(|| no_such_run(run))?;
                // A step alone is its run's last, and has no children.
                let Some(spec) = spec else {
                    last.insert(run.to_owned());
                    return Ok(());
                };
                let position = usize::try_from(position).map_err(|_| StoreError::Corrupt {
                    what: format!("a step position of run `{run}` is {position}"),
                })?;
                let children = spec.children(position);
                if children.is_empty() && spec.is_last(position) {
                    last.insert(run.to_owned());
                }
                for kid in children {
                    *kids.entry((run.to_owned(), idx_of(kid))).or_default() += 1;
                }
                Ok(())
            };
            if !steps.is_empty() {
                let fenced = |claim: &ClaimId| fence(claim, locked.resets(&claim.run)?);
                let stored = step_completions(COMPLETE_STEPS, worker, &steps, lease, fenced)
                    .fetch_all(&mut *tx)
                    .await?;
                if let Some(first) = stored.first() {
                    const T: &str = "jobgraph_steps";
                    let (ordinal, idx) = (At::of(first, "ordinal", T)?, At::of(first, "idx", T)?);
                    for row in &stored {
                        let completion =
                            stored_entry(&mut committed, get(row, ordinal, T)?, &steps)?;
                        add_kids(&completion.claim.run, get(row, idx, T)?)?;
                    }
                }
            }
            let hand = Hand {
                worker,
                limit,
                lease,
            };
            let mut news: Vec<String> = Vec::new();
            if !elements.is_empty() {
                let stored = completions(COMPLETE_ELEMENTS, worker, &elements)
                    .bind(
                        elements
                            .iter()
                            .map(|(_, c)| c.claim.element.map_or(-1, element_index))
                            .collect::<Vec<_>>(),
                    )
                    .fetch_all(&mut *tx)
                    .await?;
                // Each fan-out's elements completed here, counted.
                let mut fans: Vec<(&ClaimId, String, i64)> = Vec::new();
                if let Some(first) = stored.first() {
                    const T: &str = "jobgraph_queue_elements";
                    let (ordinal, job) = (At::of(first, "ordinal", T)?, At::of(first, "job", T)?);
                    for row in &stored {
                        let completion =
                            stored_entry(&mut committed, get(row, ordinal, T)?, &elements)?;
                        let claim = completion.claim;
                        match fans
                            .iter_mut()
                            .find(|f| f.0.run == claim.run && f.0.position == claim.position)
                        {
                            Some(fan) => fan.2 += 1,
                            None => fans.push((claim, get(row, job, T)?, 1)),
                        }
                    }
                }
                for (claim, job, n) in fans {
                    let (run, step, position) = (&claim.run, &claim.step, idx_of(claim.position));
                    let done = element_done(&mut tx, run, step, position, n, hand).await?;
                    if let Some(position) = done {
                        add_kids(run, position)?;
                    } else {
                        news.push(job);
                    }
                }
            }
            let Done {
                news: ready,
                elements,
                unfinished,
                handed,
            } = dependencies_done(&mut tx, kids, &heads, &locked, hand).await?;
            // The outputs of the steps completed here, which the steps handed over take.
            let known: Outputs<'_> = steps
                .iter()
                .filter(|(at, _)| committed[*at])
                .map(|(_, c)| ((c.claim.run.as_str(), c.claim.position), c.output))
                .collect();
            let claims = handed.claims(&mut tx, &heads, &locked, &known).await?;
            news.extend(ready);
            news.sort_unstable();
            news.dedup();
            for job in &news {
                notify(&mut tx, job).await?;
            }
            // The runs of the claims it stored (a set: a commit holds hundreds of claims), but
            // for those it left a step pending in: not ended, and not written (readers see
            // a run with an ended step running).
            let stored: HashSet<&str> = rest
                .iter()
                .filter(|(at, _)| committed[*at])
                .map(|(_, c)| c.claim.run.as_str())
                .filter(|run| !unfinished.contains(*run))
                .collect();
            // A run whose last step completed here succeeded: ended without counting its
            // steps' states. The others may have ended: counted.
            let (ended, counted): (Vec<&str>, Vec<&str>) = runs
                .iter()
                .copied()
                .filter(|run| stored.contains(run))
                .partition(|run| last.contains(*run));
            if !ended.is_empty() {
                sqlx::query(END_COMPLETED_RUNS)
                    .bind(&ended)
                    .execute(&mut *tx)
                    .await?;
            }
            if !counted.is_empty() {
                settle_runs(&mut tx, &counted).await?;
            }
            tx.commit().await?;
            self.kept().commits.put(conn);
            if elements > 0 {
                self.grew(&[(Table::Elements, elements)]).await;
            }
            Ok(Committed {
                stored: committed,
                claims,
            })
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
            let mut tx = self.begin().await?;
            let Some(head) = lock_run(&mut tx, &claim.run).await? else {
                return Err(claim.lost(worker));
            };
            if let Some(element) = claim.element {
                let failed = fail_element(
                    &mut tx, worker, claim, element, error, started_at, retry_in, &head,
                )
                .await?;
                tx.commit().await?;
                return Ok(failed);
            }
            if let Some(delay) = retry_in {
                let retried: Option<i64> = sqlx::query_scalar(RETRY_STEP)
                    .bind(&claim.run)
                    .bind(idx_of(claim.position))
                    .bind(worker)
                    .bind(i64::from(claim.attempt))
                    .bind(error)
                    .bind(started_at)
                    .bind(delay_ms(delay))
                    .bind(head.max_fails)
                    .bind(&claim.step)
                    .bind(fence(claim, head.resets))
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(at) = retried {
                    notify(&mut tx, &head.job).await?;
                    tx.commit().await?;
                    return Ok(Failed::Retrying { at });
                }
            }
            let position: Option<i32> = sqlx::query_scalar(FAIL_STEP)
                .bind(&claim.run)
                .bind(idx_of(claim.position))
                .bind(worker)
                .bind(i64::from(claim.attempt))
                .bind(error)
                .bind(started_at)
                .bind(&claim.step)
                .bind(fence(claim, head.resets))
                .fetch_optional(&mut *tx)
                .await?;
            let Some(position) = position else {
                return Err(claim.lost(worker));
            };
            let spec = graph(&head.graph, &claim.run)?;
            skip_descendants(&mut tx, &claim.run, &spec, index(position, claim)?).await?;
            settle_run(&mut tx, &claim.run).await?;
            tx.commit().await?;
            Ok(Failed::Failed)
        }
        .boxed()
    }

    fn leases(&self) -> BoxFuture<'_, Result<Vec<Lease>, StoreError>> {
        async move {
            let mut conn = self.pool().acquire().await?;
            let rows = sqlx::query(SELECT_LEASES).fetch_all(&mut *conn).await?;
            let mut leases = Vec::with_capacity(rows.len());
            for row in rows {
                const T: &str = "jobgraph_steps";
                let attempt: Option<i64> = get(&row, "attempt", T)?;
                leases.push(Lease {
                    holder: get(&row, "holder", T)?,
                    run: get(&row, "run", T)?,
                    step: get(&row, "step", T)?,
                    attempt: attempt.map(|a| u32::try_from(a).unwrap_or(u32::MAX)),
                    element: get::<Option<i64>>(&row, "element", T)?
                        .and_then(|e| usize::try_from(e).ok()),
                    until: get(&row, "until", T)?,
                });
            }
            // The claims commits handed over without writing their rows, found through the
            // unfinished runs.
            let runs: Vec<String> = sqlx::query_scalar(SELECT_UNFINISHED_RUNS)
                .fetch_all(&mut *conn)
                .await?;
            for claim in ImplicitClaims::of(&mut conn, &runs).await?.0 {
                if let Some((holder, until)) = claim.holder {
                    leases.push(Lease {
                        holder,
                        run: claim.run,
                        step: Some(claim.step),
                        attempt: Some(1),
                        element: None,
                        until,
                    });
                }
            }
            leases.sort_by(|a, b| lease_order(a).cmp(&lease_order(b)));
            Ok(leases)
        }
        .boxed()
    }

    fn abort<'a>(&'a self, run: &'a str) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            let mut tx = self.begin().await?;
            let state: Option<String> = sqlx::query_scalar(LOCK_RUN_STATE)
                .bind(run)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(state) = state else {
                return Err(no_such_run(run));
            };
            if !matches!(state.as_str(), "pending" | "running") {
                return Ok(false);
            }
            // Its steps before its state: the only step of a run completes without the run's
            // lock, and one that completed in the meantime (found completed once its row is
            // locked) ended the run.
            let runs = [run.to_owned()];
            cancel_pending_steps(&mut tx, &runs).await?;
            let aborted = sqlx::query_scalar::<_, String>(ABORT_RUNS)
                .bind(&runs[..])
                .fetch_optional(&mut *tx)
                .await?;
            if aborted.is_none() {
                return Ok(false);
            }
            tx.commit().await?;
            Ok(true)
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
            let mut tx = self.begin().await?;
            // Appends to one batch number their runs one after the other.
            sqlx::query(LOCK_NAME)
                .bind(BATCH_LOCK)
                .bind(batch)
                .execute(&mut *tx)
                .await?;
            let stored: i64 = sqlx::query_scalar(COUNT_BATCH)
                .bind(batch)
                .fetch_one(&mut *tx)
                .await?;
            let first = usize::try_from(stored).unwrap_or(0);
            let ids: Vec<String> = (0..inputs.len())
                .map(|i| crate::durable::batch_run_id(batch, first + i))
                .collect();
            let template = Submission {
                batch: Some(batch),
                key: None,
                ..template
            };
            let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let input_refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            let inserted =
                insert_runs(&mut tx, &template, &graph_json, &id_refs, &input_refs).await?;
            if inserted.len() != ids.len() {
                let taken = ids.iter().find(|id| !inserted.contains(id));
                return Err(StoreError::IdTaken {
                    run: taken.cloned().unwrap_or_default(),
                });
            }
            // In the inputs' order: a run's TTRs are its input's.
            store_limits(&mut tx, &template).await?;
            insert_steps(&mut tx, &template, &ids).await?;
            if !template.held && !ids.is_empty() {
                notify(&mut tx, template.job).await?;
            }
            tx.commit().await?;
            self.grew(&[
                (Table::Runs, ids.len()),
                (Table::Steps, ids.len() * template.graph.steps.len()),
            ])
            .await;
            Ok(ids)
        }
        .boxed()
    }

    fn release<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut tx = self.begin().await?;
            let runs: Vec<String> = sqlx::query_scalar(RELEASE_RUNS)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
            let mut jobs: Vec<String> = sqlx::query_scalar(RELEASE_STEPS)
                .bind(&runs)
                .fetch_all(&mut *tx)
                .await?;
            jobs.sort_unstable();
            jobs.dedup();
            for job in &jobs {
                notify(&mut tx, job).await?;
            }
            tx.commit().await?;
            Ok(runs.len() as u64)
        }
        .boxed()
    }

    fn abort_batch<'a>(&'a self, batch: &'a str) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut tx = self.begin().await?;
            let runs: Vec<String> = sqlx::query_scalar(LOCK_BATCH_RUNS)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
            // Steps before runs, as `abort`.
            cancel_pending_steps(&mut tx, &runs).await?;
            let aborted: Vec<String> = sqlx::query_scalar(ABORT_RUNS)
                .bind(&runs)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(aborted.len() as u64)
        }
        .boxed()
    }

    fn batch_counts<'a>(
        &'a self,
        batch: &'a str,
    ) -> BoxFuture<'a, Result<BatchCounts, StoreError>> {
        async move {
            // Both counts from one snapshot.
            let mut tx = self.snapshot().await?;
            let mut counts = BatchCounts::default();
            let rows = sqlx::query(COUNT_BATCH_RUNS)
                .bind(batch)
                .fetch_all(&mut *tx)
                .await?;
            for row in rows {
                const T: &str = "jobgraph_runs";
                let state: String = get(&row, "state", T)?;
                let held: bool = get(&row, "held", T)?;
                let n = u64::try_from(get::<i64>(&row, "n", T)?).unwrap_or(0);
                match state.as_str() {
                    "pending" => {
                        counts.pending += n;
                        if held {
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
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
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
        async move { self.ready().wait(self.pool(), jobs, timeout).await }.boxed()
    }
}

impl PgStore {
    /// Fails `step`, which this worker's claim took after its leases expired `max_attempts`
    /// times (fenced by that claim): the step, or its element and then its step, with its
    /// descendants skipped and its run ended if nothing is left. Whether it failed it (not if
    /// the claim is no longer current: an abort or the run's expiry came first).
    async fn exhaust(&self, worker: &str, step: &Taken) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        // The run first, as every write of its steps' states.
        let Some(head) = lock_run(&mut tx, &step.run).await? else {
            return Ok(false);
        };
        let failed = match step.element {
            None => {
                let position: Option<i32> = sqlx::query_scalar(EXHAUST_STEP)
                    .bind(&step.run)
                    .bind(step.position)
                    .bind(worker)
                    .bind(step.attempt)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(position) = position {
                    let spec = graph(&head.graph, &step.run)?;
                    let position = usize::try_from(position).unwrap_or(usize::MAX);
                    skip_descendants(&mut tx, &step.run, &spec, position).await?;
                    settle_run(&mut tx, &step.run).await?;
                }
                position.is_some()
            }
            Some(element) => {
                let error: Option<String> = sqlx::query_scalar(EXHAUST_ELEMENT)
                    .bind(&step.run)
                    .bind(&step.step)
                    .bind(element)
                    .bind(worker)
                    .bind(step.attempt)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(error) = &error {
                    let spec = graph(&head.graph, &step.run)?;
                    fail_fan_out(&mut tx, &step.run, &step.step, step.position, error, &spec)
                        .await?;
                }
                error.is_some()
            }
        };
        tx.commit().await?;
        Ok(failed)
    }
}

/// What a claim does first, once a second ([`Sweeps`](super::queue::Sweeps)), in a statement of
/// its own: fails the runs whose time to live expired (`SKIP LOCKED`: one another transaction
/// writes is left to the next sweep), then their pending steps. (The claim's own choice skips
/// their steps too.)
async fn expire_runs(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query(EXPIRE_RUNS).execute(pool).await?;
    Ok(())
}

/// What a claim's sweep does next: the steps commits handed over whose leases ended (their
/// worker stopped answering), in no index a claim reads (schema version 17), go into the
/// claims' index as any expired claim ([`READY_LAPSED_HANDOFFS`] for those whose claims are
/// written in their rows, [`ImplicitClaims`] for those whose are not), and their jobs have
/// news. It reads the steps of [`HANDOFF_SWEEP_RUNS`] unfinished runs, after those the last
/// sweep read.
async fn ready_lapsed_handoffs(pool: &PgPool, sweeps: &Sweeps) -> Result<(), StoreError> {
    let row = sqlx::query(READY_LAPSED_HANDOFFS)
        .bind(sweeps.handoffs_after())
        .bind(HANDOFF_SWEEP_RUNS)
        .fetch_one(pool)
        .await?;
    const T: &str = "jobgraph_runs";
    let read: i64 = get(&row, "read", T)?;
    let last: Option<i64> = get(&row, "last", T)?;
    // Fewer than asked: the last unfinished run was read, and the next sweep begins again.
    sweeps.handoffs_read(if read < HANDOFF_SWEEP_RUNS {
        0
    } else {
        last.unwrap_or(0)
    });
    let mut jobs: Vec<String> = get(&row, "jobs", T)?;
    let unwritten: Vec<String> = get(&row, "unwritten", T)?;
    if jobs.is_empty() && unwritten.is_empty() {
        return Ok(());
    }
    let mut conn = pool.acquire().await?;
    if !unwritten.is_empty() {
        let mut lapsed = ImplicitClaims::of(&mut conn, &unwritten).await?.0;
        lapsed.retain(|c| c.lapsed);
        jobs.extend(ImplicitClaims(lapsed).write(&mut conn).await?);
        jobs.sort_unstable();
        jobs.dedup();
    }
    for job in &jobs {
        notify(&mut conn, job).await?;
    }
    Ok(())
}

/// The claims commits handed over without writing their steps' rows ([`DEPENDENCIES_DONE`])
/// that the rows of some runs hold: each step as [`unwritten!`] says whose dependencies all
/// completed. No step's row names such a claim's worker or lease: its last dependency's does
/// (the one that ended last; [`complete_steps!`] keeps the completing worker and its lease on
/// a completed row), as the commit that completed it handed the step over. What needs the
/// claims a worker holds reads them here: the claims' sweep (a lapsed one is written into its
/// row, ready, and taken as any expired claim), the list of leases, a reset of a step (refused
/// while one is live), and new limits (which count the claims held, written into their rows
/// first, since marking a row writes it).
struct ImplicitClaims(Vec<Implicit>);

/// One of [`ImplicitClaims`].
struct Implicit {
    run: String,
    position: i32,
    step: String,
    /// The step's row's version (`xmin`) when read: [`ImplicitClaims::write`] writes only a row
    /// nothing wrote since.
    version: i64,
    /// The worker, and the lease's end (Unix ms); `None` if the row of the step's last
    /// dependency does not say (no build leaves such a row): it is taken as lapsed now.
    holder: Option<(String, i64)>,
    lapsed: bool,
}

impl ImplicitClaims {
    /// The implicit claims the steps of `runs` hold, read on `conn` (with the runs' graphs).
    async fn of(conn: &mut PgConnection, runs: &[String]) -> Result<ImplicitClaims, StoreError> {
        let heads = sqlx::query(SELECT_GRAPH_KEYS)
            .bind(runs)
            .fetch_all(&mut *conn)
            .await?;
        let heads = heads_of(conn, &heads, "job").await?;
        let rows = sqlx::query(SELECT_RUN_STEPS)
            .bind(runs)
            .fetch_all(&mut *conn)
            .await?;
        const T: &str = "jobgraph_steps";
        /// A step's row, as the claims need it.
        struct Row {
            position: usize,
            name: String,
            completed: bool,
            unwritten: bool,
            version: i64,
            ended: Option<f64>,
            worker: Option<String>,
            lease_until: Option<i64>,
            lapsed: bool,
        }
        let mut by_run: HashMap<String, Vec<Row>> = HashMap::new();
        for row in &rows {
            let position: i32 = get(row, "idx", T)?;
            let state: String = get(row, "state", T)?;
            by_run.entry(get(row, "run_id", T)?).or_default().push(Row {
                position: usize::try_from(position).unwrap_or(usize::MAX),
                name: get(row, "name", T)?,
                completed: state == "completed",
                unwritten: get(row, "unwritten", T)?,
                version: get(row, "version", T)?,
                ended: get(row, "ended", T)?,
                worker: get(row, "worker", T)?,
                lease_until: get(row, "lease_until", T)?,
                lapsed: get(row, "lapsed", T)?,
            });
        }
        let mut claims = Vec::new();
        for (run, steps) in by_run {
            let Some((_, Some(spec))) = heads.get(&run) else {
                continue;
            };
            let at = |p: usize| steps.iter().find(|s| s.position == p);
            // A row outside its run's graph (corrupt) holds no claim this can find.
            for step in steps
                .iter()
                .filter(|s| s.unwritten && s.position < spec.steps.len())
            {
                let deps: Option<Vec<&Row>> = spec
                    .dependencies(step.position)
                    .into_iter()
                    .map(|d| at(d).filter(|d| d.completed))
                    .collect();
                // Waiting for a dependency (or a root, which no commit hands over).
                let Some(last) = deps.and_then(|deps| {
                    deps.into_iter().max_by(|a, b| {
                        a.ended
                            .unwrap_or(f64::MIN)
                            .total_cmp(&b.ended.unwrap_or(f64::MIN))
                    })
                }) else {
                    continue;
                };
                let holder = last.worker.clone().zip(last.lease_until);
                claims.push(Implicit {
                    run: run.clone(),
                    position: idx_of(step.position),
                    step: step.name.clone(),
                    version: step.version,
                    lapsed: holder.is_none() || last.lapsed,
                    holder,
                });
            }
        }
        claims.sort_unstable_by(|a, b| (&a.run, a.position).cmp(&(&b.run, b.position)));
        Ok(ImplicitClaims(claims))
    }

    /// Writes the claims into their rows, as the commits that handed them over would have
    /// ([`WRITE_IMPLICIT_CLAIMS`]): a lapsed one ready, to be claimed as an expired claim. A
    /// row written since it was read is left as it is (the claim ended). The jobs with steps
    /// made ready.
    async fn write(self, conn: &mut PgConnection) -> Result<Vec<String>, StoreError> {
        if self.0.is_empty() {
            return Ok(Vec::new());
        }
        let claims = &self.0;
        let jobs: Vec<Option<String>> = sqlx::query_scalar(WRITE_IMPLICIT_CLAIMS)
            .bind(claims.iter().map(|c| c.run.as_str()).collect::<Vec<_>>())
            .bind(claims.iter().map(|c| c.position).collect::<Vec<_>>())
            .bind(claims.iter().map(|c| c.version).collect::<Vec<_>>())
            .bind(
                claims
                    .iter()
                    .map(|c| c.holder.as_ref().map(|(w, _)| w.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                claims
                    .iter()
                    .map(|c| c.holder.as_ref().map(|(_, until)| *until))
                    .collect::<Vec<_>>(),
            )
            .bind(claims.iter().map(|c| c.lapsed).collect::<Vec<_>>())
            .fetch_all(conn)
            .await?;
        let mut jobs: Vec<String> = jobs.into_iter().flatten().collect();
        jobs.sort_unstable();
        jobs.dedup();
        Ok(jobs)
    }
}

/// A ready step a claim chose, or an element of one: (its step's name, its index).
struct Chosen {
    run: String,
    position: i32,
    element: Option<(String, i64)>,
}

/// A limited step with ready steps: how many more of it this claim may take.
struct Room {
    job: String,
    step: String,
    left: i64,
    /// The rate's bucket after refilling, to store less what is taken.
    tokens: Option<f64>,
    taken: i64,
}

/// The ready steps to claim, locked, at most `limit`, in the queue's order (priority, then
/// ready time), within each step's concurrency and rate; updates the rate buckets.
async fn choose(
    conn: &mut PgConnection,
    jobs: &[&str],
    limit: usize,
) -> Result<Vec<Chosen>, StoreError> {
    let mut rooms = lock_rooms(conn, jobs).await?;
    let mut chosen: Vec<Chosen> = Vec::new();
    // Each round takes what the queue's order offers; a round that met a step whose room ran
    // out during it (those rows stay locked until commit, unclaimed) asks again without that
    // step. Each such round drops at least one step: at most one round per limited step, plus
    // one.
    loop {
        let open: Vec<&Room> = rooms.iter().filter(|r| r.left > 0).collect();
        let open_jobs: Vec<&str> = open.iter().map(|r| r.job.as_str()).collect();
        let open_steps: Vec<&str> = open.iter().map(|r| r.step.as_str()).collect();
        let chosen_steps: Vec<&Chosen> = chosen.iter().filter(|c| c.element.is_none()).collect();
        let chosen_runs: Vec<&str> = chosen_steps.iter().map(|c| c.run.as_str()).collect();
        let chosen_positions: Vec<i32> = chosen_steps.iter().map(|c| c.position).collect();
        let chosen_elements: Vec<(&str, &str, i64)> = chosen
            .iter()
            .filter_map(|c| {
                c.element
                    .as_ref()
                    .map(|(step, idx)| (c.run.as_str(), step.as_str(), *idx))
            })
            .collect();
        let want = limit - chosen.len();
        let mut rows = sqlx::query(CANDIDATES)
            .bind(jobs)
            .bind(&open_jobs)
            .bind(&open_steps)
            .bind(&chosen_runs)
            .bind(&chosen_positions)
            .bind(i64::try_from(want).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?;
        rows.extend(
            sqlx::query(ELEMENT_CANDIDATES)
                .bind(jobs)
                .bind(&open_jobs)
                .bind(&open_steps)
                .bind(chosen_elements.iter().map(|e| e.0).collect::<Vec<_>>())
                .bind(chosen_elements.iter().map(|e| e.1).collect::<Vec<_>>())
                .bind(i64::try_from(want).unwrap_or(i64::MAX))
                .bind(chosen_elements.iter().map(|e| e.2).collect::<Vec<_>>())
                .fetch_all(&mut *conn)
                .await?,
        );
        // Both tables' best, in the queue's order; what is past `want` stays locked, unclaimed,
        // until the claim commits.
        let order = |row: &sqlx::postgres::PgRow| -> (std::cmp::Reverse<i32>, i64, i64, i32, i64) {
            (
                std::cmp::Reverse(row.try_get("priority").unwrap_or(0)),
                row.try_get("ready_ms").unwrap_or(0),
                row.try_get("run_seq").unwrap_or(0),
                row.try_get("idx").unwrap_or(0),
                row.try_get::<Option<i64>, _>("element")
                    .ok()
                    .flatten()
                    .unwrap_or(-1),
            )
        };
        rows.sort_by_key(order);
        rows.truncate(want);
        let mut refused = false;
        for row in &rows {
            const T: &str = "jobgraph_steps";
            let limited: bool = get(row, "limited", T)?;
            if limited && !get::<bool>(row, "exhausted", T)? {
                let job: String = get(row, "job", T)?;
                let step: String = get(row, "name", T)?;
                let room = rooms.iter_mut().find(|r| r.job == job && r.step == step);
                match room {
                    Some(room) if room.left > 0 => {
                        room.left -= 1;
                        room.taken += 1;
                    }
                    _ => {
                        refused = true;
                        continue;
                    }
                }
            }
            let element: Option<i64> = get(row, "element", T)?;
            chosen.push(Chosen {
                run: get(row, "run_id", T)?,
                position: get(row, "idx", T)?,
                element: match element {
                    Some(idx) => Some((get(row, "name", T)?, idx)),
                    None => None,
                },
            });
        }
        if chosen.len() >= limit || !refused {
            break;
        }
    }
    for room in &rooms {
        if let Some(tokens) = room.tokens {
            sqlx::query(TAKE_TOKENS)
                .bind(&room.job)
                .bind(&room.step)
                .bind(tokens - room.taken as f64)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(chosen)
}

/// Locks the limit rows of `jobs`' limited steps that have ready steps (in (job, step) order),
/// and says how many claims of each are allowed now.
async fn lock_rooms(conn: &mut PgConnection, jobs: &[&str]) -> Result<Vec<Room>, StoreError> {
    let rows = sqlx::query(LOCK_LIMITS)
        .bind(jobs)
        .fetch_all(&mut *conn)
        .await?;
    let mut rooms = Vec::with_capacity(rows.len());
    let mut concurrent: Vec<(usize, i64)> = Vec::new();
    for row in &rows {
        const T: &str = "jobgraph_limits";
        let concurrency: Option<i64> = get(row, "concurrency", T)?;
        let rate_count: Option<i64> = get(row, "rate_count", T)?;
        let period: Option<i64> = get(row, "rate_period_ms", T)?;
        let burst: Option<i64> = get(row, "burst", T)?;
        let mut left = i64::MAX;
        let mut tokens = None;
        if let (Some(count), Some(period), Some(burst)) = (rate_count, period, burst) {
            let stored: f64 = get(row, "tokens", T)?;
            let elapsed: i64 = get(row, "elapsed_ms", T)?;
            let refilled =
                (stored + elapsed.max(0) as f64 * count as f64 / period as f64).min(burst as f64);
            left = refilled.floor() as i64;
            tokens = Some(refilled);
        }
        if let Some(concurrency) = concurrency {
            concurrent.push((rooms.len(), concurrency));
        }
        rooms.push(Room {
            job: get(row, "job", T)?,
            step: get(row, "step", T)?,
            left,
            tokens,
            taken: 0,
        });
    }
    if concurrent.is_empty() {
        return Ok(rooms);
    }
    // Counted now that the rows are locked: this statement sees every claim committed by the
    // claims that held them before, and no claim of these steps is in flight.
    let job_names: Vec<&str> = concurrent
        .iter()
        .map(|&(i, _)| rooms[i].job.as_str())
        .collect();
    let step_names: Vec<&str> = concurrent
        .iter()
        .map(|&(i, _)| rooms[i].step.as_str())
        .collect();
    let counted = sqlx::query(COUNT_CLAIMED)
        .bind(&job_names)
        .bind(&step_names)
        .fetch_all(&mut *conn)
        .await?;
    let mut running: HashMap<(String, String), i64> = HashMap::new();
    for row in &counted {
        const T: &str = "jobgraph_steps";
        running.insert(
            (get(row, "job", T)?, get(row, "name", T)?),
            get(row, "n", T)?,
        );
    }
    for (i, concurrency) in concurrent {
        let room = &mut rooms[i];
        let live = running
            .get(&(room.job.clone(), room.step.clone()))
            .copied()
            .unwrap_or(0);
        room.left = room.left.min(concurrency - live);
    }
    Ok(rooms)
}

/// The plan PostgreSQL chooses now for [`claim_unlimited`]'s statement (`EXPLAIN`, not run):
/// for tests that check a claim walks the queue's index.
pub(super) async fn explain_claim(
    pool: &PgPool,
    jobs: &[&str],
    limit: usize,
) -> Result<String, StoreError> {
    let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {CLAIM_UNLIMITED}"))
        .bind(jobs)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind("explain")
        .bind(0_i64)
        .bind(false)
        .fetch_all(pool)
        .await?;
    Ok(lines.join("\n"))
}

/// What one claim took: the steps to run, and those to fail (their leases expired
/// `max_attempts` times), all claimed; and whether it may have left rows marked by locks it
/// took without claiming them (`CLAIM_UNLIMITED`): the next claim reads them.
#[derive(Default)]
struct Taking {
    claims: Vec<Claim>,
    exhausted: Vec<Taken>,
    marked: bool,
}

impl Taking {
    /// The claims of `taken` (the exhausted apart), each with what it needs (`heads`, and its
    /// dependencies' outputs, read on `conn`).
    async fn of(
        conn: &mut PgConnection,
        taken: Vec<Taken>,
        heads: &Heads,
    ) -> Result<Taking, StoreError> {
        let (exhausted, taken): (Vec<Taken>, Vec<Taken>) =
            taken.into_iter().partition(|t| t.exhausted);
        Ok(Taking {
            claims: finish(conn, taken, heads, &Outputs::new()).await?,
            exhausted,
            marked: false,
        })
    }
}

/// Claims at most `limit` steps of `jobs` for `worker` on `conn`: those of steps without
/// limits in one statement (reading every claimable row if `every`, else those no lock marked),
/// else with the limits' rows locked in a transaction (which locks candidates it may not take).
async fn claim_on(
    conn: &mut PgConnection,
    worker: &str,
    jobs: &[&str],
    limit: usize,
    lease: Duration,
    every: bool,
) -> Result<Taking, StoreError> {
    if let Some(taking) = claim_unlimited(conn, worker, jobs, limit, lease, every).await? {
        return Ok(taking);
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let chosen = choose(&mut tx, jobs, limit).await?;
    if chosen.is_empty() {
        tx.commit().await?;
        return Ok(Taking::default());
    }
    let mut taking = take(&mut tx, worker, &chosen, lease).await?;
    tx.commit().await?;
    taking.marked = true;
    Ok(taking)
}

/// Claims up to `limit` ready steps of `jobs` for `worker` if none of their limited steps is
/// ready (else `None`: the claim must lock limit rows, `choose`): one statement (its own
/// transaction) picks each job's best steps from the queue's index (`SKIP LOCKED`), claims the
/// best `limit` of them, and returns their runs' inputs. A limited step is never taken here,
/// even if it became ready since the statement looked.
async fn claim_unlimited(
    conn: &mut PgConnection,
    worker: &str,
    jobs: &[&str],
    limit: usize,
    lease: Duration,
    every: bool,
) -> Result<Option<Taking>, StoreError> {
    let rows = sqlx::query(CLAIM_UNLIMITED)
        .bind(jobs)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(worker)
        .bind(lease_ms(lease))
        .bind(every)
        .fetch_all(&mut *conn)
        .await?;
    let Some(first) = rows.first() else {
        return Ok(Some(Taking::default()));
    };
    if get::<bool>(first, "limited", "jobgraph_limits")? {
        return Ok(None);
    }
    // The one row of a claim that took nothing.
    if get::<Option<String>>(first, "run_id", "jobgraph_steps")?.is_none() {
        return Ok(Some(Taking::default()));
    }
    let columns = TakenColumns::of(first)?;
    let (known, input, key) = (
        At::of(first, "known_input", "jobgraph_steps")?,
        At::of(first, "input", "jobgraph_runs")?,
        At::of(first, "graph_key", "jobgraph_runs")?,
    );
    let mut taken = Vec::with_capacity(rows.len());
    // Each run's input and graph key, from the first of its rows.
    let mut runs: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    for row in &rows {
        let step = Taken::read(row, &columns, lease)?;
        if !step.exhausted && !runs.contains_key(&step.run) {
            let input = match get::<Option<String>>(row, known, "jobgraph_steps")? {
                Some(input) => input,
                None => get(row, input, "jobgraph_runs")?,
            };
            runs.insert(step.run.clone(), (input, get(row, key, "jobgraph_runs")?));
        }
        taken.push(step);
    }
    let runs = runs
        .into_iter()
        .map(|(run, (input, key))| (run, input, key))
        .collect();
    let heads = heads(conn, runs).await?;
    let mut taking = Taking::of(conn, taken, &heads).await?;
    let locked: i64 = get(first, "locked", "jobgraph_steps")?;
    taking.marked = locked > i64::try_from(rows.len()).unwrap_or(i64::MAX);
    Ok(Some(taking))
}

/// Outputs known without reading them, by run and step position.
type Outputs<'a> = HashMap<(&'a str, usize), &'a str>;

/// What claiming or completing steps needs of each of their runs (by id): its input (or job),
/// and its graph (`postgres_graphs`).
type Heads = HashMap<String, (String, Graph)>;

/// The heads of runs read as `rows` (each with its `id`, the head's first part as `first` and
/// its `graph_key`): their graphs found or read on `conn`.
async fn heads_of(
    conn: &mut PgConnection,
    rows: &[sqlx::postgres::PgRow],
    first: &'static str,
) -> Result<Heads, StoreError> {
    const T: &str = "jobgraph_runs";
    let mut read = Vec::with_capacity(rows.len());
    if let Some(row) = rows.first() {
        let (id, first, key) = (
            At::of(row, "id", T)?,
            At::of(row, first, T)?,
            At::of(row, "graph_key", T)?,
        );
        for row in rows {
            read.push((get(row, id, T)?, get(row, first, T)?, get(row, key, T)?));
        }
    }
    heads(conn, read).await
}

/// The heads of `runs` (each a run's id, the head's first part and its graph's key): their
/// graphs found or read on `conn`.
async fn heads(
    conn: &mut PgConnection,
    runs: Vec<(String, String, Vec<u8>)>,
) -> Result<Heads, StoreError> {
    let keys: Vec<(&str, &[u8])> = runs
        .iter()
        .map(|(id, _, key)| (id.as_str(), &key[..]))
        .collect();
    let found = graphs::graphs(conn, &keys).await?;
    Ok(runs
        .into_iter()
        .zip(found)
        .map(|((id, first, _), graph)| (id, (first, graph)))
        .collect())
}

/// A step a claim took, as its `RETURNING` row says.
struct Taken {
    run: String,
    position: i32,
    step: String,
    /// The claimed element of a fan-out.
    element: Option<i64>,
    /// An element's parent (its position) and the element (JSON).
    input: Option<(i32, String)>,
    attempt: i64,
    /// For a step a commit handed over without writing its row: its run's count of resets then
    /// ([`ClaimId::handed_over`]).
    handed_over: Option<i64>,
    fails: i64,
    job: String,
    lease_until: i64,
    /// The step's TTR, or the worker's lease.
    lease: Duration,
    /// The queue's order: (priority descending, ready time, the run's creation, the step's
    /// index, the element's).
    order: (std::cmp::Reverse<i32>, i64, i64, i32, i64),
    /// Taken after its leases expired `max_attempts` times: to be failed, not run.
    exhausted: bool,
}

/// The columns of a claim's rows ([`taken!`], [`taken_element!`]), found once per claim.
struct TakenColumns {
    run: At,
    position: At,
    step: At,
    element: At,
    over: At,
    element_input: At,
    attempt: At,
    fails: At,
    job: At,
    lease_until: At,
    ttr_ms: At,
    priority: At,
    ready_at: At,
    run_seq: At,
    exhausted: At,
}

impl TakenColumns {
    /// The columns of the rows of `row`'s result.
    fn of(row: &sqlx::postgres::PgRow) -> Result<TakenColumns, StoreError> {
        let at = |name| At::of(row, name, "jobgraph_steps");
        Ok(TakenColumns {
            run: at("run_id")?,
            position: at("idx")?,
            step: at("name")?,
            element: at("element")?,
            over: at("over")?,
            element_input: at("element_input")?,
            attempt: at("claims")?,
            fails: at("fails")?,
            job: at("job")?,
            lease_until: at("lease_until")?,
            ttr_ms: at("ttr_ms")?,
            priority: at("priority")?,
            ready_at: at("ready_at")?,
            run_seq: at("run_seq")?,
            exhausted: at("exhausted")?,
        })
    }
}

impl Taken {
    /// `row` (of columns `c`), claimed with the worker's `lease`.
    fn read(
        row: &sqlx::postgres::PgRow,
        c: &TakenColumns,
        lease: Duration,
    ) -> Result<Taken, StoreError> {
        const T: &str = "jobgraph_steps";
        let position: i32 = get(row, c.position, T)?;
        let element: Option<i64> = get(row, c.element, T)?;
        let over: Option<i32> = get(row, c.over, T)?;
        let input: Option<String> = get(row, c.element_input, T)?;
        Ok(Taken {
            run: get(row, c.run, T)?,
            position,
            step: get(row, c.step, T)?,
            element,
            input: over.zip(input),
            attempt: get(row, c.attempt, T)?,
            handed_over: None,
            fails: get(row, c.fails, T)?,
            job: get(row, c.job, T)?,
            lease_until: get_ms(row, c.lease_until, T)?,
            lease: super::queue::claim_lease(get(row, c.ttr_ms, T)?, lease),
            order: (
                std::cmp::Reverse(get(row, c.priority, T)?),
                get_ms(row, c.ready_at, T)?,
                get(row, c.run_seq, T)?,
                position,
                element.map_or(-1, |e| e),
            ),
            exhausted: get(row, c.exhausted, T)?,
        })
    }

    /// The steps of a claim's `rows`, claimed with the worker's `lease`.
    fn read_all(rows: &[sqlx::postgres::PgRow], lease: Duration) -> Result<Vec<Taken>, StoreError> {
        let Some(first) = rows.first() else {
            return Ok(Vec::new());
        };
        let columns = TakenColumns::of(first)?;
        rows.iter()
            .map(|row| Taken::read(row, &columns, lease))
            .collect()
    }
}

/// What a commit read of the runs it locked ([`LOCK_RUNS`]), beyond their jobs and graphs
/// ([`Heads`]): what fencing its completions and handing steps over need.
#[derive(Default)]
struct Locked {
    runs: HashMap<String, LockedRun>,
    /// The rows, whose inputs are read only for the runs with a step handed over.
    rows: Vec<sqlx::postgres::PgRow>,
    /// The transaction's time (Unix ms), from which a hand-off's lease runs.
    now: i64,
}

/// One of [`Locked`]'s runs.
struct LockedRun {
    /// Its row's place in [`Locked::rows`].
    row: usize,
    resets: i64,
    priority: i32,
    seq: i64,
    /// Whether a claim could take any of its steps with the worker's lease ([`LOCK_RUNS`]).
    blind: bool,
}

impl Locked {
    /// The runs of `rows` ([`LOCK_RUNS`]'s).
    fn of(rows: Vec<sqlx::postgres::PgRow>) -> Result<Locked, StoreError> {
        let Some(first) = rows.first() else {
            return Ok(Locked::default());
        };
        const T: &str = "jobgraph_runs";
        let at = |name| At::of(first, name, T);
        let (id, resets) = (at("id")?, at("resets")?);
        let (priority, seq, blind) = (at("priority")?, at("seq")?, at("blind")?);
        let now = get(first, "now", T)?;
        let mut runs = HashMap::with_capacity(rows.len());
        for (at, row) in rows.iter().enumerate() {
            let run = LockedRun {
                row: at,
                resets: get(row, resets, T)?,
                priority: get(row, priority, T)?,
                seq: get(row, seq, T)?,
                blind: get(row, blind, T)?,
            };
            runs.insert(get(row, id, T)?, run);
        }
        Ok(Locked { runs, rows, now })
    }

    /// Run `run`'s input.
    fn input(&self, run: &str) -> Result<String, StoreError> {
        let row = self.runs.get(run).ok_or_else(|| no_such_run(run))?.row;
        get(&self.rows[row], "input", "jobgraph_runs")
    }

    /// Run `run`'s count of resets.
    fn resets(&self, run: &str) -> Option<i64> {
        self.runs.get(run).map(|r| r.resets)
    }

    /// Whether step `position` of `run` (in `heads`), `n` of whose dependencies completed in
    /// the commit, may be handed over without reading its row: they are all it has (so it was
    /// waiting for just them, and is pending: the run is locked, and the completions were
    /// stored), and its run's row says a claim could take it with the worker's lease.
    fn blind(&self, run: &str, position: i32, n: i32, heads: &Heads) -> bool {
        let Some(Some(spec)) = heads.get(run).map(|(_, spec)| spec) else {
            return false;
        };
        let counted = usize::try_from(position)
            .ok()
            .filter(|&p| p < spec.steps.len())
            .map(|p| spec.count_dependencies(p));
        self.runs.get(run).is_some_and(|r| r.blind)
            && counted.is_some_and(|c| usize::try_from(n).is_ok_and(|n| n == c))
    }

    /// Step `position` of `run` (in `heads`, with its job and graph), handed over to a worker
    /// with `lease`: claim 1 of it (it was waiting until then, and a reset zeroes the claims
    /// and fails of the steps it queues again, so it never failed and no claim of it expired:
    /// it is not exhausted), leased with the worker's `lease` from the transaction's time (no
    /// step with a TTR is handed over), fenced by the run's count of resets. Handed over in one
    /// transaction, the steps were made ready at one time: ordered by the rest of the queue's
    /// order.
    fn handed(
        &self,
        run: &str,
        position: i32,
        heads: &Heads,
        lease: Duration,
    ) -> Result<Taken, StoreError> {
        let (job, spec) = heads.get(run).ok_or_else(|| no_such_run(run))?;
        let locked = self.runs.get(run).ok_or_else(|| no_such_run(run))?;
        let step = usize::try_from(position)
            .ok()
            .and_then(|p| spec.as_ref()?.steps.get(p))
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("step {position} of run `{run}` was handed over, not in its graph"),
            })?;
        Ok(Taken {
            run: run.to_owned(),
            position,
            step: step.name.clone(),
            element: None,
            input: None,
            attempt: 1,
            handed_over: Some(locked.resets),
            fails: 0,
            job: job.clone(),
            lease_until: self.now.saturating_add(lease_ms(lease)),
            lease,
            order: (
                std::cmp::Reverse(locked.priority),
                0,
                locked.seq,
                position,
                -1,
            ),
            exhausted: false,
        })
    }
}

/// Claims the `chosen` steps for `worker` until now + `lease`, and reads what each needs: the
/// run's input and its dependencies' outputs.
async fn take(
    conn: &mut PgConnection,
    worker: &str,
    chosen: &[Chosen],
    lease: Duration,
) -> Result<Taking, StoreError> {
    let runs: Vec<&str> = chosen.iter().map(|c| c.run.as_str()).collect();
    let steps: Vec<&Chosen> = chosen.iter().filter(|c| c.element.is_none()).collect();
    let step_runs: Vec<&str> = steps.iter().map(|c| c.run.as_str()).collect();
    let positions: Vec<i32> = steps.iter().map(|c| c.position).collect();
    let mut rows = sqlx::query(CLAIM)
        .bind(worker)
        .bind(lease_ms(lease))
        .bind(&step_runs)
        .bind(&positions)
        .fetch_all(&mut *conn)
        .await?;
    let elements: Vec<(&str, &str, i64)> = chosen
        .iter()
        .filter_map(|c| {
            c.element
                .as_ref()
                .map(|(step, idx)| (c.run.as_str(), step.as_str(), *idx))
        })
        .collect();
    if !elements.is_empty() {
        rows.extend(
            sqlx::query(CLAIM_ELEMENTS)
                .bind(worker)
                .bind(lease_ms(lease))
                .bind(elements.iter().map(|e| e.0).collect::<Vec<_>>())
                .bind(elements.iter().map(|e| e.1).collect::<Vec<_>>())
                .bind(elements.iter().map(|e| e.2).collect::<Vec<_>>())
                .fetch_all(&mut *conn)
                .await?,
        );
    }
    let mut distinct: Vec<&str> = runs.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let inputs = sqlx::query(SELECT_INPUTS)
        .bind(&distinct)
        .fetch_all(&mut *conn)
        .await?;
    let heads = heads_of(conn, &inputs, "input").await?;
    let taken = Taken::read_all(&rows, lease)?;
    list_limited_claims(conn, &taken).await?;
    Taking::of(conn, taken, &heads).await
}

/// Lists the claims `taken` of steps that have limits, for the claims after this one to count
/// (`COUNT_CLAIMED`).
async fn list_limited_claims(conn: &mut PgConnection, taken: &[Taken]) -> Result<(), StoreError> {
    sqlx::query(LIST_LIMITED_CLAIMS)
        .bind(taken.iter().map(|t| t.job.as_str()).collect::<Vec<_>>())
        .bind(taken.iter().map(|t| t.step.as_str()).collect::<Vec<_>>())
        .bind(taken.iter().map(|t| t.run.as_str()).collect::<Vec<_>>())
        .bind(taken.iter().map(|t| t.position).collect::<Vec<_>>())
        .bind(
            taken
                .iter()
                .map(|t| t.element.unwrap_or(-1))
                .collect::<Vec<_>>(),
        )
        .bind(taken.iter().map(|t| t.attempt).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

/// The claims of the steps `taken`, in the queue's order, each with its run's input (`heads`:
/// input and graph by run) and its dependencies' outputs, read here.
async fn finish(
    conn: &mut PgConnection,
    mut taken: Vec<Taken>,
    heads: &Heads,
    known: &Outputs<'_>,
) -> Result<Vec<Claim>, StoreError> {
    // `RETURNING` has no order.
    taken.sort_by_key(|t| t.order);
    let mut claims = Vec::with_capacity(taken.len());
    // The outputs to read, each (claim, dependency) with the dependency's position, in the
    // order of the statement's arrays, which number its rows (`ordinal`, from 1): each row's
    // output moves into its place.
    let mut wanted: Vec<(usize, usize)> = Vec::new();
    let mut positions: Vec<i32> = Vec::new();
    for t in taken {
        let (input, spec) = heads.get(&t.run).ok_or_else(|| no_such_run(&t.run))?;
        let position = usize::try_from(t.position).map_err(|_| StoreError::Corrupt {
            what: format!("the position of step `{}` of run `{}`", t.step, t.run),
        })?;
        let c = claims.len();
        // An element's claim carries its element of the parent it iterates, as a list of one;
        // the other outputs are read below (empty until then).
        // A step alone has no dependencies.
        let deps: Vec<(String, String)> = spec
            .iter()
            .flat_map(|spec| {
                spec.dependencies(position)
                    .into_iter()
                    .filter_map(|dep| Some((dep, spec.steps.get(dep)?)))
            })
            .enumerate()
            .map(|(d, (dep, step))| match &t.input {
                Some((over, input)) if usize::try_from(*over).ok() == Some(dep) => {
                    (step.name.clone(), format!("[{input}]"))
                }
                _ if let Some(output) = known.get(&(t.run.as_str(), dep)) => {
                    (step.name.clone(), (*output).to_owned())
                }
                _ => {
                    wanted.push((c, d));
                    positions.push(idx_of(dep));
                    (step.name.clone(), String::new())
                }
            })
            .collect();
        claims.push(Claim {
            id: ClaimId {
                run: t.run,
                step: t.step,
                position,
                attempt: u32::try_from(t.attempt).unwrap_or(u32::MAX),
                element: t.element.and_then(|e| usize::try_from(e).ok()),
                only_step: spec.is_none() && t.element.is_none(),
                handed_over: t.handed_over,
            },
            job: t.job,
            fails: u32::try_from(t.fails).unwrap_or(u32::MAX),
            input: input.clone(),
            deps,
            lease_until: t.lease_until,
            lease: t.lease,
        });
    }
    if wanted.is_empty() {
        return Ok(claims);
    }
    let runs: Vec<&str> = wanted
        .iter()
        .map(|&(c, _)| claims[c].id.run.as_str())
        .collect();
    let rows = sqlx::query(SELECT_OUTPUTS)
        .bind(&runs)
        .bind(&positions)
        .fetch_all(&mut *conn)
        .await?;
    if let Some(first) = rows.first() {
        const T: &str = "jobgraph_steps";
        let (ordinal, output) = (At::of(first, "ordinal", T)?, At::of(first, "output", T)?);
        for row in &rows {
            let &(c, d) = ordinal_entry(
                &wanted,
                get(row, ordinal, T)?,
                "the dependencies' outputs were read for",
            )?;
            if let Some(output) = get::<Option<String>>(row, output, T)? {
                claims[c].deps[d].1 = output;
            }
        }
    }
    for &(c, d) in &wanted {
        let (claim, name) = (&claims[c], &claims[c].deps[d].0);
        if claim.deps[d].1.is_empty() {
            return Err(StoreError::Corrupt {
                what: format!(
                    "step `{}` of run `{}` was ready without the output of `{name}`",
                    claim.id.step, claim.id.run
                ),
            });
        }
    }
    Ok(claims)
}

/// A run's row, locked for the rest of the transaction: what completing or failing its steps
/// needs.
struct Head {
    job: String,
    graph: String,
    max_fails: Option<i64>,
    /// Its count of resets ([`fence`]).
    resets: i64,
}

/// The version a write under `claim` gives [`held_unwritten!`]: the claim's, a count of its
/// run's resets, if that is the count now (`resets`, read under the run's lock): no reset
/// came after the commit that handed the step over. `None` otherwise, or for a claim written
/// in a row, which no statement reads it for.
fn fence(claim: &ClaimId, resets: i64) -> Option<i64> {
    claim.handed_over.filter(|&v| v == resets)
}

async fn lock_run(conn: &mut PgConnection, run: &str) -> Result<Option<Head>, StoreError> {
    let Some(row) = sqlx::query(LOCK_RUN).bind(run).fetch_optional(conn).await? else {
        return Ok(None);
    };
    const T: &str = "jobgraph_runs";
    Ok(Some(Head {
        job: get(&row, "job", T)?,
        graph: get(&row, "graph", T)?,
        max_fails: get(&row, "max_fails", T)?,
        resets: get(&row, "resets", T)?,
    }))
}

async fn select_by_key(
    conn: &mut PgConnection,
    job: &str,
    key: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(SELECT_BY_KEY)
        .bind(job)
        .bind(key)
        .fetch_optional(conn)
        .await?)
}

/// Inserts the runs `ids` (with `inputs`) of submission `s`, skipping an id or key that exists:
/// the ids inserted.
async fn insert_runs(
    conn: &mut PgConnection,
    s: &Submission<'_>,
    graph_json: &str,
    ids: &[&str],
    inputs: &[&str],
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(INSERT_QUEUED_RUNS)
        .bind(ids)
        .bind(inputs)
        .bind(s.job)
        .bind(s.batch)
        .bind(graph_json)
        .bind(s.key)
        .bind(s.priority)
        .bind(s.ttl.map(delay_ms))
        .bind(i64::from(s.max_attempts))
        .bind(s.max_fails.map(i64::from))
        .bind(s.held)
        .bind(s.plain())
        .fetch_all(conn)
        .await?)
}

/// Inserts the steps of runs `runs` (in the inputs' order), all of submission `s`'s graph, with
/// their TTRs: each step with no dependency ready at `s.run_at` (unless held), the others
/// waiting for theirs.
async fn insert_steps(
    conn: &mut PgConnection,
    s: &Submission<'_>,
    runs: &[String],
) -> Result<(), StoreError> {
    let names: Vec<&str> = s.graph.steps.iter().map(|st| st.name.as_str()).collect();
    let waiting: Vec<i32> = (0..s.graph.steps.len())
        .map(|p| i32::try_from(s.graph.dependencies(p).len()).unwrap_or(i32::MAX))
        .collect();
    let fan_over: Vec<Option<i32>> = (0..s.graph.steps.len())
        .map(|p| s.fan_out(p).map(|f| idx_of(f.over)))
        .collect();
    let fan_bound: Vec<Option<i64>> = (0..s.graph.steps.len())
        .map(|p| s.fan_out(p).and_then(|f| f.bound).map(i64::from))
        .collect();
    // Run by run, step by step (`NULL` past the end: none given).
    let ttrs: Vec<Option<i64>> = if s.ttrs.is_empty() {
        Vec::new()
    } else {
        (0..runs.len())
            .flat_map(|run| (0..s.graph.steps.len()).map(move |p| s.ttr_ms(run, p)))
            .collect()
    };
    sqlx::query(INSERT_QUEUED_STEPS)
        .bind(runs)
        .bind(&names)
        .bind(&waiting)
        .bind(s.job)
        .bind(s.held)
        .bind(s.run_at)
        .bind(s.priority)
        .bind(&fan_over)
        .bind(&fan_bound)
        .bind(&ttrs)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the limits a submission declares for its job's steps (keeping their rate buckets), in
/// (job, step) order, the order claims lock them in; then takes the job's advisory lock
/// ([`JOB_STEPS_LOCK`]), which a submit holds while it inserts its steps. Steps record whether
/// their step has limits (`limited`, which says which of the two indexes of ready steps holds
/// them) as they are inserted, from the limit rows that statement sees, so the submit that
/// creates a limit row takes the lock exclusively, after every submit of the job in flight (each
/// holds it shared) committed, and marks that step's rows they stored, and its fan-out elements;
/// a submit that asks for the lock after it waits for this one to commit, and then sees the new
/// row. Taken last, after the limit rows: a submit waiting for the lock holds no row another
/// holder of it waits for. The marking locks the runs it marks first, in id order: a worker's
/// commit, which locks its runs before it writes their steps (or inserts a fan-out's elements,
/// from its step's row), then either committed before or waits for this one.
async fn store_limits(conn: &mut PgConnection, s: &Submission<'_>) -> Result<(), StoreError> {
    let mut limits: Vec<_> = s.limits.to_vec();
    limits.sort_by_key(|(step, _)| *step);
    let mut created = Vec::new();
    for (step, limits) in limits {
        let rate = limits.rate();
        let inserted: bool = sqlx::query_scalar(UPSERT_LIMITS)
            .bind(s.job)
            .bind(step)
            .bind(limits.concurrency().map(i64::from))
            .bind(rate.map(|r| i64::from(r.count())))
            .bind(rate.map(|r| millis(r.period()).max(1)))
            .bind(rate.map(|r| i64::from(r.burst_size())))
            .fetch_one(&mut *conn)
            .await?;
        if inserted {
            created.push(step);
        }
    }
    sqlx::query(if created.is_empty() {
        LOCK_NAME_SHARED
    } else {
        LOCK_NAME
    })
    .bind(JOB_STEPS_LOCK)
    .bind(s.job)
    .execute(&mut *conn)
    .await?;
    if !created.is_empty() {
        sqlx::query(PLAN_FOR_PARAMETERS).execute(&mut *conn).await?;
    }
    for step in created {
        let runs: Vec<String> = sqlx::query_scalar(LOCK_RUNS_TO_MARK)
            .bind(s.job)
            .bind(step)
            .fetch_all(&mut *conn)
            .await?;
        // Marking a row writes it, which would end a claim a commit handed over without
        // writing it: such claims are written into their rows first, and counted below.
        for job in ImplicitClaims::of(conn, &runs).await?.write(conn).await? {
            notify(conn, &job).await?;
        }
        for statement in [MARK_LIMITED, MARK_LIMITED_ELEMENTS] {
            sqlx::query(statement)
                .bind(s.job)
                .bind(step)
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(LIST_HELD_CLAIMS)
            .bind(s.job)
            .bind(step)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Tells the listening workers that a step of `job` is ready (when the transaction commits).
async fn notify(conn: &mut PgConnection, job: &str) -> Result<(), StoreError> {
    sqlx::query(NOTIFY)
        .bind(CHANNEL)
        .bind(job)
        .execute(conn)
        .await?;
    Ok(())
}

async fn cancel_pending_steps(conn: &mut PgConnection, runs: &[String]) -> Result<(), StoreError> {
    if runs.is_empty() {
        return Ok(());
    }
    sqlx::query(CANCEL_PENDING_STEPS)
        .bind(runs)
        .execute(&mut *conn)
        .await?;
    sqlx::query(CANCEL_PENDING_ELEMENTS)
        .bind(runs)
        .execute(conn)
        .await?;
    Ok(())
}

/// Skips the pending descendants of step `position` (the run is locked).
async fn skip_descendants(
    conn: &mut PgConnection,
    run: &str,
    spec: &GraphSpec,
    position: usize,
) -> Result<(), StoreError> {
    let skipped: Vec<usize> = spec
        .descendants(position)
        .into_iter()
        .enumerate()
        .filter(|&(index, hit)| hit && index != position)
        .map(|(index, _)| index)
        .collect();
    if skipped.is_empty() {
        return Ok(());
    }
    sqlx::query(SKIP_STEPS)
        .bind(run)
        .bind(positions(&skipped))
        .execute(conn)
        .await?;
    Ok(())
}

/// Ends run `run` (locked by the caller): [`settle_runs`] of one.
async fn settle_run(conn: &mut PgConnection, run: &str) -> Result<(), StoreError> {
    settle_runs(conn, &[run]).await
}

/// Ends each of `runs` (locked by the caller, so no other transaction changes their steps'
/// states meanwhile) that has no pending step left: failed if one of its steps failed, else
/// succeeded. One with a pending step is not written: readers see it running once one of its
/// steps ended (`shown_run_state!`).
async fn settle_runs(conn: &mut PgConnection, runs: &[&str]) -> Result<(), StoreError> {
    sqlx::query(END_SETTLED_RUNS)
        .bind(runs)
        .execute(conn)
        .await?;
    Ok(())
}

/// An element's index as stored.
fn element_index(element: usize) -> i64 {
    i64::try_from(element).unwrap_or(i64::MAX)
}

/// `n` elements of fan-out `step` (at `position`) of `run` (locked) completed: lets as many
/// elements the step's bound held back be claimed, and, if none is left, completes the step
/// with the elements' outputs in their order. The step's position if it completed.
async fn element_done(
    conn: &mut PgConnection,
    run: &str,
    step: &str,
    position: i32,
    n: i64,
    hand: Hand<'_>,
) -> Result<Option<i32>, StoreError> {
    let Some(counted) = sqlx::query(COUNT_ELEMENTS_DONE)
        .bind(run)
        .bind(position)
        .bind(n)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    const T: &str = "jobgraph_steps";
    let done: i64 = get(&counted, "fan_done", T)?;
    let size: Option<i64> = get(&counted, "fan_size", T)?;
    if let Some(bound) = get::<Option<i64>>(&counted, "fan_bound", T)? {
        // The elements are made ready in index order, one per completion after the first
        // `bound`: these `n` completions' are the next `n`.
        sqlx::query(RELEASE_ELEMENTS)
            .bind(run)
            .bind(step)
            .bind(bound + done - n)
            .bind(bound + done)
            .execute(&mut *conn)
            .await?;
    }
    let size = size.ok_or_else(|| StoreError::Corrupt {
        what: format!("fan-out `{step}` of run `{run}` has elements but no count of them"),
    })?;
    if done < size {
        return Ok(None);
    }
    Ok(sqlx::query_scalar(COMPLETE_FAN_OUT)
        .bind(run)
        .bind(step)
        .bind(position)
        .bind(hand.worker)
        .bind(lease_ms(hand.lease))
        .fetch_optional(&mut *conn)
        .await?)
}

/// `kids[(run, step)]` dependencies of each step completed (their runs locked, `heads` holding
/// their graphs): the last makes a step ready, or a fan-out get its elements; a fan-out over an
/// empty list completes at once with `[]`, and its children are next. The jobs that have news.
async fn dependencies_done(
    conn: &mut PgConnection,
    mut kids: HashMap<(String, i32), i32>,
    heads: &Heads,
    locked: &Locked,
    hand: Hand<'_>,
) -> Result<Done, StoreError> {
    let mut news = Vec::new();
    let mut elements = 0;
    let mut unfinished = HashSet::default();
    let mut handed = Handed::default();
    // How many more steps may be handed over.
    let mut left = hand.limit;
    while !kids.is_empty() {
        // In key order: the statement reaches the rows in the order of their primary key,
        // page after page, as the floor's commits do.
        let mut entries: Vec<((String, i32), i32)> =
            std::mem::take(&mut kids).into_iter().collect();
        entries.sort_unstable();
        // A child all of whose dependencies completed here is handed over from what the
        // commit knows, without reading its row ([`Locked::blind`]); the others are read.
        if left > 0 {
            let mut read = Vec::with_capacity(entries.len());
            for ((run, position), n) in entries {
                if left > 0 && locked.blind(&run, position, n, heads) {
                    left -= 1;
                    let taken = locked.handed(&run, position, heads, hand.lease)?;
                    handed.taken.push(taken);
                    unfinished.insert(run);
                } else {
                    read.push(((run, position), n));
                }
            }
            entries = read;
            if entries.is_empty() {
                continue;
            }
        }
        let (keys, counts): (Vec<_>, Vec<i32>) = entries.into_iter().unzip();
        let (kid_runs, kid_positions): (Vec<String>, Vec<i32>) = keys.into_iter().unzip();
        // The first `left` children may be handed over (if this makes them ready).
        let may_hand: Vec<bool> = (0..kid_runs.len()).map(|k| k < left).collect();
        let rows = sqlx::query(DEPENDENCIES_DONE)
            .bind(&kid_runs)
            .bind(&kid_positions)
            .bind(&counts)
            .bind(&may_hand)
            .fetch_all(&mut *conn)
            .await?;
        let Some(first) = rows.first() else { continue };
        const T: &str = "jobgraph_steps";
        let (ordinal, job, fan) = (
            At::of(first, "ordinal", T)?,
            At::of(first, "news", T)?,
            At::of(first, "fan", T)?,
        );
        let (idx, handed_at) = (At::of(first, "idx", T)?, At::of(first, "handed", T)?);
        for row in &rows {
            if let Some(job) = get::<Option<String>>(row, job, T)? {
                news.push(job);
            }
            let run = ordinal_entry(&kid_runs, get(row, ordinal, T)?, "the children counted")?;
            let position: i32 = get(row, idx, T)?;
            if get::<bool>(row, handed_at, T)? {
                left = left.saturating_sub(1);
                let taken = locked.handed(run, position, heads, hand.lease)?;
                handed.taken.push(taken);
                unfinished.insert(run.clone());
                continue;
            }
            if !get::<bool>(row, fan, T)? {
                // A step this statement found pending stays pending in this transaction: only
                // a worker's claim can complete it.
                unfinished.insert(run.clone());
                continue;
            }
            let run = run.clone();
            let over: Option<i32> = get(row, "fan_over", T)?;
            match expand(conn, &run, position, over.unwrap_or(-1), hand).await? {
                Expanded::Ready(job, inserted) => {
                    news.push(job);
                    elements += inserted;
                    unfinished.insert(run);
                }
                Expanded::Empty => {
                    let (_, spec) = heads.get(&run).ok_or_else(|| no_such_run(&run))?;
                    let position = usize::try_from(position).unwrap_or(usize::MAX);
                    for kid in spec.iter().flat_map(|spec| spec.children(position)) {
                        *kids.entry((run.clone(), idx_of(kid))).or_default() += 1;
                    }
                }
            }
        }
    }
    Ok(Done {
        news,
        elements,
        unfinished,
        handed,
    })
}

/// The worker a commit hands the steps it makes ready to ([`dependencies_done`]): at most
/// `limit` of them, each leased as a claim with `lease` would be.
#[derive(Clone, Copy)]
struct Hand<'a> {
    worker: &'a str,
    limit: usize,
    lease: Duration,
}

impl Hand<'_> {
    /// Hands nothing over.
    const NONE: Hand<'static> = Hand {
        worker: "",
        limit: 0,
        lease: Duration::ZERO,
    };
}

/// The steps [`dependencies_done`] handed over.
#[derive(Default)]
struct Handed {
    taken: Vec<Taken>,
}

impl Handed {
    /// Their claims, as a claim returns them: the runs' graphs are in `heads`, their inputs in
    /// `locked` (the runs the commit locked), their dependencies' outputs in `known` (the
    /// steps completed in the transaction that handed them over) or read on `conn`.
    async fn claims(
        self,
        conn: &mut PgConnection,
        heads: &Heads,
        locked: &Locked,
        known: &Outputs<'_>,
    ) -> Result<Vec<Claim>, StoreError> {
        if self.taken.is_empty() {
            return Ok(Vec::new());
        }
        let mut with_inputs = Heads::with_capacity(self.taken.len());
        for taken in &self.taken {
            let run = taken.run.as_str();
            if !with_inputs.contains_key(run) {
                let (_, graph) = heads.get(run).ok_or_else(|| no_such_run(run))?;
                with_inputs.insert(run.to_owned(), (locked.input(run)?, graph.clone()));
            }
        }
        finish(conn, self.taken, &with_inputs, known).await
    }
}

/// What [`dependencies_done`] did.
struct Done {
    /// The jobs that have news.
    news: Vec<String>,
    /// How many fan-out elements it inserted.
    elements: usize,
    /// The runs where it left a step pending (made ready, still waiting, or a fan-out with its
    /// elements): not ended, so [`settle_runs`] need not count their steps.
    unfinished: HashSet<String>,
    /// The steps it made ready and claimed for [`Hand`]'s worker.
    handed: Handed,
}

/// What became of a fan-out whose last dependency completed.
enum Expanded {
    /// Its elements (or, over an output that is not a list, the step itself) are ready: the
    /// job's news, and how many elements were inserted.
    Ready(String, usize),
    /// Over an empty list, it completed with `[]`.
    Empty,
}

/// Fan-out `position` of `run` (locked) became ready: one element row per element of its parent
/// `over`'s output, the first `fan_bound` of them ready now. Over an empty list the step
/// completes at once; over an output that is not a list it is claimed whole, as a step (its
/// worker's decoding then says what is wrong).
async fn expand(
    conn: &mut PgConnection,
    run: &str,
    position: i32,
    over: i32,
    hand: Hand<'_>,
) -> Result<Expanded, StoreError> {
    let length: Option<Option<i32>> = sqlx::query_scalar(SELECT_LIST_LENGTH)
        .bind(run)
        .bind(over)
        .fetch_optional(&mut *conn)
        .await?;
    match length.flatten() {
        None => {
            let job: Option<String> = sqlx::query_scalar(READY_WHOLE)
                .bind(run)
                .bind(position)
                .fetch_optional(&mut *conn)
                .await?;
            Ok(Expanded::Ready(job.unwrap_or_default(), 0))
        }
        Some(0) => {
            let name = sqlx::query_scalar::<_, String>(
                "SELECT name FROM jobgraph_steps WHERE run_id = $1 AND idx = $2",
            )
            .bind(run)
            .bind(position)
            .fetch_one(&mut *conn)
            .await?;
            sqlx::query(COMPLETE_FAN_OUT)
                .bind(run)
                .bind(&name)
                .bind(position)
                .bind(hand.worker)
                .bind(lease_ms(hand.lease))
                .execute(&mut *conn)
                .await?;
            Ok(Expanded::Empty)
        }
        Some(n) => {
            let job: String = sqlx::query_scalar(SET_FAN_SIZE)
                .bind(run)
                .bind(position)
                .bind(i64::from(n))
                .fetch_one(&mut *conn)
                .await?;
            let inserted = sqlx::query(INSERT_ELEMENTS)
                .bind(run)
                .bind(position)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(Expanded::Ready(
                job,
                usize::try_from(inserted).unwrap_or(usize::MAX),
            ))
        }
    }
}

/// Element `element` of `claim.step` returned `error` (its run `head` locked): ready again at
/// `retry_in` from now (the database's clock) if its retry policy asks and `max_fails` allows, else it fails, and so does its
/// step (fenced).
#[allow(clippy::too_many_arguments)]
async fn fail_element(
    conn: &mut PgConnection,
    worker: &str,
    claim: &ClaimId,
    element: usize,
    error: &str,
    started_at: i64,
    retry_in: Option<Duration>,
    head: &Head,
) -> Result<Failed, StoreError> {
    if let Some(delay) = retry_in {
        let retried: Option<i64> = sqlx::query_scalar(RETRY_ELEMENT)
            .bind(&claim.run)
            .bind(&claim.step)
            .bind(worker)
            .bind(i64::from(claim.attempt))
            .bind(error)
            .bind(started_at)
            .bind(delay_ms(delay))
            .bind(head.max_fails)
            .bind(element_index(element))
            .bind(idx_of(claim.position))
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(at) = retried {
            notify(conn, &head.job).await?;
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
        .bind(element_index(element))
        .bind(idx_of(claim.position))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if failed != 1 {
        return Err(claim.lost(worker));
    }
    let spec = graph(&head.graph, &claim.run)?;
    let position = idx_of(claim.position);
    fail_fan_out(conn, &claim.run, &claim.step, position, error, &spec).await?;
    Ok(Failed::Failed)
}

/// An element of fan-out `step` of `run` (locked) failed for good with `error` (which names
/// it): the step fails, its other elements are cancelled (their workers learn it at their next
/// heartbeat), its descendants are skipped, and the run ends if no step is left.
async fn fail_fan_out(
    conn: &mut PgConnection,
    run: &str,
    step: &str,
    position: i32,
    error: &str,
    spec: &GraphSpec,
) -> Result<(), StoreError> {
    let position: Option<i32> = sqlx::query_scalar(FAIL_FAN_OUT)
        .bind(run)
        .bind(step)
        .bind(error)
        .bind(position)
        .fetch_optional(&mut *conn)
        .await?;
    sqlx::query(CANCEL_FAN_OUT_ELEMENTS)
        .bind(run)
        .bind(step)
        .execute(&mut *conn)
        .await?;
    if let Some(position) = position {
        let position = usize::try_from(position).unwrap_or(usize::MAX);
        skip_descendants(conn, run, spec, position).await?;
        settle_run(conn, run).await?;
    }
    Ok(())
}

/// [`StoreError::Busy`] if a worker holds a live claim of a step or element of queued run `run`
/// (locked): a redrive waits for it (as for a runner's lease), so that no claim it clears could
/// still be committed.
pub(super) async fn check_unclaimed(conn: &mut PgConnection, run: &str) -> Result<(), StoreError> {
    let held = sqlx::query(SELECT_LIVE_CLAIM)
        .bind(run)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(row) = held {
        return Err(StoreError::Busy {
            run: run.to_owned(),
            owner: get(&row, "worker", "jobgraph_steps")?,
            until: get(&row, "lease_until", "jobgraph_steps")?,
        });
    }
    let implicit = ImplicitClaims::of(conn, &[run.to_owned()]).await?;
    match implicit.0.into_iter().find(|c| !c.lapsed) {
        Some(Implicit {
            holder: Some((owner, until)),
            ..
        }) => Err(StoreError::Busy {
            run: run.to_owned(),
            owner,
            until,
        }),
        _ => Ok(()),
    }
}

/// Redrive of queued run `run` of `job` (locked): its steps `hits` (by position: the redriven
/// step and its descendants, reset by the store) are queued again, as SQLite's `requeue` does.
/// Their elements' rows are deleted (a fan-out is expanded anew, from its parent's output
/// then), their claims, errors, leases and time to live cleared, and each waits for its
/// dependencies that have not completed; one that waits for none is ready now (a fan-out gets
/// its elements). The run's time to live is cleared: it ran out or the run ended, and a
/// redrive is the operator's new start.
pub(super) async fn requeue(
    conn: &mut PgConnection,
    run: &str,
    job: &str,
    spec: &GraphSpec,
    hits: &[bool],
) -> Result<(), StoreError> {
    let ended: Vec<(i32, String)> = sqlx::query_as(SELECT_ENDED)
        .bind(run)
        .fetch_all(&mut *conn)
        .await?;
    let ended: Vec<(usize, String)> = ended
        .into_iter()
        .filter_map(|(p, state)| Some((usize::try_from(p).ok()?, state)))
        .collect();
    let (mut names, mut steps, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
    let mut kids: HashMap<(String, i32), i32> = HashMap::new();
    for (position, left) in super::queue::redrive_waits(run, spec, hits, &ended)? {
        let step = &spec.steps[position];
        let index = idx_of(position);
        // One that waits for nothing waits for one, made done below as if it just completed.
        if left == 0 {
            kids.insert((run.to_owned(), index), 1);
        }
        names.push(step.name.as_str());
        steps.push(index);
        waiting.push(i32::try_from(left.max(1)).unwrap_or(i32::MAX));
    }
    sqlx::query(DELETE_QUEUE_ELEMENTS)
        .bind(run)
        .bind(&names)
        .execute(&mut *conn)
        .await?;
    sqlx::query(REQUEUE_STEPS)
        .bind(run)
        .bind(&steps)
        .bind(&waiting)
        .execute(&mut *conn)
        .await?;
    sqlx::query(COUNT_RESET)
        .bind(run)
        .execute(&mut *conn)
        .await?;
    let heads: Heads = [(
        run.to_owned(),
        (job.to_owned(), Some(Arc::new(spec.clone()))),
    )]
    .into_iter()
    .collect();
    // The elements of the one run's fan-outs are not counted (`postgres_growth`).
    let Done { mut news, .. } =
        dependencies_done(conn, kids, &heads, &Locked::default(), Hand::NONE).await?;
    news.sort_unstable();
    news.dedup();
    for job in &news {
        notify(conn, job).await?;
    }
    Ok(())
}

/// A stored step index as a graph position.
fn index(position: i32, claim: &ClaimId) -> Result<usize, StoreError> {
    usize::try_from(position).map_err(|_| StoreError::Corrupt {
        what: format!(
            "the position of step `{}` of run `{}` is {position}",
            claim.step, claim.run
        ),
    })
}

/// A graph position as the `idx` column's type: one no step has if it does not fit (so a claim
/// the store did not make is not held).
fn idx_of(position: usize) -> i32 {
    i32::try_from(position).unwrap_or(i32::MAX)
}

/// Graph positions as the `idx` column's type.
fn positions(indices: &[usize]) -> Vec<i32> {
    indices.iter().map(|&i| idx_of(i)).collect()
}

// ---- LISTEN/NOTIFY --------------------------------------------------------------------------

/// The readiness news of one store (shared by its clones): a listening connection, started by
/// the first [`wait_ready`](Queue::wait_ready), that counts the notifications it hears, and
/// what each job's latest claim had heard when it began.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    state: Mutex<ReadyState>,
    /// Held while starting the listener: one per store.
    starting: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct ReadyState {
    /// The listener's news; `None` until it listens (and after it stopped).
    news: Option<watch::Receiver<News>>,
    claimed: Claimed,
}

impl Ready {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReadyState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A claim of `jobs` begins: what it finds ready is as of now (if the listener runs).
    fn claiming(&self, jobs: &[&str]) {
        let mut state = self.lock();
        let Some(generation) = state.news.as_ref().map(|news| news.borrow().generation()) else {
            return;
        };
        state.claimed.note(jobs, generation);
    }

    /// [`Queue::wait_ready`]: until news of `jobs` came after their latest claims began, or
    /// `timeout`.
    async fn wait(&self, pool: &PgPool, jobs: &[&str], timeout: Duration) {
        let deadline = ready::deadline(timeout);
        let listening = {
            let mut state = self.lock();
            if state
                .news
                .as_ref()
                .is_some_and(|news| news.has_changed().is_err())
            {
                // The listener stopped: start another.
                state.news = None;
            }
            state
                .news
                .clone()
                .map(|news| (news, state.claimed.since(jobs)))
        };
        let Some((mut news, since)) = listening else {
            if pool.is_closed() {
                tokio::time::sleep_until(deadline).await;
                return;
            }
            // Nothing heard yet, so nothing to wait for: once the listener runs, the caller's
            // next claim notes what it had heard, and its next wait waits for news after it.
            if let Err(error) = self.start(pool).await {
                tracing::warn!(
                    %error,
                    "the queue's LISTEN connection failed; idle workers poll instead"
                );
                tokio::time::sleep_until(deadline).await;
            }
            return;
        };
        // A job not claimed since the listener started: claim it first.
        let Some(since) = since else {
            return;
        };
        if !ready::news_of(&mut news, jobs, &since, deadline).await {
            // The listener stopped while waiting: poll out the rest (the next wait restarts it).
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Starts the store's listener (unless another wait just did).
    async fn start(&self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let _starting = self.starting.lock().await;
        if self.lock().news.is_some() {
            return Ok(());
        }
        let news = listen(pool).await?;
        let mut state = self.lock();
        state.news = Some(news);
        // Generations count from zero again: what claims noted was of the last listener.
        state.claimed.clear();
        Ok(())
    }
}

/// Connects a listener on [`CHANNEL`] (its own connection, not one of the store's pool), and
/// runs it in a task that counts what it hears, until the store is dropped (every receiver of
/// the news) or closed.
async fn listen(pool: &PgPool) -> Result<watch::Receiver<News>, sqlx::Error> {
    let options = (*pool.connect_options())
        .clone()
        .application_name(LISTENER_NAME);
    let own = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(CHANNEL).await?;
    let (tx, rx) = watch::channel(News::default());
    let closed = pool.close_event();
    tokio::spawn(async move {
        tokio::pin!(closed);
        loop {
            let mut failed = false;
            tokio::select! {
                () = tx.closed() => break,
                () = &mut closed => break,
                heard = listener.try_recv() => match heard {
                    Ok(Some(notification)) => {
                        tx.send_modify(|news| news.heard(Some(notification.payload())));
                    }
                    // Reconnected (and listening again): what was sent meanwhile is lost.
                    Ok(None) => tx.send_modify(|news| news.heard(None)),
                    Err(error) => {
                        tracing::warn!(%error, "the queue's LISTEN connection failed; retrying");
                        tx.send_modify(|news| news.heard(None));
                        failed = true;
                    }
                },
            }
            if failed {
                tokio::select! {
                    () = tx.closed() => break,
                    () = &mut closed => break,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        drop(listener);
        own.close().await;
    });
    Ok(rx)
}

// ---- Statements ---------------------------------------------------------------------------------

const SELECT_BY_KEY: &str = "SELECT id FROM jobgraph_runs WHERE job = $1 AND idem_key = $2";

/// One row per (id, input), in their order (so `seq` numbers them in it); an id or a (job, key)
/// that exists is skipped, after waiting for the transaction that inserted it, if running.
/// `$12`: whether the runs' steps are plain (no TTR, no fan-out; see [`LOCK_RUNS`]).
const INSERT_QUEUED_RUNS: &str = concat!(
    "INSERT INTO jobgraph_runs
        (id, job, batch, input, graph, graph_key, state, created_at, updated_at,
         queued, idem_key, priority, expires_at, max_attempts, max_fails, held, plain)
    SELECT t.id, $3, $4, t.input, $5::jsonb, ",
    key_of_graph!("$5"),
    ", 'pending', now(), now(),
        true, $6, $7, now() + $8 * interval '1 millisecond', $9, $10, $11, $12
    FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t (id, input, ord)
    ORDER BY t.ord
    ON CONFLICT DO NOTHING
    RETURNING id"
);

/// Every step of every run in `$1`, numbered in graph order, with the run's creation order,
/// `max_attempts` and `expires_at` (what a claim filters and orders on), and its TTR: `$10` holds
/// the runs' steps' TTRs, run by run in `$1`'s order (`NULL` past its end). The step of a run of
/// one step is `alone`. A step is `limited` if its limit row exists (see `store_limits`): asked
/// once per step of the graph (`MATERIALIZED`), not once per step of every run (1.3 µs a row,
/// 100 ms of a batch of 10,000 runs of 8 steps). An `alone` step carries its run's input
/// (`run_input`, for the claims: `CLAIM_UNLIMITED`).
const INSERT_QUEUED_STEPS: &str = "WITH t AS MATERIALIZED (
        SELECT t.*,
            EXISTS (SELECT 1 FROM jobgraph_limits l WHERE l.job = $4 AND l.step = t.name)
                AS limited
        FROM unnest($2::text[], $3::integer[], $8::integer[], $9::bigint[])
            WITH ORDINALITY AS t (name, waiting, fan_over, fan_bound, ord)
    )
    INSERT INTO jobgraph_steps
        (run_id, idx, name, state, job, waiting, ready_at, priority,
         run_seq, max_attempts, expires_at, fan_over, fan_bound, ttr_ms, alone, limited,
         run_input)
    SELECT r.id, (t.ord - 1)::integer, t.name, 'pending', $4, t.waiting,
        CASE WHEN t.waiting = 0 AND NOT $5 THEN coalesce(jobgraph_at($6), now()) END, $7,
        r.seq, r.max_attempts, r.expires_at, t.fan_over, t.fan_bound,
        ($10::bigint[])[(q.ord - 1) * cardinality($2::text[]) + t.ord],
        cardinality($2::text[]) = 1, t.limited,
        CASE WHEN cardinality($2::text[]) = 1 THEN r.input END
    FROM unnest($1::text[]) WITH ORDINALITY AS q (id, ord)
    JOIN jobgraph_runs r ON r.id = q.id
    CROSS JOIN t";

const UPSERT_LIMITS: &str = "INSERT INTO jobgraph_limits
        (job, step, concurrency, rate_count, rate_period_ms, burst, tokens, refilled_at)
    VALUES ($1, $2, $3, $4, $5, $6, coalesce($6, 0), now())
    ON CONFLICT (job, step) DO UPDATE SET
        concurrency = excluded.concurrency, rate_count = excluded.rate_count,
        rate_period_ms = excluded.rate_period_ms, burst = excluded.burst
    RETURNING xmax = 0 AS inserted";

const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// The completion a completing statement stored as the `ordinal`th entry (from 1) of its
/// arrays, the completions `of` (each with its place in the worker's call), marked stored in
/// `committed`.
fn stored_entry<'c, 'q>(
    committed: &mut [bool],
    ordinal: i64,
    of: &[(usize, &'c Completion<'q>)],
) -> Result<&'c Completion<'q>, StoreError> {
    let &(at, completion) = ordinal_entry(of, ordinal, "a completion's statement stored")?;
    committed[at] = true;
    Ok(completion)
}

/// The `ordinal`th entry (from 1, as `WITH ORDINALITY` numbers them) of the arrays a statement
/// was given, `of`; a row naming no entry is corrupt (`what` the statement did with it).
fn ordinal_entry<'e, E>(of: &'e [E], ordinal: i64, what: &str) -> Result<&'e E, StoreError> {
    usize::try_from(ordinal - 1)
        .ok()
        .and_then(|i| of.get(i))
        .ok_or_else(|| StoreError::Corrupt {
            what: format!("{what} entry {ordinal} of {}", of.len()),
        })
}

/// `statement` ([`COMPLETE_STEPS`] or [`COMPLETE_ELEMENTS`]) with what every completion binds:
/// `$1` the worker, then one array each of runs, claim numbers, outputs, start times, step
/// names and positions (`$2` to `$7`). A step is found by its position and checked by its
/// name, so an id whose two disagree matches nothing.
fn completions<'q>(
    statement: &'q str,
    worker: &'q str,
    done: &[(usize, &Completion<'q>)],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(statement)
        .bind(worker)
        .bind(
            done.iter()
                .map(|(_, c)| c.claim.run.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            done.iter()
                .map(|(_, c)| i64::from(c.claim.attempt))
                .collect::<Vec<_>>(),
        )
        .bind(done.iter().map(|(_, c)| c.output).collect::<Vec<_>>())
        .bind(done.iter().map(|(_, c)| c.started_at).collect::<Vec<_>>())
        .bind(
            done.iter()
                .map(|(_, c)| c.claim.step.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            done.iter()
                .map(|(_, c)| idx_of(c.claim.position))
                .collect::<Vec<_>>(),
        )
}

/// [`completions`] of steps ([`complete_steps!`]): then, the versions of the claims of the steps
/// handed over without a write, as `fenced` gives them ([`fence`]; `$8`), and the worker's
/// `lease` in ms (`$9`).
fn step_completions<'q>(
    statement: &'q str,
    worker: &'q str,
    done: &[(usize, &Completion<'q>)],
    lease: Duration,
    fenced: impl Fn(&ClaimId) -> Option<i64>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    completions(statement, worker, done)
        .bind(
            done.iter()
                .map(|(_, c)| fenced(c.claim))
                .collect::<Vec<_>>(),
        )
        .bind(lease_ms(lease))
}

/// [`RENEW_CLAIM`] of step `claim` held by `worker`, for `lease`: all but the version (`$7`).
fn renew_claim<'q>(
    worker: &'q str,
    claim: &'q ClaimId,
    lease: Duration,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(RENEW_CLAIM)
        .bind(&claim.run)
        .bind(idx_of(claim.position))
        .bind(worker)
        .bind(i64::from(claim.attempt))
        .bind(lease_ms(lease))
        .bind(&claim.step)
}

/// A delay (a retry's, a time to live) in milliseconds, as PostgreSQL adds it to `now()`: at
/// most a century, since a longer interval would leave `timestamptz`'s range.
fn delay_ms(delay: Duration) -> i64 {
    const CENTURY_MS: i64 = 100 * 366 * 24 * 60 * 60 * 1000;
    super::millis(delay).min(CENTURY_MS)
}

/// The advisory lock of a name: `$1` says what kind of name (`BATCH_LOCK`, `JOB_STEPS_LOCK`).
const LOCK_NAME: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";

const LOCK_NAME_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1, hashtext($2))";

/// Plans the rest of the transaction's statements for their parameters: the marking
/// ([`LOCK_RUNS_TO_MARK`], [`MARK_LIMITED`], [`MARK_LIMITED_ELEMENTS`], run once per limit row
/// created) then reads the job's runs by `jobgraph_runs_by_job`, none but the submit's own for a
/// new job, where a plan made for any job might read every step.
const PLAN_FOR_PARAMETERS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// Marks the rows of step `$2` of job `$1` stored before its limit row, in every state (a
/// redrive puts a failed step back as it is).
const MARK_LIMITED: &str = "UPDATE jobgraph_steps s SET limited = true
    FROM jobgraph_runs r
    WHERE r.job = $1 AND s.run_id = r.id AND s.name = $2 AND NOT s.limited";

/// The same of the step's fan-out elements.
const MARK_LIMITED_ELEMENTS: &str = "UPDATE jobgraph_queue_elements e SET limited = true
    FROM jobgraph_runs r
    WHERE r.job = $1 AND e.run_id = r.id AND e.step = $2 AND NOT e.limited";

/// Locks, in id order, the runs of job `$1` with a row of step `$2` not yet marked
/// [`MARK_LIMITED`]: the run's row first, as every writer of its steps (a worker's commit holds
/// its runs while it writes their steps: marking them first would let the two wait for each
/// other). A statement of its own, not a CTE of the marking's: the marking statements that
/// follow take their snapshots after its waits, and so see the steps and elements the commits
/// it waited for wrote.
const LOCK_RUNS_TO_MARK: &str = "SELECT r.id FROM jobgraph_runs r
    WHERE r.job = $1
      AND EXISTS (SELECT 1 FROM jobgraph_steps s
          WHERE s.run_id = r.id AND s.name = $2 AND NOT s.limited)
    ORDER BY r.id
    FOR UPDATE OF r";

const COUNT_BATCH: &str = "SELECT count(*) FROM jobgraph_runs WHERE batch = $1";

/// The held runs of a batch, locked in id order (as `ABORT_BATCH` locks them).
const RELEASE_RUNS: &str = "UPDATE jobgraph_runs SET held = false
    WHERE id IN (SELECT id FROM jobgraph_runs WHERE batch = $1 AND held ORDER BY id FOR UPDATE)
    RETURNING id";

const RELEASE_STEPS: &str = "UPDATE jobgraph_steps SET ready_at = now()
    WHERE run_id = ANY ($1) AND state = 'pending' AND waiting = 0 AND ready_at IS NULL
      AND fan_over IS NULL
    RETURNING job";

/// The runs of a batch that may not have ended, locked in id order.
const LOCK_BATCH_RUNS: &str = "SELECT id FROM jobgraph_runs
    WHERE batch = $1 AND state IN ('pending', 'running') ORDER BY id FOR UPDATE";

const COUNT_BATCH_RUNS: &str = concat!(
    "SELECT ",
    shown_run_state!("jobgraph_runs."),
    " AS state, held, count(*) AS n FROM jobgraph_runs
    WHERE batch = $1 GROUP BY 1, 2"
);

const COUNT_BATCH_STEPS: &str = "SELECT s.name AS name,
        CASE WHEN s.state = 'pending' AND s.worker IS NOT NULL AND s.lease_until > now()
             THEN 'running'
             -- A fan-out runs from its first element to its last.
             WHEN s.state = 'pending' AND s.fan_over IS NOT NULL AND EXISTS (
                 SELECT 1 FROM jobgraph_queue_elements e
                 WHERE e.run_id = s.run_id AND e.step = s.name)
             THEN 'running' ELSE s.state END AS state,
        count(*) AS n, min(s.idx) AS position
    FROM jobgraph_steps s JOIN jobgraph_runs r ON r.id = s.run_id
    WHERE r.batch = $1
    GROUP BY 1, 2
    ORDER BY position";

/// Fails the queued runs whose time to live is over and cancels their pending steps, in one
/// statement; a run another transaction holds is left to the next claim. A run of one step whose
/// step completed succeeded (it is written so, and leaves the runs that may expire): the step
/// completed before this statement, or while it waited for the step's row (the only step of a
/// run completes without the run's lock), and either way this statement did not cancel it.
/// Steps are locked in (run, position) order, as `CANCEL_PENDING_STEPS`.
const EXPIRE_RUNS: &str = "WITH due AS (
        SELECT id FROM jobgraph_runs
        WHERE queued AND expires_at IS NOT NULL AND expires_at <= now()
          AND state IN ('pending', 'running')
        FOR UPDATE SKIP LOCKED
    )
    , steps AS (
        UPDATE jobgraph_steps s SET state = 'cancelled', ready_at = NULL, ended_at = now()
        WHERE (s.run_id, s.idx) IN (SELECT p.run_id, p.idx FROM jobgraph_steps p
            WHERE p.run_id IN (SELECT id FROM due) AND p.state = 'pending'
            ORDER BY p.run_id, p.idx FOR UPDATE OF p)
          AND s.state = 'pending'
        RETURNING s.run_id
    )
    , elements AS (
        UPDATE jobgraph_queue_elements s
        SET state = 'cancelled', ready_at = NULL, ended_at = now()
        FROM due e
        WHERE s.run_id = e.id AND s.state = 'pending'
    )
    UPDATE jobgraph_runs r
    SET state = CASE WHEN a.done THEN 'succeeded' ELSE 'failed' END,
        error = CASE WHEN a.done THEN NULL ELSE 'its time to live expired' END,
        updated_at = CASE WHEN a.done THEN coalesce(a.ended_at, now()) ELSE now() END,
        expires_at = NULL
    FROM due d
    LEFT JOIN LATERAL (
        SELECT true AS done, o.ended_at FROM jobgraph_steps o
        WHERE o.run_id = d.id AND o.idx = 0 AND o.alone
          AND NOT EXISTS (SELECT 1 FROM steps c WHERE c.run_id = d.id)
    ) a ON true
    WHERE r.id = d.id";

/// Fails step `$2` (a position) of run `$1` (locked), which `$3`'s claim `$4` took after its
/// leases expired `max_attempts` times ([`exhausted!`]); that claim is not one of its attempts.
/// Nothing if the claim is no longer current (an abort or an expiry of the run came first).
const EXHAUST_STEP: &str = "UPDATE jobgraph_steps
    SET state = 'failed', ready_at = NULL, worker = NULL, lease_until = NULL, ended_at = now(),
        attempts = claims - 1,
        error = 'its worker stopped answering (lease expired) on '
            || (claims - 1 - fails)::text || ' of its claims'
    WHERE run_id = $1 AND idx = $2 AND worker = $3 AND claims = $4 AND state = 'pending'
    RETURNING idx";

/// Fails element `$3` of fan-out `$2` of run `$1` (locked), as [`EXHAUST_STEP`] its step; the
/// error names the element (and fails its step).
const EXHAUST_ELEMENT: &str = "UPDATE jobgraph_queue_elements
    SET state = 'failed', ready_at = NULL, worker = NULL, lease_until = NULL, ended_at = now(),
        error = 'element ' || idx::text || ': its worker stopped answering (lease expired) on '
            || (claims - 1 - fails)::text || ' of its claims'
    WHERE run_id = $1 AND step = $2 AND idx = $3 AND worker = $4 AND claims = $5
      AND state = 'pending'
    RETURNING error";

/// Whether the limited step of limit row `l` has a ready step or element (`$extra`: and more
/// conditions on it, `s`). Each looks for the first in the step's own queue order, which
/// `jobgraph_steps_ready_by_name` (and its elements' twin) hold: the index gives that order
/// (the steps' holds only `limited` ones: a step whose limit row exists is marked so),
/// so the plan walks it whatever the statistics say. As `EXISTS`, planned when most steps were
/// ready (the statistics of a fresh backlog), it read the table from its start, past every
/// finished step, until the first ready one.
macro_rules! limit_has_ready {
    ($extra:literal) => {
        concat!(
            "(coalesce((SELECT true FROM jobgraph_steps s
                WHERE s.job = l.job AND s.name = l.step AND s.limited
                  AND s.state = 'pending' AND s.ready_at IS NOT NULL AND s.ready_at <= now()",
            $extra,
            "
                ORDER BY s.priority DESC, s.ready_at, s.run_seq, s.idx
                LIMIT 1), false)
            OR coalesce((SELECT true FROM jobgraph_queue_elements s
                WHERE s.job = l.job AND s.step = l.step AND s.limited
                  AND s.state = 'pending' AND s.ready_at IS NOT NULL AND s.ready_at <= now()",
            $extra,
            "
                ORDER BY s.priority DESC, s.ready_at, s.run_seq, s.position, s.idx
                LIMIT 1), false))"
        )
    };
}

/// The limit rows of `$1`'s limited steps that have a ready step, locked in (job, step) order;
/// with the time since each bucket was refilled.
const LOCK_LIMITS: &str = concat!(
    "SELECT l.job, l.step, l.concurrency, l.rate_count, l.rate_period_ms,
        l.burst, l.tokens, jobgraph_ms(now()) - jobgraph_ms(l.refilled_at) AS elapsed_ms
    FROM jobgraph_limits l
    WHERE l.job = ANY ($1) AND ",
    limit_has_ready!(" AND (s.worker IS NULL OR s.lease_until <= now())"),
    "
    ORDER BY l.job, l.step
    FOR UPDATE OF l"
);

/// Live claims of the limited steps (`$1[i]`, `$2[i]`): of each step, and of its elements,
/// from their rows in `jobgraph_limit_claims`, each checked against its step or element (read
/// by its key). The rows of claims that can no longer be held are deleted.
const COUNT_CLAIMED: &str = "WITH listed AS (
        SELECT c.job, c.step, c.run_id, c.position, c.element,
            coalesce(h.held, false) AS held, coalesce(h.live, false) AS live
        FROM unnest($1::text[], $2::text[]) AS l (job, step)
        JOIN jobgraph_limit_claims c ON c.job = l.job AND c.step = l.step
        LEFT JOIN LATERAL (
            SELECT s.state = 'pending' AND s.worker IS NOT NULL AND s.claims = c.claims AS held,
                s.lease_until > now() AS live
            FROM jobgraph_steps s
            WHERE c.element < 0 AND s.run_id = c.run_id AND s.idx = c.position
            UNION ALL
            SELECT e.state = 'pending' AND e.worker IS NOT NULL AND e.claims = c.claims,
                e.lease_until > now()
            FROM jobgraph_queue_elements e
            WHERE c.element >= 0 AND e.run_id = c.run_id AND e.step = c.step AND e.idx = c.element
        ) h ON true
    ),
    gone AS (
        DELETE FROM jobgraph_limit_claims c
        USING listed g
        WHERE NOT g.held AND c.job = g.job AND c.step = g.step AND c.run_id = g.run_id
          AND c.position = g.position AND c.element = g.element
    )
    SELECT job, step AS name, count(*) AS n FROM listed
    WHERE held AND live
    GROUP BY job, step";

/// Inserts the claims `$select` reads (job, step, run, position, element or -1, claim number)
/// into `jobgraph_limit_claims`; a claim listed before of the same step or element is replaced.
macro_rules! list_claims {
    ($($select:tt)+) => {
        concat!(
            "INSERT INTO jobgraph_limit_claims (job, step, run_id, position, element, claims) ",
            $($select)+,
            "
            ON CONFLICT (job, step, run_id, position, element)
                DO UPDATE SET claims = excluded.claims"
        )
    };
}

/// Lists the claims (`$1[i]`..`$6[i]`: job, step, run, position, element or -1, claim number)
/// of the steps among them that have limits (`COUNT_CLAIMED`).
const LIST_LIMITED_CLAIMS: &str = list_claims!(
    "SELECT t.job, t.step, t.run_id, t.position, t.element, t.claims
    FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::bigint[], $6::bigint[])
        AS t (job, step, run_id, position, element, claims)
    WHERE EXISTS (SELECT 1 FROM jobgraph_limits l WHERE l.job = t.job AND l.step = t.step)"
);

/// Run `r` is a queued run of more than one step that has not ended: the predicate of
/// `jobgraph_runs_unfinished` (schema version 17), word for word, so that the planner reads
/// that index. The runs whose steps a commit may have handed over.
macro_rules! unfinished_run {
    () => {
        "r.queued AND r.state IN ('pending', 'running')
            AND jsonb_array_length(r.graph -> 'steps') > 1"
    };
}

/// Step `$s` (an alias and a dot) is as a commit that hands it over without a write leaves it
/// ([`DEPENDENCIES_DONE`]), and as no other step of a run but one still waiting for its
/// dependencies is: pending, not ready, never claimed, not a fan-out. Such a step whose
/// dependencies all completed is held by an implicit claim ([`ImplicitClaims`]).
macro_rules! unwritten {
    ($s:literal) => {
        concat!(
            $s,
            "state = 'pending' AND ",
            $s,
            "ready_at IS NULL AND ",
            $s,
            "worker IS NULL AND ",
            $s,
            "claims = 0 AND ",
            $s,
            "fan_over IS NULL"
        )
    };
}

/// Step `$s` (an alias and a dot) is held by a worker a commit handed it to
/// ([`DEPENDENCIES_DONE`]), its claim written into its row since (by the worker's heartbeat, or
/// [`WRITE_IMPLICIT_CLAIMS`]): pending, claimed, and not in the claims' index.
macro_rules! handed_over {
    ($s:literal) => {
        concat!(
            $s,
            "state = 'pending' AND ",
            $s,
            "ready_at IS NULL AND ",
            $s,
            "worker IS NOT NULL"
        )
    };
}

/// Claim `$claim` of step `$s` (an alias and a dot) is one a commit handed over without writing
/// its row ([`DEPENDENCIES_DONE`]), and nothing wrote the row since: claim 1, `$version` given
/// (the caller gives it only if it is the run's count of resets now, read under the run's lock:
/// [`fence`]), and the row as the commit left it ([`unwritten!`]), still waiting. Every write
/// to such a row but a reset's marks one of those (a claim written in, a state, `ready_at`),
/// and a reset counts itself in the run's row ([`COUNT_RESET`]).
macro_rules! held_unwritten {
    ($s:literal, $claim:literal, $version:literal) => {
        concat!(
            "(",
            $claim,
            " = 1 AND ",
            $version,
            " IS NOT NULL AND ",
            unwritten!($s),
            " AND ",
            $s,
            "waiting > 0)"
        )
    };
}

/// Lists the claims held now of step `$2` of job `$1`, whose limits were just inserted: claims
/// taken before, without limits, count against them; steps a commit handed over too, found
/// through their unfinished runs and read by key, as [`READY_LAPSED_HANDOFFS`] finds them.
const LIST_HELD_CLAIMS: &str = list_claims!(
    "SELECT s.job, s.name, s.run_id, s.idx, -1, s.claims
    FROM jobgraph_steps s
    WHERE s.job = $1 AND s.name = $2 AND s.limited AND s.state = 'pending'
      AND s.ready_at IS NOT NULL AND s.worker IS NOT NULL
    UNION ALL
    SELECT s.job, s.name, s.run_id, s.idx, -1, s.claims
    FROM jobgraph_steps s
    WHERE s.run_id = ANY (ARRAY(SELECT r.id FROM jobgraph_runs r WHERE ",
    unfinished_run!(),
    " AND r.job = $1)) AND s.name = $2 AND s.limited AND ",
    handed_over!("s."),
    "
    UNION ALL
    SELECT e.job, e.step, e.run_id, e.position, e.idx, e.claims
    FROM jobgraph_queue_elements e
    WHERE e.job = $1 AND e.step = $2 AND e.limited AND e.state = 'pending'
      AND e.ready_at IS NOT NULL
      AND e.worker IS NOT NULL"
);

/// The conditions on a step's row (`s`) that make it claimable now: ready, not held by a live
/// claim, its run not expired. Every column is the step's own, so a claim reads
/// `jobgraph_steps_ready` in order. A step whose leases expired `max_attempts` times is
/// claimable too, to be failed by the claim's store ([`exhausted!`]).
macro_rules! claimable {
    () => {
        "s.state = 'pending' AND s.ready_at IS NOT NULL AND s.ready_at <= now()
          AND (s.worker IS NULL OR s.lease_until <= now())
          AND (s.expires_at IS NULL OR s.expires_at > now())"
    };
}

/// Whether a claimed step or element (`s`, its claim counted) is exhausted: of its claims that
/// returned no error, those before this one all expired (a claim that ends the step in any way
/// ends its pending state), and they were `max_attempts`.
macro_rules! exhausted {
    () => {
        "s.claims - s.fails > s.max_attempts AS exhausted"
    };
}

/// [`exhausted!`] of a step or element (`s`) before its claim: a candidate a claim will take
/// to fail, which takes no room of its step's limits.
macro_rules! exhausted_before {
    () => {
        "(s.worker IS NOT NULL AND s.claims - s.fails >= s.max_attempts) AS exhausted"
    };
}

/// The columns of a claimed step that `Taken::read` reads. A claim takes only steps in the
/// claims' index (`ready_at` set, [`claimable!`]), locked until it ends; a step a commit hands
/// over is made from its run's row ([`Locked::handed`]).
macro_rules! taken {
    () => {
        concat!(
            "s.run_id, s.idx, s.name, s.claims, s.fails, s.job, s.priority, s.run_seq,
            s.ready_at, s.lease_until, s.ttr_ms,
            NULL::bigint AS element, NULL::integer AS over, NULL::text AS element_input, ",
            exhausted!()
        )
    };
}

/// The same columns of a claimed element (`s`, of `jobgraph_queue_elements`): its step's
/// position as `idx`, its own index as `element`, its parent's position and the element itself
/// (`over`, `element_input`: `input` is the run's, in the claim's rows).
macro_rules! taken_element {
    () => {
        concat!(
            "s.run_id, s.position AS idx, s.step AS name, s.claims, s.fails, s.job, s.priority,
            s.run_seq, s.ready_at, s.lease_until,
            s.ttr_ms, s.idx AS element, s.over, s.input AS element_input, ",
            exhausted!()
        )
    };
}

/// Whether `CLAIM_UNLIMITED` reads row `s`: every row if `$5`, else those no transaction marked
/// (`xmax` 0). Written as a `CASE` for the planner, which estimates one at half the rows, and
/// `xmax = 0` at 0.5% (it has no statistics of a system column): planned for `$5` false (a
/// connection that plans for its parameters, or `EXPLAIN`), a claim of a tenth of 60,000 ready
/// steps read the whole table and sorted it, where it walks the queue's index.
macro_rules! unmarked {
    () => {
        "CASE WHEN $5 OR s.xmax = '0'::xid THEN true ELSE false END"
    };
}

/// `claim_unlimited`'s statement. If a limited step of a job of `$1` is ready (or one of its
/// elements), one row saying so (`limited`), and nothing claimed. Else: for each job of `$1`, its
/// best `$2` claimable steps and its best `$2` claimable fan-out elements (`SKIP LOCKED`: passing
/// over the rows other transactions hold) that have no limits, of which the best `$2` are claimed
/// for `$3` until now + `$4` ms; one row per claim, with its run's input and graph key (or one
/// row of `NULL`s if none). A step that carries its run's input (the only step of its run,
/// whose graph's key is empty) returns it as `known_input`, `input` NULL, and its run's row is
/// not read (a one-time filter of the `LATERAL` subquery; the read cost 1.75 of 6.2 µs per step
/// of a claim of 2,000 single-step jobs); the others' `input` and `graph_key` come from that
/// row. The steps and elements it picks need no check of their own against
/// `jobgraph_limits`: it picks nothing unless `flag` found no limited one ready, in the same
/// snapshot (a limit inserted since is not seen by either). `locked`: how many rows it locked
/// (it takes fewer when a job has both steps and elements ready).
///
/// **Unless `$5`, it reads only rows no transaction has marked** (`xmax` 0: since
/// the version it sees was written, none updated or locked it). With several workers, the rows
/// a claim finds in its snapshot include those other claims took since (it sees their version
/// before the claim); locking one, it finds the claimed version, passes over it, and holds its
/// lock until it ends, so the step's completion waits for an unrelated claim. Four processes,
/// 40,000 single-step jobs, five alternations: 47.5–53.5k → 51.0–58.7k jobs/s, the claim 16.6 →
/// 12.7 pages per job, the completion 0.0284 → 0.0217 ms. A version keeps the mark of a lock
/// that ended without an update (a claim that locked more than it took, or passed over a row it
/// locked) and of an update that aborted, so such a row is claimable only by a claim that
/// reads every row (`$5`): the next after one that may have left marks (it locked more than it
/// took, failed, or found fewer than it asked for: the rows it passed over may be all that is
/// left), and a sweep, once a second (`SWEEP_EVERY`).
///
/// Its plan is made once per connection, for a `$2` it does not know (PostgreSQL assumes a
/// tenth of the ready steps), so each row a claim takes is reached by a path no estimate can
/// turn into reading a whole table: the rows it picked are updated by their `ctid` (`row`:
/// each was locked by this statement, so it is the row's current version), listed (`ctid =
/// ANY`, a TID scan), and each claimed row's run is read by its key (a `LATERAL` subquery the
/// planner keeps as one, `OFFSET 0`). Joined instead, once the tables' statistics were
/// current, both were hashed against the whole table: 20,000 runs read for a claim of 514
/// steps (19 of its 25 ms), and every fan-out element for a claim of a few hundred.
const CLAIM_UNLIMITED: &str = concat!(
    "WITH flag AS (
        SELECT EXISTS (SELECT 1 FROM jobgraph_limits l
            WHERE l.job = ANY ($1) AND ",
    limit_has_ready!(""),
    ") AS limited
    ),
    picked_steps AS (
        SELECT p.row, p.run_id, p.idx, p.priority, p.ready_at, p.run_seq
        FROM flag, unnest($1::text[]) AS j (job)
        CROSS JOIN LATERAL (
            SELECT s.ctid AS row, s.run_id, s.idx, s.priority, s.ready_at, s.run_seq
            FROM jobgraph_steps s
            WHERE s.job = j.job AND NOT s.limited AND ",
    unmarked!(),
    " AND ",
    claimable!(),
    "
            ORDER BY s.priority DESC, s.ready_at, s.run_seq, s.idx
            LIMIT $2
            FOR UPDATE OF s SKIP LOCKED
        ) p
        WHERE NOT flag.limited
    ),
    picked_elements AS (
        SELECT p.row, p.run_id, p.position, p.step, p.idx, p.priority, p.ready_at, p.run_seq
        FROM flag, unnest($1::text[]) AS j (job)
        CROSS JOIN LATERAL (
            SELECT s.ctid AS row, s.run_id, s.position, s.step, s.idx, s.priority, s.ready_at,
                s.run_seq
            FROM jobgraph_queue_elements s
            WHERE s.job = j.job AND NOT s.limited AND ",
    unmarked!(),
    " AND ",
    claimable!(),
    "
            ORDER BY s.priority DESC, s.ready_at, s.run_seq, s.position, s.idx
            LIMIT $2
            FOR UPDATE OF s SKIP LOCKED
        ) p
        WHERE NOT flag.limited
    ),
    picked AS (
        SELECT row, run_id, idx AS position, NULL::text AS step, NULL::bigint AS element,
            priority, ready_at, run_seq
        FROM picked_steps
        UNION ALL
        SELECT row, run_id, position, step, idx, priority, ready_at, run_seq
        FROM picked_elements
        ORDER BY priority DESC, ready_at, run_seq, position, element NULLS FIRST
        LIMIT $2
    ),
    claimed AS (
        UPDATE jobgraph_steps s
        SET worker = $3, lease_until = now() + coalesce(s.ttr_ms, $4) * interval '1 millisecond',
            claims = s.claims + 1
        WHERE s.ctid = ANY (ARRAY(SELECT p.row FROM picked p WHERE p.element IS NULL))
        RETURNING ",
    taken!(),
    ", s.run_input AS known_input
    ),
    claimed_elements AS (
        UPDATE jobgraph_queue_elements s
        SET worker = $3, lease_until = now() + coalesce(s.ttr_ms, $4) * interval '1 millisecond',
            claims = s.claims + 1
        WHERE s.ctid = ANY (ARRAY(SELECT p.row FROM picked p WHERE p.element IS NOT NULL))
        RETURNING ",
    taken_element!(),
    ", NULL::text AS known_input
    )
    SELECT f.limited,
        (SELECT count(*) FROM picked_steps) + (SELECT count(*) FROM picked_elements) AS locked,
        c.*, r.input,
        CASE WHEN c.known_input IS NULL THEN r.graph_key ELSE ''::bytea END AS graph_key
    FROM flag f
    LEFT JOIN ((SELECT * FROM claimed UNION ALL SELECT * FROM claimed_elements) c
        LEFT JOIN LATERAL (
            SELECT r.input, ",
    graph_key!("r."),
    "
            FROM jobgraph_runs r WHERE c.known_input IS NULL AND r.id = c.run_id
            OFFSET 0
        ) r ON true) ON true"
);

/// `CANDIDATES`' claimable steps of one job (`$which`, an SQL condition on `s` that an index of
/// ready steps covers), best first, locked.
macro_rules! step_candidates {
    ($which:literal) => {
        concat!(
            "SELECT s.run_id, s.idx, s.job, s.name, s.limited, ",
            exhausted_before!(),
            ", NULL::bigint AS element, s.priority, jobgraph_ms(s.ready_at) AS ready_ms,
            s.run_seq
        FROM jobgraph_steps s
        WHERE ",
            $which,
            " AND ",
            claimable!(),
            "
          AND NOT EXISTS (
              SELECT 1 FROM unnest($4::text[], $5::integer[]) AS c (run_id, idx)
              WHERE c.run_id = s.run_id AND c.idx = s.idx)
        ORDER BY s.priority DESC, s.ready_at, s.run_seq, s.idx
        LIMIT $6
        FOR UPDATE OF s SKIP LOCKED"
        )
    };
}

/// The rows `$candidates!` (a macro of one job's claimable rows, given which) reads: the
/// unlimited ones of each job of `$1`, and the limited ones of each step with room (`$2[i]`,
/// `$3[i]`; `$with_room`: its condition on `s`, joined as `o`).
macro_rules! unlimited_and_with_room {
    ($candidates:ident, $with_room:literal) => {
        concat!(
            "SELECT p.* FROM unnest($1::text[]) AS j (job)
    CROSS JOIN LATERAL (",
            $candidates!("s.job = j.job AND NOT s.limited"),
            ") p
    UNION ALL
    SELECT p.* FROM unnest($2::text[], $3::text[]) AS o (job, step)
    CROSS JOIN LATERAL (",
            $candidates!($with_room),
            ") p"
        )
    };
}

/// The claimable steps of each job of `$1`, best first, locked (`SKIP LOCKED`: passing over
/// the steps other transactions hold), at most `$6` of each: unlimited steps, and limited steps
/// with room (`$2[i]`, `$3[i]`, whose limit rows this transaction locked); not the steps this
/// claim already chose (`$4[i]`, `$5[i]`). One job at a time (`LATERAL`), as
/// `CLAIM_UNLIMITED`: each walks `jobgraph_steps_ready` in its order and stops after `$6`
/// rows. Over several jobs at once (`job = ANY`) the index gives no order; planned for a
/// tenth of the backlog, the statement read every ready step and sorted them (an external
/// merge sort, 67 ms at 60,000 ready). The limited steps with room are read the same way, one
/// step at a time, from `jobgraph_steps_ready_by_name` (`jobgraph_steps_ready` holds the
/// unlimited only): a step whose room is used up is not read at all, however many of it wait.
const CANDIDATES: &str = unlimited_and_with_room!(
    step_candidates,
    "s.job = o.job AND s.name = o.step AND s.limited"
);

/// `ELEMENT_CANDIDATES`' claimable fan-out elements of one job (`$which`, an SQL condition on
/// `s` that an index of ready elements covers), best first, locked; as [`step_candidates!`].
macro_rules! element_candidates {
    ($which:literal) => {
        concat!(
            "SELECT s.run_id, s.position AS idx, s.job, s.step AS name, s.limited, ",
            exhausted_before!(),
            ", s.idx AS element, s.priority, jobgraph_ms(s.ready_at) AS ready_ms, s.run_seq
        FROM jobgraph_queue_elements s
        WHERE ",
            $which,
            " AND ",
            claimable!(),
            "
          AND NOT EXISTS (
              SELECT 1 FROM unnest($4::text[], $5::text[], $7::bigint[])
                  AS c (run_id, step, idx)
              WHERE c.run_id = s.run_id AND c.step = s.step AND c.idx = s.idx)
        ORDER BY s.priority DESC, s.ready_at, s.run_seq, s.position, s.idx
        LIMIT $6
        FOR UPDATE OF s SKIP LOCKED"
        )
    };
}

/// The claimable fan-out elements of `$1`, as `CANDIDATES` (its `$2`, `$3`, `$6`); not the
/// elements this claim already chose (`$4[i]`, `$5[i]`, `$7[i]`: run, step, element). The
/// unlimited ones from `jobgraph_queue_elements_ready`, the limited ones with room step by step
/// from `jobgraph_queue_elements_ready_by_name`: the elements of a fan-out at its limit are not
/// read, however many wait.
const ELEMENT_CANDIDATES: &str = unlimited_and_with_room!(
    element_candidates,
    "s.job = o.job AND s.step = o.step AND s.limited"
);

/// Stores the bucket less what was taken; `greatest`: a claim that began earlier but locked the
/// row later must not move its refill time back (the time in between would refill twice).
const TAKE_TOKENS: &str = "UPDATE jobgraph_limits
    SET tokens = $3, refilled_at = greatest(refilled_at, now())
    WHERE job = $1 AND step = $2";

const CLAIM: &str = concat!(
    "UPDATE jobgraph_steps s
    SET worker = $1, lease_until = now() + coalesce(s.ttr_ms, $2) * interval '1 millisecond',
        claims = s.claims + 1
    FROM unnest($3::text[], $4::integer[]) AS c (run_id, idx)
    WHERE s.run_id = c.run_id AND s.idx = c.idx
    RETURNING ",
    taken!()
);

const CLAIM_ELEMENTS: &str = concat!(
    "UPDATE jobgraph_queue_elements s
    SET worker = $1, lease_until = now() + coalesce(s.ttr_ms, $2) * interval '1 millisecond',
        claims = s.claims + 1
    FROM unnest($3::text[], $4::text[], $5::bigint[]) AS c (run_id, step, idx)
    WHERE s.run_id = c.run_id AND s.step = c.step AND s.idx = c.idx
    RETURNING ",
    taken_element!()
);

/// The inputs and graph keys of runs `$1`.
const SELECT_INPUTS: &str = concat!(
    "SELECT id, input, ",
    graph_key!(""),
    " FROM jobgraph_runs
    WHERE id = ANY ($1)"
);

/// The outputs of the completed steps (`$1[i]`, `$2[i]`: run, position), each with the ordinal
/// of its entry (from 1).
const SELECT_OUTPUTS: &str = "SELECT d.ordinal, s.output
    FROM unnest($1::text[], $2::integer[]) WITH ORDINALITY AS d (run_id, idx, ordinal)
    JOIN jobgraph_steps s ON s.run_id = d.run_id AND s.idx = d.idx
    WHERE s.state = 'completed'";

/// A heartbeat: the claim's lease (of step `$2`, a position, named `$6`) runs until now + its
/// TTR, or + `$5` ms (the worker's lease) for a step without one. A claim a commit handed over
/// without writing the step's row (`$7` given, [`held_unwritten!`]: under the run's lock,
/// shared, [`SHARE_RESETS`]) is written into the row, as the commit would have: an ordinary
/// claim from then on.
const RENEW_CLAIM: &str = concat!(
    "UPDATE jobgraph_steps
    SET lease_until = now() + coalesce(ttr_ms, $5) * interval '1 millisecond', worker = $3,
        claims = greatest(claims, 1), waiting = 0
    WHERE run_id = $1 AND idx = $2 AND name = $6 AND state = 'pending'
      AND (worker = $3 AND claims = $4 OR ",
    held_unwritten!("", "$4", "$7"),
    ")"
);

/// The same of element `$6` of step `$2` (at position `$7`).
const RENEW_ELEMENT: &str = "UPDATE jobgraph_queue_elements
    SET lease_until = now() + coalesce(ttr_ms, $5) * interval '1 millisecond'
    WHERE run_id = $1 AND step = $2 AND idx = $6 AND position = $7 AND worker = $3
      AND claims = $4 AND state = 'pending'";

const SELECT_RUN_STATE: &str = "SELECT state FROM jobgraph_runs WHERE id = $1";

/// A live claim of a step or element of run `$1`, if any.
const SELECT_LIVE_CLAIM: &str = "SELECT worker, jobgraph_ms(lease_until) AS lease_until
    FROM jobgraph_steps
    WHERE run_id = $1 AND state = 'pending' AND worker IS NOT NULL AND lease_until > now()
    UNION ALL
    SELECT worker, jobgraph_ms(lease_until) FROM jobgraph_queue_elements
    WHERE run_id = $1 AND state = 'pending' AND worker IS NOT NULL AND lease_until > now()
    LIMIT 1";

const SELECT_ENDED: &str =
    "SELECT idx, state FROM jobgraph_steps WHERE run_id = $1 AND state <> 'pending'";

const DELETE_QUEUE_ELEMENTS: &str =
    "DELETE FROM jobgraph_queue_elements WHERE run_id = $1 AND step = ANY ($2::text[])";

/// Redriven steps `$2[i]` are queued again, each waiting for `$3[i]` dependencies. Their run's
/// count of resets goes up ([`COUNT_RESET`]) in the same transaction.
const REQUEUE_STEPS: &str = "UPDATE jobgraph_steps s
    SET waiting = r.waiting, ready_at = NULL, claims = 0, fails = 0, worker = NULL,
        lease_until = NULL, fan_size = NULL, fan_done = 0, expires_at = NULL
    FROM unnest($2::integer[], $3::integer[]) AS r (idx, waiting)
    WHERE s.run_id = $1 AND s.idx = r.idx";

/// Run `$1`'s steps were queued again ([`REQUEUE_STEPS`]): it has no time to live any more, and
/// its count of resets goes up, which ends every claim a commit handed over before without
/// writing its step's row ([`held_unwritten!`]). (A process of an older build clears the time to
/// live alone; a trigger counts that, schema version 18.)
const COUNT_RESET: &str =
    "UPDATE jobgraph_runs SET expires_at = NULL, resets = resets + 1 WHERE id = $1";

const LOCK_RUN_STATE: &str = "SELECT state FROM jobgraph_runs WHERE id = $1 FOR UPDATE";

const LOCK_RUN: &str = "SELECT job, graph::text AS graph, max_fails, resets FROM jobgraph_runs
    WHERE id = $1 FOR UPDATE";

/// Run `$1`'s count of resets, the run's row locked `FOR SHARE` until the transaction ends, so
/// that no reset can come between the reading and what the transaction writes.
const SHARE_RESETS: &str = "SELECT resets FROM jobgraph_runs WHERE id = $1 FOR SHARE";

/// The runs `$1`, locked in id order: what completing their steps needs (the job, to notify,
/// and the graph's key), and what handing them over needs ([`Locked`]): the input, the count
/// of resets, the queue order's priority and sequence, whether a claim could take any step of
/// the run under the worker's lease (`blind`: plain steps, no time to live, no limits on its
/// job, probed by the limits' key whatever their number), and the transaction's time (Unix ms).
const LOCK_RUNS: &str = concat!(
    "SELECT id, job, input, ",
    graph_key!(""),
    ", resets, priority, seq,
        plain AND expires_at IS NULL
            AND NOT EXISTS (SELECT 1 FROM jobgraph_limits l WHERE l.job = r.job) AS blind,
        jobgraph_ms(now()) AS now
    FROM jobgraph_runs r
    WHERE id = ANY ($1) ORDER BY id FOR UPDATE OF r"
);

/// Each step (`$2[i]`, `$7[i]`, `$6[i]`: run, position, name) that `$1` holds under claim
/// `$3[i]` completed with output `$4[i]`, started at `$5[i]` (Unix ms), if it also meets `$also`:
/// the steps it stored (a claim it no longer holds is not). A claim is held if the row says so
/// (its worker and claim number), or if it is claim 1 of a step a commit handed over without
/// writing its row, `$8[i]` given ([`fence`]), and nothing wrote the row since
/// ([`DEPENDENCIES_DONE`]). `$holder` says what the completed row keeps of the claim: its
/// worker and its lease, now + `$9` ms (the worker's), if the commit may hand over the step's
/// children, whose claims are then theirs ([`ImplicitClaims`]).
macro_rules! complete_steps {
    ($holder:literal, $also:literal) => {
        concat!(
            "UPDATE jobgraph_steps s
    SET state = 'completed', output = c.output, claims = greatest(s.claims, 1),
        attempts = greatest(s.claims, 1), error = NULL,
        started_at = coalesce(s.started_at, jobgraph_at(c.started)), ended_at = now(), ",
            $holder,
            ", ready_at = NULL
    FROM unnest($2::text[], $7::integer[], $6::text[], $3::bigint[], $4::text[], $5::bigint[],
            $8::bigint[])
        WITH ORDINALITY AS c (run_id, idx, name, claims, output, started, version, ordinal)
    WHERE s.run_id = c.run_id AND s.idx = c.idx AND s.name = c.name AND s.state = 'pending'
      AND (s.worker = $1 AND s.claims = c.claims OR ",
            held_unwritten!("s.", "c.claims", "c.version"),
            ")",
            $also,
            "
    RETURNING c.ordinal, s.idx"
        )
    };
}

/// [`complete_steps!`] of steps whose runs the transaction locked.
const COMPLETE_STEPS: &str = complete_steps!(
    "worker = $1, lease_until = now() + $9 * interval '1 millisecond'",
    ""
);

/// [`complete_steps!`] of the only steps of their runs (`alone`), whose runs are not locked.
const COMPLETE_ALONE: &str = complete_steps!(
    "worker = NULL, lease_until = NULL, run_input = NULL",
    " AND s.alone"
);

/// Each (`$2[i]`, `$6[i]`, `$8[i]`: run, step, element; `$7[i]` the step's position) that `$1`
/// holds under claim `$3[i]` completed with output `$4[i]`, started at `$5[i]` (Unix ms): the
/// elements it stored.
const COMPLETE_ELEMENTS: &str = "UPDATE jobgraph_queue_elements s
    SET state = 'completed', output = c.output, error = NULL,
        started_at = coalesce(s.started_at, jobgraph_at(c.started)), ended_at = now(),
        worker = NULL, lease_until = NULL, ready_at = NULL
    FROM unnest($2::text[], $6::text[], $7::integer[], $3::bigint[], $4::text[], $5::bigint[],
            $8::bigint[])
        WITH ORDINALITY AS c (run_id, step, position, claims, output, started, idx, ordinal)
    WHERE s.run_id = c.run_id AND s.step = c.step AND s.idx = c.idx
      AND s.position = c.position AND s.worker = $1 AND s.claims = c.claims
      AND s.state = 'pending'
    RETURNING c.ordinal, s.job";

/// Fan-out `$2` (a position) of run `$1` has `$3` elements: its job.
const SET_FAN_SIZE: &str = "UPDATE jobgraph_steps SET fan_size = $3, fan_done = 0
    WHERE run_id = $1 AND idx = $2
    RETURNING job";

/// `$3` more elements of fan-out `$2` (a position) of run `$1` completed: how many have, of how
/// many, and its bound.
const COUNT_ELEMENTS_DONE: &str = "UPDATE jobgraph_steps SET fan_done = fan_done + $3
    WHERE run_id = $1 AND idx = $2 AND state = 'pending'
    RETURNING fan_done, fan_size, fan_bound";

/// The elements `$3..$4` of fan-out `$2`, held back by its bound, are ready.
const RELEASE_ELEMENTS: &str = "UPDATE jobgraph_queue_elements SET ready_at = now()
    WHERE run_id = $1 AND step = $2 AND idx >= $3 AND idx < $4
      AND state = 'pending' AND ready_at IS NULL";

/// Fan-out `$2` (at position `$3`) of run `$1` completed: its output is its elements' outputs in
/// their order (`[]` if it has none), its attempts their claims. Its position, if it was
/// pending. As [`complete_steps!`], the row keeps the committing worker (`$4`) and its lease
/// (`$5` ms), whose are the claims of the children the commit hands over.
const COMPLETE_FAN_OUT: &str = "UPDATE jobgraph_steps s
    SET state = 'completed',
        output = coalesce('[' || e.outputs || ']', '[]'), attempts = e.attempts, error = NULL,
        started_at = coalesce(s.started_at, e.started, now()), ended_at = now(),
        worker = nullif($4, ''), lease_until = now() + $5 * interval '1 millisecond',
        ready_at = NULL
    FROM (SELECT string_agg(output, ',' ORDER BY idx) AS outputs,
            coalesce(sum(claims), 0) AS attempts, min(started_at) AS started
        FROM jobgraph_queue_elements WHERE run_id = $1 AND step = $2) e
    WHERE s.run_id = $1 AND s.idx = $3 AND s.state = 'pending'
    RETURNING s.idx";

/// The length of step `$2`'s output, if it is a list.
const SELECT_LIST_LENGTH: &str = "SELECT CASE WHEN jsonb_typeof(o) = 'array'
        THEN jsonb_array_length(o) END AS n
    FROM (SELECT output::jsonb AS o FROM jobgraph_steps
        WHERE run_id = $1 AND idx = $2 AND state = 'completed') p";

/// A fan-out whose parent's output is not a list is claimed whole: its job.
const READY_WHOLE: &str = "UPDATE jobgraph_steps SET ready_at = now()
    WHERE run_id = $1 AND idx = $2 AND state = 'pending'
    RETURNING job";

/// One element of fan-out `$2` (a position) of run `$1` per element of its parent's output (each
/// cut out as JSON, the parent's output parsed once), the first `fan_bound` of them (all if none)
/// ready now; `limited` as the step's row says (exact: the commit locked the run before the
/// fan-out's row, as [`store_limits`] locks the runs whose rows it marks).
const INSERT_ELEMENTS: &str = "INSERT INTO jobgraph_queue_elements
        (run_id, step, position, idx, over, input, job, priority, run_seq, max_attempts,
         expires_at, state, ready_at, ttr_ms, limited)
    SELECT s.run_id, s.name, s.idx, e.ord - 1, s.fan_over, e.value::text, s.job, s.priority,
        s.run_seq, s.max_attempts, s.expires_at, 'pending',
        CASE WHEN s.fan_bound IS NULL OR e.ord - 1 < s.fan_bound THEN now() END, s.ttr_ms,
        s.limited
    FROM jobgraph_steps s
    JOIN jobgraph_steps p ON p.run_id = s.run_id AND p.idx = s.fan_over AND p.state = 'completed'
    CROSS JOIN LATERAL jsonb_array_elements(p.output::jsonb) WITH ORDINALITY AS e (value, ord)
    WHERE s.run_id = $1 AND s.idx = $2 AND s.state = 'pending'";

/// Whether `DEPENDENCIES_DONE` hands step `k` over: this makes it ready (`k.n` is its last
/// dependencies), it may be handed (`k.hand`), and a claim could take it under the worker's
/// lease: no limits, no TTR, not a fan-out, and its run has no time to live (a step of such a
/// run is written when it is ready, so that the run's expiry finds it).
macro_rules! handed {
    () => {
        "(k.hand AND k.waiting <= k.n AND k.fan_over IS NULL AND NOT k.limited
            AND k.ttr_ms IS NULL AND k.expires_at IS NULL)"
    };
}

/// `$3[i]` dependencies of step `$2[i]` of run `$1[i]` (locked) completed; the last makes it
/// ready, or, for a fan-out, ready for its elements; a step made ready whose `$4[i]` is true
/// ([`handed!`]) is handed over to the committing worker instead, *without a write*: its row
/// stays as it was (pending, no worker, `ready_at` NULL, `waiting` as it was), and the claim
/// holds as long as nothing writes the row ([`held_unwritten!`]). Its holder and lease are its
/// completed parents' ([`complete_steps!`] keeps the worker and its lease on a completed row):
/// [`ImplicitClaims`] finds such claims for the sweep, the list of leases and the checks that
/// need them. Each row: its entry in the arrays (`ordinal`, from 1) and its position, the job
/// of a step that became ready for claims (`news`), whether a fan-out did (`fan`, with
/// `fan_over`), and whether the step was handed over (`handed`; the run's row says the rest of
/// its claim, [`Locked`]). A child all of whose dependencies completed in the commit is not
/// read at all, if its run's row says a claim could take it ([`dependencies_done`]).
const DEPENDENCIES_DONE: &str = concat!(
    "WITH k AS MATERIALIZED (
        SELECT d.ordinal, d.n, d.hand, s.run_id, s.idx, s.waiting, s.fan_over, s.limited,
            s.ttr_ms, s.expires_at
        FROM unnest($1::text[], $2::integer[], $3::integer[], $4::boolean[])
            WITH ORDINALITY AS d (run_id, idx, n, hand, ordinal)
        JOIN jobgraph_steps s ON s.run_id = d.run_id AND s.idx = d.idx
        WHERE s.state = 'pending' AND s.waiting > 0
    ),
    written AS (
        UPDATE jobgraph_steps s
        SET waiting = greatest(s.waiting - k.n, 0),
            ready_at = CASE WHEN s.waiting <= k.n AND s.fan_over IS NULL THEN now() END
        FROM k
        WHERE s.run_id = k.run_id AND s.idx = k.idx AND NOT ",
    handed!(),
    "
        RETURNING k.ordinal, s.idx,
            CASE WHEN s.waiting = 0 AND s.fan_over IS NULL THEN s.job END AS news,
            s.waiting = 0 AND s.fan_over IS NOT NULL AS fan, s.fan_over
    )
    SELECT ordinal, idx, news, fan, fan_over, false AS handed FROM written
    UNION ALL
    SELECT k.ordinal, k.idx, NULL, false, NULL, true FROM k WHERE ",
    handed!()
);

/// Step `$2` (a position, named `$9`) of run `$1`, held by `$3` under claim `$4` (or handed
/// over, `$10` given, [`held_unwritten!`]), failed with error `$5` and is tried again
/// in `$7` ms, if it failed fewer than `$8` times before: when.
const RETRY_STEP: &str = concat!(
    "UPDATE jobgraph_steps
    SET fails = fails + 1, error = $5, claims = greatest(claims, 1),
        attempts = greatest(claims, 1), waiting = 0,
        started_at = coalesce(started_at, jobgraph_at($6)),
        worker = NULL, lease_until = NULL, ready_at = now() + $7 * interval '1 millisecond'
    WHERE run_id = $1 AND idx = $2 AND name = $9 AND state = 'pending'
      AND (worker = $3 AND claims = $4 OR ",
    held_unwritten!("", "$4", "$10"),
    ") AND fails + 1 < coalesce($8, 9223372036854775807)
    RETURNING jobgraph_ms(ready_at)"
);

/// The same step (`$8` for [`held_unwritten!`]) failed for good: its position.
const FAIL_STEP: &str = concat!(
    "UPDATE jobgraph_steps
    SET state = 'failed', fails = fails + 1, error = $5, claims = greatest(claims, 1),
        attempts = greatest(claims, 1),
        started_at = coalesce(started_at, jobgraph_at($6)), ended_at = now(),
        worker = NULL, lease_until = NULL, ready_at = NULL
    WHERE run_id = $1 AND idx = $2 AND name = $7 AND state = 'pending'
      AND (worker = $3 AND claims = $4 OR ",
    held_unwritten!("", "$4", "$8"),
    ")
    RETURNING idx"
);

const RETRY_ELEMENT: &str = "UPDATE jobgraph_queue_elements
    SET fails = fails + 1, error = $5, started_at = coalesce(started_at, jobgraph_at($6)),
        worker = NULL, lease_until = NULL, ready_at = now() + $7 * interval '1 millisecond'
    WHERE run_id = $1 AND step = $2 AND idx = $9 AND position = $10 AND worker = $3
      AND claims = $4 AND state = 'pending' AND fails + 1 < coalesce($8, 9223372036854775807)
    RETURNING jobgraph_ms(ready_at)";

const FAIL_ELEMENT: &str = "UPDATE jobgraph_queue_elements
    SET state = 'failed', fails = fails + 1, error = $5,
        started_at = coalesce(started_at, jobgraph_at($6)), ended_at = now(),
        worker = NULL, lease_until = NULL, ready_at = NULL
    WHERE run_id = $1 AND step = $2 AND idx = $7 AND position = $8 AND worker = $3
      AND claims = $4 AND state = 'pending'";

/// Fan-out `$2` (at position `$4`) of run `$1` failed with its element's error `$3`; its
/// attempts are its elements' claims. Its position, if it was pending.
const FAIL_FAN_OUT: &str = "UPDATE jobgraph_steps s
    SET state = 'failed', error = $3, ended_at = now(), ready_at = NULL,
        attempts = e.attempts, started_at = coalesce(s.started_at, e.started)
    FROM (SELECT coalesce(sum(claims), 0) AS attempts, min(started_at) AS started
        FROM jobgraph_queue_elements WHERE run_id = $1 AND step = $2) e
    WHERE s.run_id = $1 AND s.idx = $4 AND s.state = 'pending'
    RETURNING s.idx";

const CANCEL_FAN_OUT_ELEMENTS: &str = "UPDATE jobgraph_queue_elements
    SET state = 'cancelled', ready_at = NULL, ended_at = now()
    WHERE run_id = $1 AND step = $2 AND state = 'pending'";

const CANCEL_PENDING_ELEMENTS: &str = "UPDATE jobgraph_queue_elements
    SET state = 'cancelled', ready_at = NULL, ended_at = now()
    WHERE run_id = ANY ($1) AND state = 'pending'";

const SKIP_STEPS: &str = "UPDATE jobgraph_steps
    SET state = 'skipped', ready_at = NULL, worker = NULL, lease_until = NULL
    WHERE run_id = $1 AND idx = ANY ($2) AND state = 'pending'";

/// Each run of `$1` succeeded: its last step ([`GraphSpec::is_last`], or its only one)
/// completed in this transaction, under the run's lock, so every step has, as
/// [`END_SETTLED_RUNS`] would count.
const END_COMPLETED_RUNS: &str = "UPDATE jobgraph_runs
    SET state = 'succeeded', error = NULL, updated_at = now(), expires_at = NULL
    WHERE id = ANY ($1) AND state IN ('pending', 'running')";

/// Ends each run of `$1` none of whose steps is pending: failed, naming its first failed step
/// by byte order (`COLLATE \"C\"`, as SQLite's `MIN`), if one failed; else succeeded.
const END_SETTLED_RUNS: &str = "WITH tally AS (
        SELECT run_id, count(*) FILTER (WHERE state = 'pending') AS pending,
            min(name COLLATE \"C\") FILTER (WHERE state = 'failed') AS failed
        FROM jobgraph_steps WHERE run_id = ANY ($1)
        GROUP BY run_id
    )
    UPDATE jobgraph_runs r
    SET state = CASE WHEN t.failed IS NULL THEN 'succeeded' ELSE 'failed' END,
        error = CASE WHEN t.failed IS NOT NULL THEN 'step `' || t.failed || '` failed' END,
        updated_at = now(), expires_at = NULL
    FROM tally t
    WHERE r.id = t.run_id AND t.pending = 0 AND r.state IN ('pending', 'running')";

/// The handed steps whose claims are written in their rows ([`handed_over!`]: pending, claimed,
/// not in the claims' index; a heartbeat or [`WRITE_IMPLICIT_CLAIMS`] wrote them) whose leases
/// ended, among the steps of the first `$2` unfinished queued runs of more
/// than one step after the run of `seq` `$1` (`jobgraph_runs_unfinished`, in `seq` order), are
/// ready at their lease's end: a claim takes each as an expired claim (its attempts counted,
/// its stale completion fenced). A row another transaction holds is left to a later sweep; the
/// rows are locked in (run, position) order, as every writer of several runs' steps locks them.
/// How many runs it read, the last one's `seq`, the jobs of the steps it made ready, and the
/// runs among them that may hold a lapsed claim a commit handed over without writing its row
/// (`unwritten`: a step as [`unwritten!`] says, and a completed step whose lease ended, which
/// the last dependency of such a claim is): [`ImplicitClaims`] reads those.
///
/// The steps are read by their keys (`run_id = ANY` of the runs picked, on the primary key):
/// joined to the runs, a plan made once per connection scanned the whole steps table for
/// handed steps.
const READY_LAPSED_HANDOFFS: &str = concat!(
    "WITH runs AS MATERIALIZED (
        SELECT r.id, r.seq FROM jobgraph_runs r
        WHERE ",
    unfinished_run!(),
    " AND r.seq > $1
        ORDER BY r.seq
        LIMIT $2
    ),
    seen AS MATERIALIZED (
        SELECT q.run_id, q.idx, (",
    handed_over!("q."),
    ") AS handed, q.state = 'completed' AS completed, (",
    unwritten!("q."),
    ") AS unwritten
        FROM jobgraph_steps q
        WHERE q.run_id = ANY (ARRAY(SELECT id FROM runs))
          AND (q.lease_until <= now() OR ",
    unwritten!("q."),
    ")
    ),
    lapsed AS (
        SELECT q.run_id, q.idx FROM jobgraph_steps q
        JOIN seen ON q.run_id = seen.run_id AND q.idx = seen.idx AND seen.handed
        WHERE ",
    handed_over!("q."),
    " AND q.lease_until <= now()
        ORDER BY q.run_id, q.idx
        FOR UPDATE OF q SKIP LOCKED
    ),
    swept AS (
        UPDATE jobgraph_steps s SET ready_at = s.lease_until
        FROM lapsed l
        WHERE s.run_id = l.run_id AND s.idx = l.idx AND s.ready_at IS NULL
        RETURNING s.job
    )
    SELECT (SELECT count(*) FROM runs) AS read, (SELECT max(seq) FROM runs) AS last,
        ARRAY(SELECT DISTINCT job FROM swept) AS jobs,
        ARRAY(SELECT run_id FROM seen GROUP BY run_id
            HAVING bool_or(completed) AND bool_or(unwritten)) AS unwritten"
);

/// The order of [`Queue::leases`]: by holder, then run, step and element, as
/// [`SELECT_LEASES`] orders its rows (a missing step or element last).
fn lease_order(l: &Lease) -> (&str, &str, bool, Option<&str>, bool, Option<usize>) {
    (
        &l.holder,
        &l.run,
        l.step.is_none(),
        l.step.as_deref(),
        l.element.is_none(),
        l.element,
    )
}

/// The unfinished queued runs of more than one step: where [`ImplicitClaims`] are.
const SELECT_UNFINISHED_RUNS: &str =
    concat!("SELECT r.id FROM jobgraph_runs r WHERE ", unfinished_run!());

/// The graphs of runs `$1`, with their jobs.
const SELECT_GRAPH_KEYS: &str = concat!(
    "SELECT id, job, ",
    graph_key!(""),
    " FROM jobgraph_runs WHERE id = ANY ($1)"
);

/// The steps of runs `$1`, as [`ImplicitClaims`] reads them: each one's version (`xmin`),
/// whether it is [`unwritten!`], when it ended (seconds, to the microsecond) and, for a
/// completed step, the worker that completed it and its lease then, and whether that ended.
const SELECT_RUN_STEPS: &str = concat!(
    "SELECT s.run_id, s.idx, s.name, s.state, s.xmin::text::bigint AS version,
        (",
    unwritten!("s."),
    ") AS unwritten,
        extract(epoch FROM s.ended_at)::float8 AS ended, s.worker,
        jobgraph_ms(s.lease_until) AS lease_until, coalesce(s.lease_until <= now(), true) AS lapsed
    FROM jobgraph_steps s WHERE s.run_id = ANY ($1)"
);

/// The implicit claims (`$1[i]`, `$2[i]`: run, position) whose rows are still at version
/// `$3[i]` ([`ImplicitClaims`]), written into their rows: held by `$4[i]` until `$5[i]` (Unix
/// ms), and if `$6[i]` (lapsed) ready at that time, to be claimed as any expired claim; with no
/// holder, ready now and never claimed. The rows are locked in (run, position) order, and one
/// another transaction holds is left (`SKIP LOCKED`). The jobs of the steps made ready.
const WRITE_IMPLICIT_CLAIMS: &str = "WITH m AS (
        SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::text[], $5::bigint[],
            $6::boolean[]) AS m (run_id, idx, version, holder, until, lapsed)
    ),
    locked AS (
        SELECT s.run_id, s.idx FROM jobgraph_steps s
        JOIN m ON s.run_id = m.run_id AND s.idx = m.idx
        WHERE s.state = 'pending' AND s.claims = 0 AND s.xmin = m.version::text::xid
        ORDER BY s.run_id, s.idx
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE jobgraph_steps s
    SET worker = m.holder, claims = CASE WHEN m.holder IS NULL THEN 0 ELSE 1 END, waiting = 0,
        lease_until = jobgraph_at(m.until),
        ready_at = CASE WHEN m.lapsed THEN coalesce(jobgraph_at(m.until), now()) END
    FROM locked l
    JOIN m ON m.run_id = l.run_id AND m.idx = l.idx
    WHERE s.run_id = l.run_id AND s.idx = l.idx
    RETURNING CASE WHEN m.lapsed THEN s.job END AS job";

/// Runs `$1` (locked, their pending steps cancelled) are cancelled, but for those of one step
/// that completed: the ones it cancelled.
const ABORT_RUNS: &str = concat!(
    "UPDATE jobgraph_runs r
    SET state = 'cancelled', error = 'aborted', updated_at = now(), expires_at = NULL
    WHERE r.id = ANY ($1) AND NOT EXISTS (SELECT 1 ",
    alone_completed!("r."),
    ")
    RETURNING r.id"
);

/// The pending steps of runs `$1` (locked) are cancelled, locked in (run, position) order: the
/// order in which a worker completes the only steps of several runs, whose runs it does not
/// lock.
const CANCEL_PENDING_STEPS: &str = "UPDATE jobgraph_steps
    SET state = 'cancelled', ready_at = NULL, ended_at = now()
    WHERE (run_id, idx) IN (SELECT run_id, idx FROM jobgraph_steps
        WHERE run_id = ANY ($1) AND state = 'pending' ORDER BY run_id, idx FOR UPDATE)
      AND state = 'pending'";

/// The claims workers hold and the runs durable runners hold, live or expired.
const SELECT_LEASES: &str = "SELECT worker AS holder, run_id AS run, name AS step,
        claims AS attempt, NULL::bigint AS element, jobgraph_ms(lease_until) AS until
    FROM jobgraph_steps WHERE state = 'pending' AND worker IS NOT NULL
    UNION ALL
    SELECT worker, run_id, step, claims, idx, jobgraph_ms(lease_until)
    FROM jobgraph_queue_elements WHERE state = 'pending' AND worker IS NOT NULL
    UNION ALL
    SELECT lease_owner, id, NULL, NULL, NULL, jobgraph_ms(lease_until)
    FROM jobgraph_runs WHERE state = 'running' AND lease_owner IS NOT NULL
    ORDER BY 1, 2, 3, 5";
