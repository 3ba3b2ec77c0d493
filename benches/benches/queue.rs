//! The database path: jobgraph's queue (`Client`, `Worker`) on PostgreSQL and on SQLite against
//! the PostgreSQL job queues awa, graphile_worker and apalis, on one private PostgreSQL server
//! started for the run (`jobgraph_tests::pg`: `initdb` in a temporary directory on /dev/shm, a
//! unix socket, `fsync=off`, `synchronous_commit=off`), every system in the same run.
//!
//! `cargo bench -p jobgraph-benches --bench queue` runs every cell with a backlog of 2,000 jobs
//! and 50 latency samples (a few minutes); `-- --full` with the backlog of 20,000 and 200 samples
//! (the documented run, about 15 minutes: jobgraph on PostgreSQL is the slow part);
//! `-- --cap SECONDS` stops a burn-down still running after that long (120 s unless set: the
//! rate is then of the jobs finished, marked `*`); `-- --only NAME[,NAME..]` only those systems
//! (`jobgraph-pg`, `jobgraph-sqlite`, `floor-pg`, `awa`, `graphile`, `apalis`); `-- --cells burn,graphs,latency`
//! only those cells; `-- --rounds N` repeats every throughput cell N times and reports the
//! median; `-- --jobs N` sets the backlog; `-- --procs N[,N..]` runs the throughput cells with
//! those numbers of worker processes only (1, 2 and 4 unless set). It prints markdown tables.
//! `-- --diagnose` instead burns down the single-step backlog (`-- --diagnose-workload
//! diamond|for_each`: that job's) with each number of worker processes, which count and time
//! their SQL statements (sqlx's `tracing` events), and prints them per step; with
//! `JOBGRAPH_PG_SETTINGS=shared_preload_libraries=pg_stat_statements`, also the server's view
//! of each statement (time, pages, WAL records). For experiments on the schema, `QBENCH_SQL` in
//! the environment holds statements run on each fresh PostgreSQL database after its backlog is
//! inserted and before its burn-down starts (say, `DROP INDEX ...`); with `QBENCH_STATS` set,
//! each PostgreSQL burn-down also prints the rows each table inserted and updated, and how many
//! of the updates were HOT (`pg_stat_user_tables`: an update that is not HOT writes an entry in
//! every index of its table). `QBENCH_ON_GO` is a shell command started as each burn-down's
//! workers are told to go, with `QSYSTEM` and `QPROCS` in its environment: say, `sleep 0.3;
//! perf record -a -g -o /tmp/$QSYSTEM-$QPROCS.data -- sleep 2` for a profile of the burn-down
//! alone.
//!
//! Cells:
//!
//! 1. **Burn-down**: a backlog of single-step no-op jobs, inserted before any worker starts, run
//!    to the end by 1, 2 and 4 worker *processes* (this binary, re-run with `--worker`): jobs/s
//!    from the moment every worker process is connected and told to go until a poll of the
//!    database (every 20 ms) finds no job left unfinished. `floor-pg` burns down jobgraph's
//!    own backlog (the same rows, submitted by its `Client`) with bare SQL: the fewest writes a
//!    store keeping a run row and a step row per job could make (`queue/floor.rs`), what no
//!    worker on jobgraph's schema can beat. On PostgreSQL each burn-down's line of the log also
//!    says what the server's processes serving its database spent per step (their CPU time
//!    over the burn-down, from `/proc`), beside each worker process's own `cpu_ms`.
//! 2. **Graphs** (jobgraph only): the same for an 8-step diamond job (as many runs as the
//!    single-step backlog has jobs) and a job whose step `for_each`es over 100 elements (a
//!    20th as many runs): steps/s (a `for_each` element counts as a step).
//!    `floor-pg` burns down the diamond too: the fewest writes a store claiming steps from a
//!    row per step could make for a graph (`queue/floor.rs`).
//! 3. **Latency**: one worker process on an idle system; one job submitted at a time, then its
//!    completion polled every 0.5 ms from the submitting process: p50 and p99 of submit to
//!    completion seen. The peers and jobgraph on PostgreSQL wake on LISTEN/NOTIFY; jobgraph on
//!    SQLite polls (every 200 ms, its default, and every 10 ms).
//!
//! Each system runs in a fresh database (a fresh SQLite file on /dev/shm for jobgraph-sqlite).
//! Peers are configured as their own documentation and benchmarks recommend for throughput
//! (see `Peer configs` below); every worker process runs a 2-thread tokio runtime.

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobgraph::store::queue::Queue;
use jobgraph::store::{PgStore, SqliteStore};
use jobgraph::{CancellationToken, Client, Worker, job};
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// The systems and their workloads.

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    JobgraphPg,
    JobgraphSqlite,
    /// The fewest writes a single-step job (and a step of the diamond) needs in jobgraph's
    /// PostgreSQL schema, as bare SQL (`queue/floor.rs`).
    FloorPg,
    /// The same in a schema that keeps a run's step states in its run's row
    /// (`queue/floor_runs.rs`): not jobgraph's, what a rewrite of its queue could reach.
    FloorRuns,
    Awa,
    Graphile,
    Apalis,
}

/// The systems this build measures: jobgraph's two stores, and with `--features peers` the
/// three peers.
const SYSTEMS: &[System] = &[
    System::JobgraphPg,
    System::JobgraphSqlite,
    System::FloorPg,
    System::FloorRuns,
    #[cfg(feature = "peers")]
    System::Awa,
    #[cfg(feature = "peers")]
    System::Graphile,
    #[cfg(feature = "peers")]
    System::Apalis,
];

/// The peers this build measures (none without `--features peers`).
const PEERS: &[System] = &[
    #[cfg(feature = "peers")]
    System::Awa,
    #[cfg(feature = "peers")]
    System::Graphile,
    #[cfg(feature = "peers")]
    System::Apalis,
];

/// What a peer's cell does in a build without them.
#[cfg(not(feature = "peers"))]
fn no_peers() -> ! {
    panic!(
        "the peers are built with `--features peers` (cargo bench -p jobgraph-benches --bench queue --features peers)"
    )
}

#[cfg(feature = "peers")]
#[path = "queue/peers.rs"]
mod peers;

#[path = "queue/floor.rs"]
mod floor;

#[path = "queue/floor_runs.rs"]
mod floor_runs;

impl System {
    fn name(self) -> &'static str {
        match self {
            System::JobgraphPg => "jobgraph-pg",
            System::JobgraphSqlite => "jobgraph-sqlite",
            System::FloorPg => "floor-pg",
            System::FloorRuns => "floor-runs",
            System::Awa => "awa",
            System::Graphile => "graphile",
            System::Apalis => "apalis",
        }
    }

    fn parse(name: &str) -> Option<System> {
        SYSTEMS.iter().copied().find(|s| s.name() == name)
    }

    fn is_jobgraph(self) -> bool {
        matches!(self, System::JobgraphPg | System::JobgraphSqlite)
    }

    /// A floor: bare SQL, no worker of any system.
    fn is_floor(self) -> bool {
        matches!(self, System::FloorPg | System::FloorRuns)
    }
}

/// What the jobs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// One step that returns at once.
    Noop,
    /// The 8-step diamond (jobgraph only).
    Diamond,
    /// A source, a step `for_each`ing over its 100 elements, a sink (jobgraph only).
    ForEach,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Noop => "noop",
            Workload::Diamond => "diamond",
            Workload::ForEach => "for_each",
        }
    }

    fn parse(name: &str) -> Option<Workload> {
        [Workload::Noop, Workload::Diamond, Workload::ForEach]
            .into_iter()
            .find(|w| w.name() == name)
    }

    /// Steps per claim: 1, a `for_each` element included (each is claimed on its own).
    fn steps_per_claim(self) -> f64 {
        1.0
    }

    /// Steps each job runs (a `for_each` element counts as one).
    fn steps(self) -> u64 {
        match self {
            Workload::Noop => 1,
            Workload::Diamond => 8,
            Workload::ForEach => 102,
        }
    }
}

/// How a worker process is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// For throughput, as the system's docs recommend.
    Throughput,
    /// For latency on an idle system: the peers' batching off; jobgraph polling every 200 ms,
    /// its default.
    Latency,
    /// jobgraph only: latency, polling every 10 ms.
    LatencyFastPoll,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Throughput => "throughput",
            Mode::Latency => "latency",
            Mode::LatencyFastPoll => "latency-fast-poll",
        }
    }

    fn parse(name: &str) -> Option<Mode> {
        [Mode::Throughput, Mode::Latency, Mode::LatencyFastPoll]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

// ---------------------------------------------------------------------------------------------
// jobgraph's jobs.

/// A single step that returns at once.
#[derive(Serialize, Deserialize)]
struct Noop {
    n: u64,
}

#[job(durable)]
impl Noop {
    #[step]
    async fn only(&self) -> u64 {
        self.n
    }
}

/// The 8-step diamond of the `graphs` and `batch` benches.
#[derive(Serialize, Deserialize)]
struct Diamond {
    seed: u64,
}

#[job(durable)]
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

/// A source of 100 elements, a step over each element, a sink.
#[derive(Serialize, Deserialize)]
struct Fan100 {
    n: u64,
}

#[job(durable)]
impl Fan100 {
    #[step]
    async fn items(&self) -> Vec<u64> {
        (0..100).map(|i| self.n + i).collect()
    }

    #[step(for_each(items))]
    async fn each(&self, items: &u64) -> u64 {
        items * 2
    }

    #[step]
    async fn total(&self, each: &[u64]) -> u64 {
        each.iter().sum()
    }
}

/// Steps a jobgraph worker process runs at once (what the README's example sets).
const JOBGRAPH_CONCURRENCY: usize = 16;
/// For throughput, as `Worker::prefetch` recommends for short steps: the local queue of 500
/// that graphile_worker's perf test keeps (`QBENCH_PREFETCH` in the environment changes it);
/// none for latency.
const JOBGRAPH_PREFETCH: usize = 500;

// ---------------------------------------------------------------------------------------------
// `--diagnose`: the SQL statements a worker process runs.

/// Set in a worker's environment, it counts and times its SQL statements, and prints them with
/// `done`.
const SQL_STATS_ENV: &str = "QBENCH_SQL_STATS";

/// Statements by their first words: how many, and their total time (sqlx's `elapsed`: from
/// sending the statement until its last row was read).
#[derive(Default)]
struct SqlStats {
    by_kind: std::sync::Mutex<std::collections::BTreeMap<String, (u64, f64)>>,
}

/// A `tracing` layer feeding [`SqlStats`] from sqlx's `sqlx::query` events.
struct SqlStatsLayer(Arc<SqlStats>);

#[derive(Default)]
struct QueryFields {
    summary: String,
    statement: String,
    elapsed: f64,
}

impl tracing::field::Visit for QueryFields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.statement = value.to_owned(),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed = value;
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "summary" => self.summary = format!("{value:?}"),
            "db.statement" => self.statement = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SqlStatsLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let mut fields = QueryFields::default();
        event.record(&mut fields);
        // The statement's first 9 words name it well enough (sqlx's summary has 4).
        let text = if fields.statement.trim().is_empty() {
            &fields.summary
        } else {
            &fields.statement
        };
        let words: Vec<&str> = text.split_whitespace().take(9).collect();
        let kind = words.join(" ").replace('"', "");
        let mut map = self.0.by_kind.lock().unwrap();
        let entry = map.entry(kind).or_default();
        entry.0 += 1;
        entry.1 += fields.elapsed;
    }
}

/// Installs the statement counter if [`SQL_STATS_ENV`] is set.
fn sql_stats() -> Option<Arc<SqlStats>> {
    use tracing_subscriber::layer::SubscriberExt as _;
    std::env::var_os(SQL_STATS_ENV)?;
    let stats = Arc::new(SqlStats::default());
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("sqlx::query", tracing::Level::TRACE);
    let subscriber = tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(
        SqlStatsLayer(Arc::clone(&stats)),
        filter,
    ));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    Some(stats)
}

/// One line: `kind=count/total_ms;...`, tab-separated entries.
fn sql_stats_line(stats: &SqlStats) -> String {
    let map = stats.by_kind.lock().unwrap();
    map.iter()
        .map(|(kind, (n, secs))| format!("{kind}={n}/{:.1}", secs * 1e3))
        .collect::<Vec<_>>()
        .join("\t")
}

// ---------------------------------------------------------------------------------------------
// Worker processes.

/// `queue --worker SYSTEM WORKLOAD MODE URL NAME`: connects, prints `ready`, waits for `go` on
/// stdin, works until `stop` (or the end of stdin), prints `done`, exits.
fn worker_main(args: &[String]) {
    let [system, workload, mode, url, name] = args else {
        panic!("usage: queue --worker SYSTEM WORKLOAD MODE URL NAME, got {args:?}");
    };
    let system = System::parse(system).expect("a system");
    let workload = Workload::parse(workload).expect("a workload");
    let mode = Mode::parse(mode).expect("a mode");
    let stats = sql_stats();
    worker_runtime().block_on(async move {
        match system {
            System::JobgraphPg => {
                let store = PgStore::connect(url).await.expect("connect the PgStore");
                jobgraph_worker(store, name, workload, mode).await;
            }
            System::JobgraphSqlite => {
                let store = SqliteStore::open(url).await.expect("open the SQLite store");
                jobgraph_worker(store, name, workload, mode).await;
            }
            System::FloorPg | System::FloorRuns => {
                let (job, graph) = floor_job(workload);
                let stop = CancellationToken::new();
                // Listening for `stop` once `go` was read.
                let ready = {
                    let stop = stop.clone();
                    move || {
                        ready_then_go();
                        cancel_on_stop(&stop);
                    }
                };
                // A floor completes every step it claims (its commits assert it).
                let steps = if system == System::FloorPg {
                    floor::worker(url, name, job, graph, ready, stop).await
                } else {
                    floor_runs::worker(url, name, job, graph, ready, stop).await
                };
                done(&format!("claimed={steps} completed={steps} failed=0"));
            }
            #[cfg(feature = "peers")]
            peer => peers::worker(peer, url, name, mode).await,
            #[cfg(not(feature = "peers"))]
            _ => no_peers(),
        }
    });
    if let Some(stats) = stats {
        println!("sql {}", sql_stats_line(&stats));
    }
}

/// The job a floor runs for `workload`, and its graph (`None`: one step).
fn floor_job(workload: Workload) -> (&'static str, Option<jobgraph::store::GraphSpec>) {
    match workload {
        Workload::Noop => (<Noop as jobgraph::Job>::NAME, None),
        Workload::Diamond => (
            <Diamond as jobgraph::Job>::NAME,
            Some(jobgraph::durable::graph_spec::<Diamond>()),
        ),
        Workload::ForEach => panic!("the floors run no `for_each`"),
    }
}

/// Prints `ready`, then waits for `go`.
fn ready_then_go() {
    println!("ready");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "go", "the coordinator says go");
}

/// Resolves once stdin says `stop` or closes.
async fn stop_signal() {
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .unwrap();
}

/// Cancels `token` once stdin says `stop` or closes (a task: [`stop_signal`]).
fn cancel_on_stop(token: &CancellationToken) -> tokio::task::JoinHandle<()> {
    let token = token.clone();
    tokio::spawn(async move {
        stop_signal().await;
        token.cancel();
    })
}

/// Says `done` and what the worker process did, with the CPU time it used (user and system,
/// from `/proc/self/stat`, where there is one): a worker's own cost, apart from the server's.
fn done(what: &str) {
    match cpu_ms() {
        Some(ms) => println!("done {what} cpu_ms={ms}"),
        None => println!("done {what}"),
    }
    std::io::stdout().flush().unwrap();
}

/// This process's CPU time so far (user + system) in ms, on Linux.
fn cpu_ms() -> Option<u64> {
    cpu_ms_of("self")
}

/// Process `pid`'s CPU time so far (user + system) in ms, on Linux.
fn cpu_ms_of(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command's name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ, 100 on every Linux this runs on.
    Some(ticks * 10)
}

/// The runtime a worker runs on: 2 threads, one per core of the machine this was tuned on
/// (each worker process's, and the same-process latency cell's).
fn worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn jobgraph_worker<Q: Queue + Clone>(store: Q, name: &str, workload: Workload, mode: Mode) {
    let poll = match mode {
        Mode::Throughput | Mode::Latency => Duration::from_millis(200),
        Mode::LatencyFastPoll => Duration::from_millis(10),
    };
    let prefetch = match mode {
        Mode::Throughput => std::env::var("QBENCH_PREFETCH")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(JOBGRAPH_PREFETCH),
        Mode::Latency | Mode::LatencyFastPoll => 0,
    };
    let worker = Worker::new(&store)
        .name(name)
        .concurrency(JOBGRAPH_CONCURRENCY)
        .prefetch(prefetch)
        .poll_interval(poll);
    let worker = match workload {
        Workload::Noop => worker.job::<Noop>(),
        Workload::Diamond => worker.job::<Diamond>(),
        Workload::ForEach => worker.job::<Fan100>(),
    };
    ready_then_go();
    let shutdown = CancellationToken::new();
    let stopper = cancel_on_stop(&shutdown);
    let stats = match worker.run(shutdown).await {
        Ok(stats) => stats,
        Err(error) => {
            // Reported to the coordinator, which marks the cell.
            println!("error the worker's store failed: {error}");
            std::io::stdout().flush().unwrap();
            std::process::exit(3);
        }
    };
    stopper.await.unwrap();
    done(&format!(
        "claimed={} claims={} completed={} failed={}",
        stats.claimed, stats.claims, stats.completed, stats.failed
    ));
}

// ---------------------------------------------------------------------------------------------
// The coordinator: databases, backlogs, counts.

/// Where a cell's system keeps its jobs.
enum Db {
    Pg {
        url: String,
    },
    Sqlite {
        path: String,
        _dir: tempfile::TempDir,
    },
}

impl Db {
    fn url(&self) -> &str {
        match self {
            Db::Pg { url } => url,
            Db::Sqlite { path, .. } => path,
        }
    }
}

async fn fresh_db(system: System) -> Db {
    if system == System::JobgraphSqlite {
        // On /dev/shm, as the PostgreSQL server's data: neither system pays for a disk.
        let dir = tempfile::Builder::new()
            .prefix("jobgraph-qbench-")
            .tempdir_in("/dev/shm")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let path = dir.path().join("jobs.db").to_str().unwrap().to_owned();
        return Db::Sqlite { path, _dir: dir };
    }
    let db = jobgraph_tests::pg::database()
        .await
        .expect("the queue bench needs PostgreSQL's server binaries (initdb, postgres)");
    Db::Pg {
        url: db.url().to_owned(),
    }
}

/// Creates the system's schema and inserts `jobs` jobs of `workload`.
async fn setup_and_insert(system: System, db: &Db, workload: Workload, jobs: u64) {
    match system {
        System::JobgraphPg | System::FloorPg => {
            let store = PgStore::connect(db.url()).await.unwrap();
            jobgraph_insert(&store, workload, jobs).await;
        }
        System::JobgraphSqlite => {
            let store = SqliteStore::open(db.url()).await.unwrap();
            jobgraph_insert(&store, workload, jobs).await;
        }
        System::FloorRuns => {
            let (job, graph) = floor_job(workload);
            floor_runs::setup_and_insert(db.url(), job, graph.as_ref(), jobs).await;
        }
        #[cfg(feature = "peers")]
        peer => peers::setup_and_insert(peer, db.url(), jobs).await,
        #[cfg(not(feature = "peers"))]
        _ => no_peers(),
    }
}

async fn jobgraph_insert<Q: Queue + Clone>(store: &Q, workload: Workload, jobs: u64) {
    let client = Client::new(store);
    match workload {
        Workload::Noop => {
            client
                .submit_batch("bench", (0..jobs).map(|n| Noop { n }))
                .await
                .unwrap();
        }
        Workload::Diamond => {
            client
                .submit_batch("bench", (0..jobs).map(|seed| Diamond { seed }))
                .await
                .unwrap();
        }
        Workload::ForEach => {
            client
                .submit_batch("bench", (0..jobs).map(|n| Fan100 { n }))
                .await
                .unwrap();
        }
    }
}

/// The setting of the connection that counts jobgraph's jobs: its polls ([`JOBGRAPH_BUSY`])
/// read the queue's partial indexes, which hold only the ready and running steps, never the
/// table. The plan PostgreSQL makes with the statistics of a full backlog (every step ready)
/// reads the table from its start to the first unfinished step, which at the end of a
/// burn-down is past every finished one: 150,000 rows, 12 ms of a core every 20 ms, at the end
/// of a burn-down of 150,000 jobs (`auto_explain`), taken from the cores the workers are
/// measured on. The peers' polls keep PostgreSQL's plans: graphile_worker, the fastest,
/// deletes a job once it completes, so its poll's scan stops at the first job left (made to
/// read an index instead, it was no faster: its 1-process cell read 46,509 and 48,026 jobs/s
/// against 53,016 and 53,989).
const POLL_BY_INDEX: (&str, &str) = ("enable_seqscan", "off");

/// A connection that counts a system's unfinished jobs.
enum Counter {
    Pg(sqlx::PgPool),
    /// `floor-runs`, on its own tables.
    FloorRuns(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
    #[cfg(feature = "peers")]
    Peer(peers::Counter),
}

/// Jobs not yet finished (for jobgraph: runs).
const JOBGRAPH_LEFT: &str =
    "SELECT count(*) FROM jobgraph_runs WHERE state IN ('pending', 'running')";
/// The same on PostgreSQL, where a run of one step succeeded once its step completed (its row
/// is not written then: `alone`, schema version 11).
const JOBGRAPH_PG_LEFT: &str = "SELECT count(*) FROM jobgraph_runs r
    WHERE r.state IN ('pending', 'running') AND NOT EXISTS (SELECT 1 FROM jobgraph_steps a
        WHERE a.run_id = r.id AND a.idx = 0 AND a.alone AND a.state = 'completed')";
/// Whether a step or fan-out element is ready or running (a row of one of the queue's indexes
/// of ready steps and elements, which split on `limited`: SQLite's schema version 7; a
/// fan-out's step is in none while its elements run, and no step waits without one of those in
/// its run): `EXISTS`, one per index, each stopping at the first such row.
const JOBGRAPH_BUSY: &str = "SELECT
    EXISTS (SELECT 1 FROM jobgraph_steps
        WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 0)
    OR EXISTS (SELECT 1 FROM jobgraph_steps
        WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 1)
    OR EXISTS (SELECT 1 FROM jobgraph_queue_elements
        WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 0)
    OR EXISTS (SELECT 1 FROM jobgraph_queue_elements
        WHERE state = 'pending' AND ready_at IS NOT NULL AND limited = 1)";
/// The same on PostgreSQL (schema versions 14 and 15), whose flag is a `boolean`; and, since a
/// step a commit hands over is in none of those indexes (schema version 17), whether a queued
/// run of more than one step is unfinished (`jobgraph_runs_unfinished`).
const JOBGRAPH_PG_BUSY: &str = "SELECT
    EXISTS (SELECT 1 FROM jobgraph_steps
        WHERE state = 'pending' AND ready_at IS NOT NULL AND NOT limited)
    OR EXISTS (SELECT 1 FROM jobgraph_steps
        WHERE state = 'pending' AND ready_at IS NOT NULL AND limited)
    OR EXISTS (SELECT 1 FROM jobgraph_queue_elements
        WHERE state = 'pending' AND ready_at IS NOT NULL AND NOT limited)
    OR EXISTS (SELECT 1 FROM jobgraph_queue_elements
        WHERE state = 'pending' AND ready_at IS NOT NULL AND limited)
    OR EXISTS (SELECT 1 FROM jobgraph_runs WHERE queued AND state IN ('pending', 'running')
        AND jsonb_array_length(graph -> 'steps') > 1)";

impl Counter {
    async fn new(system: System, db: &Db) -> Counter {
        match system {
            System::JobgraphSqlite => Counter::Sqlite(
                sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(
                        sqlx::sqlite::SqliteConnectOptions::from_str(&format!(
                            "sqlite://{}",
                            db.url()
                        ))
                        .unwrap()
                        .read_only(true),
                    )
                    .await
                    .unwrap(),
            ),
            System::JobgraphPg | System::FloorPg | System::FloorRuns => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(
                        sqlx::postgres::PgConnectOptions::from_str(db.url())
                            .unwrap()
                            .options([POLL_BY_INDEX]),
                    )
                    .await
                    .unwrap();
                if system == System::FloorRuns {
                    Counter::FloorRuns(pool)
                } else {
                    Counter::Pg(pool)
                }
            }
            #[cfg(feature = "peers")]
            peer => Counter::Peer(peers::Counter::new(peer, db.url()).await),
            #[cfg(not(feature = "peers"))]
            _ => no_peers(),
        }
    }

    /// Jobs not yet finished: exact, and for jobgraph a scan of every run (the backlog's
    /// check and the final tally).
    async fn left(&self) -> i64 {
        #[cfg(feature = "peers")]
        if let Counter::Peer(counter) = self {
            return counter.left().await;
        }
        match self {
            Counter::Pg(_) => self.jobgraph(JOBGRAPH_PG_LEFT).await,
            Counter::FloorRuns(_) => self.jobgraph(floor_runs::LEFT).await,
            _ => self.jobgraph(JOBGRAPH_LEFT).await,
        }
    }

    /// Whether any job is unfinished: what the burn-down polls every 20 ms, and the latency
    /// cells every 0.5 ms. An `EXISTS` for every system, which stops at the first unfinished job
    /// it finds, so that polling costs the database under test little: a `count(*)` of the
    /// backlog visits every row of it (at 50,000 jobs, 7 ms of a core per poll for jobgraph's,
    /// a fifth of a core at 50 polls a second, and a different share for each system).
    async fn busy(&self) -> bool {
        #[cfg(feature = "peers")]
        if let Counter::Peer(counter) = self {
            return counter.busy().await;
        }
        match self {
            Counter::Pg(_) => self.jobgraph(JOBGRAPH_PG_BUSY).await,
            Counter::FloorRuns(_) => self.jobgraph(floor_runs::BUSY).await,
            _ => self.jobgraph(JOBGRAPH_BUSY).await,
        }
    }

    /// The one value of jobgraph's statement `sql`, on either store.
    async fn jobgraph<T>(&self, sql: &'static str) -> T
    where
        T: Send
            + Unpin
            + for<'r> sqlx::Decode<'r, sqlx::Postgres>
            + sqlx::Type<sqlx::Postgres>
            + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
            + sqlx::Type<sqlx::Sqlite>,
    {
        match self {
            Counter::Pg(pool) | Counter::FloorRuns(pool) => {
                sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
            }
            Counter::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
            #[cfg(feature = "peers")]
            Counter::Peer(_) => unreachable!("a peer is counted by its own statements"),
        }
    }
}

/// Worker processes, told to go together.
struct Workers {
    children: Vec<(Child, ChildStdin, BufReader<ChildStdout>)>,
}

impl Workers {
    /// Starts `n` worker processes and waits until each says it is ready.
    fn start(system: System, workload: Workload, mode: Mode, db: &Db, n: usize) -> Workers {
        let exe = std::env::current_exe().unwrap();
        let children = (0..n)
            .map(|i| {
                let mut command = Command::new(&exe);
                if DIAGNOSE.load(std::sync::atomic::Ordering::Relaxed) {
                    command.env(SQL_STATS_ENV, "1");
                }
                let mut child = command
                    .args(["--worker", system.name(), workload.name(), mode.name()])
                    .arg(db.url())
                    .arg(format!("{}-{i}", system.name()))
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let stdin = child.stdin.take().unwrap();
                let stdout = BufReader::new(child.stdout.take().unwrap());
                (child, stdin, stdout)
            })
            .collect::<Vec<_>>();
        let mut workers = Workers { children };
        for (_, _, stdout) in &mut workers.children {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            assert_eq!(
                line.trim(),
                "ready",
                "a {} worker failed to start",
                system.name()
            );
        }
        workers
    }

    fn go(&mut self) {
        for (_, stdin, _) in &mut self.children {
            writeln!(stdin, "go").unwrap();
            stdin.flush().unwrap();
        }
    }

    /// Tells every worker to stop, and waits for them: what each said it did.
    fn stop(mut self) -> Vec<String> {
        for (_, stdin, _) in &mut self.children {
            let _ = writeln!(stdin, "stop");
            let _ = stdin.flush();
        }
        let mut said = Vec::new();
        for (mut child, stdin, mut stdout) in self.children.drain(..) {
            drop(stdin);
            let mut out = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
            let status = child.wait().unwrap();
            said.extend(out.lines().map(str::to_owned));
            if !status.success() {
                said.push(format!("error: a worker process exited with {status}"));
            }
        }
        said
    }
}

/// Set by `--diagnose`: worker processes count their SQL statements.
static DIAGNOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// One burn-down: jobs (runs) per second, and steps per second.
#[derive(Clone, Debug)]
struct Burn {
    jobs_per_s: f64,
    steps_per_s: f64,
    secs: f64,
    /// `Some(jobs finished)` if the cap stopped it first, or a worker process failed.
    capped: Option<u64>,
    /// The CPU time per step (µs) of the server's processes ([`ServerCpu`]; PostgreSQL only)
    /// and of the worker processes (the `cpu_ms` each said: the whole process, its start-up
    /// and connecting included).
    server_us: Option<f64>,
    workers_us: Option<f64>,
    /// What the workers printed when they stopped.
    said: Vec<String>,
}

/// The CPU time of the database's server processes (its connections: the workers', and the
/// bench's progress poll) over a burn-down, from `/proc` (Linux): what the server spent per job,
/// beside what each worker process says of its own. A connection that ends before the burn-down
/// does is not counted; PostgreSQL's background processes (WAL writer, checkpointer) are not
/// either. Not measured for SQLite (no server).
struct ServerCpu {
    conn: Option<sqlx::PgConnection>,
    /// CPU ms of each server process at the last sample.
    last: std::collections::HashMap<i32, u64>,
}

impl ServerCpu {
    async fn new(system: System, db: &Db) -> ServerCpu {
        use sqlx::Connection as _;
        let conn = match system {
            System::JobgraphSqlite => None,
            _ => sqlx::PgConnection::connect(db.url()).await.ok(),
        };
        ServerCpu {
            conn,
            last: std::collections::HashMap::new(),
        }
    }

    /// The CPU ms the server's processes on this database used since the last sample (all of
    /// it, for a process that started since).
    async fn sample(&mut self) -> Option<u64> {
        let conn = self.conn.as_mut()?;
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(conn)
        .await
        .ok()?;
        let mut used = 0;
        let mut now = std::collections::HashMap::new();
        for pid in pids {
            let Some(ms) = cpu_ms_of(&pid.to_string()) else {
                continue;
            };
            used += ms.saturating_sub(self.last.get(&pid).copied().unwrap_or(0));
            now.insert(pid, ms);
        }
        self.last = now;
        Some(used)
    }
}

/// The claims the workers said they completed (`done claimed=.. completed=N ..`; jobgraph only).
fn completed_claims(said: &[String]) -> u64 {
    said_values(said, "completed=")
        .map(|n| n.parse::<u64>().unwrap())
        .sum()
}

/// What the workers said of `key` (`key=value` words of their lines, as `cpu_ms=`), in order.
fn said_values<'a>(said: &'a [String], key: &'a str) -> impl Iterator<Item = &'a str> {
    said.iter()
        .filter_map(move |l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
}

/// Burns down a backlog of `jobs` jobs of `workload` with `procs` worker processes, stopping at
/// `cap` if the backlog is not gone by then (the rate is then of the jobs finished).
async fn burn_down(
    system: System,
    workload: Workload,
    jobs: u64,
    procs: usize,
    cap: Duration,
) -> Burn {
    let db = fresh_db(system).await;
    let inserted = Instant::now();
    setup_and_insert(system, &db, workload, jobs).await;
    if let (Ok(sql), false) = (
        std::env::var("QBENCH_SQL"),
        system == System::JobgraphSqlite,
    ) {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(db.url()).await.unwrap();
        if let Err(error) = sqlx::raw_sql(&sql).execute(&mut conn).await {
            panic!("QBENCH_SQL failed on {}: {error}", system.name());
        }
    }
    let insert_time = inserted.elapsed();
    let counter = Counter::new(system, &db).await;
    assert_eq!(counter.left().await, jobs as i64, "the backlog is in");
    let mut workers = Workers::start(system, workload, Mode::Throughput, &db, procs);
    let mut server = ServerCpu::new(system, &db).await;
    server.sample().await;
    workers.go();
    if let Ok(cmd) = std::env::var("QBENCH_ON_GO") {
        let started = Command::new("sh")
            .args(["-c", &cmd])
            .env("QSYSTEM", system.name())
            .env("QPROCS", procs.to_string())
            .spawn();
        if let Err(error) = started {
            eprintln!("QBENCH_ON_GO did not start: {error}");
        }
    }
    let began = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !counter.busy().await || began.elapsed() >= cap {
            break;
        }
    }
    let took = began.elapsed();
    let server_ms = server.sample().await;
    let left = counter.left().await;
    let said = workers.stop();
    let secs = took.as_secs_f64();
    let finished = jobs - left as u64;
    let done: Vec<&String> = said
        .iter()
        .filter(|l| l.starts_with("done") || l.starts_with("error"))
        .collect();
    let steps = if left == 0 {
        (finished * workload.steps()) as f64
    } else {
        // Runs are claimed breadth-first (oldest ready step first), so a capped graph
        // burn-down may finish few runs: count the steps the workers completed.
        completed_claims(&said) as f64 * workload.steps_per_claim()
    };
    let per_step_us = |ms: u64| ms as f64 * 1000.0 / steps.max(1.0);
    let workers_ms: Vec<u64> = said_values(&said, "cpu_ms=")
        .filter_map(|ms| ms.parse().ok())
        .collect();
    let burn = Burn {
        jobs_per_s: finished as f64 / secs,
        steps_per_s: steps / secs,
        secs,
        capped: (left > 0 || said.iter().any(|l| l.starts_with("error"))).then_some(finished),
        server_us: server_ms.filter(|_| finished > 0).map(per_step_us),
        workers_us: (workers_ms.len() == procs && finished > 0)
            .then(|| per_step_us(workers_ms.iter().sum())),
        said: said.clone(),
    };
    let server = burn
        .server_us
        .map(|us| format!(", the server's CPU {us:.1} µs per step"))
        .unwrap_or_default();
    eprintln!(
        "  {:<16} {:<9} {procs} proc: {finished} of {jobs} jobs in {:.2} s = {:.0} jobs/s, \
         {:.0} steps/s (backlog inserted in {:.2} s{server}) {done:?}",
        system.name(),
        workload.name(),
        secs,
        burn.jobs_per_s,
        burn.steps_per_s,
        insert_time.as_secs_f64(),
    );
    if std::env::var("QBENCH_STATS").is_ok() && system != System::JobgraphSqlite {
        print_row_writes(db.url()).await;
    }
    burn
}

/// Prints the rows each table of the database at `url` inserted, updated and deleted, and how
/// many of the updates were HOT (`pg_stat_user_tables`, `QBENCH_STATS`).
async fn print_row_writes(url: &str) {
    use sqlx::{Connection as _, Row as _};
    // The workers' statistics reach the server within a second of their last transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT relname::text AS t, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del \
         FROM pg_stat_user_tables ORDER BY relname",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for row in rows {
        eprintln!(
            "    {}: ins {} upd {} hot {} del {}",
            row.get::<String, _>("t"),
            row.get::<i64, _>("n_tup_ins"),
            row.get::<i64, _>("n_tup_upd"),
            row.get::<i64, _>("n_tup_hot_upd"),
            row.get::<i64, _>("n_tup_del")
        );
    }
}

/// Submits one job to an idle system; how long until its completion is seen.
async fn latency(system: System, mode: Mode, samples: usize) -> Vec<Duration> {
    let db = fresh_db(system).await;
    setup_and_insert(system, &db, Workload::Noop, 0).await;
    let counter = Counter::new(system, &db).await;
    let mut workers = Workers::start(system, Workload::Noop, mode, &db, 1);
    workers.go();
    let submitter = Submitter::new(system, &db).await;
    // Let the workers settle (LISTEN, first polls).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = sample(
        system,
        samples,
        &counter,
        |seq| submitter.submit(seq),
        std::thread::sleep,
    )
    .await;
    workers.stop();
    out
}

/// Latency on SQLite with the worker in the submitting process, on one store (what the
/// embedded default does: the store's own commits wake the worker), with the default poll. On
/// a worker process's runtime of its own, so that waiting for the job blocks no worker.
fn latency_same_process(samples: usize) -> Vec<Duration> {
    std::thread::spawn(move || {
        worker_runtime().block_on(async move {
            let system = System::JobgraphSqlite;
            let db = fresh_db(system).await;
            setup_and_insert(system, &db, Workload::Noop, 0).await;
            let counter = Counter::new(system, &db).await;
            let store = SqliteStore::open(db.url()).await.unwrap();
            let worker = Worker::new(&store)
                .concurrency(JOBGRAPH_CONCURRENCY)
                .job::<Noop>();
            let shutdown = CancellationToken::new();
            let working = tokio::spawn({
                let shutdown = shutdown.clone();
                async move { worker.run(shutdown).await }
            });
            let client = Client::new(&store);
            tokio::time::sleep(Duration::from_millis(500)).await;
            let submit = |seq: i64| {
                let client = &client;
                async move {
                    client.submit(&Noop { n: seq as u64 }).await.unwrap();
                }
            };
            let out = sample(system, samples, &counter, submit, |pause| {
                tokio::task::block_in_place(|| std::thread::sleep(pause))
            })
            .await;
            shutdown.cancel();
            working.await.unwrap().unwrap();
            out
        })
    })
    .join()
    .unwrap()
}

/// `samples` times: an idle gap of 10-220 ms (spread evenly over a 200 ms poll, so that a
/// polling worker is met at every phase of its sleep), then a job submitted (`submit`) and
/// the time until `counter` finds it done, polled every 0.5 ms (`pause`: a thread's sleep,
/// finer than tokio's timer).
async fn sample<F: std::future::Future<Output = ()>>(
    system: System,
    samples: usize,
    counter: &Counter,
    submit: impl Fn(i64) -> F,
    pause: impl Fn(Duration),
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let gap = 10 + (i as u64 * 7_919) % 211;
        tokio::time::sleep(Duration::from_millis(gap)).await;
        let began = Instant::now();
        submit(i as i64).await;
        loop {
            if !counter.busy().await {
                break;
            }
            pause(Duration::from_micros(500));
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "{} did not complete a job in 30 s",
                system.name()
            );
        }
        out.push(began.elapsed());
    }
    out
}

/// Submits one job at a time, for the latency cells.
enum Submitter {
    Pg(PgStore),
    Sqlite(SqliteStore),
    #[cfg(feature = "peers")]
    Peer(peers::Submitter),
}

impl Submitter {
    async fn new(system: System, db: &Db) -> Submitter {
        match system {
            System::JobgraphPg => Submitter::Pg(PgStore::connect(db.url()).await.unwrap()),
            System::JobgraphSqlite => Submitter::Sqlite(SqliteStore::open(db.url()).await.unwrap()),
            #[cfg(feature = "peers")]
            peer => Submitter::Peer(peers::Submitter::new(peer, db.url()).await),
            #[cfg(not(feature = "peers"))]
            _ => no_peers(),
        }
    }

    async fn submit(&self, seq: i64) {
        match self {
            Submitter::Pg(store) => {
                Client::new(store)
                    .submit(&Noop { n: seq as u64 })
                    .await
                    .unwrap();
            }
            Submitter::Sqlite(store) => {
                Client::new(store)
                    .submit(&Noop { n: seq as u64 })
                    .await
                    .unwrap();
            }
            #[cfg(feature = "peers")]
            Submitter::Peer(submitter) => submitter.submit(seq).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reporting.

/// A latency cell's row: its p50 and p99, also logged.
fn percentiles(label: String, mut samples: Vec<Duration>) -> (String, Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    eprintln!("  latency {label}: p50 {} p99 {}", ms(p50), ms(p99));
    (label, p50, p99)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A single-step burn-down cell: its system and worker processes, the median rate (jobs/s)
/// and CPU per job (µs) of its rounds, and whether any round was capped.
struct Single {
    system: System,
    procs: usize,
    rate: f64,
    capped: bool,
    server_us: Option<f64>,
    workers_us: Option<f64>,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn rate(x: Option<f64>) -> String {
    match x {
        Some(x) => format!("{x:.0}"),
        None => "—".to_owned(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "—".to_owned(),
    }
}

struct Options {
    /// How long a burn-down may take: a system still working then is stopped, and its rate is
    /// that of the jobs it finished.
    cap: Duration,
    /// Which cells: `burn`, `graphs`, `latency` (all unless `--cells` says).
    cells: Vec<String>,
    diagnose: bool,
    /// What `--diagnose` burns down (`--diagnose-workload`; single-step jobs unless it says).
    diagnose_workload: Workload,
    jobs: u64,
    rounds: usize,
    samples: usize,
    only: Vec<System>,
    /// How many worker processes each throughput cell runs with, in turn (`--procs`).
    procs: Vec<usize>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = Options {
        cap: Duration::from_secs(120),
        cells: vec!["burn".into(), "graphs".into(), "latency".into()],
        diagnose: false,
        diagnose_workload: Workload::Noop,
        jobs: 2_000,
        rounds: 1,
        samples: 50,
        only: SYSTEMS.to_vec(),
        procs: PROCS.to_vec(),
    };
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--full" => {
                o.jobs = 20_000;
                o.samples = 200;
            }
            "--diagnose" => o.diagnose = true,
            "--diagnose-workload" => {
                i += 1;
                o.diagnose = true;
                o.diagnose_workload =
                    Workload::parse(&args[i]).expect("--diagnose-workload noop|diamond|for_each");
            }
            "--cap" => {
                i += 1;
                o.cap = Duration::from_secs(args[i].parse().expect("--cap SECONDS"));
            }
            "--cells" => {
                i += 1;
                o.cells = args[i].split(',').map(str::to_owned).collect();
            }
            "--jobs" => {
                i += 1;
                o.jobs = args[i].parse().expect("--jobs N");
            }
            "--procs" => {
                i += 1;
                o.procs = args[i]
                    .split(',')
                    .map(|p| p.parse().expect("--procs N[,N..]"))
                    .collect();
            }
            "--rounds" => {
                i += 1;
                o.rounds = args[i].parse().expect("--rounds N");
            }
            "--only" => {
                i += 1;
                o.only = args[i]
                    .split(',')
                    .map(|s| System::parse(s).unwrap_or_else(|| panic!("no system {s}")))
                    .collect();
            }
            // `cargo bench` passes `--bench`; filters are not supported.
            _ => {}
        }
        i += 1;
    }
    o
}

const PROCS: [usize; 3] = [1, 2, 4];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--worker") {
        worker_main(&args[2..]);
        return;
    }
    let o = options();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(coordinate(o));
}

async fn coordinate(o: Options) {
    let run = o.only.clone();
    // Start the cluster before anything is timed.
    if run.iter().any(|s| *s != System::JobgraphSqlite) {
        drop(fresh_db(System::JobgraphPg).await);
        if let Some(t) = jobgraph_tests::pg::startup_time() {
            eprintln!("PostgreSQL started in {t:?}");
        }
    }
    let jobs = o.jobs;
    if o.diagnose {
        DIAGNOSE.store(true, std::sync::atomic::Ordering::Relaxed);
        for &system in &run {
            let floor = matches!(system, System::FloorPg | System::FloorRuns);
            if floor && o.diagnose_workload == Workload::ForEach {
                continue;
            }
            for &procs in &o.procs {
                diagnose(system, o.diagnose_workload, jobs, procs).await;
            }
        }
        return;
    }
    eprintln!(
        "backlog {jobs} jobs; {} round(s); {} latency samples",
        o.rounds, o.samples
    );

    // 1 and 4: single-step burn-down.
    let mut noop: Vec<Single> = Vec::new();
    let cell = |name: &str| o.cells.iter().any(|c| c == name);
    for &procs in o.procs.iter().filter(|_| cell("burn")) {
        for &system in &run {
            let (mut capped, mut rates, mut server, mut workers) =
                (false, Vec::new(), Vec::new(), Vec::new());
            for _ in 0..o.rounds {
                let burn = burn_down(system, Workload::Noop, jobs, procs, o.cap).await;
                capped |= burn.capped.is_some();
                rates.push(burn.jobs_per_s);
                server.extend(burn.server_us);
                workers.extend(burn.workers_us);
            }
            let median_of = |xs: Vec<f64>| (!xs.is_empty()).then(|| median(xs));
            noop.push(Single {
                system,
                procs,
                rate: median(rates),
                capped,
                server_us: median_of(server),
                workers_us: median_of(workers),
            });
        }
    }

    // 2: graphs, jobgraph only.
    let mut graphs: Vec<(System, Workload, usize, f64, bool)> = Vec::new();
    for workload in [Workload::Diamond, Workload::ForEach]
        .into_iter()
        .filter(|_| cell("graphs"))
    {
        // Diamonds: as many runs as the single-step backlog has jobs (8 times the steps: a
        // backlog of 2,500 diamonds, as many steps, took under half a second, a sixth of it
        // the pipeline of five commits filling and draining). `for_each` runs go through a
        // claim per step (3 per run), their 100 elements inside one: a 20th as many runs.
        let runs = match workload {
            Workload::ForEach => jobs / 20,
            _ => jobs,
        }
        .max(1);
        for &procs in &o.procs {
            for &system in run
                .iter()
                .filter(|s| s.is_jobgraph() || (s.is_floor() && workload == Workload::Diamond))
            {
                let (mut v, mut capped) = (Vec::new(), false);
                for _ in 0..o.rounds {
                    let burn = burn_down(system, workload, runs, procs, o.cap).await;
                    capped |= burn.capped.is_some();
                    v.push(burn.steps_per_s);
                }
                graphs.push((system, workload, procs, median(v), capped));
            }
        }
    }

    // 3: latency.
    let mut lat: Vec<(String, Duration, Duration)> = Vec::new();
    // The floor has no latency of its own to show: it is jobgraph's SQL without its worker.
    for &system in run.iter().filter(|s| !s.is_floor() && cell("latency")) {
        let modes: &[Mode] = if system.is_jobgraph() {
            &[Mode::Latency, Mode::LatencyFastPoll]
        } else {
            &[Mode::Latency]
        };
        for &mode in modes {
            let label = match mode {
                Mode::LatencyFastPoll => format!("{} (poll 10 ms)", system.name()),
                _ if system == System::JobgraphPg => {
                    format!("{} (LISTEN/NOTIFY, poll 200 ms)", system.name())
                }
                _ if system.is_jobgraph() => format!("{} (poll 200 ms, default)", system.name()),
                _ => format!("{} (LISTEN/NOTIFY)", system.name()),
            };
            lat.push(percentiles(label, latency(system, mode, o.samples).await));
        }
        if system == System::JobgraphSqlite {
            let label = format!(
                "{} (the worker in the submitting process, poll 200 ms)",
                system.name()
            );
            lat.push(percentiles(label, latency_same_process(o.samples)));
        }
    }

    report(&o, &noop, &graphs, &lat);
}

/// One burn-down of `runs` runs of `workload` by `procs` worker processes that count their SQL
/// statements: per step, how many of each kind and how long they took.
async fn diagnose(system: System, workload: Workload, runs: u64, procs: usize) {
    let server_stats = ServerStats::reset(system).await;
    let burn = burn_down(system, workload, runs, procs, Duration::from_secs(900)).await;
    let mut by_kind: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
    for line in burn.said.iter().filter_map(|l| l.strip_prefix("sql ")) {
        for entry in line.split('\t').filter(|e| !e.is_empty()) {
            let (kind, numbers) = entry.rsplit_once('=').unwrap();
            let (n, ms) = numbers.split_once('/').unwrap();
            let e = by_kind.entry(kind.to_owned()).or_default();
            e.0 += n.parse::<u64>().unwrap();
            e.1 += ms.parse::<f64>().unwrap();
        }
    }
    let (total_n, total_ms) = by_kind
        .values()
        .fold((0, 0.0), |(n, ms), (a, b)| (n + a, ms + b));
    let wall_ms = burn.secs * 1e3;
    // Per step: a single-step job is one.
    let steps = runs * workload.steps();
    println!(
        "\n#### {} {}, {runs} runs, {procs} worker process(es): {:.0} steps/s\n",
        system.name(),
        workload.name(),
        burn.steps_per_s
    );
    println!(
        "{:.2} statements per step; {:.3} ms of statement time per step (summed over the \
         statements, which overlap); the burn-down took {:.3} ms of wall time per step\n",
        total_n as f64 / steps as f64,
        total_ms / steps as f64,
        wall_ms / steps as f64,
    );
    println!("| statement (first words) | per step | ms per step | mean ms |");
    println!("|---|---:|---:|---:|");
    let mut rows: Vec<_> = by_kind.into_iter().collect();
    rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
    for (kind, (n, ms)) in rows {
        println!(
            "| `{}` | {:.3} | {:.3} | {:.3} |",
            kind.replace('|', "\\|"),
            n as f64 / steps as f64,
            ms / steps as f64,
            ms / n as f64
        );
    }
    if let Some(stats) = server_stats {
        stats.print(steps).await;
    }
}

/// The server's view of a diagnosed burn-down, from `pg_stat_statements` when the cluster
/// loads it (`JOBGRAPH_PG_SETTINGS=shared_preload_libraries=pg_stat_statements`): each
/// statement's execution time, and the pages it dirtied and the WAL records it wrote, which
/// count the row versions it wrote.
struct ServerStats {
    url: String,
}

impl ServerStats {
    /// Clears the server's statistics; `None` for SQLite, or when the server does not load
    /// `pg_stat_statements`.
    async fn reset(system: System) -> Option<Self> {
        use sqlx::Connection as _;
        if system == System::JobgraphSqlite {
            return None;
        }
        let url = fresh_db(system).await.url().to_owned();
        let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
        let created = sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await;
        let reset = sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut conn)
            .await;
        if created.is_err() || reset.is_err() {
            eprintln!(
                "note: no server statistics (start the cluster with \
                 {}=shared_preload_libraries=pg_stat_statements)",
                jobgraph_tests::pg::SETTINGS_ENV
            );
            return None;
        }
        Some(Self { url })
    }

    async fn print(&self, steps: u64) {
        use sqlx::{Connection as _, Row as _};
        let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let rows = sqlx::query(
            "SELECT regexp_replace(left(query, 70), '\\s+', ' ', 'g') AS query,
                calls, total_exec_time, rows, shared_blks_hit + shared_blks_read AS blocks,
                shared_blks_dirtied AS dirtied, wal_records
            FROM pg_stat_statements
            WHERE query NOT LIKE '%pg_stat_statements%'
            ORDER BY total_exec_time DESC
            LIMIT 15",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let per_step = |v: f64| v / steps as f64;
        println!("\nThe server's side (`pg_stat_statements`), per step:\n");
        println!("| statement | calls | exec ms | rows | blocks | dirtied | WAL records |");
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for row in rows {
            let query: String = row.get("query");
            println!(
                "| `{}` | {:.3} | {:.4} | {:.2} | {:.1} | {:.2} | {:.2} |",
                query.replace('|', "\\|"),
                per_step(row.get::<i64, _>("calls") as f64),
                per_step(row.get::<f64, _>("total_exec_time")),
                per_step(row.get::<i64, _>("rows") as f64),
                per_step(row.get::<i64, _>("blocks") as f64),
                per_step(row.get::<i64, _>("dirtied") as f64),
                per_step(row.get::<i64, _>("wal_records") as f64),
            );
        }
    }
}

fn report(
    o: &Options,
    noop: &[Single],
    graphs: &[(System, Workload, usize, f64, bool)],
    lat: &[(String, Duration, Duration)],
) {
    let cell =
        |system: System, procs: usize| noop.iter().find(|c| c.system == system && c.procs == procs);
    let get = |system: System, procs: usize| cell(system, procs).map(|c| c.rate);
    let capped = |system: System, procs: usize| cell(system, procs).is_some_and(|c| c.capped);
    let rate_of = |system: System, procs: usize| {
        let r = rate(get(system, procs));
        if capped(system, procs) {
            format!("{r} *")
        } else {
            r
        }
    };
    println!(
        "\n### Single-step jobs, backlog of {} burned down (jobs/s, median of {} round(s))\n",
        o.jobs, o.rounds
    );
    println!(
        "| worker processes | jobgraph-pg | jobgraph-sqlite | awa | graphile | apalis | fastest peer \
         | jobgraph-pg ÷ fastest | jobgraph-sqlite ÷ fastest | floor-pg | floor-pg ÷ fastest \
         | jobgraph-pg ÷ floor-pg |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for &procs in &o.procs {
        let fastest = PEERS
            .iter()
            .copied()
            .filter_map(|p| get(p, procs).map(|r| (p, r)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let pg = get(System::JobgraphPg, procs);
        let sqlite = get(System::JobgraphSqlite, procs);
        let floor = get(System::FloorPg, procs);
        println!(
            "| {procs} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rate_of(System::JobgraphPg, procs),
            rate_of(System::JobgraphSqlite, procs),
            rate_of(System::Awa, procs),
            rate_of(System::Graphile, procs),
            rate_of(System::Apalis, procs),
            fastest.map_or("—".to_owned(), |(p, r)| format!("{} {r:.0}", p.name())),
            ratio(pg, fastest.map(|f| f.1)),
            ratio(sqlite, fastest.map(|f| f.1)),
            rate_of(System::FloorPg, procs),
            ratio(floor, fastest.map(|f| f.1)),
            ratio(pg, floor),
        );
    }

    println!(
        "\n`*`: not burned down within {} s, or a worker process failed (the log says which); \
         the rate of the jobs finished by then.",
        o.cap.as_secs()
    );
    println!(
        "\n### CPU per single-step job (µs, medians): the server's processes serving the \
         database, and the worker processes\n"
    );
    println!("| system | worker processes | server | workers | both |");
    println!("|---|---:|---:|---:|---:|");
    let us = |x: Option<f64>| x.map_or("—".to_owned(), |x| format!("{x:.1}"));
    for c in noop.iter().filter(|c| c.system != System::JobgraphSqlite) {
        println!(
            "| {} | {} | {} | {} | {} |",
            c.system.name(),
            c.procs,
            us(c.server_us),
            us(c.workers_us),
            us(c.server_us.zip(c.workers_us).map(|(s, w)| s + w)),
        );
    }
    println!("\n### jobgraph graphs (steps/s; a `for_each` element is a step)\n");
    println!(
        "| store | worker processes | single-step jobs/s | diamond steps/s | ÷ single-step \
         | for_each steps/s | ÷ single-step |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for system in [
        System::JobgraphPg,
        System::JobgraphSqlite,
        System::FloorPg,
        System::FloorRuns,
    ] {
        for &procs in &o.procs {
            let g = |w: Workload| {
                graphs
                    .iter()
                    .find(|(s, gw, p, _, _)| *s == system && *gw == w && *p == procs)
                    .map(|(_, _, _, r, c)| (*r, *c))
            };
            let shown = |x: Option<(f64, bool)>| match x {
                Some((r, true)) => format!("{r:.0} *"),
                other => rate(other.map(|(r, _)| r)),
            };
            let single = get(system, procs);
            let (diamond, each) = (g(Workload::Diamond), g(Workload::ForEach));
            println!(
                "| {} | {procs} | {} | {} | {} | {} | {} |",
                system.name(),
                rate_of(system, procs),
                shown(diamond),
                ratio(diamond.map(|d| d.0), single),
                shown(each),
                ratio(each.map(|e| e.0), single),
            );
        }
    }

    println!(
        "\n### Submit to completion seen, one job at a time on an idle system ({} samples)\n",
        o.samples
    );
    println!("| system | p50 | p99 | p50 ÷ fastest peer's p50 |");
    println!("|---|---:|---:|---:|");
    let best_peer = lat
        .iter()
        .filter(|(l, _, _)| !l.starts_with("jobgraph"))
        .map(|(_, p50, _)| *p50)
        .min();
    for (label, p50, p99) in lat {
        println!(
            "| {label} | {} | {} | {} |",
            ms(*p50),
            ms(*p99),
            ratio(Some(p50.as_secs_f64()), best_peer.map(|d| d.as_secs_f64()))
        );
    }
}
