//! A durable batch survives `kill -9`: a real child process (`src/bin/durable_child.rs`) runs
//! the batch of [`RUNS`] runs of the job of [`jobgraph_tests::kill`] on a SQLite file, the test
//! kills it (SIGKILL) at random moments, from a fixed seed, at least [`MIN_KILLS`] times, starting
//! it again on the same file after each kill, until a child finishes the batch. Then it proves,
//! from the store's tables and a log the steps write themselves:
//!
//! 1. every run completed: the last child's batch succeeded, and the store holds every run as
//!    succeeded;
//! 2. every step's output (and every `fan` element's) was committed exactly once: triggers the
//!    test installs on the store's tables log each commit, with the lease owner (the process)
//!    that made it, in the same transaction;
//! 3. no completed step ran again after a kill: each step records its execution (generation,
//!    pid, run, step) in a table of its own (in the store's file, through a connection of its
//!    own), with its own autocommitted insert, before its work; a step committed when a child
//!    was killed has no execution in a later child;
//! 4. the outputs are those of a pure evaluation of the job ([`jobgraph_tests::kill`]);
//! 5. re-executions are bounded by what was running: for each kill, the steps that executed but
//!    had not committed when it landed (in flight) are at least the steps it caused to run again;
//! 6. no step ran before its parents' outputs were committed: the log and the commits are in one
//!    database, so the test's triggers order them.
//!
//! The figures are printed (`cargo test -p jobgraph-tests --test kill -- --nocapture`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobgraph::store::{RunState, SqliteStore, Store as _, StoredRun};
use jobgraph_tests::kill::{self as pure, BATCH, RUNS, STEPS};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row as _, SqlitePool};

/// How many kills the test tries; the batch must not finish before [`MIN_KILLS`] landed.
const KILLS: usize = 24;

/// How many kills must land (the child still running) for the test to count.
const MIN_KILLS: usize = 20;

/// The seed of the kill delays.
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// A kill lands this many milliseconds (inclusive range) after the child said it started.
const DELAY_MS: (u64, u64) = (20, 300);

/// SIGKILL's number, what `Child::kill` sends on Unix.
const SIGKILL: i32 = 9;

/// Logs every commit of a step's output or of a `fan` element into `kill_audit`, in the
/// committing transaction, with the run's lease owner at that moment (the runner that committed:
/// writes are fenced on it). The store only ever updates a step to `completed` when it commits
/// it, so a second row for a unit is a second commit.
const AUDIT: &str = "
CREATE TABLE kill_audit (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    unit   TEXT NOT NULL,
    owner  TEXT,
    output TEXT
);
CREATE TRIGGER kill_audit_step_update AFTER UPDATE ON jobgraph_steps
    WHEN NEW.state = 'completed'
BEGIN
    INSERT INTO kill_audit (run_id, unit, owner, output) VALUES (NEW.run_id, NEW.name,
        (SELECT lease_owner FROM jobgraph_runs WHERE id = NEW.run_id), NEW.output);
END;
CREATE TRIGGER kill_audit_step_insert AFTER INSERT ON jobgraph_steps
    WHEN NEW.state = 'completed'
BEGIN
    INSERT INTO kill_audit (run_id, unit, owner, output) VALUES (NEW.run_id, NEW.name,
        (SELECT lease_owner FROM jobgraph_runs WHERE id = NEW.run_id), NEW.output);
END;
CREATE TRIGGER kill_audit_element_insert AFTER INSERT ON jobgraph_elements
BEGIN
    INSERT INTO kill_audit (run_id, unit, owner, output)
    VALUES (NEW.run_id, NEW.step || '[' || NEW.idx || ']',
        (SELECT lease_owner FROM jobgraph_runs WHERE id = NEW.run_id), NEW.output);
END;
CREATE TRIGGER kill_audit_element_update AFTER UPDATE ON jobgraph_elements
BEGIN
    INSERT INTO kill_audit (run_id, unit, owner, output)
    VALUES (NEW.run_id, NEW.step || '[' || NEW.idx || ']',
        (SELECT lease_owner FROM jobgraph_runs WHERE id = NEW.run_id), NEW.output);
END;
";

/// The log the child's steps write (the child creates it too, if missing), and the trigger
/// that stamps each execution with the number of commits made before it.
const EXECUTIONS: &str = "
CREATE TABLE executions (
    generation INTEGER NOT NULL,
    pid        INTEGER NOT NULL,
    run        INTEGER NOT NULL,
    unit       TEXT    NOT NULL,
    at_ms      INTEGER NOT NULL,
    commits_before INTEGER
);
CREATE TRIGGER kill_order_execution AFTER INSERT ON executions
BEGIN
    UPDATE executions SET commits_before = (SELECT COALESCE(MAX(seq), 0) FROM kill_audit)
    WHERE rowid = NEW.rowid;
END;
";

/// A unit of work: a step of run `kill/N`, or an element of its `fan` (`fan[INDEX]`).
type Unit = (u64, String);

/// xorshift64: the kill delays, reproducible from [`SEED`].
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `low..=high`.
    fn between(&mut self, (low, high): (u64, u64)) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// One child process.
struct Generation {
    pid: u32,
    end: End,
    /// The units the store held as committed once it was dead (if it did not finish).
    committed: HashSet<Unit>,
    /// How long it took to say `started` (open the store, plan the batch), if it did.
    startup: Option<Duration>,
}

/// How a child ended.
enum End {
    /// Killed this many milliseconds after it said `started`.
    Killed(u64),
    /// It died by itself (a bug): how, and what it said.
    Crashed(String),
    /// It finished the batch: its last line, `done SUCCEEDED FAILED CANCELLED LOADED`.
    Finished(String),
}

/// How many children the test starts at most: the kills, and some that crash (a bug).
const MAX_CHILDREN: usize = KILLS + 8;

fn run_number(run_id: &str) -> u64 {
    run_id
        .strip_prefix(&format!("{BATCH}/"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{run_id}` is not a run of batch `{BATCH}`"))
}

async fn pool(path: &Path) -> SqlitePool {
    let connect = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(connect)
        .await
        .expect("open a database")
}

/// The units the store holds as committed: completed steps and stored `fan` elements.
async fn committed(db: &SqlitePool) -> HashSet<Unit> {
    let steps = sqlx::query("SELECT run_id, name FROM jobgraph_steps WHERE state = 'completed'")
        .fetch_all(db)
        .await
        .expect("read the steps");
    let elements = sqlx::query("SELECT run_id, step, idx FROM jobgraph_elements")
        .fetch_all(db)
        .await
        .expect("read the elements");
    let steps = steps.iter().map(|row| {
        let run: String = row.get("run_id");
        (run_number(&run), row.get::<String, _>("name"))
    });
    let elements = elements.iter().map(|row| {
        let run: String = row.get("run_id");
        let step: String = row.get("step");
        let idx: i64 = row.get("idx");
        (run_number(&run), format!("{step}[{idx}]"))
    });
    steps.chain(elements).collect()
}

/// The expected output (JSON) of every unit of run `n`, from the pure functions alone.
fn expected(n: u64) -> BTreeMap<String, Value> {
    let seed = pure::seed(n);
    let grow = pure::grow(n, seed);
    let split = pure::split(grow);
    let fan: Vec<u64> = split.iter().map(|&e| pure::fan(n, e)).collect();
    let left = pure::left(grow);
    let right = pure::right(n, grow);
    let join = pure::join(left, &right, &fan);
    let mut units = BTreeMap::new();
    units.insert("seed".to_owned(), Value::from(seed));
    units.insert("grow".to_owned(), Value::from(grow));
    units.insert("split".to_owned(), Value::from(split));
    for (i, &x) in fan.iter().enumerate() {
        units.insert(format!("fan[{i}]"), Value::from(x));
    }
    units.insert("fan".to_owned(), Value::from(fan));
    units.insert("left".to_owned(), Value::from(left));
    units.insert("right".to_owned(), Value::from(right));
    units.insert("join".to_owned(), Value::from(join));
    units
}

/// The units whose outputs unit `unit` takes.
fn parents(unit: &str) -> &'static [&'static str] {
    match unit {
        "seed" => &[],
        "grow" => &["seed"],
        "split" | "left" | "right" => &["grow"],
        "join" => &["left", "right", "fan"],
        fan if fan.starts_with("fan[") => &["split"],
        other => panic!("no unit `{other}` runs"),
    }
}

fn json(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: `{text}` is not JSON: {e}"))
}

#[test]
fn a_batch_killed_at_random_completes_with_each_step_committed_once() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("jobs.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // The store's schema, then the audit triggers on it, and the executions log.
    let (store, db) = rt.block_on(async {
        let store = SqliteStore::open(db_path.to_str().unwrap()).await.unwrap();
        let db = pool(&db_path).await;
        sqlx::raw_sql(AUDIT)
            .execute(&db)
            .await
            .expect("install the audit");
        sqlx::raw_sql(EXECUTIONS).execute(&db).await.unwrap();
        (store, db)
    });

    let mut rng = XorShift(SEED);
    let mut generations: Vec<Generation> = Vec::new();
    let mut kills = 0;
    while generations.len() < MAX_CHILDREN {
        let generation = generations.len();
        let spawned = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_durable_child"))
            .arg(&db_path)
            .arg(generation.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let pid = child.id();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let started = line == "started\n";
        let startup = started.then(|| spawned.elapsed());
        let kill_after = (started && kills < KILLS).then(|| rng.between(DELAY_MS));
        if let Some(ms) = kill_after {
            std::thread::sleep(Duration::from_millis(ms));
            child.kill().unwrap();
        }
        let status = child.wait().unwrap();
        let mut rest = String::new();
        out.read_to_string(&mut rest).unwrap();
        let end = match kill_after {
            Some(ms) if status.signal() == Some(SIGKILL) => {
                kills += 1;
                End::Killed(ms)
            }
            _ if started && status.success() => End::Finished(rest),
            _ => End::Crashed(format!("{status}, said {:?}", line + &rest)),
        };
        let committed = match end {
            End::Finished(_) => HashSet::new(),
            // Dead: its leases would keep its runs from the next child for 30 s; nobody can
            // write under them any more, so expire them now.
            _ => rt.block_on(async {
                store.age_leases(Duration::from_secs(3600)).await;
                committed(&db).await
            }),
        };
        let finished = matches!(end, End::Finished(_));
        generations.push(Generation {
            pid,
            end,
            committed,
            startup,
        });
        if finished {
            break;
        }
    }
    let gen_of_pid: HashMap<u32, usize> = generations
        .iter()
        .enumerate()
        .map(|(g, generation)| (generation.pid, g))
        .collect();
    assert_eq!(gen_of_pid.len(), generations.len(), "a pid was reused");
    let mut violations = Violations::default();

    // 1. Every run completed: the last child finished the batch, and no child died by itself.
    let mut loaded = None;
    for (g, generation) in generations.iter().enumerate() {
        match &generation.end {
            End::Killed(_) => {}
            End::Crashed(how) => violations.check(COMPLETED, false, || {
                format!("child {g} died by itself: {how}")
            }),
            End::Finished(done_line) => {
                let done: Vec<u64> = done_line
                    .trim()
                    .strip_prefix("done ")
                    .map(|done| done.split(' ').filter_map(|n| n.parse().ok()).collect())
                    .unwrap_or_default();
                violations.check(COMPLETED, done.get(..3) == Some(&[RUNS, 0, 0][..]), || {
                    format!("the last child's batch: {done_line:?}")
                });
                loaded = done.get(3).copied();
            }
        }
    }
    let finished = matches!(generations.last().map(|g| &g.end), Some(End::Finished(_)));
    violations.check(COMPLETED, finished, || {
        format!("no child finished the batch in {MAX_CHILDREN} children")
    });
    if finished && violations.0.is_empty() {
        assert!(
            kills >= MIN_KILLS,
            "the batch finished after {kills} kills: make it longer"
        );
    }
    let runs: Vec<StoredRun> = rt.block_on(async {
        let mut runs = Vec::new();
        for n in 0..RUNS {
            let id = jobgraph::durable::batch_run_id(BATCH, n as usize);
            runs.push(store.load_run(&id).await.unwrap().expect("a run per input"));
        }
        runs
    });
    for run in &runs {
        violations.check(COMPLETED, run.state == RunState::Succeeded, || {
            format!("run {} is {}", run.id, run.state)
        });
    }

    // 4. The outputs the store holds equal a pure evaluation (the elements too).
    let expected: Vec<BTreeMap<String, Value>> = (0..RUNS).map(expected).collect();
    let all_units: HashSet<Unit> = expected
        .iter()
        .enumerate()
        .flat_map(|(n, units)| units.keys().map(move |u| (n as u64, u.clone())))
        .collect();
    for (n, run) in runs.iter().enumerate() {
        let names: Vec<&str> = run.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, STEPS, "run {}", run.id);
        for step in &run.steps {
            let what = format!("run {} step {}", run.id, step.name);
            let output = step.output.as_deref().map(|o| json(o, &what));
            violations.check(
                PURE,
                output.as_ref() == Some(&expected[n][&step.name]),
                || {
                    format!(
                        "{what}: stored {output:?}, expected {}",
                        expected[n][&step.name]
                    )
                },
            );
        }
        let elements = rt.block_on(store.elements(&run.id, "fan")).unwrap();
        let fan = expected[n]["fan"].as_array().unwrap();
        violations.check(PURE, elements.len() == fan.len(), || {
            format!(
                "run {}: {} elements stored, {} expected",
                run.id,
                elements.len(),
                fan.len()
            )
        });
        for (i, output) in elements {
            let unit = format!("fan[{i}]");
            let what = format!("run {} {unit}", run.id);
            let output = json(&output, &what);
            violations.check(PURE, expected[n].get(&unit) == Some(&output), || {
                format!(
                    "{what}: stored {output}, expected {:?}",
                    expected[n].get(&unit)
                )
            });
        }
    }

    // 2. Each unit committed exactly once, by a child, with the output the store holds.
    let audit = rt.block_on(async {
        sqlx::query("SELECT seq, run_id, unit, owner, output FROM kill_audit ORDER BY seq")
            .fetch_all(&db)
            .await
            .unwrap()
    });
    // Per unit: (commit sequence number, child, output), in commit order.
    let mut commits: HashMap<Unit, Vec<(i64, usize, String)>> = HashMap::new();
    for row in &audit {
        let run: String = row.get("run_id");
        let owner: Option<String> = row.get("owner");
        let owner = owner.expect("a commit under a lease");
        // Owners are `pid-PID-MILLIS-COUNTER`.
        let pid: u32 = owner
            .split('-')
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("owner `{owner}`"));
        let generation = *gen_of_pid
            .get(&pid)
            .unwrap_or_else(|| panic!("owner `{owner}` is no child of the test"));
        let output: String = row.get("output");
        commits
            .entry((run_number(&run), row.get("unit")))
            .or_default()
            .push((row.get("seq"), generation, output));
    }
    for unit in &all_units {
        let children: Vec<usize> = commits
            .get(unit)
            .into_iter()
            .flatten()
            .map(|c| c.1)
            .collect();
        violations.check(ONCE, children.len() == 1, || {
            format!(
                "{unit:?} was committed {} times, by children {children:?}",
                children.len()
            )
        });
    }
    for (unit, unit_commits) in &commits {
        violations.check(ONCE, all_units.contains(unit), || {
            format!("{unit:?}, no unit of the job, was committed")
        });
        for (_, child, output) in unit_commits {
            let what = format!("run {} {}", unit.0, unit.1);
            let output = json(output, &what);
            let expected = expected
                .get(unit.0 as usize)
                .and_then(|units| units.get(&unit.1));
            violations.check(PURE, expected == Some(&output), || {
                format!("{what}: child {child} committed {output}, expected {expected:?}")
            });
        }
    }

    // 3. No unit the store held as committed when a child was killed ran in a later child; a
    // unit ran at most once per child, and the child that ran it last committed it.
    // 6. Its parents were committed before it ran.
    let executions = rt.block_on(async {
        sqlx::query(
            "SELECT generation, pid, run, unit, commits_before FROM executions ORDER BY rowid",
        )
        .fetch_all(&db)
        .await
        .unwrap()
    });
    let mut ran: HashMap<Unit, Vec<usize>> = HashMap::new();
    for row in &executions {
        let generation = usize::try_from(row.get::<i64, _>("generation")).unwrap();
        let pid = u32::try_from(row.get::<i64, _>("pid")).unwrap();
        assert_eq!(generations[generation].pid, pid, "generation {generation}");
        let unit: Unit = (
            u64::try_from(row.get::<i64, _>("run")).unwrap(),
            row.get("unit"),
        );
        assert!(all_units.contains(&unit), "{unit:?} is no unit of the job");
        let before: i64 = row.get("commits_before");
        for parent in parents(&unit.1) {
            let parent: Unit = (unit.0, (*parent).to_owned());
            let first_commit = commits.get(&parent).and_then(|c| c.first()).map(|c| c.0);
            violations.check(PARENTS, first_commit.is_some_and(|at| at <= before), || {
                format!(
                    "{unit:?} ran in child {generation} after commit {before}, but its parent \
                     {:?} was commit {first_commit:?}",
                    parent.1
                )
            });
        }
        ran.entry(unit).or_default().push(generation);
    }
    for (unit, gens) in &ran {
        let mut distinct = gens.clone();
        distinct.dedup();
        violations.check(AFTER_COMMIT, &distinct == gens, || {
            format!("{unit:?} ran more than once in one child: children {gens:?}")
        });
        for &h in gens {
            for (g, generation) in generations[..h].iter().enumerate() {
                violations.check(AFTER_COMMIT, !generation.committed.contains(unit), || {
                    format!("{unit:?} ran in child {h}, though committed when child {g} was killed")
                });
            }
        }
        let committer = commits.get(unit).and_then(|c| c.last()).map(|c| c.1);
        violations.check(ONCE, committer.as_ref() == gens.last(), || {
            format!("{unit:?} ran in children {gens:?} but was committed by child {committer:?}")
        });
    }
    // Every unit but `fan` (whose elements record theirs) ran.
    for unit in &all_units {
        violations.check(COMPLETED, unit.1 == "fan" || ran.contains_key(unit), || {
            format!("{unit:?} never ran")
        });
    }

    // 5. Re-executions are bounded by what was in flight at each kill: the units a killed child
    // ran that the store did not hold as committed once it was dead. A unit's execution in child
    // h after one in child g < h (its previous) is a re-execution caused by kill g.
    let mut in_flight = vec![0usize; generations.len()];
    let mut caused = vec![0usize; generations.len()];
    let mut executions_of = vec![0usize; generations.len()];
    for (unit, gens) in &ran {
        for &g in gens {
            executions_of[g] += 1;
            let dead = !matches!(generations[g].end, End::Finished(_));
            if dead && !generations[g].committed.contains(unit) {
                in_flight[g] += 1;
            }
        }
        for pair in gens.windows(2) {
            caused[pair[0]] += 1;
        }
    }
    println!(
        "child  pid      killed after  startup  executed  committed  in flight  re-executed later"
    );
    for (g, generation) in generations.iter().enumerate() {
        let dead = !matches!(generation.end, End::Finished(_));
        let or_dash = |n: usize| if dead { n.to_string() } else { "-".to_owned() };
        println!(
            "{g:>5}  {:<7}  {:>12}  {:>7}  {:>8}  {:>9}  {:>9}  {:>17}",
            generation.pid,
            match generation.end {
                End::Killed(ms) => format!("{ms}ms"),
                End::Crashed(_) => "(crashed)".to_owned(),
                End::Finished(_) => "(finished)".to_owned(),
            },
            generation
                .startup
                .map_or("-".to_owned(), |t| format!("{}ms", t.as_millis())),
            executions_of[g],
            or_dash(generation.committed.len()),
            or_dash(in_flight[g]),
            caused[g],
        );
        violations.check(BOUNDED, caused[g] <= in_flight[g], || {
            format!(
                "kill {g}: {} re-executions, {} units in flight",
                caused[g], in_flight[g]
            )
        });
    }
    let total_executions: usize = executions_of.iter().sum();
    let re_executions: usize = caused.iter().sum();
    let total_in_flight: usize = in_flight.iter().sum();
    violations.check(BOUNDED, re_executions <= total_in_flight, || {
        format!("{re_executions} re-executions, {total_in_flight} units in flight at kills")
    });
    println!(
        "runs {RUNS} (all succeeded: {}), units {} ({} that run a body), kills {kills}, \
         executions {total_executions}, re-executions {re_executions}, in flight at kills \
         {total_in_flight}, commits {}, runs loaded by the last child {loaded:?}, in {:.1?}",
        runs.iter().all(|r| r.state == RunState::Succeeded),
        all_units.len(),
        all_units.iter().filter(|u| u.1 != "fan").count(),
        audit.len(),
        began.elapsed(),
    );
    violations.assert_none();
}

const COMPLETED: &str = "1. every run completed";
const ONCE: &str = "2. every output committed exactly once";
const AFTER_COMMIT: &str = "3. no completed step ran again after a kill";
const PURE: &str = "4. outputs equal a pure evaluation";
const BOUNDED: &str = "5. re-executions at most what was in flight at each kill";
const PARENTS: &str = "6. no step ran before its parents were committed";

/// The failed checks, by property: how many, and the first few.
#[derive(Default)]
struct Violations(BTreeMap<&'static str, (usize, Vec<String>)>);

impl Violations {
    fn check(&mut self, property: &'static str, ok: bool, what: impl FnOnce() -> String) {
        if ok {
            return;
        }
        let (count, examples) = self.0.entry(property).or_default();
        *count += 1;
        if examples.len() < 5 {
            examples.push(what());
        }
    }

    fn assert_none(&self) {
        if self.0.is_empty() {
            return;
        }
        let mut text = String::new();
        for (property, (count, examples)) in &self.0 {
            text.push_str(&format!("\n{property}: {count} violations, e.g.\n"));
            for example in examples {
                text.push_str(&format!("    {example}\n"));
            }
        }
        panic!("the batch did not survive its kills:{text}");
    }
}
