//! The peers of the `queue` bench (built with `--features peers`): awa, graphile_worker and
//! apalis, wired through their public APIs, each in its own fresh database.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Mode, System, done, ready_then_go, stop_signal};

// ---------------------------------------------------------------------------------------------
// Peer configs.
//
// - awa: its own throughput benchmark (`tests/benchmark_test.rs`, `test_throughput_rust_workers`):
//   a pool of 20, one queue with `max_workers: 100`, `poll_interval: 50 ms`; jobs inserted with
//   `insert_many` in chunks of 500. Latency: the same (awa's dispatcher LISTENs on the queue).
// - graphile_worker: its own performance test (`benches/perf_test.rs`, "Node.js style", after
//   graphile-worker's performance page): concurrency 24 per worker (the Node test runs 4 x 24),
//   a pool of 25, a local queue of 500 with a 10 ms refetch delay, 5 ms completion and failure
//   batching, 100 ms polls; jobs added with `add_raw_jobs` in chunks of 10,000. Latency: no local
//   queue and no batching (both trade latency for throughput), LISTEN/NOTIFY on (its default).
// - apalis: apalis-postgres's `basic` example: batch size 100, `lock_tasks(false)`, 1 s
//   heartbeats, `with_pubsub()` (LISTEN/NOTIFY), `parallelize(tokio::spawn)`; tasks pushed with
//   `queries::push_tasks` in chunks of 1,000.

const AWA_QUEUE: &str = "bench";
const AWA_INSERT_CHUNK: usize = 500;
const GRAPHILE_CONCURRENCY: usize = 24;
const GRAPHILE_INSERT_CHUNK: usize = 10_000;
const APALIS_QUEUE: &str = "bench";
const APALIS_INSERT_CHUNK: usize = 1_000;

/// awa's job.
#[derive(Debug, Serialize, Deserialize, awa::JobArgs)]
struct AwaNoop {
    seq: i64,
}

/// graphile_worker's job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GraphileNoop {
    seq: i64,
}

impl graphile_worker::TaskHandler for GraphileNoop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(
        self,
        _ctx: graphile_worker::WorkerContext,
    ) -> impl graphile_worker::IntoTaskHandlerResult {
        Ok::<(), String>(())
    }
}

/// apalis's job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ApalisNoop {
    seq: i64,
}

async fn apalis_noop(_job: ApalisNoop) -> Result<(), apalis::prelude::BoxDynError> {
    Ok(())
}

/// Runs a worker process of `system` until told to stop.
pub(crate) async fn worker(system: System, url: &str, name: &str, mode: Mode) {
    match system {
        System::Awa => awa_worker(url, mode).await,
        System::Graphile => graphile_worker_main(url, mode).await,
        System::Apalis => apalis_worker(url, name).await,
        System::JobgraphPg | System::JobgraphSqlite | System::FloorPg | System::FloorRuns => {
            unreachable!("not a peer")
        }
    }
}

/// Creates `system`'s schema in the database at `url` and inserts `jobs` no-op jobs.
pub(crate) async fn setup_and_insert(system: System, url: &str, jobs: u64) {
    match system {
        System::Awa => {
            let pool = awa_pool(url).await;
            awa::migrations::run(&pool).await.expect("awa's migrations");
            let params: Vec<_> = (0..jobs as i64)
                .map(|seq| {
                    awa::model::insert::params_with(
                        &AwaNoop { seq },
                        awa::InsertOpts {
                            queue: AWA_QUEUE.into(),
                            ..Default::default()
                        },
                    )
                    .unwrap()
                })
                .collect();
            for chunk in params.chunks(AWA_INSERT_CHUNK) {
                awa::insert_many(&pool, chunk).await.expect("awa's insert");
            }
            pool.close().await;
        }
        System::Graphile => {
            let pool = graphile_pool(url, 2).await;
            let utils = graphile_worker::WorkerUtils::new(pool.clone(), "graphile_worker");
            utils.migrate().await.expect("graphile_worker's migrations");
            let specs: Vec<_> = (0..jobs as i64)
                .map(|seq| graphile_worker::RawJobSpec {
                    identifier: <GraphileNoop as graphile_worker::TaskHandler>::IDENTIFIER
                        .to_owned(),
                    payload: serde_json::to_value(GraphileNoop { seq }).unwrap(),
                    spec: graphile_worker::JobSpec::default(),
                })
                .collect();
            for chunk in specs.chunks(GRAPHILE_INSERT_CHUNK) {
                utils.add_raw_jobs(chunk).await.expect("graphile's insert");
            }
            pool.close().await;
        }
        System::Apalis => {
            let pool = graphile_pool(url, 2).await;
            apalis_postgres::PostgresStorage::<()>::setup(&pool)
                .await
                .expect("apalis's migrations");
            apalis_insert(&pool, 0..jobs as i64).await;
            pool.close().await;
        }
        System::JobgraphPg | System::JobgraphSqlite | System::FloorPg | System::FloorRuns => {
            unreachable!("not a peer")
        }
    }
}

async fn awa_pool(url: &str) -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await
        .expect("connect awa's pool")
}

async fn awa_worker(url: &str, _mode: Mode) {
    let pool = awa_pool(url).await;
    let client = awa::Client::builder(pool.clone())
        .queue(
            AWA_QUEUE,
            awa::QueueConfig {
                max_workers: 100,
                poll_interval: Duration::from_millis(50),
                ..awa::QueueConfig::default()
            },
        )
        .register::<AwaNoop, _, _>(|_args, _ctx| async move { Ok(awa::JobResult::Completed) })
        .build()
        .expect("build awa's client");
    ready_then_go();
    client.start().await.expect("start awa's client");
    stop_signal().await;
    client.shutdown(Duration::from_secs(10)).await;
    done("awa");
}

async fn graphile_pool(url: &str, max: u32) -> sqlx09::PgPool {
    sqlx09::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect(url)
        .await
        .expect("connect graphile_worker's pool")
}

async fn graphile_worker_main(url: &str, mode: Mode) {
    use graphile_worker::{LocalQueueConfig, RefetchDelayConfig, WorkerOptions};
    let pool = graphile_pool(url, GRAPHILE_CONCURRENCY as u32 + 1).await;
    let options = WorkerOptions::default()
        .pg_pool(pool)
        .concurrency(GRAPHILE_CONCURRENCY)
        .poll_interval(Duration::from_millis(100));
    let options = match mode {
        Mode::Throughput => options
            .local_queue(
                LocalQueueConfig::default()
                    .with_size(500)
                    .with_refetch_delay(
                        RefetchDelayConfig::builder()
                            .duration(Duration::from_millis(10))
                            .build(),
                    ),
            )
            .complete_job_batch_delay(Duration::from_millis(5))
            .fail_job_batch_delay(Duration::from_millis(5)),
        Mode::Latency | Mode::LatencyFastPoll => options,
    };
    let worker = Arc::new(
        options
            .define_job::<GraphileNoop>()
            .init()
            .await
            .expect("init graphile_worker"),
    );
    ready_then_go();
    let running = {
        let worker = Arc::clone(&worker);
        tokio::spawn(async move { worker.run().await })
    };
    stop_signal().await;
    worker.request_shutdown();
    running
        .await
        .unwrap()
        .expect("graphile_worker's run failed");
    done("graphile");
}

async fn apalis_storage(pool: &sqlx09::PgPool) -> apalis_postgres::PostgresStorage<ApalisNoop> {
    let config = apalis_postgres::Config::default()
        .queue(APALIS_QUEUE)
        .batch_size(100)
        .lock_tasks(false)
        .heartbeat_interval(Duration::from_secs(1))
        .missed_heartbeats(10);
    apalis_postgres::PostgresStorage::new(pool).with_config(config)
}

async fn apalis_worker(url: &str, name: &str) {
    use apalis::prelude::*;
    let pool = sqlx09::postgres::PgPoolOptions::new()
        .connect(url)
        .await
        .expect("connect apalis's pool");
    let backend = apalis_storage(&pool).await.with_pubsub();
    let worker = WorkerBuilder::new(name)
        .backend(backend)
        .parallelize(tokio::spawn)
        .build(apalis_noop);
    ready_then_go();
    worker
        .run_until(async {
            stop_signal().await;
            Ok::<(), std::io::Error>(())
        })
        .await
        .expect("apalis's worker failed");
    done("apalis");
}

async fn apalis_insert(pool: &sqlx09::PgPool, seqs: std::ops::Range<i64>) {
    use apalis::prelude::TaskBuilder;
    let tasks: Vec<_> = seqs
        .map(|seq| TaskBuilder::new(serde_json::to_vec(&ApalisNoop { seq }).unwrap()).build())
        .collect();
    let mut tasks = tasks.into_iter().peekable();
    while tasks.peek().is_some() {
        let chunk: Vec<_> = tasks.by_ref().take(APALIS_INSERT_CHUNK).collect();
        let mut conn = pool.acquire().await.unwrap();
        apalis_postgres::queries::push_tasks(&mut *conn, APALIS_QUEUE, chunk)
            .await
            .expect("apalis's insert");
    }
}

/// A peer's unfinished jobs: `FROM` and `WHERE` of a count (the backlog's check and the final
/// tally) and of an `EXISTS` (the polls).
macro_rules! unfinished {
    // awa's compatibility view of every job, whatever its storage.
    (awa) => {
        "FROM awa.jobs WHERE state NOT IN ('completed', 'failed', 'cancelled')"
    };
    // graphile_worker deletes a job once it completes.
    (graphile) => {
        "FROM graphile_worker._private_jobs"
    };
    (apalis) => {
        "FROM apalis.jobs WHERE status NOT IN ('Done', 'Killed')"
    };
}

/// Each peer's count and `EXISTS` of its unfinished jobs.
const AWA_LEFT: [&str; 2] = [
    concat!("SELECT count(*) ", unfinished!(awa)),
    concat!("SELECT EXISTS (SELECT 1 ", unfinished!(awa), ")"),
];
const GRAPHILE_LEFT: [&str; 2] = [
    concat!("SELECT count(*) ", unfinished!(graphile)),
    concat!("SELECT EXISTS (SELECT 1 ", unfinished!(graphile), ")"),
];
const APALIS_LEFT: [&str; 2] = [
    concat!("SELECT count(*) ", unfinished!(apalis)),
    concat!("SELECT EXISTS (SELECT 1 ", unfinished!(apalis), ")"),
];

/// A connection that counts a peer's unfinished jobs: the pool, and the `count(*)` and
/// `EXISTS` statements.
pub(crate) enum Counter {
    Sqlx08(sqlx::PgPool, [&'static str; 2]),
    Sqlx09(sqlx09::PgPool, [&'static str; 2]),
}

impl Counter {
    pub(crate) async fn new(system: System, url: &str) -> Counter {
        let statements = match system {
            System::Awa => AWA_LEFT,
            System::Graphile => GRAPHILE_LEFT,
            System::Apalis => APALIS_LEFT,
            System::JobgraphPg | System::JobgraphSqlite | System::FloorPg | System::FloorRuns => {
                unreachable!("not a peer")
            }
        };
        if system == System::Awa {
            Counter::Sqlx08(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .unwrap(),
                statements,
            )
        } else {
            Counter::Sqlx09(
                sqlx09::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect(url)
                    .await
                    .unwrap(),
                statements,
            )
        }
    }

    /// How many jobs are unfinished.
    pub(crate) async fn left(&self) -> i64 {
        match self {
            Counter::Sqlx08(pool, [count, _]) => {
                sqlx::query_scalar(count).fetch_one(pool).await.unwrap()
            }
            Counter::Sqlx09(pool, [count, _]) => {
                sqlx09::query_scalar(*count).fetch_one(pool).await.unwrap()
            }
        }
    }

    /// Whether any job is unfinished.
    pub(crate) async fn busy(&self) -> bool {
        match self {
            Counter::Sqlx08(pool, [_, exists]) => {
                sqlx::query_scalar(exists).fetch_one(pool).await.unwrap()
            }
            Counter::Sqlx09(pool, [_, exists]) => {
                sqlx09::query_scalar(*exists).fetch_one(pool).await.unwrap()
            }
        }
    }
}

/// Submits one job at a time, for the latency cells.
pub(crate) enum Submitter {
    Awa(sqlx::PgPool),
    Graphile(graphile_worker::WorkerUtils),
    Apalis(sqlx09::PgPool),
}

impl Submitter {
    pub(crate) async fn new(system: System, url: &str) -> Submitter {
        match system {
            System::Awa => Submitter::Awa(awa_pool(url).await),
            System::Graphile => Submitter::Graphile(graphile_worker::WorkerUtils::new(
                graphile_pool(url, 2).await,
                "graphile_worker",
            )),
            System::Apalis => Submitter::Apalis(graphile_pool(url, 2).await),
            System::JobgraphPg | System::JobgraphSqlite | System::FloorPg | System::FloorRuns => {
                unreachable!("not a peer")
            }
        }
    }

    pub(crate) async fn submit(&self, seq: i64) {
        match self {
            Submitter::Awa(pool) => {
                awa::insert_with(
                    pool,
                    &AwaNoop { seq },
                    awa::InsertOpts {
                        queue: AWA_QUEUE.into(),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            }
            Submitter::Graphile(utils) => {
                utils
                    .add_job(GraphileNoop { seq }, graphile_worker::JobSpec::default())
                    .await
                    .unwrap();
            }
            Submitter::Apalis(pool) => apalis_insert(pool, seq..seq + 1).await,
        }
    }
}
