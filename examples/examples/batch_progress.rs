//! A batch of 1,000 runs with progress bars, per-step limits and a fan-out step.
//!
//! Each run imports one customer from a fake CRM API into a fake database:
//!
//! ```text
//! fetch_profile ──────────────────────────┬─ score ── store
//! list_orders ── fetch_order (per order) ─┘
//! ```
//!
//! - `fetch_profile` calls an API with a quota: `#[step(rate = "500/s", burst = 20)]` lets
//!   attempts start no faster than 500 a second, across every run of the job in the process.
//! - `fetch_order` is a fan-out step, `#[step(for_each(list_orders, concurrency = 4))]`: it runs
//!   once per order id that `list_orders` returned, at most 4 at once per run, and outputs the
//!   orders in the ids' order.
//! - `store` writes to a database with a small connection pool: `#[step(concurrency = 8)]` keeps
//!   at most 8 writes in flight across all runs, whatever the batch's concurrency.
//! - Every 97th customer has an order the API does not know: that element fails, so the run's
//!   `fetch_order` fails with `StepError::Element`, `score` and `store` are skipped, and the
//!   batch goes on with the other runs.
//!
//! The batch runs 64 customers at a time and draws its progress on stderr with `ProgressBars`
//! (the `progress` feature): a bar for the runs and one per step. Run it from the workspace root:
//!
//! ```text
//! cargo run -p jobgraph-examples --example batch_progress
//! ```
//!
//! When stderr is not a terminal, no bar is drawn; the summary is printed on stdout either way:
//! how many runs succeeded, failed and were cancelled, the elapsed time and the runs per second
//! (about 2 s: the API's rate limit is the bottleneck), what the limits allowed at most, and the
//! first failure's error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobgraph::{Batch, ProgressBars, job};

/// How many customers the batch imports.
const CUSTOMERS: u32 = 1_000;

/// A failed call to the fake CRM API.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// The API has no such order.
    #[error("GET /orders/{order}: 404 Not Found")]
    OrderNotFound {
        /// The order's id.
        order: u32,
    },
}

/// A customer's profile.
#[derive(Debug, Clone)]
struct Profile {
    /// The customer's name.
    name: String,
    /// Years since the customer signed up.
    tenure_years: u32,
}

/// One order of a customer.
#[derive(Debug, Clone)]
struct Order {
    /// Its total, in cents.
    total_cents: u64,
}

/// A customer's score, as stored.
#[derive(Debug, Clone)]
struct Score {
    /// The customer's name.
    name: String,
    /// The score: higher is better.
    points: u64,
}

/// Counts the calls in flight and the most ever in flight, to show a limit at work.
#[derive(Debug, Default)]
struct InFlight {
    /// Calls in flight now.
    now: AtomicUsize,
    /// The most calls in flight at once so far.
    max: AtomicUsize,
}

impl InFlight {
    /// Runs `work`, counted as in flight while it runs.
    async fn track<T>(&self, work: impl Future<Output = T>) -> T {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(now, Ordering::Relaxed);
        let output = work.await;
        self.now.fetch_sub(1, Ordering::Relaxed);
        output
    }
}

/// In-process stand-ins for the CRM API and the database, shared by every run.
#[derive(Debug, Default)]
struct Backend {
    /// When the first and the last profile requests arrived (rate limited by `fetch_profile`).
    profile_requests: Mutex<Option<(Instant, Instant)>>,
    /// Database writes in flight (at most 8 by `store`'s limit).
    writes: InFlight,
}

impl Backend {
    /// `GET /customers/{id}`: 2 ms.
    async fn get_profile(&self, id: u32) -> Profile {
        self.log_profile_request();
        tokio::time::sleep(Duration::from_millis(2)).await;
        Profile {
            name: format!("customer-{id:04}"),
            tenure_years: id % 7,
        }
    }

    /// Notes when a profile request arrived.
    fn log_profile_request(&self) {
        let now = Instant::now();
        let mut window = self.profile_requests.lock().expect("profile requests");
        let first = window.map_or(now, |(first, _)| first);
        *window = Some((first, now));
    }

    /// `GET /customers/{id}/orders`: 1 to 4 order ids, 1 ms. Every 97th customer's last order
    /// is gone from the API.
    async fn list_orders(&self, id: u32) -> Vec<u32> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        (0..1 + id % 4).map(|n| id * 10 + n).collect()
    }

    /// `GET /orders/{order}`: 1 ms.
    async fn get_order(&self, order: u32) -> Result<Order, ApiError> {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let customer = order / 10;
        let last = order % 10 == customer % 4;
        if customer.is_multiple_of(97) && last {
            return Err(ApiError::OrderNotFound { order });
        }
        Ok(Order {
            total_cents: u64::from(order % 1000) * 125,
        })
    }

    /// `INSERT INTO scores ..`: 3 ms, holding one of the pool's connections.
    async fn insert_score(&self, _score: &Score) {
        self.writes
            .track(tokio::time::sleep(Duration::from_millis(3)))
            .await;
    }
}

/// The job: import one customer.
struct ImportCustomer {
    /// The customer's id.
    id: u32,
    /// The API and the database.
    backend: Arc<Backend>,
}

#[job]
impl ImportCustomer {
    /// The API allows 500 requests a second, with bursts of 20.
    #[step(rate = "500/s", burst = 20)]
    async fn fetch_profile(&self) -> Profile {
        self.backend.get_profile(self.id).await
    }

    /// The ids of the customer's orders.
    #[step]
    async fn list_orders(&self) -> Vec<u32> {
        self.backend.list_orders(self.id).await
    }

    /// Fetches each order, at most 4 at once per run; the output is a `Vec<Order>` in the ids'
    /// order.
    #[step(for_each(list_orders, concurrency = 4))]
    async fn fetch_order(&self, list_orders: &u32) -> Result<Order, ApiError> {
        self.backend.get_order(*list_orders).await
    }

    /// Scores the customer from its profile and orders.
    #[step]
    async fn score(&self, fetch_profile: &Profile, fetch_order: &[Order]) -> Score {
        let spent: u64 = fetch_order.iter().map(|o| o.total_cents).sum();
        Score {
            name: fetch_profile.name.clone(),
            points: spent / 100 + u64::from(fetch_profile.tenure_years) * 50,
        }
    }

    /// The database has 8 connections: at most 8 writes at once, across every run.
    #[step(concurrency = 8)]
    async fn store(&self, score: &Score) {
        self.backend.insert_score(score).await;
    }
}

#[tokio::main]
async fn main() {
    let backend = Arc::new(Backend::default());
    let inputs = (1..=CUSTOMERS).map(|id| ImportCustomer {
        id,
        backend: Arc::clone(&backend),
    });

    let started = Instant::now();
    let batch = Batch::new(inputs)
        .concurrency(64)
        .status_listener(ProgressBars::new())
        .run()
        .await;
    let elapsed = started.elapsed();

    let summary = batch.summary;
    println!(
        "runs:          {} ({} succeeded, {} failed, {} cancelled)",
        summary.total, summary.succeeded, summary.failed, summary.cancelled
    );
    println!(
        "elapsed:       {elapsed:.2?} ({:.0} runs/s)",
        summary.total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "store:         at most {} writes at once (limit: concurrency 8)",
        backend.writes.max.load(Ordering::Relaxed)
    );
    if let Some((first, last)) = *backend.profile_requests.lock().expect("profile requests") {
        let window = last - first;
        println!(
            "fetch_profile: {} requests in {window:.2?}, {:.0}/s (limit: 500/s, burst 20)",
            summary.total,
            summary.total as f64 / window.as_secs_f64()
        );
    }
    let best = batch
        .results
        .iter()
        .flatten()
        .map(|outputs| &outputs.score)
        .max_by_key(|score| score.points);
    if let Some(best) = best {
        println!("best score:    {} ({} points)", best.name, best.points);
    }

    let failed: Vec<_> = batch
        .results
        .iter()
        .enumerate()
        .filter_map(|(index, result)| Some((index, result.as_ref().err()?)))
        .collect();
    if let Some(&(index, err)) = failed.first() {
        let cause = err.root_cause();
        println!(
            "\nfirst failure, input {index}: {}",
            jobgraph_examples::error_chain(err)
        );
        let element = cause
            .error()
            .element()
            .map(|i| format!(", element {i} of `list_orders`"))
            .unwrap_or_default();
        let skipped: Vec<_> = err.skipped().iter().map(|s| s.name()).collect();
        println!(
            "  failed step: {}{element}; skipped: {}",
            cause.step(),
            skipped.join(", ")
        );
        let inputs: Vec<_> = failed.iter().map(|&(index, _)| index).collect();
        println!("  failed inputs: {inputs:?}");
    }
}
