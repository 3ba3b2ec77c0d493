//! A private PostgreSQL for the tests: one cluster per test binary, a fresh database per test.
//!
//! The first call to [`database`] in a process finds the server binaries (`pg_config --bindir`,
//! then `initdb` on `PATH`, then `/usr/lib/postgresql/*/bin`, newest first), runs `initdb` in a
//! new temporary directory (in `/dev/shm` if it can: in memory), and starts `postgres` on that cluster listening only on a unix
//! socket in the same directory (`listen_addresses=''`: no TCP port, nothing to collide with
//! another test binary or a system server), with durability off (`fsync`, `synchronous_commit`
//! and `full_page_writes`: the data is thrown away anyway). `initdb` refuses to run as root, so
//! as root the directory is given to the `postgres` user and both programs run as that user
//! (`Command::uid`, `Command::gid`: no `su`, no `runuser`, the process started is `postgres`
//! itself). Every call then creates a new database (`CREATE DATABASE test_<n>`) and returns its
//! URL: `postgres:///test_<n>?host=<socket dir, percent-encoded>&user=postgres`.
//!
//! **Stopping.** A test binary exits without running the destructors of statics, and may be
//! killed. So the cluster is stopped by a watchdog: a small `sh` started with the cluster, whose
//! standard input is a pipe that only this process holds the writing end of. When this process
//! ends, however it ends (even `kill -9`), the kernel closes that end, the watchdog's `read`
//! returns, and it sends the postmaster (the one the data directory's `postmaster.pid` names:
//! [`restart`] may have replaced the first) `SIGQUIT` (immediate shutdown: nothing to keep), waits
//! for it (10 s at most), and removes the directory. The watchdog and the server each run in a
//! process group of their own, and the watchdog ignores `SIGINT`, `SIGTERM` and `SIGHUP`, so a
//! Ctrl-C or a kill of the test's process group ends the test but not them. Only a machine that
//! stops, or a `kill -9` of the watchdog itself, leaves a cluster behind (in `/dev/shm` it goes
//! with the next boot).
//!
//! **Without PostgreSQL.** If no server binaries are found, [`database`] returns `None` and says
//! once, on the process's standard error (not captured by the test harness), why the PostgreSQL
//! tests of this binary are skipped; with `JOBGRAPH_REQUIRE_POSTGRES=1` it panics instead. A
//! cluster that is found but fails to start is always a failure, with the server's log.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// Set to `1`, the PostgreSQL tests fail instead of being skipped when no server binaries are
/// found (`.ci/run` sets it).
pub const REQUIRE_ENV: &str = "JOBGRAPH_REQUIRE_POSTGRES";

/// Extra server settings for diagnosis, `name=value` separated by spaces, each given to
/// `postgres` as `-c name=value` after the defaults (which it can override): for example
/// `shared_preload_libraries=pg_stat_statements` for the queue bench's `--diagnose`.
pub const SETTINGS_ENV: &str = "JOBGRAPH_PG_SETTINGS";

/// The port in the socket's name (`.s.PGSQL.5432`); nothing listens on TCP.
const PORT: u16 = 5432;

/// How long the server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A fresh, empty database of this test binary's cluster.
#[derive(Debug, Clone)]
pub struct TestDb {
    name: String,
    url: String,
    socket_dir: PathBuf,
}

impl TestDb {
    /// Its name, `test_<n>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A sqlx URL of it: the socket directory in `host`, user `postgres`, no password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL of another database of the same cluster (e.g. `postgres`).
    pub fn url_of(&self, database: &str) -> String {
        url(&self.socket_dir, database)
    }
}

/// The cluster of this process.
struct Cluster {
    dir: PathBuf,
    /// The writing end of the watchdog's standard input: held until the process ends.
    _watchdog: Mutex<ChildStdin>,
    /// How long `initdb` and the server's start took.
    started_in: Duration,
    /// The running postmaster, and what starts another ([`restart`]).
    server: Mutex<Child>,
    bin: PathBuf,
    user: Option<(u32, u32)>,
}

enum State {
    Ready(Cluster),
    /// No server binaries: the tests are skipped (unless required).
    Missing(String),
    /// Binaries found, but the cluster did not start: the tests fail.
    Failed(String),
}

static CLUSTER: OnceLock<State> = OnceLock::new();
static NEXT_DB: AtomicU64 = AtomicU64::new(1);
static SKIP_NOTICE: Once = Once::new();

/// A new database on this process's private PostgreSQL (started on first use), or `None` if
/// PostgreSQL is not installed and not required: the caller's test is skipped.
///
/// # Panics
///
/// If PostgreSQL is required ([`REQUIRE_ENV`]) but not installed, if the cluster failed to
/// start, or if the database cannot be created.
pub async fn database() -> Option<TestDb> {
    let cluster = match CLUSTER.get_or_init(start) {
        State::Ready(cluster) => cluster,
        State::Missing(why) => {
            if required() {
                panic!("{REQUIRE_ENV}=1, but PostgreSQL cannot be started: {why}");
            }
            SKIP_NOTICE.call_once(|| {
                // Straight to the process's stderr: the harness captures `eprintln!`.
                let _ = writeln!(
                    std::io::stderr(),
                    "note: the PostgreSQL tests of this binary are skipped (they pass without \
                     checking anything): {why}; install PostgreSQL's server (Debian: `apt-get \
                     install postgresql`), or set {REQUIRE_ENV}=1 to make this a failure"
                );
            });
            return None;
        }
        State::Failed(why) => panic!("the tests' PostgreSQL failed to start: {why}"),
    };
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    let name = format!("test_{n}");
    let admin = url(&cluster.dir, "postgres");
    let created = async {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
        conn.close().await
    };
    if let Err(e) = created.await {
        panic!("cannot create database {name} on the tests' PostgreSQL ({admin}): {e}");
    }
    Some(TestDb {
        url: url(&cluster.dir, &name),
        name,
        socket_dir: cluster.dir.clone(),
    })
}

/// How long this process's cluster took to start (`initdb` and the server), if it started.
pub fn startup_time() -> Option<Duration> {
    match CLUSTER.get() {
        Some(State::Ready(cluster)) => Some(cluster.started_in),
        _ => None,
    }
}

/// Whether [`REQUIRE_ENV`] is `1`.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1")
}

/// `postgres:///{database}?host={dir}&user=postgres`, the directory percent-encoded.
fn url(dir: &Path, database: &str) -> String {
    let mut host = String::new();
    for byte in dir.as_os_str().as_encoded_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                host.push(char::from(*byte))
            }
            _ => {
                let _ = write!(host, "%{byte:02X}");
            }
        }
    }
    format!("postgres:///{database}?host={host}&user=postgres")
}

fn start() -> State {
    let Some(bin) = find_bindir() else {
        return State::Missing(
            "no PostgreSQL server binaries (`initdb` and `postgres`) in `pg_config --bindir`, \
             on PATH or in /usr/lib/postgresql/*/bin"
                .to_owned(),
        );
    };
    match start_in(&bin) {
        Ok(cluster) => State::Ready(cluster),
        Err(why) => State::Failed(why),
    }
}

/// The directory holding both `initdb` and `postgres`.
fn find_bindir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|dir| PathBuf::from(dir.trim()));
    if let Some(dir) = from_pg_config.filter(|d| has_both(d)) {
        return Some(dir);
    }
    // `initdb` on PATH, through its symlinks (Debian links only some programs into PATH).
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("initdb"))
        .filter(|initdb| initdb.is_file())
        .filter_map(|initdb| fs::canonicalize(initdb).ok())
        .filter_map(|initdb| initdb.parent().map(Path::to_path_buf))
        .find(|dir| has_both(dir));
    if on_path.is_some() {
        return on_path;
    }
    // Debian's layout: /usr/lib/postgresql/<major>/bin, the newest major first.
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}

/// The user to run the server as: `None` (this one) unless this process is root, which
/// `initdb` and `postgres` refuse; then the `postgres` user's (uid, gid).
fn server_user() -> Result<Option<(u32, u32)>, String> {
    let uid = match fs::metadata("/proc/self") {
        Ok(meta) => meta.uid(),
        Err(_) => id(&["-u"])?,
    };
    if uid != 0 {
        return Ok(None);
    }
    let uid = id(&["-u", "postgres"]).map_err(|e| {
        format!(
            "this process runs as root, which initdb refuses, and there is no `postgres` user to \
             run the server as ({e}); create one (`useradd --system postgres`) or run the tests \
             as another user"
        )
    })?;
    Ok(Some((uid, id(&["-g", "postgres"])?)))
}

/// `id ARGS`, a number.
fn id(args: &[&str]) -> Result<u32, String> {
    let out = Command::new("id")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `id`: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .map_err(|_| format!("`id {}` says: {}", args.join(" "), text.trim()))
}

/// A command run as the server's user, in `dir` (its working directory must be readable by
/// that user).
fn as_server(program: PathBuf, user: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(dir).stdin(Stdio::null());
    if let Some((uid, gid)) = user {
        // As root, std drops the supplementary groups too before `setuid`.
        cmd.uid(uid).gid(gid);
    }
    // The server reads these; nothing of the caller's environment is meant for it.
    for var in ["PGDATA", "PGPORT", "PGHOST", "PGUSER", "PGDATABASE"] {
        cmd.env_remove(var);
    }
    cmd
}

fn start_in(bin: &Path) -> Result<Cluster, String> {
    let began = Instant::now();
    let user = server_user()?;
    // In memory where there is a tmpfs for it: `CREATE DATABASE` copies a template of about
    // 8 MB, a tenth of the time there than on a disk (measured: 30-60 ms against 400-650 ms,
    // on a loaded machine), and `initdb` writes the same.
    let mut temp = tempfile::Builder::new();
    temp.prefix("jobgraph-pg-");
    let dir = temp
        .tempdir_in("/dev/shm")
        .or_else(|_| temp.tempdir())
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?
        // The watchdog removes it when this process ends.
        .keep();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .map_err(|e| format!("cannot give {} to the postgres user: {e}", dir.display()))?;
    }
    let data = dir.join("data");
    let initdb = as_server(bin.join("initdb"), user, &dir)
        .arg("--pgdata")
        .arg(&data)
        .args(["--username=postgres", "--auth=trust", "--encoding=UTF8"])
        .args(["--locale=C", "--no-sync"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bin.join("initdb").display()))?;
    if !initdb.status.success() {
        return Err(format!(
            "initdb failed ({}):\n{}{}",
            initdb.status,
            String::from_utf8_lossy(&initdb.stdout),
            String::from_utf8_lossy(&initdb.stderr)
        ));
    }

    let (child, _) = spawn_server(bin, user, &dir, began)?;
    let watchdog = watchdog(child.id(), &dir)?;
    Ok(Cluster {
        dir,
        _watchdog: Mutex::new(watchdog),
        started_in: began.elapsed(),
        server: Mutex::new(child),
        bin: bin.to_path_buf(),
        user,
    })
}

/// Starts `postgres` on the cluster in `dir` and waits until it accepts connections (at most
/// [`START_TIMEOUT`] after `began`); its log is appended to `dir/postgres.log`.
fn spawn_server(
    bin: &Path,
    user: Option<(u32, u32)>,
    dir: &Path,
    began: Instant,
) -> Result<(Child, Duration), String> {
    let data = dir.join("data");
    let log_path = dir.join("postgres.log");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log_err = log
        .try_clone()
        .map_err(|e| format!("cannot share the log file: {e}"))?;
    let mut server = as_server(bin.join("postgres"), user, dir);
    server
        .arg("-D")
        .arg(&data)
        .arg("-k")
        .arg(dir)
        .args(["-p", &PORT.to_string()])
        .args(["-c", "listen_addresses="])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
        .args(
            std::env::var(SETTINGS_ENV)
                .unwrap_or_default()
                .split_whitespace()
                .flat_map(|setting| ["-c", setting]),
        )
        // Its own process group: a Ctrl-C or a kill of the test's group does not reach it, the
        // watchdog stops it (a postmaster killed outright leaves its shared memory behind).
        .process_group(0)
        .stdout(log)
        .stderr(log_err);
    let mut child = server
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.join("postgres").display()))?;
    let pid = child.id().to_string();

    // Ready when the postmaster's pid file (its own: first line) says so (its 8th line; what
    // `pg_ctl -w` reads).
    let pid_file = data.join("postmaster.pid");
    let log_tail = || fs::read_to_string(&log_path).unwrap_or_default();
    loop {
        let status = fs::read_to_string(&pid_file).unwrap_or_default();
        let mut lines = status.lines();
        if lines.next().is_some_and(|l| l.trim() == pid)
            && lines.nth(6).is_some_and(|l| l.trim() == "ready")
        {
            return Ok((child, began.elapsed()));
        }
        if let Ok(Some(exit)) = child.try_wait() {
            return Err(format!(
                "postgres exited ({exit}); its log:\n{}",
                log_tail()
            ));
        }
        if began.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "postgres did not accept connections within {START_TIMEOUT:?}; its log:\n{}",
                log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Restarts this process's cluster as a crash does: the postmaster is told to quit at once
/// (`SIGQUIT`, immediate shutdown: every connection is cut, nothing is checkpointed), stays down
/// for `down_for`, and is started again on the same data directory and socket (crash recovery
/// replays its log). Returns once it accepts connections again, with how long it was
/// unreachable. For the chaos tests; other tests of the same binary see their connections cut
/// too, so only a binary whose tests expect that may call it.
///
/// # Errors
///
/// If there is no cluster in this process, or the server cannot be stopped or started.
pub fn restart(down_for: Duration) -> Result<Duration, String> {
    let Some(State::Ready(cluster)) = CLUSTER.get() else {
        return Err("no PostgreSQL cluster runs in this process: call `database` first".into());
    };
    let mut server = cluster.server.lock().unwrap_or_else(|e| e.into_inner());
    let began = Instant::now();
    let quit = Command::new("kill")
        .args(["-QUIT", &server.id().to_string()])
        .status()
        .map_err(|e| format!("cannot run `kill`: {e}"))?;
    if !quit.success() {
        return Err(format!("`kill -QUIT {}` failed ({quit})", server.id()));
    }
    server
        .wait()
        .map_err(|e| format!("cannot wait for the postmaster: {e}"))?;
    std::thread::sleep(down_for);
    let (child, _) = spawn_server(&cluster.bin, cluster.user, &cluster.dir, Instant::now())?;
    *server = child;
    Ok(began.elapsed())
}

/// Starts the process that stops the server `pid` and removes `dir` once this process ends (its
/// standard input closes): the returned end of that pipe must live as long as this process.
fn watchdog(pid: u32, dir: &Path) -> Result<ChildStdin, String> {
    const SCRIPT: &str = r#"trap '' INT TERM HUP
read _ignored
pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null)
[ -n "$pid" ] || pid=$1
kill -QUIT "$pid" 2>/dev/null
i=0
while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
rm -rf "$2""#;
    let mut child = Command::new("sh")
        .args(["-c", SCRIPT, "jobgraph-pg-watchdog"])
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Out of the test's process group, deaf to the signals that end it: it must outlive
        // the test to clean up after it.
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the watchdog shell: {e}"))?;
    child
        .stdin
        .take()
        .ok_or_else(|| "the watchdog has no standard input".to_owned())
}
