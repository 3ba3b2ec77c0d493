//! Throughput of a batch: 10,000 runs of an 8-step job whose steps return at once, through
//! `jobgraph::Batch`, against the same graphs hand-written with tokio.
//!
//! `cargo bench -p jobgraph-benches --bench batch`. Groups are `batch/{runtime}`: `current_thread`,
//! and `multi_thread` with 2 workers, where the timing loop runs in a task spawned onto a worker.
//! Criterion reports each function's throughput in runs per second (`Throughput::Elements`).
//!
//! The graph (the 8-step diamond of the `graphs` bench):
//!
//! ```text
//! conn ─┬─ orders ─┬─ revenue ─┬─ by_customer ─┬─ summary
//!       │          │           │               │
//!       │          └─ count ───┴─ average ─────┘
//!       └─ customers ──────────┘ (by_customer takes customers and revenue)
//! ```
//!
//! Functions, each running all 10,000 graphs, at most 256 at once:
//!
//! - `jobgraph_batch`: `Batch::new(inputs).concurrency(256).run()`, in the timing loop's task.
//! - `jobgraph_batch_listener`: the same with a status listener that does nothing, to show what
//!   the snapshots it is handed cost.
//! - `handwritten_buffered`: the hand-written graph (nested `join!`s, `Shared` for outputs read
//!   by two steps) per input, through `futures`' `buffer_unordered(256)`: in one task, as a
//!   batch runs.
//! - `handwritten_joinset`: the hand-written graph per input, each spawned on a
//!   `tokio::task::JoinSet` holding at most 256 tasks: on multi_thread, the graphs run on both
//!   workers.
//!
//! Each sample is one `iter_custom` call: its whole timing loop runs inside one `block_on`. Every
//! function is checked to compute the expected sum of the summaries before it is timed.

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::{FutureExt as _, StreamExt as _};
use jobgraph::{Batch, BatchStatus, job};
use tokio::task::JoinSet;

#[path = "../shapes/runtimes.rs"]
mod runtimes;

use runtimes::{Flavor, Runtimes};

/// Runs per batch.
const RUNS: u64 = 10_000;
/// Runs at once.
const CONCURRENCY: usize = 256;

/// One input of the batch: every step's output derives from `seed`.
struct Diamond {
    seed: u64,
}

#[job]
impl Diamond {
    #[step]
    async fn conn(&self) -> u64 {
        self.seed
    }

    #[step]
    async fn orders(&self, conn: &u64) -> u64 {
        conn + 1
    }

    #[step]
    async fn customers(&self, conn: &u64) -> u64 {
        conn + 2
    }

    #[step]
    async fn revenue(&self, orders: &u64) -> u64 {
        orders * 3
    }

    #[step]
    async fn count(&self, orders: &u64) -> u64 {
        orders + 4
    }

    #[step]
    async fn by_customer(&self, customers: &u64, revenue: &u64) -> u64 {
        customers + revenue
    }

    #[step]
    async fn average(&self, count: &u64, revenue: &u64) -> u64 {
        revenue / count
    }

    #[step]
    async fn summary(&self, by_customer: &u64, average: &u64) -> u64 {
        by_customer + average
    }
}

/// The diamond for one seed, hand-written: every step starts as soon as its parents end; the
/// outputs that two steps read (`conn`, `orders`, `revenue`) are `Shared` futures.
async fn handwritten(seed: u64) -> u64 {
    let conn = async move { seed }.shared();
    let orders = {
        let conn = conn.clone();
        async move { conn.await + 1 }.shared()
    };
    let customers = async move { conn.await + 2 };
    let revenue = {
        let orders = orders.clone();
        async move { orders.await * 3 }.shared()
    };
    let count = async move { orders.await + 4 };
    let by_customer = {
        let revenue = revenue.clone();
        async move {
            let (customers, revenue) = tokio::join!(customers, revenue);
            customers + revenue
        }
    };
    let average = async move {
        let (count, revenue) = tokio::join!(count, revenue);
        revenue / count
    };
    let (by_customer, average) = tokio::join!(by_customer, average);
    by_customer + average
}

/// The sum of every run's summary, computed directly.
fn expected() -> u64 {
    (0..RUNS)
        .map(|seed| {
            let orders = seed + 1;
            let revenue = orders * 3;
            (seed + 2 + revenue) + revenue / (orders + 4)
        })
        .sum()
}

async fn jobgraph_batch() -> u64 {
    let batch = Batch::new((0..RUNS).map(|seed| Diamond { seed }))
        .concurrency(CONCURRENCY)
        .run()
        .await;
    assert!(batch.is_success());
    batch.results.into_iter().map(|r| r.unwrap().summary).sum()
}

async fn jobgraph_batch_listener() -> u64 {
    let batch = Batch::new((0..RUNS).map(|seed| Diamond { seed }))
        .concurrency(CONCURRENCY)
        .status_listener(|status: &BatchStatus<DiamondStep>| {
            black_box(status);
        })
        .run()
        .await;
    assert!(batch.is_success());
    batch.results.into_iter().map(|r| r.unwrap().summary).sum()
}

async fn jobgraph_buffered() -> u64 {
    futures::stream::iter(0..RUNS)
        .map(|seed| async move { Diamond { seed }.run().await.unwrap().summary })
        .buffer_unordered(CONCURRENCY)
        .fold(0, |sum, summary| async move { sum + summary })
        .await
}

async fn handwritten_buffered() -> u64 {
    futures::stream::iter(0..RUNS)
        .map(handwritten)
        .buffer_unordered(CONCURRENCY)
        .fold(0, |sum, summary| async move { sum + summary })
        .await
}

async fn handwritten_joinset() -> u64 {
    let mut set = JoinSet::new();
    let mut sum = 0;
    for seed in 0..RUNS {
        if set.len() == CONCURRENCY {
            sum += set.join_next().await.unwrap().unwrap();
        }
        set.spawn(handwritten(seed));
    }
    while let Some(summary) = set.join_next().await {
        sum += summary.unwrap();
    }
    sum
}

/// `iters` batches of one function, timed inside one `block_on`.
fn time<F, Fut>(rts: &Runtimes, flavor: Flavor, iters: u64, batch: F) -> Duration
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = u64> + Send,
{
    rts.run(flavor, async move {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(batch().await);
        }
        start.elapsed()
    })
}

fn batch(c: &mut Criterion) {
    let rts = Runtimes::new();
    let expected = expected();
    for flavor in Flavor::ALL {
        let name = flavor.name();
        for (function, sum) in [
            ("jobgraph_batch", rts.run(flavor, jobgraph_batch())),
            (
                "jobgraph_batch_listener",
                rts.run(flavor, jobgraph_batch_listener()),
            ),
            ("jobgraph_buffered", rts.run(flavor, jobgraph_buffered())),
            (
                "handwritten_buffered",
                rts.run(flavor, handwritten_buffered()),
            ),
            (
                "handwritten_joinset",
                rts.run(flavor, handwritten_joinset()),
            ),
        ] {
            assert_eq!(sum, expected, "{function} on {name}");
        }
        let mut group = c.benchmark_group(format!("batch/{name}"));
        group.throughput(Throughput::Elements(RUNS));
        group.bench_function("jobgraph_batch", |b| {
            b.iter_custom(|iters| time(&rts, flavor, iters, jobgraph_batch))
        });
        group.bench_function("jobgraph_batch_listener", |b| {
            b.iter_custom(|iters| time(&rts, flavor, iters, jobgraph_batch_listener))
        });
        group.bench_function("jobgraph_buffered", |b| {
            b.iter_custom(|iters| time(&rts, flavor, iters, jobgraph_buffered))
        });
        group.bench_function("handwritten_buffered", |b| {
            b.iter_custom(|iters| time(&rts, flavor, iters, handwritten_buffered))
        });
        group.bench_function("handwritten_joinset", |b| {
            b.iter_custom(|iters| time(&rts, flavor, iters, handwritten_joinset))
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = batch
}
criterion_main!(benches);
