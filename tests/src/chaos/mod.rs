//! The chaos suite: real worker processes ([`chaos_worker`](../../src/bin/chaos_worker.rs))
//! run a workload of mixed shapes ([`jobs`]) from one store while a seeded nemesis
//! ([`harness`]) kills them (SIGKILL, restarted after a delay), pauses them past their lease
//! (SIGSTOP, then SIGCONT: their late results must be fenced out), cuts their database
//! connections (`pg_terminate_backend`), restarts PostgreSQL, exhausts its connections, holds
//! SQLite's write lock, and makes some commits ambiguous ([`flaky`]). After a heal phase (every
//! worker running, the database up) a checker ([`check`]) reads the database and proves the
//! promise: steps run at least once; each step's output and each run's outcome are committed
//! exactly once; nothing is lost.
//!
//! `tests/chaos.rs` runs the short profile ([`Profile::ci`]) on both backends as a normal test,
//! and the full one (`JOBGRAPH_CHAOS_PROFILE=full`) as an ignored test. A run prints its seed;
//! `JOBGRAPH_CHAOS_SEED` replays it.

/// A chaos run's state as a reader sees it, on either store (`r`: `jobgraph_runs`): a run of
/// `Single` whose step completed succeeded, though PostgreSQL does not write the run's row then
/// (the store's own readers derive it from the step too).
macro_rules! shown_run_state {
    () => {
        "CASE WHEN r.state IN ('pending', 'running') AND r.job = 'Single' AND EXISTS (
            SELECT 1 FROM jobgraph_steps a WHERE a.run_id = r.id AND a.state = 'completed')
        THEN 'succeeded' ELSE r.state END"
    };
}

pub mod check;
pub mod flaky;
pub mod harness;
pub mod jobs;
pub mod witness;

use std::time::Duration;

/// Sets the nemesis's seed (decimal, or hex with `0x`); a run prints the seed it used.
pub const SEED_ENV: &str = "JOBGRAPH_CHAOS_SEED";

/// The profiles the ignored full test runs: `full` (every profile on every backend), or one
/// profile's name ([`Profile::NAMES`]).
pub const PROFILE_ENV: &str = "JOBGRAPH_CHAOS_PROFILE";

/// The backends the full test runs: `postgres`, `sqlite` or `both` (the default).
pub const BACKEND_ENV: &str = "JOBGRAPH_CHAOS_BACKEND";

/// The seed of the short profile in CI.
pub const CI_SEED: u64 = 0xC4A0_5EED;

/// A store the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The test binary's private PostgreSQL cluster ([`crate::pg`]).
    Postgres,
    /// One SQLite file shared by the worker processes.
    Sqlite,
}

impl Backend {
    /// Its name in reports and in [`BACKEND_ENV`].
    pub fn name(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::Sqlite => "SQLite",
        }
    }

    /// The backends [`BACKEND_ENV`] names.
    ///
    /// # Errors
    ///
    /// A value that names none, saying what is valid.
    pub fn from_env() -> Result<Vec<Backend>, String> {
        match std::env::var(BACKEND_ENV).as_deref().map(str::trim) {
            Err(_) | Ok("" | "both") => Ok(vec![Backend::Postgres, Backend::Sqlite]),
            Ok("postgres" | "postgresql") => Ok(vec![Backend::Postgres]),
            Ok("sqlite") => Ok(vec![Backend::Sqlite]),
            Ok(other) => Err(format!(
                "{BACKEND_ENV}={other:?} names no backend; use `postgres`, `sqlite` or `both`"
            )),
        }
    }
}

/// A fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL a worker; start a new one in its place after a delay.
    Kill,
    /// SIGSTOP a worker past its lease, then SIGCONT it.
    Stop,
    /// `pg_terminate_backend` on every worker's connections.
    Terminate,
    /// Stop PostgreSQL at once (as a crash), start it again.
    Restart,
    /// Take every free connection slot of PostgreSQL for a while (the workers' connections are
    /// cut first, so they must reconnect into a full server).
    Pressure,
    /// Hold SQLite's write lock for a while.
    Lock,
}

impl Fault {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::Terminate => "terminate",
            Fault::Restart => "restart",
            Fault::Pressure => "pressure",
            Fault::Lock => "lock",
        }
    }

    /// Whether it may delay every worker on `backend` (the database), not only its victim: on
    /// SQLite a stopped worker may hold the write lock, and every other waits for it.
    pub fn is_global(self, backend: Backend) -> bool {
        match self {
            Fault::Kill => false,
            Fault::Stop => backend == Backend::Sqlite,
            _ => true,
        }
    }

    fn on(self, backend: Backend) -> bool {
        match self {
            Fault::Kill | Fault::Stop => true,
            Fault::Terminate | Fault::Restart | Fault::Pressure => backend == Backend::Postgres,
            Fault::Lock => backend == Backend::Sqlite,
        }
    }
}

/// What a chaos run does: how many workers, how much work, which faults, how often.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Its name (the README's table rows).
    pub name: &'static str,
    /// Worker processes.
    pub workers: usize,
    /// Steps each worker runs at once.
    pub concurrency: usize,
    /// Runs submitted, spread over the nemesis's window.
    pub runs: u64,
    /// How long the nemesis acts; then the heal phase.
    pub window: Duration,
    /// The pause between two faults (ms, inclusive range).
    pub gap_ms: (u64, u64),
    /// The faults it picks from (those of the backend).
    pub faults: Vec<Fault>,
    /// Per thousand commits answered with an error after they committed.
    pub ambiguous_permille: u64,
    /// The workers' lease.
    pub lease: Duration,
    /// How long the heal phase may take before the runs not ended count as lost.
    pub heal_timeout: Duration,
}

impl Profile {
    /// The profiles of the full run, by name.
    pub const NAMES: [&'static str; 6] =
        ["kill", "stop", "database", "pressure", "ambiguous", "mixed"];

    /// The short profile CI runs: every fault of the backend, a small workload.
    pub fn ci(backend: Backend) -> Profile {
        let mut profile = Profile::full("mixed", backend)
            .ok()
            .flatten()
            .expect("`mixed` has faults on every backend");
        profile.name = "ci (mixed)";
        profile.workers = match backend {
            Backend::Postgres => 4,
            Backend::Sqlite => 3,
        };
        profile.runs = 100;
        profile.window = Duration::from_secs(20);
        profile.gap_ms = (500, 1_500);
        profile.heal_timeout = Duration::from_secs(120);
        profile
    }

    /// Full profile `name` on `backend`; `None` if it has no fault there (`pressure` is
    /// PostgreSQL's).
    ///
    /// # Errors
    ///
    /// An unknown name, saying which are valid.
    pub fn full(name: &str, backend: Backend) -> Result<Option<Profile>, String> {
        use Fault::*;
        let (name, faults, ambiguous_permille): (&'static str, &[Fault], u64) = match name {
            "kill" => ("kill", &[Kill], 0),
            "stop" => ("stop", &[Stop], 0),
            "database" => ("database", &[Terminate, Restart, Lock], 0),
            "pressure" => ("pressure", &[Pressure], 0),
            "ambiguous" => ("ambiguous", &[], 60),
            "mixed" => (
                "mixed",
                &[Kill, Stop, Terminate, Restart, Pressure, Lock],
                20,
            ),
            other => {
                return Err(format!(
                    "{PROFILE_ENV}={other:?} names no chaos profile; use `full` or one of {}",
                    Self::NAMES.join(", ")
                ));
            }
        };
        let faults: Vec<Fault> = faults.iter().copied().filter(|f| f.on(backend)).collect();
        if faults.is_empty() && ambiguous_permille == 0 {
            return Ok(None);
        }
        let (workers, runs) = match backend {
            Backend::Postgres => (8, 400),
            Backend::Sqlite => (4, 300),
        };
        Ok(Some(Profile {
            name,
            workers,
            concurrency: 4,
            runs,
            window: Duration::from_secs(45),
            gap_ms: (400, 1_400),
            faults,
            ambiguous_permille,
            lease: Duration::from_secs(3),
            heal_timeout: Duration::from_secs(300),
        }))
    }
}

/// The seed [`SEED_ENV`] sets, or `default`.
///
/// # Errors
///
/// A value that is no number.
pub fn seed_from_env(default: u64) -> Result<u64, String> {
    let Ok(text) = std::env::var(SEED_ENV) else {
        return Ok(default);
    };
    let text = text.trim();
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("{SEED_ENV}={text:?} is not a seed (decimal or 0x hex): {e}"))
}

/// What the harness tells a worker process through its environment.
#[derive(Clone, Copy, Debug)]
pub struct WorkerEnv {
    /// Its lease (`CHAOS_LEASE_MS`).
    pub lease: Duration,
    /// Its concurrency (`CHAOS_CONCURRENCY`).
    pub concurrency: usize,
    /// Per thousand commits made ambiguous (`CHAOS_AMBIGUOUS_PERMILLE`).
    pub ambiguous_permille: u64,
    /// The seed of its ambiguous commits (`CHAOS_SEED`).
    pub seed: u64,
}

impl WorkerEnv {
    /// The variables for `Command::envs`, with `CHAOS_LONG_MS` (step `long` sleeps half a lease
    /// longer than the lease).
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let lease = self.lease.as_millis() as u64;
        vec![
            ("CHAOS_LEASE_MS", lease.to_string()),
            ("CHAOS_CONCURRENCY", self.concurrency.to_string()),
            (
                "CHAOS_AMBIGUOUS_PERMILLE",
                self.ambiguous_permille.to_string(),
            ),
            ("CHAOS_SEED", self.seed.to_string()),
            ("CHAOS_LONG_MS", (lease + lease / 2).to_string()),
        ]
    }

    /// Reads them.
    ///
    /// # Errors
    ///
    /// A variable unset or not a number, naming it.
    pub fn from_env() -> Result<WorkerEnv, String> {
        fn var(name: &str) -> Result<u64, String> {
            let value = std::env::var(name)
                .map_err(|_| format!("{name} is not set (the chaos harness sets it)"))?;
            value
                .trim()
                .parse()
                .map_err(|e| format!("{name}={value:?} is not a number: {e}"))
        }
        let lease = var("CHAOS_LEASE_MS")?;
        let concurrency = var("CHAOS_CONCURRENCY")?;
        if lease == 0 || concurrency == 0 {
            return Err("CHAOS_LEASE_MS and CHAOS_CONCURRENCY must be at least 1".to_owned());
        }
        var("CHAOS_LONG_MS")?;
        Ok(WorkerEnv {
            lease: Duration::from_millis(lease),
            concurrency: concurrency as usize,
            ambiguous_permille: var("CHAOS_AMBIGUOUS_PERMILLE")?,
            seed: var("CHAOS_SEED")?,
        })
    }
}
