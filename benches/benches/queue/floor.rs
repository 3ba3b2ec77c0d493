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
//!
//! The floor of a graph (the 8-step diamond, `--cells graphs`): a claim as above that also
//! returns each step's parents' outputs, and a commit of three statements in one transaction:
//! the steps' completions, their children's readiness (each child's count of dependencies left,
//! and its ready time once none is), and the end of each run whose last step completed. No run
//! is locked: a child's row lock orders its parents' commits, each counting down the version
//! the one before committed. A step of a graph thus costs three row writes (made ready, claimed,
//! completed) where a single-step job costs two, and a run's end one more: what no store that
//! keeps a row per step and claims steps, not runs, can do with fewer. With `FLOOR_HANDOFF`, the
//! commit claims the children it makes ready for its own loop in the same write, as jobgraph's
//! commits do (schema version 17): two row writes per step, both HOT (no index entry), where a
//! claimed step's are not.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jobgraph::CancellationToken;
use jobgraph::store::GraphSpec;
use sqlx::PgPool;
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Claim-and-complete loops per worker process, unless `FLOOR_LOOPS` says.
const LOOPS: usize = 2;
/// Steps one claim takes at most.
const TAKE: i64 = 240;

/// The best `$2` claimable steps of job `$3` (as jobgraph's claim filters and orders them, on
/// its index of unlimited steps), leased to `$1` for a minute, returning `$returning` of each.
/// As jobgraph's claim, it updates the rows it locked by `ctid` (a TID scan) and reads each run
/// by its key: joined on the keys, a plan made with the tables' statistics current (the submit
/// analyzes them) hashed the whole steps table against the rows picked.
macro_rules! claim {
    ($returning:literal) => {
        concat!(
            "WITH picked AS (
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
    RETURNING ",
            $returning
        )
    };
}

/// [`claim!`] of single-step jobs: each step's run, name and claim number, and its run's input
/// (which the step of a run of one step carries since schema version 19: its run's row is read
/// only for a step without it).
const CLAIM: &str = claim!(
    "s.run_id, s.name, s.claims,
        coalesce(s.run_input,
            (SELECT r.input FROM jobgraph_runs r WHERE r.id = s.run_id)) AS input"
);

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

/// [`claim!`] of the steps of a graph: each step's run, position and claim number, its run's
/// input, and its parents' outputs (`$4[i]`'s parents are `$5[i]`, an edge per entry,
/// positions in the graph), in position order, as jobgraph's claim reads them.
const CLAIM_GRAPH: &str = claim!(
    "s.run_id, s.idx, s.claims,
        (SELECT r.input FROM jobgraph_runs r WHERE r.id = s.run_id) AS input,
        ARRAY(SELECT p.output FROM jobgraph_steps p
            WHERE p.run_id = s.run_id AND p.idx IN (SELECT e.parent
                FROM unnest($4::integer[], $5::integer[]) AS e (child, parent)
                WHERE e.child = s.idx)
            ORDER BY p.idx) AS outputs"
);

/// Each step (`$2[i]`, `$3[i]`: run, position) that `$1` holds under claim `$4[i]` completed
/// with output `$5[i]`.
const COMPLETE_GRAPH: &str = "UPDATE jobgraph_steps s
    SET state = 'completed', output = c.output, attempts = s.claims, error = NULL,
        started_at = now(), ended_at = now(), worker = NULL, lease_until = NULL,
        ready_at = NULL
    FROM unnest($2::text[], $3::integer[], $4::bigint[], $5::text[])
        AS c (run_id, idx, claims, output)
    WHERE s.run_id = c.run_id AND s.idx = c.idx AND s.worker = $1
      AND s.claims = c.claims AND s.state = 'pending'";

/// Each step (`$1[i]`, `$2[i]`: run, position) had `$3[i]` of its dependencies complete: counted
/// down, and ready once none is left. (`$4`, the worker, unused: the statement's parameters
/// are [`READY_AND_HAND_CHILDREN`]'s.) No rows.
const READY_CHILDREN: &str = "UPDATE jobgraph_steps s
    SET waiting = s.waiting - d.n, ready_at = CASE WHEN s.waiting = d.n THEN now() END
    FROM unnest($1::text[], $2::integer[], $3::integer[]) AS d (run_id, idx, n)
    WHERE s.run_id = d.run_id AND s.idx = d.idx AND s.state = 'pending' AND s.waiting >= d.n
      AND $4::text IS NOT NULL";

/// [`READY_CHILDREN`], but each step made ready is claimed for worker `$4` in the same write
/// (`FLOOR_HANDOFF`), outside the claims' index as jobgraph's commits hand steps over (schema
/// version 17: `ready_at` stays NULL, so the write is HOT, and so is the completion): those
/// steps, each with its claim number.
const READY_AND_HAND_CHILDREN: &str = "UPDATE jobgraph_steps s
    SET waiting = s.waiting - d.n,
        worker = CASE WHEN s.waiting = d.n THEN $4 ELSE s.worker END,
        lease_until = CASE WHEN s.waiting = d.n THEN now() + interval '1 minute'
            ELSE s.lease_until END,
        claims = s.claims + CASE WHEN s.waiting = d.n THEN 1 ELSE 0 END
    FROM unnest($1::text[], $2::integer[], $3::integer[]) AS d (run_id, idx, n)
    WHERE s.run_id = d.run_id AND s.idx = d.idx AND s.state = 'pending' AND s.waiting >= d.n
    RETURNING s.run_id, s.idx, s.claims, s.waiting = 0 AS handed";

/// Runs `$1`, whose last step completed, succeeded.
const END_RUNS: &str = "UPDATE jobgraph_runs
    SET state = 'succeeded', error = NULL, updated_at = now(), expires_at = NULL
    WHERE id = ANY ($1)";

/// The graph a floor worker runs: each step's parents and children, and its one last step.
struct Graph {
    /// Each step's parents, ascending.
    parents: Vec<Vec<i32>>,
    /// Edges as (child, parent) positions, the claim's `$4` and `$5`.
    edges: (Vec<i32>, Vec<i32>),
    children: Vec<Vec<i32>>,
    last: i32,
}

impl Graph {
    /// The parents of step `position`, ascending.
    fn parents(&self, position: i32) -> Vec<i32> {
        self.parents[position as usize].clone()
    }

    fn of(spec: &GraphSpec) -> Graph {
        let n = spec.steps.len();
        let (mut child, mut parent) = (Vec::new(), Vec::new());
        for c in 0..n {
            for p in spec.dependencies(c) {
                child.push(c as i32);
                parent.push(p as i32);
            }
        }
        let children: Vec<Vec<i32>> = (0..n)
            .map(|p| spec.children(p).into_iter().map(|c| c as i32).collect())
            .collect();
        let last: Vec<usize> = (0..n).filter(|&p| children[p].is_empty()).collect();
        assert_eq!(last.len(), 1, "the floor runs graphs with one last step");
        Graph {
            parents: (0..n)
                .map(|c| spec.dependencies(c).into_iter().map(|p| p as i32).collect())
                .collect(),
            edges: (child, parent),
            children,
            last: last[0] as i32,
        }
    }
}

/// A `floor-pg` worker process named `name` on database `url`, running jobs of `job` until
/// `stop` is cancelled: single-step jobs (each returns its input), or with `graph` that job's
/// steps (each returns the sum of its parents' outputs, its run's first 1): how many steps it
/// completed (each a step it claimed: every commit asserts its claims held).
pub(crate) async fn worker(
    url: &str,
    name: &str,
    job: &'static str,
    graph: Option<GraphSpec>,
    ready: impl FnOnce(),
    stop: CancellationToken,
) -> u64 {
    let loops = loops();
    let pool = pool(url, loops, &[]).await;
    let graph = graph.map(|spec| Arc::new(Graph::of(&spec)));
    let handoff = std::env::var("FLOOR_HANDOFF").is_ok();
    let done = Arc::new(AtomicU64::new(0));
    ready();
    let tasks: Vec<_> = (0..loops)
        .map(|_| {
            let (pool, name, stop) = (pool.clone(), name.to_owned(), stop.clone());
            let (done, graph) = (Arc::clone(&done), graph.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let n = match &graph {
                        None => single_steps(&pool, &name, job).await,
                        Some(graph) => graph_steps(&pool, &name, job, graph, handoff).await,
                    };
                    if n == 0 {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(5)) => {}
                            () = stop.cancelled() => {}
                        }
                        continue;
                    }
                    done.fetch_add(n, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    pool.close().await;
    done.load(Ordering::Relaxed)
}

/// Claim-and-complete loops per worker process: [`LOOPS`], or `FLOOR_LOOPS`.
pub(crate) fn loops() -> usize {
    std::env::var("FLOOR_LOOPS")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(LOOPS)
}

/// A pool of `loops` connections to `url`, each statement planned once (as `PgStore`'s are),
/// with the settings `also`.
pub(crate) async fn pool(url: &str, loops: usize, also: &[(&str, &str)]) -> PgPool {
    let options: PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    let settings = [("plan_cache_mode", "force_generic_plan")]
        .iter()
        .chain(also);
    PgPoolOptions::new()
        .max_connections(loops as u32)
        .min_connections(loops as u32)
        .test_before_acquire(false)
        .connect_with(options.options(settings.copied()))
        .await
        .expect("connect the floor's pool")
}

/// Claims and completes up to [`TAKE`] single-step jobs: how many.
async fn single_steps(pool: &PgPool, name: &str, job: &str) -> u64 {
    let rows = sqlx::query(CLAIM)
        .bind(name)
        .bind(TAKE)
        .bind(job)
        .fetch_all(pool)
        .await
        .expect("the floor's claim");
    if rows.is_empty() {
        return 0;
    }
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
        .bind(name)
        .bind(&runs)
        .bind(&names)
        .bind(&claims)
        .bind(&outputs)
        .execute(pool)
        .await
        .expect("the floor's completion");
    assert_eq!(ended.rows_affected(), rows.len() as u64, "runs ended");
    ended.rows_affected()
}

/// A step of a graph a loop holds: its run, position and claim number.
struct Held {
    run: String,
    position: i32,
    claims: i64,
}

/// Claims up to [`TAKE`] steps of `graph`'s runs and completes them; with `handoff`, then runs
/// and completes the children each commit handed over, until none is: how many steps.
async fn graph_steps(pool: &PgPool, name: &str, job: &str, graph: &Graph, handoff: bool) -> u64 {
    let rows = sqlx::query(CLAIM_GRAPH)
        .bind(name)
        .bind(TAKE)
        .bind(job)
        .bind(&graph.edges.0)
        .bind(&graph.edges.1)
        .fetch_all(pool)
        .await
        .expect("the floor's claim");
    // The outputs this loop knows, by (run, position): its claims' parents' and its own.
    let mut known: HashMap<(String, i32), u64> = HashMap::new();
    let mut held = Vec::with_capacity(rows.len());
    for row in &rows {
        let run: String = row.get("run_id");
        let position: i32 = row.get("idx");
        let parents: Vec<String> = row.get("outputs");
        let parent_positions = graph.parents(position);
        assert_eq!(
            parents.len(),
            parent_positions.len(),
            "every parent's output"
        );
        for (p, output) in parent_positions.into_iter().zip(&parents) {
            let output = output.parse().expect("a parent's output");
            known.insert((run.clone(), p), output);
        }
        held.push(Held {
            run,
            position,
            claims: row.get("claims"),
        });
    }
    let mut steps = 0;
    while !held.is_empty() {
        steps += held.len() as u64;
        held = commit_graph(pool, name, graph, held, &mut known, handoff).await;
    }
    steps
}

/// Runs `held` (their parents' outputs in `known`, where theirs go) and completes them in one
/// transaction: the children handed over (with `handoff`; none without).
async fn commit_graph(
    pool: &PgPool,
    name: &str,
    graph: &Graph,
    held: Vec<Held>,
    known: &mut HashMap<(String, i32), u64>,
    handoff: bool,
) -> Vec<Held> {
    let (mut runs, mut positions) = (Vec::new(), Vec::new());
    let (mut claims, mut outputs) = (Vec::new(), Vec::new());
    // Each child's dependencies completed here, by (run, position): sorted, so that two
    // commits count down their common children in one order.
    let mut kids: BTreeMap<(String, i32), i32> = BTreeMap::new();
    let mut ended = Vec::new();
    for step in held {
        let output = graph
            .parents(step.position)
            .into_iter()
            .map(|p| {
                *known
                    .get(&(step.run.clone(), p))
                    .expect("a step's parents' outputs are known")
            })
            .fold(None, |a: Option<u64>, b| {
                Some(a.unwrap_or(0).wrapping_add(b))
            })
            .unwrap_or(1);
        known.insert((step.run.clone(), step.position), output);
        for &kid in &graph.children[step.position as usize] {
            *kids.entry((step.run.clone(), kid)).or_default() += 1;
        }
        if step.position == graph.last {
            ended.push(step.run.clone());
        }
        runs.push(step.run);
        positions.push(step.position);
        claims.push(step.claims);
        outputs.push(output.to_string());
    }
    let (kid_keys, counts): (Vec<(String, i32)>, Vec<i32>) = kids.into_iter().unzip();
    let (kid_runs, kid_positions): (Vec<String>, Vec<i32>) = kid_keys.into_iter().unzip();
    let mut tx = pool.begin().await.expect("the floor's commit");
    let stored = sqlx::query(COMPLETE_GRAPH)
        .bind(name)
        .bind(&runs)
        .bind(&positions)
        .bind(&claims)
        .bind(&outputs)
        .execute(&mut *tx)
        .await
        .expect("the floor's completion");
    assert_eq!(stored.rows_affected(), runs.len() as u64, "steps completed");
    let handed = sqlx::query(if handoff {
        READY_AND_HAND_CHILDREN
    } else {
        READY_CHILDREN
    })
    .bind(&kid_runs)
    .bind(&kid_positions)
    .bind(&counts)
    .bind(name)
    .fetch_all(&mut *tx)
    .await
    .expect("the floor's readiness");
    if !ended.is_empty() {
        sqlx::query(END_RUNS)
            .bind(&ended)
            .execute(&mut *tx)
            .await
            .expect("the floor's ends of runs");
    }
    tx.commit().await.expect("the floor's commit");
    for run in &ended {
        known.retain(|(r, _), _| r != run);
    }
    handed
        .iter()
        .filter(|row| row.get::<bool, _>("handed"))
        .map(|row| Held {
            run: row.get("run_id"),
            position: row.get("idx"),
            claims: row.get("claims"),
        })
        .collect()
}
