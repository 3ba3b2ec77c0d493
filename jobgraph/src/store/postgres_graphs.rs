//! The graphs of queued runs, as claims and commits read them: by key, parsed once per process.
//!
//! Every run stores its job's graph (`jobgraph_runs.graph`), and a claim or a commit needs the
//! graph of each run it touches (which steps a step depends on, which become ready after it).
//! Returning the graph's text with every claimed row cost PostgreSQL a conversion of the JSON to
//! text per row, the wire its bytes, and the worker a hash of the whole text to find the graph
//! it had parsed before. Each run now also stores its graph's key (`graph_key`, written by the
//! submit; schema version 8): the SHA-256 of its text, or empty for a graph of one step (which
//! has no dependencies and no children, so that nothing is looked up for it). Claims and commits
//! return the key ([`graph_key!`]), and a process parses each graph once: the first time it
//! meets a key, it reads the text of one run holding it ([`graphs`]), and keeps the graph by key
//! ([`PARSED`]). Runs stored before version 8 have no key; the statements compute theirs from
//! the text (the same key, so the same graph).
//!
//! Measured (`pgbench`, the claim statement alone, 516 steps of the queue bench's 8-step diamond
//! in one claim, two alternations): 6.12–6.23 ms with the text, 4.53–4.55 ms with the key; the
//! claim's server time per diamond step 0.0146 → 0.0127 ms (`--diagnose`).

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use sqlx::PgConnection;

use super::postgres::{get, graph, no_such_run};
use super::{GraphSpec, StoreError};

/// The key of the graph `$g` (a `jsonb` expression): empty for a graph of one step (which has
/// no dependencies and no children, so that a claim or a commit of single-step jobs looks
/// nothing up), else the SHA-256 of its text.
macro_rules! key_of {
    ($g:expr) => {
        concat!(
            "CASE WHEN jsonb_array_length(",
            $g,
            " -> 'steps') = 1 THEN ''::bytea ELSE sha256(convert_to(",
            $g,
            "::text, 'UTF8')) END"
        )
    };
}
pub(super) use key_of;

/// The key of a run's graph (`$t`: the runs table's alias and a dot, or nothing), as the
/// column `graph_key`: the stored one, or, for a run stored before schema version 8, the one
/// the submit would have stored.
macro_rules! graph_key {
    ($t:literal) => {
        concat!(
            "coalesce(",
            $t,
            "graph_key, ",
            $crate::store::postgres_graphs::key_of!(concat!($t, "graph")),
            ") AS graph_key"
        )
    };
}
pub(super) use graph_key;

/// What the submit stores as `graph_key` for the graph `$n` (a `jsonb` parameter), once per
/// statement (an uncorrelated subquery) however many runs it inserts.
macro_rules! key_of_graph {
    ($n:literal) => {
        concat!(
            "(SELECT ",
            $crate::store::postgres_graphs::key_of!(concat!($n, "::jsonb")),
            ")"
        )
    };
}
pub(super) use key_of_graph;

/// A graph as claims and commits use it: `None` for a graph of one step (its key is empty).
pub(super) type Graph = Option<Arc<GraphSpec>>;

/// The graphs parsed in this process, by key. A graph is immutable and named by the hash of
/// its whole text, so one map serves every store of the process.
static PARSED: LazyLock<Mutex<HashMap<Vec<u8>, Graph>>> = LazyLock::new(Mutex::default);

/// How many distinct graphs [`PARSED`] keeps before it starts again (a process serving more
/// jobs, or more versions of them, reads and parses more often; it stays correct).
const PARSED_MAX: usize = 256;

/// The text of the graphs of runs `$1`.
const SELECT_GRAPHS: &str =
    "SELECT id, graph::text AS graph FROM jobgraph_runs WHERE id = ANY ($1)";

/// The graph of each of `runs` (a run's id and its graph's key), in order: those this process
/// parsed before from the map, the others read (one run per key) on `conn`, parsed, and kept.
pub(super) async fn graphs(
    conn: &mut PgConnection,
    runs: &[(&str, &[u8])],
) -> Result<Vec<Graph>, StoreError> {
    let mut found: Vec<Option<Graph>> = Vec::with_capacity(runs.len());
    // A run to read, for each key not known.
    let mut missing: HashMap<&[u8], &str> = HashMap::new();
    {
        let parsed = PARSED.lock().unwrap_or_else(|e| e.into_inner());
        for &(run, key) in runs {
            if key.is_empty() {
                found.push(Some(None));
                continue;
            }
            let graph = parsed.get(key).cloned();
            if graph.is_none() {
                missing.entry(key).or_insert(run);
            }
            found.push(graph);
        }
    }
    if missing.is_empty() {
        return Ok(found.into_iter().map(Option::flatten).collect());
    }
    let ids: Vec<&str> = missing.values().copied().collect();
    let mut texts: HashMap<String, String> = HashMap::with_capacity(ids.len());
    for row in sqlx::query(SELECT_GRAPHS)
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?
    {
        texts.insert(
            get(&row, "id", "jobgraph_runs")?,
            get(&row, "graph", "jobgraph_runs")?,
        );
    }
    let mut read: HashMap<&[u8], Graph> = HashMap::with_capacity(missing.len());
    for (&key, &run) in &missing {
        let text = texts.get(run).ok_or_else(|| no_such_run(run))?;
        let spec = graph(text, run)?;
        read.insert(key, (spec.steps.len() > 1).then(|| Arc::new(spec)));
    }
    {
        let mut parsed = PARSED.lock().unwrap_or_else(|e| e.into_inner());
        if parsed.len() + read.len() > PARSED_MAX {
            parsed.clear();
        }
        for (key, graph) in &read {
            parsed.insert(key.to_vec(), graph.clone());
        }
    }
    Ok(found
        .into_iter()
        .zip(runs)
        .map(|(graph, (_, key))| graph.unwrap_or_else(|| read[key].clone()))
        .collect())
}
