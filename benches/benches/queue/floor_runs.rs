//! `floor-runs`: the fewest writes of a schema that keeps a run's step states in its run's row,
//! as bare SQL on tables of its own. Not jobgraph's schema: what a rewrite of its PostgreSQL
//! queue to that shape could reach at best, measured beside `floor-pg` (a row per step).
//!
//! A run's row holds its steps' states as bits (`ready`: claimable; `done`: completed) and, per
//! step, the worker holding its claim (`holder`, 0 for none) and its claim number (`fence`); it
//! is in the claim's index while a step of it is ready (`ready_at`), and in the lease index
//! while a step of it is held (`lease_until`). A step's output is a row of `floor_outputs`,
//! inserted when it completes (what `status` and `result` read from any process, and a child's
//! claim reads).
//!
//! A claim locks the best runs with ready steps and takes every ready step of each (one write
//! per run), returning the outputs of those steps' parents. A commit, in one transaction, locks
//! its runs in id order, checks that the worker still holds each completed step under the claim
//! it ran, marks them done, and hands the committing worker the steps that became ready (their
//! holder set in the same write: a child runs where its parents ran, with their outputs in
//! memory), ending a run whose steps all completed; then inserts the outputs. A single-step job
//! costs three writes (claim, commit, output), one more than in `floor-pg`'s schema; the 8-step
//! diamond, run by one worker from claim to end, fourteen (a claim, a commit per level of five,
//! eight outputs), where `floor-pg` needs twenty-seven. Each process runs as many loops as
//! `floor-pg`; a loop claims, then runs and commits what it was handed until nothing is, then
//! claims again. The sweep of expired leases is not run (nothing expires in a burn-down).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jobgraph::CancellationToken;
use jobgraph::store::GraphSpec;
use sqlx::{PgPool, Row as _};

/// Runs one claim takes at most.
const TAKE: i64 = 240;

/// The schema: runs with their steps' states, and the steps' outputs.
pub(crate) const SCHEMA: &str = "CREATE TABLE floor_runs (
        id          bigint      NOT NULL PRIMARY KEY,
        job         text        COLLATE \"C\" NOT NULL,
        priority    integer     NOT NULL DEFAULT 0,
        input       text        NOT NULL,
        state       text        NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
        steps       integer     NOT NULL CHECK (steps BETWEEN 1 AND 31),
        ready       integer     NOT NULL,
        done        integer     NOT NULL DEFAULT 0,
        holder      integer[]   NOT NULL,
        fence       integer[]   NOT NULL,
        ready_at    timestamptz,
        lease_until timestamptz,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        CHECK ((ready = 0) = (ready_at IS NULL))
    ) WITH (fillfactor = 50);
    CREATE INDEX floor_runs_ready ON floor_runs (job, priority DESC, ready_at, id)
        WHERE ready_at IS NOT NULL;
    CREATE INDEX floor_runs_leased ON floor_runs (lease_until) WHERE lease_until IS NOT NULL;
    CREATE TABLE floor_outputs (
        run_id   bigint      NOT NULL REFERENCES floor_runs (id) ON DELETE CASCADE,
        idx      integer     NOT NULL,
        output   text        NOT NULL,
        ended_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, idx)
    )";

/// `$1` runs of job `$2` with `$3` steps, steps `$4` (bits) ready: each run's input its number.
const SUBMIT: &str =
    "INSERT INTO floor_runs (id, job, input, steps, ready, holder, fence, ready_at)
    SELECT g, $2, '{\"n\":' || g || '}', $3, $4, array_fill(0, ARRAY[$3]),
        array_fill(0, ARRAY[$3]), now()
    FROM generate_series(1, $1::bigint) AS g";

/// Runs not ended.
pub(crate) const LEFT: &str =
    "SELECT count(*) FROM floor_runs WHERE state IN ('pending', 'running')";
/// Whether a step is ready or held (each from its partial index).
pub(crate) const BUSY: &str = "SELECT
    EXISTS (SELECT 1 FROM floor_runs WHERE ready_at IS NOT NULL)
    OR EXISTS (SELECT 1 FROM floor_runs WHERE lease_until IS NOT NULL)";

/// The best `$2` runs of job `$3` with ready steps, each of their ready steps claimed for
/// worker `$1`: each run, the steps taken (bits), its claim numbers, its input, and the outputs
/// of the taken steps' parents (positions and outputs; `$4[i]`: the parents of step `i`, bits).
const CLAIM: &str = "WITH picked AS (
        SELECT id, ready FROM floor_runs
        WHERE job = $3 AND ready_at IS NOT NULL AND ready_at <= now()
        ORDER BY priority DESC, ready_at, id
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    )
    UPDATE floor_runs r
    SET ready = 0, ready_at = NULL,
        holder = ARRAY(SELECT CASE WHEN p.ready & (1 << (i - 1)) <> 0 THEN $1
            ELSE r.holder[i] END FROM generate_subscripts(r.holder, 1) AS i),
        fence = ARRAY(SELECT r.fence[i] + ((p.ready >> (i - 1)) & 1)
            FROM generate_subscripts(r.fence, 1) AS i),
        lease_until = now() + interval '1 minute',
        state = 'running', updated_at = now()
    FROM picked p
    WHERE r.id = p.id
    RETURNING r.id, p.ready AS taken, r.fence, r.input,
        ARRAY(SELECT o.idx FROM floor_outputs o WHERE o.run_id = r.id
            AND (SELECT bit_or(m.parents) FROM unnest($4::integer[]) WITH ORDINALITY AS m (parents, i)
                 WHERE p.ready & (1 << (m.i::integer - 1)) <> 0) & (1 << o.idx) <> 0 ORDER BY o.idx) AS dep_idx,
        ARRAY(SELECT o.output FROM floor_outputs o WHERE o.run_id = r.id
            AND (SELECT bit_or(m.parents) FROM unnest($4::integer[]) WITH ORDINALITY AS m (parents, i)
                 WHERE p.ready & (1 << (m.i::integer - 1)) <> 0) & (1 << o.idx) <> 0 ORDER BY o.idx) AS dep_output";

/// Runs `$2[i]`, whose steps `$3[i]` (bits) worker `$1` completed under claim numbers
/// `$4[(i - 1) * $6 + k]` (step `k`, from 1; `$6` steps a run), locked in id order: the steps
/// done, and the steps that became ready (their parents `$5[k]`, bits) handed to `$1`. A run
/// whose steps all completed succeeded. Each run whose claims held: the steps handed over, and
/// their claim numbers.
const COMMIT: &str = "WITH c AS (
        SELECT * FROM unnest($2::bigint[], $3::integer[]) WITH ORDINALITY AS c (id, bits, n)
    ),
    locked AS (
        SELECT r.id, r.done | c.bits AS done, r.ready, r.holder, r.steps
        FROM floor_runs r JOIN c ON r.id = c.id
        WHERE NOT EXISTS (SELECT 1 FROM generate_subscripts(r.holder, 1) AS k
            WHERE c.bits & (1 << (k - 1)) <> 0
              AND (r.holder[k] <> $1 OR r.fence[k] <> ($4::integer[])[(c.n::integer - 1) * $6 + k]))
        ORDER BY r.id
        FOR UPDATE OF r
    ),
    fresh AS MATERIALIZED (
        SELECT l.id, l.done, (SELECT coalesce(bit_or(1 << (m.k::integer - 1)), 0)
            FROM unnest($5::integer[]) WITH ORDINALITY AS m (parents, k)
            WHERE m.k <= l.steps AND (l.done & m.parents) = m.parents
              AND (l.done | l.ready) & (1 << (m.k::integer - 1)) = 0 AND l.holder[m.k::integer] = 0
            ) AS bits
        FROM locked l
    )
    UPDATE floor_runs r
    SET done = f.done,
        holder = ARRAY(SELECT CASE WHEN f.bits & (1 << (k - 1)) <> 0 THEN $1
            WHEN f.done & (1 << (k - 1)) <> 0 THEN 0 ELSE r.holder[k] END
            FROM generate_subscripts(r.holder, 1) AS k),
        fence = ARRAY(SELECT r.fence[k] + ((f.bits >> (k - 1)) & 1)
            FROM generate_subscripts(r.fence, 1) AS k),
        lease_until = CASE WHEN f.done = (1 << r.steps) - 1 THEN NULL
            ELSE now() + interval '1 minute' END,
        state = CASE WHEN f.done = (1 << r.steps) - 1 THEN 'succeeded' ELSE 'running' END,
        updated_at = now()
    FROM fresh f
    WHERE r.id = f.id
    RETURNING r.id, f.bits AS handed, r.fence";

/// The outputs `$3[i]` of steps `$2[i]` of runs `$1[i]`.
const INSERT_OUTPUTS: &str = "INSERT INTO floor_outputs (run_id, idx, output)
    SELECT * FROM unnest($1::bigint[], $2::integer[], $3::text[])";

/// Creates the schema and submits `runs` runs of a job of `graph`'s shape (`None`: one step).
pub(crate) async fn setup_and_insert(url: &str, job: &str, graph: Option<&GraphSpec>, runs: u64) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the floor's database");
    sqlx::raw_sql(SCHEMA)
        .execute(&mut conn)
        .await
        .expect("the floor's schema");
    let shape = Shape::of(graph);
    let roots: i32 = (0..shape.steps)
        .filter(|&k| shape.parents[k] == 0)
        .map(|k| 1 << k)
        .sum();
    sqlx::query(SUBMIT)
        .bind(runs as i64)
        .bind(job)
        .bind(shape.steps as i32)
        .bind(roots)
        .execute(&mut conn)
        .await
        .expect("the floor's submit");
    sqlx::raw_sql("ANALYZE floor_runs; ANALYZE floor_outputs")
        .execute(&mut conn)
        .await
        .expect("analyze the floor's tables");
}

/// A job's shape: its steps' parents, as bits.
struct Shape {
    steps: usize,
    parents: Vec<i32>,
}

impl Shape {
    fn of(graph: Option<&GraphSpec>) -> Shape {
        let Some(spec) = graph else {
            return Shape {
                steps: 1,
                parents: vec![0],
            };
        };
        let steps = spec.steps.len();
        assert!(steps <= 31, "the floor's runs hold at most 31 steps");
        let parents = (0..steps)
            .map(|k| spec.dependencies(k).into_iter().map(|p| 1 << p).sum())
            .collect();
        Shape { steps, parents }
    }
}

/// A step claimed or handed to a loop: its run, position and claim number.
struct Step {
    run: i64,
    position: usize,
    fence: i32,
}

/// The outputs a loop knows, by run and position: those its claims read and those its steps
/// returned, from a claim until what it was handed ran out (a handed step's parents ran in
/// that loop, or were read by the claim that started it).
type Outputs = HashMap<i64, HashMap<usize, u64>>;

/// A `floor-runs` worker process named `name` (`...-N`: holder `N + 1`) on database `url`,
/// running jobs of `job` (of `graph`'s shape; `None`: one step) until `stop` is cancelled: each
/// step returns the sum of its parents' outputs, a run's first 1. How many steps it claimed
/// (or was handed) and completed.
pub(crate) async fn worker(
    url: &str,
    name: &str,
    job: &'static str,
    graph: Option<GraphSpec>,
    ready: impl FnOnce(),
    stop: CancellationToken,
) -> u64 {
    let loops = super::floor::loops();
    let holder: i32 = name
        .rsplit('-')
        .next()
        .and_then(|n| n.parse::<i32>().ok())
        .map_or(1, |n| n + 1);
    let pool = super::floor::pool(
        url,
        loops,
        // The tables' statistics are of the fresh backlog (no outputs yet): planned with
        // them, every read of outputs scans the table, and a join of a claim's or commit's
        // runs walks the runs' key from its start. The floor measures writes, not plans:
        // each run and output is found by its key.
        &[
            ("enable_seqscan", "off"),
            ("enable_mergejoin", "off"),
            ("enable_hashjoin", "off"),
        ],
    )
    .await;
    let shape = Arc::new(Shape::of(graph.as_ref()));
    let done = Arc::new(AtomicU64::new(0));
    ready();
    let tasks: Vec<_> = (0..loops)
        .map(|_| {
            let (pool, stop, shape, done) = (
                pool.clone(),
                stop.clone(),
                Arc::clone(&shape),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                let mut outputs = Outputs::new();
                while !stop.is_cancelled() {
                    outputs.clear();
                    let mut steps = claim(&pool, holder, job, &shape, &mut outputs).await;
                    if steps.is_empty() {
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_millis(5)) => {}
                            () = stop.cancelled() => {}
                        }
                        continue;
                    }
                    while !steps.is_empty() {
                        done.fetch_add(steps.len() as u64, Ordering::Relaxed);
                        steps = commit(&pool, holder, &shape, steps, &mut outputs).await;
                    }
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

/// Claims the ready steps of up to [`TAKE`] runs, their parents' outputs into `outputs`.
async fn claim(
    pool: &PgPool,
    holder: i32,
    job: &str,
    shape: &Shape,
    outputs: &mut Outputs,
) -> Vec<Step> {
    let rows = sqlx::query(CLAIM)
        .bind(holder)
        .bind(TAKE)
        .bind(job)
        .bind(&shape.parents)
        .fetch_all(pool)
        .await
        .expect("the floor's claim");
    let mut steps = Vec::new();
    for row in &rows {
        let run: i64 = row.get("id");
        let taken: i32 = row.get("taken");
        let fence: Vec<i32> = row.get("fence");
        let dep_idx: Vec<i32> = row.get("dep_idx");
        let dep_output: Vec<String> = row.get("dep_output");
        outputs.entry(run).or_default().extend(
            dep_idx
                .into_iter()
                .map(|p| p as usize)
                .zip(dep_output.iter().map(|o| o.parse().expect("an output"))),
        );
        steps.extend(
            (0..shape.steps)
                .filter(|k| taken & (1 << k) != 0)
                .map(|position| Step {
                    run,
                    position,
                    fence: fence[position],
                }),
        );
    }
    steps
}

/// Runs `steps` (their parents' outputs from `outputs`, where theirs go) and commits them: the
/// steps handed over in return.
async fn commit(
    pool: &PgPool,
    holder: i32,
    shape: &Shape,
    steps: Vec<Step>,
    outputs: &mut Outputs,
) -> Vec<Step> {
    // Per run (in the order first met): the steps completed (bits) and their claim numbers.
    let mut at: HashMap<i64, usize> = HashMap::new();
    let (mut runs, mut bits, mut fences) = (Vec::new(), Vec::new(), Vec::new());
    let (mut out_runs, mut out_idx, mut out_text) = (Vec::new(), Vec::new(), Vec::new());
    for step in steps {
        let known = outputs.entry(step.run).or_default();
        let output = (0..shape.steps)
            .filter(|p| shape.parents[step.position] & (1 << p) != 0)
            .map(|p| *known.get(&p).expect("a step's parents' outputs are known"))
            .fold(None, |a: Option<u64>, b| {
                Some(a.unwrap_or(0).wrapping_add(b))
            })
            .unwrap_or(1);
        known.insert(step.position, output);
        let r = *at.entry(step.run).or_insert_with(|| {
            runs.push(step.run);
            bits.push(0);
            fences.extend(std::iter::repeat_n(0, shape.steps));
            runs.len() - 1
        });
        bits[r] |= 1 << step.position;
        fences[r * shape.steps + step.position] = step.fence;
        out_runs.push(step.run);
        out_idx.push(step.position as i32);
        out_text.push(output.to_string());
    }
    let mut tx = pool.begin().await.expect("the floor's commit");
    let rows = sqlx::query(COMMIT)
        .bind(holder)
        .bind(&runs)
        .bind(&bits)
        .bind(&fences)
        .bind(&shape.parents)
        .bind(shape.steps as i32)
        .fetch_all(&mut *tx)
        .await
        .expect("the floor's commit");
    assert_eq!(rows.len(), runs.len(), "every claim held");
    sqlx::query(INSERT_OUTPUTS)
        .bind(&out_runs)
        .bind(&out_idx)
        .bind(&out_text)
        .execute(&mut *tx)
        .await
        .expect("the floor's outputs");
    tx.commit().await.expect("the floor's commit");
    let mut handed = Vec::new();
    for row in &rows {
        let run: i64 = row.get("id");
        let bits: i32 = row.get("handed");
        if bits == 0 {
            outputs.remove(&run);
            continue;
        }
        let fence: Vec<i32> = row.get("fence");
        handed.extend(
            (0..shape.steps)
                .filter(|k| bits & (1 << k) != 0)
                .map(|position| Step {
                    run,
                    position,
                    fence: fence[position],
                }),
        );
    }
    handed
}
