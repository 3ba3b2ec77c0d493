//! A durable batch of 300 customer imports that survives a crash and resumes where it stopped.
//!
//! Each run imports one customer:
//!
//! ```text
//! fetch_profile (flaky, retried) ──┬── score ── save
//! fetch_orders (slow) ─────────────┘
//! ```
//!
//! The job is `#[job(durable)]`: its value (the customer id) is stored as the run's input, and
//! every step's output is committed to a SQLite file as it completes. The batch is named
//! `import`: customer `i` is run `import/i`.
//!
//! ```text
//! cargo run -p jobgraph-examples --example durable_import -- --db /tmp/import.db --crash-after 100
//! cargo run -p jobgraph-examples --example durable_import -- --db /tmp/import.db
//! ```
//!
//! The first command exits the process (`std::process::exit`, as `kill -9` would: no cleanup)
//! once 100 runs have succeeded, with runs in flight. The second finds the batch in the store:
//! it loads the runs that succeeded and the steps that completed, and runs only the rest; the
//! runs that were in flight wait for their 3 s lease to expire (the store cannot tell a dead
//! process from a slow one), then resume. Each
//! run prints what the store held before it started, what it ran, and what the store holds at
//! the end. Without `--db` the database is in a temporary directory, deleted at exit.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jobgraph::store::{
    RunFilter, RunState, SqliteOptions, SqliteStore, Store, StoredRun, Synchronous,
};
use jobgraph::{Batch, BatchStatus, ProgressBars, Retry, StatusListener as _, StepContext, job};
use serde::{Deserialize, Serialize};

/// How many customers the batch imports.
const CUSTOMERS: u64 = 300;

/// The batch's name: customer `i` is run `import/i`.
const BATCH: &str = "import";

/// How long a run's lease lasts: the runs in flight when the process crashed are resumed by
/// the next process once their leases expire.
const LEASE: Duration = Duration::from_secs(3);

/// The fake CRM the steps call, and what it saw in this process: the job's resources, given
/// to the batch in each process and never stored (the stored input is the customer id alone).
#[derive(Default)]
struct Crm {
    /// How many times each step's body completed (retried attempts not counted).
    completed: [AtomicUsize; 4],
    /// How many attempts of `fetch_profile` failed (and were retried).
    flakes: AtomicUsize,
}

/// A failed call to the fake CRM.
#[derive(Debug, thiserror::Error)]
#[error("GET /customers/{customer}: 503 Service Unavailable")]
struct Unavailable {
    /// The customer asked for.
    customer: u64,
}

/// A customer's profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Profile {
    /// The customer's name.
    name: String,
    /// Years since the customer signed up.
    tenure_years: u64,
}

/// One customer's import: the job's value is its input, stored with the run.
#[derive(Serialize, Deserialize)]
struct Import {
    /// The customer's id.
    customer: u64,
}

#[job(durable, resources = Crm)]
impl Import {
    /// Fetches the profile from a CRM that answers 503 to about one attempt in four; retried.
    #[step(retry = Retry::fixed(6, Duration::from_millis(5)))]
    async fn fetch_profile(&self, ctx: &StepContext, crm: &Crm) -> Result<Profile, Unavailable> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        // A pseudo-random, but reproducible, failure of this attempt.
        let roll = (self.customer * 2654435761 + u64::from(ctx.attempt()) * 40503) % 100;
        if roll < 25 && ctx.attempt() < 6 {
            crm.flakes.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable {
                customer: self.customer,
            });
        }
        crm.completed[0].fetch_add(1, Ordering::Relaxed);
        Ok(Profile {
            name: format!("customer-{}", self.customer),
            tenure_years: self.customer % 12,
        })
    }

    /// Lists the customer's order totals, in cents: slow (30 to 90 ms).
    #[step]
    async fn fetch_orders(&self, crm: &Crm) -> Vec<u64> {
        tokio::time::sleep(Duration::from_millis(30 + self.customer % 7 * 10)).await;
        crm.completed[1].fetch_add(1, Ordering::Relaxed);
        (0..self.customer % 5 + 1)
            .map(|i| 1_000 + i * 250 + self.customer)
            .collect()
    }

    /// Scores the customer from its tenure and spending.
    #[step]
    async fn score(&self, fetch_profile: &Profile, fetch_orders: &[u64], crm: &Crm) -> u64 {
        crm.completed[2].fetch_add(1, Ordering::Relaxed);
        fetch_profile.tenure_years * 10 + fetch_orders.iter().sum::<u64>() / 1_000
    }

    /// Writes the score to the warehouse: here, returns the row it would write.
    #[step]
    async fn save(&self, fetch_profile: &Profile, score: &u64, crm: &Crm) -> String {
        tokio::time::sleep(Duration::from_millis(1)).await;
        crm.completed[3].fetch_add(1, Ordering::Relaxed);
        format!("{},{score}", fetch_profile.name)
    }
}

/// The command line: `--db PATH`, `--crash-after N`.
struct Args {
    /// The database file; a temporary one if not given.
    db: Option<PathBuf>,
    /// Exit the process once this many runs succeeded in it.
    crash_after: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        db: None,
        crash_after: None,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        match arg.as_str() {
            "--db" => args.db = Some(given.next().ok_or("--db needs a path")?.into()),
            "--crash-after" => {
                let n = given.next().ok_or("--crash-after needs a number of runs")?;
                args.crash_after = Some(
                    n.parse()
                        .map_err(|_| format!("--crash-after: `{n}` is not a number of runs"))?,
                );
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: durable_import [--db PATH] [--crash-after N]"
                ));
            }
        }
    }
    Ok(args)
}

/// Runs and steps of the batch in the store, by state.
async fn tally(store: &SqliteStore) -> (usize, usize, usize) {
    let runs = store
        .list_runs(&RunFilter {
            batch: Some(BATCH.to_owned()),
            ..RunFilter::default()
        })
        .await
        .expect("list the batch's runs");
    let succeeded = runs
        .iter()
        .filter(|r| r.state == RunState::Succeeded)
        .count();
    let steps = runs.iter().map(|r| r.steps.completed).sum();
    (runs.len(), succeeded, steps)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::exit(2);
        }
    };
    let temp = tempfile::tempdir().expect("a temporary directory");
    let path = args
        .db
        .clone()
        .unwrap_or_else(|| temp.path().join("import.db"));
    // `NORMAL` survives a process crash in WAL mode (power loss may lose the last commits).
    let options = SqliteOptions::new().with_synchronous(Synchronous::Normal);
    let store = SqliteStore::open_with(path.to_str().expect("a UTF-8 path"), options)
        .await
        .expect("open the store");

    let (runs_before, succeeded_before, steps_before) = tally(&store).await;
    println!("store: {}", path.display());
    println!(
        "before: {runs_before} runs stored, {succeeded_before} succeeded, {steps_before} steps completed"
    );

    let bars = ProgressBars::new();
    let crash_after = args.crash_after;
    let started = Instant::now();
    let crm = Arc::new(Crm::default());
    let inputs = (0..CUSTOMERS).map(|customer| Import { customer });
    let batch = Batch::with_resources(inputs, Arc::clone(&crm))
        .concurrency(32)
        .status_listener(move |status: &BatchStatus<ImportStep>| {
            bars.on_status(status);
            let ran = status.runs.succeeded - succeeded_before.min(status.runs.succeeded);
            if crash_after.is_some_and(|n| ran >= n) {
                // As `kill -9` would: no run finishes, nothing is flushed or closed.
                eprintln!("crash: exiting with {} runs in flight", status.runs.running);
                std::process::exit(3);
            }
        })
        .store(&store, BATCH)
        // A crashed process keeps its runs from the next one for 3 s (30 s by default).
        .lease(LEASE)
        .run()
        .await
        .expect("the store failed");
    let elapsed = started.elapsed();

    let completed: Vec<usize> = crm
        .completed
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let steps_ran: usize = completed.iter().sum();
    println!(
        "ran: {} runs, {steps_ran} steps (fetch_profile {}, fetch_orders {}, score {}, save {}), \
         {} flaky attempts retried, in {elapsed:.2?}",
        batch.summary.total - batch.loaded,
        completed[0],
        completed[1],
        completed[2],
        completed[3],
        crm.flakes.load(Ordering::Relaxed),
    );
    println!(
        "loaded: {} runs, {steps_before} steps from the store",
        batch.loaded
    );
    println!(
        "summary: {} runs, {} succeeded, {} failed, {} cancelled",
        batch.summary.total, batch.summary.succeeded, batch.summary.failed, batch.summary.cancelled
    );

    let (runs_after, succeeded_after, steps_after) = tally(&store).await;
    println!(
        "after: {runs_after} runs stored, {succeeded_after} succeeded, {steps_after} steps completed"
    );
    let first: StoredRun = store
        .load_run("import/0")
        .await
        .expect("load a run")
        .expect("run import/0 is stored");
    println!("run {} ({}), input {}:", first.id, first.state, first.input);
    for step in &first.steps {
        println!(
            "  {:<13} {:<9} attempts {}  output {}",
            step.name,
            step.state,
            step.attempts,
            step.output.as_deref().unwrap_or("-")
        );
    }
    if let Some(err) = batch.results.iter().find_map(|r| r.as_ref().err()) {
        println!("first error: {}", jobgraph_examples::error_chain(err));
    }
}
