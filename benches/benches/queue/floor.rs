//! `floor-pg`: what a single-step job costs PostgreSQL at the least, in jobgraph's schema.
//!
//! A worker process of this system runs no jobgraph code: bare statements on jobgraph's tables,
//! the fewest row writes any store that keeps a run row and a step row per job (to answer
//! `status` and `result` from any process) could make for a single-step job. A claim locks the
//! best ready steps in the claim's index order and leases them (the step's row, a HOT update),
//! returning each run's input; the completion stores each output in one statement (the step's
//! row, leaving the claim's index). The run's row is not written when its step completes: as
//! jobgraph's store does for a run of one step since schema version 11, readers see the run
//! succeeded from its step. (Before, both wrote the run's end too, and jobgraph locked each run
//! first.)
//!
//! Each process runs [`LOOPS`] claim-and-complete loops at once (`FLOOR_LOOPS` in its
//! environment changes it) on a pool of as many connections (statements planned once, as
//! `PgStore`'s are), each claiming up to [`TAKE`] steps at a time, the claims of one loop
//! overlapping the completions of the other. On 2 cores the floor is highest with 2 to 4 loops
//! in all: more claims at once contend for the cores, and each claim passes over the steps the
//! others hold (claimed steps stay in the claim's index, so that a claim is a HOT update).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jobgraph::CancellationToken;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Claim-and-complete loops per worker process, unless `FLOOR_LOOPS` says.
const LOOPS: usize = 2;
/// Steps one claim takes at most.
const TAKE: i64 = 240;

/// The best `$2` claimable steps of job `$3` (as jobgraph's claim filters and orders them, on
/// its index of unlimited steps), leased to `$1` for a minute: each step's run, name and claim
/// number, and its run's input. As jobgraph's claim, it updates the rows it locked by `ctid` (a
/// TID scan) and reads each run by its key: joined on the keys, a plan made with the tables'
/// statistics current (the submit analyzes them) hashed the whole steps table against the rows
/// picked.
const CLAIM: &str = "WITH picked AS (
        SELECT s.ctid AS row FROM jobgraph_steps s
        WHERE s.job = $3 AND NOT s.limited AND s.state = 'pending' AND s.ready_at IS NOT NULL
          AND s.ready_at <= now()
          AND (s.worker IS NULL
               OR (s.lease_until <= now() AND s.claims - s.fails < s.max_attempts))
          AND (s.expires_at IS NULL OR s.expires_at > now())
        ORDER BY s.priority DESC, s.ready_at, s.run_seq, s.idx
        LIMIT $2
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE jobgraph_steps s
    SET worker = $1, lease_until = now() + interval '1 minute', claims = s.claims + 1
    WHERE s.ctid = ANY (ARRAY(SELECT row FROM picked))
    RETURNING s.run_id, s.name, s.claims,
        (SELECT r.input FROM jobgraph_runs r WHERE r.id = s.run_id) AS input";

/// Each step (`$2[i]`, `$3[i]`) that `$1` holds under claim `$4[i]` completed with output
/// `$5[i]`: the only step of its run, whose run it ends.
const COMPLETE: &str = "UPDATE jobgraph_steps s
    SET state = 'completed', output = c.output, attempts = s.claims, error = NULL,
        started_at = now(), ended_at = now(), worker = NULL, lease_until = NULL,
        ready_at = NULL
    FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[])
        AS c (run_id, name, claims, output)
    WHERE s.run_id = c.run_id AND s.name = c.name AND s.worker = $1
      AND s.claims = c.claims AND s.state = 'pending' AND s.alone";

/// A `floor-pg` worker process named `name` on database `url`, running single-step jobs of
/// `job` (each returns its input) until `stop` is cancelled: how many it claimed and completed.
pub(crate) async fn worker(
    url: &str,
    name: &str,
    job: &'static str,
    ready: impl FnOnce(),
    stop: CancellationToken,
) -> (u64, u64) {
    let loops = std::env::var("FLOOR_LOOPS")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LOOPS);
    let options: PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    let pool = PgPoolOptions::new()
        .max_connections(loops as u32)
        .min_connections(loops as u32)
        .test_before_acquire(false)
        .connect_with(options.options([("plan_cache_mode", "force_generic_plan")]))
        .await
        .expect("connect the floor's pool");
    let claimed = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    ready();
    let tasks: Vec<_> = (0..loops)
        .map(|_| {
            let (pool, name, stop) = (pool.clone(), name.to_owned(), stop.clone());
            let (claimed, completed) = (Arc::clone(&claimed), Arc::clone(&completed));
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let rows = sqlx::query(CLAIM)
                        .bind(&name)
                        .bind(TAKE)
                        .bind(job)
                        .fetch_all(&pool)
                        .await
                        .expect("the floor's claim");
                    if rows.is_empty() {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(5)) => {}
                            () = stop.cancelled() => {}
                        }
                        continue;
                    }
                    claimed.fetch_add(rows.len() as u64, Ordering::Relaxed);
                    let mut runs = Vec::with_capacity(rows.len());
                    let mut names = Vec::with_capacity(rows.len());
                    let mut claims = Vec::with_capacity(rows.len());
                    let mut outputs = Vec::with_capacity(rows.len());
                    for row in &rows {
                        runs.push(row.get::<String, _>("run_id"));
                        names.push(row.get::<String, _>("name"));
                        claims.push(row.get::<i64, _>("claims"));
                        // The job: its output is its input.
                        outputs.push(row.get::<String, _>("input"));
                    }
                    let ended = sqlx::query(COMPLETE)
                        .bind(&name)
                        .bind(&runs)
                        .bind(&names)
                        .bind(&claims)
                        .bind(&outputs)
                        .execute(&pool)
                        .await
                        .expect("the floor's completion");
                    assert_eq!(ended.rows_affected(), rows.len() as u64, "runs ended");
                    completed.fetch_add(ended.rows_affected(), Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    pool.close().await;
    (
        claimed.load(Ordering::Relaxed),
        completed.load(Ordering::Relaxed),
    )
}
