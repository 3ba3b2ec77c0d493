//! The harness: a store, its witness tables, the worker processes, the submitter, the seeded
//! nemesis, the heal phase, then the [checker](super::check).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jobgraph::store::queue::Queue;
use jobgraph::store::{PgStore, SqliteStore, StoreError};
use jobgraph::{Client, ClientError};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection as _, PgPool, SqlitePool};

use super::check::{self, Outcome};
use super::jobs::{Chain, Diamond, Fan, Long, Single, shape_of};
use super::witness::{PG_SCHEMA, SQLITE_SCHEMA};
use super::{Backend, Fault, Profile, WorkerEnv};
use crate::kill::mix;

/// The batch every run of the workload belongs to.
pub const BATCH: &str = "chaos";

/// The harness's own connections to the store's database: the nemesis's and the checker's.
pub enum Admin {
    /// PostgreSQL.
    Pg(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// A fault as it was injected.
#[derive(Clone, Debug)]
pub struct Injected {
    /// Which.
    pub fault: Fault,
    /// When (Unix ms).
    pub at_ms: i64,
    /// When it ended (Unix ms): the victim continued or was restarted, the database was back.
    pub until_ms: i64,
    /// The worker it hit, for a kill or a stop.
    pub victim: Option<String>,
    /// The steps the victim held then (run, step), if they could be read.
    pub held: Option<Vec<(String, String)>>,
}

/// Unix ms now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// xorshift64*: the nemesis's choices, from the seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn between(&mut self, (low, high): (u64, u64)) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[(self.next() % items.len() as u64) as usize])
    }
}

/// One worker's place: the process running in it now, and what happened to the ones before.
struct Slot {
    index: usize,
    incarnation: usize,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    /// The reader of the current process's standard output: its `done` line.
    stdout: Option<std::thread::JoinHandle<String>>,
    stopped: bool,
    /// When to start a new process (after a kill), or to continue the stopped one.
    due: Option<Instant>,
    /// The `done` lines of the processes that ended by themselves.
    done: Vec<String>,
}

impl Slot {
    fn name(&self) -> String {
        format!("w{}.{}", self.index, self.incarnation)
    }

    fn alive(&self) -> bool {
        self.child.is_some() && !self.stopped
    }
}

/// Where the worker processes run and log.
struct Fleet<'a> {
    bin: &'a Path,
    url: String,
    env: WorkerEnv,
    logs: PathBuf,
    slots: Vec<Slot>,
}

impl Fleet<'_> {
    fn spawn(&mut self, slot: usize) -> Result<(), String> {
        let name = self.slots[slot].name();
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))
            .map_err(|e| format!("cannot create the log of worker {name}: {e}"))?;
        let mut env = self.env;
        env.seed = mix(env.seed ^ (slot as u64) << 32 ^ self.slots[slot].incarnation as u64);
        let mut child = Command::new(self.bin)
            .args([self.url.as_str(), name.as_str()])
            .envs(env.vars())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut last = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                last = line;
            }
            last
        });
        let s = &mut self.slots[slot];
        s.stdin = child.stdin.take();
        s.child = Some(child);
        s.stdout = Some(reader);
        s.stopped = false;
        s.due = None;
        Ok(())
    }

    fn signal(&self, slot: usize, signal: &str) -> Result<(), String> {
        let pid = self.slots[slot]
            .child
            .as_ref()
            .map(Child::id)
            .ok_or("no process")?;
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .map_err(|e| format!("cannot run `kill`: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("`kill {signal} {pid}` failed ({status})"))
    }

    /// SIGKILLs the process of `slot`; a new one starts at `restart`.
    fn kill(&mut self, slot: usize, restart: Instant) {
        let s = &mut self.slots[slot];
        if let Some(mut child) = s.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        s.stdin = None;
        if let Some(reader) = s.stdout.take() {
            let _ = reader.join();
        }
        s.stopped = false;
        s.incarnation += 1;
        s.due = Some(restart);
    }

    /// Starts or continues the workers whose time came (all of them if `all`).
    fn tend(&mut self, all: bool) -> Result<(), String> {
        let now = Instant::now();
        for slot in 0..self.slots.len() {
            let due = self.slots[slot].due.is_some_and(|at| all || at <= now);
            if !due {
                continue;
            }
            if self.slots[slot].stopped {
                self.signal(slot, "-CONT")?;
                self.slots[slot].stopped = false;
                self.slots[slot].due = None;
            } else if self.slots[slot].child.is_none() {
                self.spawn(slot)?;
            }
        }
        Ok(())
    }

    /// Closes every worker's standard input (it drains and exits) and collects their `done`
    /// lines; kills those that do not exit within `within`.
    fn stop(&mut self, within: Duration) -> Vec<String> {
        for slot in &mut self.slots {
            slot.stdin = None;
        }
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        for slot in &mut self.slots {
            if let Some(mut child) = slot.child.take() {
                loop {
                    match child.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                    }
                }
            }
            if let Some(reader) = slot.stdout.take() {
                slot.done.push(reader.join().unwrap_or_default());
            }
            lines.append(&mut slot.done);
        }
        lines
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if let Some(mut child) = slot.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Runs `profile` on `backend` with `seed`, the workers being `worker_bin`: the checker's
/// outcome. `Ok(None)`: PostgreSQL is not installed (and not required): skipped.
///
/// # Errors
///
/// The harness itself failed (a process would not start, the database could not be set up).
pub async fn run(
    backend: Backend,
    profile: &Profile,
    seed: u64,
    worker_bin: &Path,
) -> Result<Option<Outcome>, String> {
    let temp = tempfile::Builder::new()
        .prefix("jobgraph-chaos-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let (url, admin) = match backend {
        Backend::Postgres => {
            let Some(db) = crate::pg::database().await else {
                return Ok(None);
            };
            let url = db.url().to_owned();
            // The cluster runs with `synchronous_commit=off` (the tests' data is thrown away),
            // which loses the last commits when the server crashes: a restart would lose
            // committed runs the checker rightly counts. This database's sessions wait for their
            // commits (`fsync=off` is no matter: the kernel keeps the writes of a process that
            // crashed).
            let admin_url = db.url_of("postgres");
            let mut conn = sqlx::PgConnection::connect(&admin_url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(&format!(
                "ALTER DATABASE {} SET synchronous_commit = on",
                db.name()
            ))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("cannot make the database's commits durable: {e}"))?;
            let _ = conn.close().await;
            // Creates the store's schema.
            PgStore::connect(&url).await.map_err(|e| e.to_string())?;
            let pool = PgPoolOptions::new()
                .max_connections(3)
                .connect(&url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(PG_SCHEMA)
                .execute(&pool)
                .await
                .map_err(|e| format!("cannot install the witness tables: {e}"))?;
            (url, Admin::Pg(pool))
        }
        Backend::Sqlite => {
            let path = temp.path().join("chaos.db");
            let url = path
                .to_str()
                .ok_or("a temporary path is not UTF-8")?
                .to_owned();
            SqliteStore::open(&url).await.map_err(|e| e.to_string())?;
            let options = SqliteConnectOptions::new()
                .filename(&path)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(30));
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(SQLITE_SCHEMA)
                .execute(&pool)
                .await
                .map_err(|e| format!("cannot install the witness tables: {e}"))?;
            (url, Admin::Sqlite(pool))
        }
    };
    let began = Instant::now();
    let env = WorkerEnv {
        lease: profile.lease,
        concurrency: profile.concurrency,
        ambiguous_permille: profile.ambiguous_permille,
        seed,
    };
    let mut fleet = Fleet {
        bin: worker_bin,
        url: url.clone(),
        env,
        logs: temp.path().to_path_buf(),
        slots: (0..profile.workers)
            .map(|index| Slot {
                index,
                incarnation: 0,
                child: None,
                stdin: None,
                stdout: None,
                stopped: false,
                due: None,
                done: Vec::new(),
            })
            .collect(),
    };
    for slot in 0..profile.workers {
        fleet.spawn(slot)?;
    }

    // The submitter: the runs spread over most of the window, so faults land on work.
    let submitter = async {
        let (runs, window) = (profile.runs, profile.window);
        match backend {
            Backend::Postgres => {
                let store = PgStore::connect(&url).await.map_err(|e| e.to_string())?;
                submit(&store, runs, window).await
            }
            Backend::Sqlite => {
                let store = SqliteStore::open(&url).await.map_err(|e| e.to_string())?;
                submit(&store, runs, window).await
            }
        }
    };
    let nemesis = nemesis(&mut fleet, &admin, &url, profile, seed);
    let (submitted, injected) = tokio::try_join!(submitter, nemesis)?;

    // Heal: every worker running, the database up; then wait for every run to end.
    fleet.tend(true)?;

    let healing = Instant::now();
    let heal_deadline = healing + profile.heal_timeout;
    while Instant::now() < heal_deadline {
        if ended(&admin).await.is_some_and(|n| n >= submitted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let heal_time = healing.elapsed();
    let done_lines = tokio::task::block_in_place(|| fleet.stop(Duration::from_secs(30)));
    let wall = began.elapsed();
    let outcome = check::check(
        &admin,
        check::Context {
            backend,
            profile,
            seed,
            submitted,
            injected: &injected,
            done_lines: &done_lines,
            wall,
            heal_time,
        },
    )
    .await;
    if !outcome.violations.is_empty() {
        // Keep the database and the workers' logs for a look.
        let kept = temp.keep();
        eprintln!(
            "chaos: the database and the workers' logs are kept in {}",
            kept.display()
        );
    }
    Ok(Some(outcome))
}

/// The nemesis: for the profile's window, a fault every `gap_ms`, chosen from the seed.
async fn nemesis(
    fleet: &mut Fleet<'_>,
    admin: &Admin,
    url: &str,
    profile: &Profile,
    seed: u64,
) -> Result<Vec<Injected>, String> {
    let mut rng = Rng(mix(seed) | 1);
    let mut injected: Vec<Injected> = Vec::new();
    let end = Instant::now() + profile.window;
    let lease_ms = profile.lease.as_millis() as u64;
    let mut round = 0;
    while Instant::now() < end {
        let gap = Duration::from_millis(rng.between(profile.gap_ms));
        wait_tending(fleet, gap).await?;
        // Each kind once first (a short run sees them all), then at random.
        let fault = match profile.faults.get(round) {
            Some(&fault) => Some(fault),
            None => rng.pick(&profile.faults),
        };
        round += 1;
        let Some(fault) = fault else {
            continue;
        };
        let live: Vec<usize> = (0..fleet.slots.len())
            .filter(|&s| fleet.slots[s].alive() && fleet.slots[s].due.is_none())
            .collect();
        let at_ms = now_ms();
        let mut record = Injected {
            fault,
            at_ms,
            until_ms: at_ms,
            victim: None,
            held: None,
        };
        match fault {
            Fault::Kill | Fault::Stop => {
                let Some(slot) = rng.pick(&live) else {
                    continue;
                };
                let name = fleet.slots[slot].name();
                let downtime = if fault == Fault::Kill {
                    // Often short: a kill soon after a restart is a repeated kill.
                    rng.between((100, 1_500))
                } else {
                    lease_ms + rng.between((500, 1_500))
                };
                if fault == Fault::Kill {
                    fleet.kill(slot, Instant::now() + Duration::from_millis(downtime));
                } else {
                    fleet.signal(slot, "-STOP")?;
                    fleet.slots[slot].stopped = true;
                    fleet.slots[slot].due = Some(Instant::now() + Duration::from_millis(downtime));
                }
                record.until_ms = at_ms + downtime as i64;
                record.held = held_by(admin, &name).await;
                record.victim = Some(name);
            }
            Fault::Terminate => {
                terminate(admin).await;
            }
            Fault::Restart => {
                let down = Duration::from_millis(rng.between((200, 1_500)));
                tokio::task::spawn_blocking(move || crate::pg::restart(down))
                    .await
                    .map_err(|e| e.to_string())??;
                record.until_ms = now_ms();
            }
            Fault::Pressure => {
                let hold = Duration::from_millis(rng.between((1_000, 3_000)));
                pressure(url, admin, hold).await;
                record.until_ms = now_ms();
            }
            Fault::Lock => {
                let hold = Duration::from_millis(rng.between((500, 4_000)));
                if !lock(url, hold).await? {
                    // A stopped worker holds the lock: the stop is this fault.
                    continue;
                }
                record.until_ms = now_ms();
            }
        }
        injected.push(record);
    }

    Ok(injected)
}

/// Waits `gap`, starting and continuing the workers whose time comes meanwhile.
async fn wait_tending(fleet: &mut Fleet<'_>, gap: Duration) -> Result<(), String> {
    let until = Instant::now() + gap;
    loop {
        fleet.tend(false)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
}

/// Submits `runs` runs of the workload over 80% of `window`, each with its own id (an error is
/// tried again: a run that was created meanwhile answers `IdTaken`). How many.
async fn submit(store: &(impl Queue + Clone), runs: u64, window: Duration) -> Result<u64, String> {
    let client = Client::new(store);
    let pace = window.mul_f64(0.8) / runs.max(1) as u32;
    let start = Instant::now();
    for n in 0..runs {
        let id = format!("{BATCH}/{n}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let submitted = match shape_of(n) {
                "Chain" => submit_one(&client, &Chain { n }, &id).await,
                "Diamond" => submit_one(&client, &Diamond { n }, &id).await,
                "Fan" => submit_one(&client, &Fan { n }, &id).await,
                "Single" => submit_one(&client, &Single { n }, &id).await,
                _ => submit_one(&client, &Long { n }, &id).await,
            };
            match submitted {
                Ok(()) | Err(ClientError::Store(StoreError::IdTaken { .. })) => break,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => return Err(format!("cannot submit run {id}: {error}")),
            }
        }
        let due = start + pace * (n as u32 + 1);
        tokio::time::sleep_until(due.into()).await;
    }
    Ok(runs)
}

async fn submit_one<J>(client: &Client, job: &J, id: &str) -> Result<(), ClientError>
where
    J: jobgraph::durable::DurableJob + Sync,
{
    client
        .submit(job)
        .id(id)
        .batch(BATCH)
        // Claims that expire are the nemesis's doing: a step may lose many.
        .max_attempts(1_000)
        .await
        .map(drop)
}

/// The steps (and fan-out elements, as `step[i]`) worker `name` holds now (best effort: `None` if the database did not answer).
async fn held_by(admin: &Admin, name: &str) -> Option<Vec<(String, String)>> {
    const SQL_PG: &str =
        "SELECT run_id, name FROM jobgraph_steps WHERE worker = $1 AND state = 'pending'
        UNION ALL
        SELECT run_id, step || '[' || idx || ']' FROM jobgraph_queue_elements
        WHERE worker = $1 AND state = 'pending'";
    const SQL_LITE: &str =
        "SELECT run_id, name FROM jobgraph_steps WHERE worker = ?1 AND state = 'pending'
        UNION ALL
        SELECT run_id, step || '[' || idx || ']' FROM jobgraph_queue_elements
        WHERE worker = ?1 AND state = 'pending'";
    match admin {
        Admin::Pg(pool) => sqlx::query_as(SQL_PG).bind(name).fetch_all(pool).await.ok(),
        Admin::Sqlite(pool) => sqlx::query_as(SQL_LITE)
            .bind(name)
            .fetch_all(pool)
            .await
            .ok(),
    }
}

/// How many runs of the batch ended.
async fn ended(admin: &Admin) -> Option<u64> {
    const SQL: &str = concat!(
        "SELECT count(*) FROM jobgraph_runs r WHERE r.batch = 'chaos' AND ",
        shown_run_state!(),
        " IN ('succeeded', 'failed', 'cancelled')"
    );
    let n: Option<i64> = match admin {
        Admin::Pg(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await.ok(),
        Admin::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await.ok(),
    };
    n.map(|n| n as u64)
}

/// Cuts every connection of the workers (all but the harness's own sessions).
async fn terminate(admin: &Admin) -> u64 {
    const SQL: &str = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND application_name LIKE 'w%'";
    let Admin::Pg(pool) = admin else {
        return 0;
    };
    sqlx::query_scalar::<_, i64>(SQL)
        .fetch_one(pool)
        .await
        .map_or(0, |n| n as u64)
}

/// Cuts the workers' connections, then takes every connection slot left for `hold`.
async fn pressure(url: &str, admin: &Admin, hold: Duration) -> usize {
    terminate(admin).await;
    let mut held = Vec::new();
    while held.len() < 250 {
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => held.push(conn),
            Err(_) => break,
        }
    }
    let taken = held.len();
    tokio::time::sleep(hold).await;
    for conn in held {
        let _ = conn.close().await;
    }
    taken
}

/// Holds SQLite's write lock for `hold`; `false` if it could not take it within a second (a
/// stopped worker may hold it, and the nemesis must not wait for the worker it is to continue).
async fn lock(url: &str, hold: Duration) -> Result<bool, String> {
    let options = SqliteConnectOptions::new()
        .filename(url)
        .busy_timeout(Duration::from_secs(1));
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .map_err(|e| format!("cannot open the SQLite file to lock it: {e}"))?;
    if sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .is_err()
    {
        let _ = conn.close().await;
        return Ok(false);
    }
    tokio::time::sleep(hold).await;
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut conn)
        .await
        .map_err(|e| format!("cannot release SQLite's write lock: {e}"))?;
    let _ = conn.close().await;
    Ok(true)
}
