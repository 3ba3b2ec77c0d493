//! The `jobgraph` binary against SQLite files filled through the `Store` API: each command, its
//! `--json` parsed back, and the errors with their exit codes; then against a PostgreSQL
//! database filled the same way (on the tests' private server, `jobgraph_tests::pg`; skipped
//! where PostgreSQL is not installed).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use jobgraph::store::{
    GraphSpec, PgStore, RunSpec, RunState, SqliteStore, StepOutcome, StepSpec, Store,
};
use serde_json::Value;

const OWNER: &str = "test-runner";
const WORKER: &str = "worker-a/4242";
const PARSE_ERROR: &str = "row 17: expected a number, found \"n/a\"\ncaused by: bad input";

/// A store in its own temporary directory.
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Fixture {
    fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

fn import_graph() -> GraphSpec {
    let step = |name: &str, parents: &[usize], after: &[usize]| StepSpec {
        name: name.to_owned(),
        parents: parents.to_vec(),
        after: after.to_vec(),
    };
    GraphSpec {
        steps: vec![
            step("fetch", &[], &[]),
            step("parse", &[0], &[]),
            step("store", &[1], &[]),
            step("audit", &[], &[0]),
        ],
    }
}

fn done(step: &str, at: i64, ms: i64) -> StepOutcome<'_> {
    StepOutcome {
        step,
        attempts: 1,
        output: Some("1"),
        error: None,
        started_at: Some(at),
        ended_at: at + ms,
    }
}

/// A run of `Import` whose `parse` step failed (store skipped), finished unless `busy`.
async fn failed_import(store: &dyn Store, id: &str, batch: Option<&str>, busy: bool) {
    let graph = import_graph();
    let spec = RunSpec {
        id,
        job: "Import",
        input: "{\"customer\":7}",
        graph: &graph,
        batch,
    };
    let owner = if busy { WORKER } else { OWNER };
    let lease = Duration::from_secs(if busy { 3600 } else { 30 });
    store.open_run(spec, owner, lease).await.unwrap();
    let t = 1_767_225_600_000; // 2026-01-01 00:00:00 UTC
    store
        .step_completed(id, owner, done("fetch", t, 120))
        .await
        .unwrap();
    store
        .step_completed(id, owner, done("audit", t + 120, 5))
        .await
        .unwrap();
    let failed = StepOutcome {
        step: "parse",
        attempts: 3,
        output: None,
        error: Some(PARSE_ERROR),
        started_at: Some(t + 120),
        ended_at: t + 1_370,
    };
    store
        .step_failed(id, owner, failed, &["store"])
        .await
        .unwrap();
    if !busy {
        store
            .finish_run(id, owner, RunState::Failed, Some("step `parse` failed"))
            .await
            .unwrap();
    }
}

/// import-1 succeeded (batch nightly), import-2 failed (batch nightly), import-3 failed,
/// export-1 is running under `WORKER`'s live lease; with `busy_failure`, import-4 failed in
/// `parse` and is still held by `WORKER`.
fn fixture(busy_failure: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        fill(&store, busy_failure).await;
        store.close().await;
    });
    Fixture { _dir: dir, path }
}

/// The runs of [`fixture`].
async fn fill(store: &dyn Store, busy_failure: bool) {
    let graph = import_graph();
    let spec = RunSpec {
        id: "import-1",
        job: "Import",
        input: "{\"customer\":1}",
        graph: &graph,
        batch: Some("nightly"),
    };
    store
        .open_run(spec, OWNER, Duration::from_secs(30))
        .await
        .unwrap();
    for (i, step) in ["fetch", "parse", "store", "audit"].into_iter().enumerate() {
        let at = 1_767_225_600_000 + 100 * i as i64;
        store
            .step_completed("import-1", OWNER, done(step, at, 90))
            .await
            .unwrap();
    }
    store
        .finish_run("import-1", OWNER, RunState::Succeeded, None)
        .await
        .unwrap();
    failed_import(store, "import-2", Some("nightly"), false).await;
    failed_import(store, "import-3", None, false).await;
    let export = GraphSpec {
        steps: vec![StepSpec {
            name: "dump".to_owned(),
            parents: vec![],
            after: vec![],
        }],
    };
    let spec = RunSpec {
        id: "export-1",
        job: "Export",
        input: "null",
        graph: &export,
        batch: None,
    };
    store
        .open_run(spec, WORKER, Duration::from_secs(3600))
        .await
        .unwrap();
    if busy_failure {
        failed_import(store, "import-4", None, true).await;
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Runs the binary with `args` and `env` only (JOBGRAPH_STORE and COLUMNS of the test's own
/// environment removed).
fn jobgraph(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobgraph"));
    cmd.args(args)
        .env_remove("JOBGRAPH_STORE")
        .env_remove("COLUMNS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `jobgraph --store URL args...`, expecting exit code `code`.
fn on(f: &Fixture, args: &[&str], code: i32) -> Out {
    let url = f.url();
    let mut all = vec!["--store", url.as_str()];
    all.extend_from_slice(args);
    let out = jobgraph(&all, &[]);
    assert_eq!(
        out.code, code,
        "jobgraph {all:?}\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out
}

fn ids(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

#[test]
fn runs_lists_newest_first_with_tallies() {
    let f = fixture(false);
    let out = on(&f, &["runs"], 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ID"), "{}", out.stdout);
    for header in ["JOB", "STATE", "BATCH", "UPDATED (UTC)", "STEPS"] {
        assert!(lines[0].contains(header), "{}", lines[0]);
    }
    let order: Vec<&str> = lines[1..]
        .iter()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(order, ["export-1", "import-3", "import-2", "import-1"]);
    assert!(
        lines[3].contains("failed") && lines[3].contains("nightly"),
        "{}",
        lines[3]
    );
    assert!(
        lines[3].ends_with("2/4 completed, 1 failed, 1 skipped"),
        "{}",
        lines[3]
    );
    assert!(lines[4].contains("succeeded") && lines[4].ends_with("4/4 completed"));
    assert!(lines[1].contains("running") && lines[1].ends_with("0/1 completed"));
}

#[test]
fn runs_filters_and_json() {
    let f = fixture(false);
    let all = on(&f, &["runs", "--json"], 0).json();
    assert_eq!(ids(&all), ["export-1", "import-3", "import-2", "import-1"]);
    assert_eq!(all[2]["steps"]["failed"], 1);
    assert_eq!(all[2]["steps"]["skipped"], 1);
    assert_eq!(all[2]["batch"], "nightly");
    assert_eq!(all[2]["state"], "failed");

    let failed = on(
        &f,
        &["runs", "--job", "Import", "--state", "failed", "--json"],
        0,
    )
    .json();
    assert_eq!(ids(&failed), ["import-3", "import-2"]);
    let nightly = on(&f, &["--json", "runs", "--batch", "nightly"], 0).json();
    assert_eq!(ids(&nightly), ["import-2", "import-1"]);

    let one = on(&f, &["runs", "--limit", "1", "--json"], 0);
    assert_eq!(ids(&one.json()), ["export-1"]);
    assert!(one.stderr.contains("--limit 0"), "{}", one.stderr);
    let every = on(&f, &["runs", "--limit", "0", "--json"], 0);
    assert_eq!(ids(&every.json()).len(), 4);
    assert!(every.stderr.is_empty(), "{}", every.stderr);

    let none = on(&f, &["runs", "--job", "Nope"], 0);
    assert!(none.stdout.is_empty());
    assert!(none.stderr.contains("no runs match"), "{}", none.stderr);
    let none = on(&f, &["runs", "--job", "Nope", "--json"], 0).json();
    assert_eq!(none, Value::Array(vec![]));
}

#[test]
fn show_is_a_table_of_steps() {
    let f = fixture(false);
    let out = on(&f, &["show", "import-2"], 0);
    let text = &out.stdout;
    assert!(text.contains("run      import-2\n"), "{text}");
    assert!(text.contains("job      Import\n"));
    assert!(text.contains("state    failed\n"));
    assert!(text.contains("batch    nightly\n"));
    assert!(text.contains("error    step `parse` failed\n"));
    assert!(text.contains("steps    2/4 completed, 1 failed, 1 skipped\n"));
    let table: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("STEP"))
        .collect();
    assert_eq!(table.len(), 5, "{text}");
    for header in ["STATE", "ATTEMPTS", "DURATION", "ERROR"] {
        assert!(table[0].contains(header));
    }
    assert!(table[1].starts_with("fetch") && table[1].contains("completed"));
    assert!(table[1].trim_end().ends_with("120 ms"), "{}", table[1]);
    // The error is on one line.
    assert!(
        table[2].contains("3") && table[2].contains("1.25 s"),
        "{}",
        table[2]
    );
    assert!(
        table[2].ends_with("row 17: expected a number, found \"n/a\" caused by: bad input"),
        "{}",
        table[2]
    );
    assert!(table[3].starts_with("store") && table[3].ends_with("(`parse` failed)"));

    let narrow = jobgraph(
        &["--store", &f.url(), "show", "import-2"],
        &[("COLUMNS", "60")],
    );
    assert_eq!(narrow.code, 0);
    for line in narrow.stdout.lines() {
        assert!(line.chars().count() <= 60, "{line:?}");
    }
    let parse = narrow
        .stdout
        .lines()
        .find(|l| l.starts_with("parse"))
        .unwrap();
    assert!(
        parse.contains("  row 17: expected") && parse.ends_with('…'),
        "{parse}"
    );
}

#[test]
fn show_json_is_the_stored_run() {
    let f = fixture(false);
    let run = on(&f, &["show", "import-2", "--json"], 0).json();
    assert_eq!(run["id"], "import-2");
    assert_eq!(run["job"], "Import");
    assert_eq!(run["state"], "failed");
    assert_eq!(run["input"], "{\"customer\":7}");
    assert_eq!(run["graph"]["steps"][1]["name"], "parse");
    let parse = &run["steps"][1];
    assert_eq!(parse["name"], "parse");
    assert_eq!(parse["state"], "failed");
    assert_eq!(parse["attempts"], 3);
    assert_eq!(parse["error"], PARSE_ERROR);
    assert_eq!(run["steps"][2]["state"], "skipped");
}

/// Every line's quoted strings are closed (an escaped `\"` does not count).
fn quotes_balanced(line: &str) -> bool {
    let (mut open, mut escaped) = (false, false);
    for c in line.chars() {
        match c {
            '\\' if open && !escaped => escaped = true,
            '"' if !escaped => open = !open,
            _ => escaped = false,
        }
    }
    !open
}

#[test]
fn dot_and_gantt_draw_from_the_store_alone() {
    let f = fixture(false);
    let dot = on(&f, &["dot", "import-2"], 0).stdout;
    assert!(dot.starts_with("digraph \"Import\" {\n"), "{dot}");
    assert!(dot.ends_with("}\n"));
    assert!(dot.lines().all(quotes_balanced), "{dot}");
    assert!(dot.contains("\"parse\" [fillcolor=tomato, tooltip=\"State: failed"));
    assert!(dot.contains("Error: row 17: expected a number, found \\\"n/a\\\"\\ncaused by"));
    assert!(dot.contains("\"fetch\" -> \"parse\";"));
    assert!(dot.contains("\"fetch\" -> \"audit\" [style=dashed];"));

    let gantt = on(&f, &["gantt", "import-2"], 0).stdout;
    let lines: Vec<&str> = gantt.lines().collect();
    assert_eq!(
        lines,
        [
            "gantt",
            "    title Import run import-2",
            "    dateFormat x",
            "    axisFormat %H:%M:%S",
            "    fetch :done, s0, 1767225600000, 1767225600120",
            "    parse :crit, s1, 1767225600120, 1767225601370",
            "    audit :done, s3, 1767225600120, 1767225600125",
        ]
    );

    let json = on(&f, &["dot", "import-2", "--json"], 0).json();
    assert_eq!(json["run"], "import-2");
    assert_eq!(json["format"], "dot");
    assert_eq!(json["text"], dot.as_str());
    let json = on(&f, &["gantt", "--json", "import-2"], 0).json();
    assert_eq!(json["text"], gantt.as_str());
}

#[test]
fn redrive_one_run_resets_the_step_and_its_descendants() {
    let f = fixture(false);
    let out = on(&f, &["redrive", "import-2", "parse"], 0);
    assert!(
        out.stdout
            .contains("reset 2 steps of run `import-2` (job `Import`): parse, store\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("jobgraph::durable::resume::<Import>(&store, \"import-2\")"),
        "{}",
        out.stdout
    );
    let run = on(&f, &["show", "import-2", "--json"], 0).json();
    assert_eq!(run["state"], "pending");
    let states: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["completed", "pending", "pending", "completed"]);

    let json = on(&f, &["redrive", "import-1", "fetch", "--json"], 0).json();
    assert_eq!(json["run"], "import-1");
    assert_eq!(json["job"], "Import");
    assert_eq!(
        json["reset"],
        serde_json::json!(["fetch", "parse", "store", "audit"])
    );
}

#[test]
fn redrive_errors_say_what_to_do() {
    let f = fixture(false);
    let url = f.url();
    let unknown = on(&f, &["redrive", "import-9", "parse"], 1);
    assert!(
        unknown.stderr.starts_with("error: no run `import-9`"),
        "{}",
        unknown.stderr
    );
    assert!(
        unknown
            .stderr
            .contains(&format!("`jobgraph --store {url} runs` lists its runs")),
        "{}",
        unknown.stderr
    );
    let step = on(&f, &["redrive", "import-2", "pasre"], 1);
    assert!(
        step.stderr
            .contains("has no step `pasre`; its steps are: fetch, parse, store, audit"),
        "{}",
        step.stderr
    );
    let busy = on(&f, &["redrive", "export-1", "dump"], 1);
    assert!(
        busy.stderr.contains(&format!(
            "is being executed by `{WORKER}`, whose lease runs until 20"
        )),
        "{}",
        busy.stderr
    );
    assert!(busy.stderr.contains("UTC (in 59 min"), "{}", busy.stderr);
    assert!(busy.stderr.contains("wait for that runner to finish"));
    // Nothing was reset.
    let run = on(&f, &["show", "export-1", "--json"], 0).json();
    assert_eq!(run["state"], "running");
    assert!(
        on(&f, &["show", "nope"], 1)
            .stderr
            .contains("no run `nope`")
    );
    assert!(
        on(&f, &["dot", "nope"], 1)
            .stderr
            .contains("lists its runs")
    );
    assert!(
        on(&f, &["gantt", "nope"], 1)
            .stderr
            .contains("lists its runs")
    );
}

#[test]
fn redrive_failed_resets_every_run_where_the_step_failed() {
    let f = fixture(false);
    let out = on(&f, &["redrive", "--failed", "parse", "--job", "Import"], 0);
    assert!(
        out.stdout.contains("reset run `import-3`: parse, store\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("reset run `import-2`: parse, store\n"));
    assert!(
        out.stdout
            .contains("redrove 2 runs of job `Import` where `parse` failed")
    );
    let pending = on(&f, &["runs", "--state", "pending", "--json"], 0).json();
    assert_eq!(ids(&pending), ["import-3", "import-2"]);

    // Nothing failed any more: fine, said on stderr.
    let again = on(&f, &["redrive", "--failed", "parse", "--job", "Import"], 0);
    assert!(
        again.stderr.contains("nothing to redrive"),
        "{}",
        again.stderr
    );
    let json = on(
        &f,
        &["--json", "redrive", "--failed", "parse", "--job", "Import"],
        0,
    )
    .json();
    assert_eq!(json["reset"], serde_json::json!([]));
    // A typo in the job or the step is an error.
    let job = on(&f, &["redrive", "--failed", "parse", "--job", "Imprt"], 1);
    assert!(
        job.stderr.contains("no runs of job `Imprt`"),
        "{}",
        job.stderr
    );
    let step = on(&f, &["redrive", "--failed", "prase", "--job", "Import"], 1);
    assert!(
        step.stderr.contains("job `Import` has no step `prase`"),
        "{}",
        step.stderr
    );
}

#[test]
fn redrive_failed_reports_busy_runs_and_exits_1() {
    let f = fixture(true);
    let out = on(
        &f,
        &["redrive", "--failed", "parse", "--job", "Import", "--json"],
        1,
    );
    let json = out.json();
    let reset: Vec<&str> = json["reset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap())
        .collect();
    assert_eq!(reset, ["import-3", "import-2"]);
    assert_eq!(json["not_reset"][0]["run"], "import-4");
    let why = json["not_reset"][0]["error"].as_str().unwrap();
    assert!(why.contains(WORKER), "{why}");
    assert!(out.stderr.contains("1 run was not reset"), "{}", out.stderr);
    assert!(
        out.stderr.contains("redrive --failed parse --job Import"),
        "{}",
        out.stderr
    );
}

#[test]
fn the_store_comes_from_the_environment_too() {
    let f = fixture(false);
    let out = jobgraph(&["runs", "--json"], &[("JOBGRAPH_STORE", &f.url())]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(ids(&out.json()).len(), 4);
    // A plain path.
    let path = f.path.to_str().unwrap();
    let out = jobgraph(&["--store", path, "show", "import-1"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[test]
fn bad_stores_are_errors_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let missing_url = format!("sqlite://{}", missing.display());
    let out = jobgraph(&["--store", &missing_url, "runs"], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("the file does not exist"),
        "{}",
        out.stderr
    );
    assert!(!missing.exists(), "the command created a store");

    // A PostgreSQL server that is not there (a socket directory that does not exist).
    let pg = jobgraph(
        &[
            "--store",
            "postgres://jobs:secret@/jobs?host=%2Fnowhere",
            "runs",
        ],
        &[],
    );
    assert_eq!(pg.code, 1);
    assert!(
        pg.stderr.starts_with(
            "error: cannot open the store `postgres://jobs:***@/jobs?host=%2Fnowhere`"
        ) && pg.stderr.contains("that its server is up"),
        "{}",
        pg.stderr
    );
    assert!(!pg.stderr.contains("secret"), "{}", pg.stderr);

    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        "this is not a database, just some text long enough to matter ".repeat(100),
    )
    .unwrap();
    let out = jobgraph(&["--store", junk.to_str().unwrap(), "runs"], &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.starts_with("error: cannot open the store"),
        "{}",
        out.stderr
    );

    let out = jobgraph(&["--store", dir.path().to_str().unwrap(), "runs"], &[]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("is a directory"), "{}", out.stderr);
    let out = jobgraph(&["--store", "ftp://x/y", "runs"], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("unknown store scheme `ftp`"),
        "{}",
        out.stderr
    );
    assert!(Path::new(&missing).parent().unwrap().exists());
}

#[test]
fn usage_errors_exit_with_code_2() {
    let out = jobgraph(&["runs"], &[]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("JOBGRAPH_STORE"), "{}", out.stderr);
    for args in [
        &["--store", "x.db", "frobnicate"][..],
        &["--store", "x.db", "show"],
        &["--store", "x.db", "runs", "--state", "broken"],
        &["--store", "x.db", "runs", "--limit", "-1"],
        &["--store", "x.db", "redrive", "r1"],
        &["--store", "x.db", "redrive", "--failed", "parse"],
    ] {
        let out = jobgraph(args, &[]);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
    }
    let help = jobgraph(&["--help"], &[]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("redrive") && help.stdout.contains("Exit codes"));
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `jobgraph --store URL args...` on a PostgreSQL URL, expecting exit code `code`.
fn on_url(url: &str, args: &[&str], code: i32) -> Out {
    let mut all = vec!["--store", url];
    all.extend_from_slice(args);
    let out = jobgraph(&all, &[]);
    assert_eq!(
        out.code, code,
        "jobgraph {all:?}\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    out
}

#[test]
fn a_postgres_store_is_read_and_redriven_like_a_sqlite_file() {
    let Some(db) = block_on(jobgraph_tests::pg::database()) else {
        return;
    };
    block_on(async {
        let store = PgStore::connect(db.url()).await.unwrap();
        fill(&store, true).await;
        store.close().await;
    });
    let url = db.url();
    let all = on_url(url, &["runs", "--json"], 0).json();
    assert_eq!(
        ids(&all),
        ["import-4", "export-1", "import-3", "import-2", "import-1"]
    );
    assert_eq!(all[3]["steps"]["failed"], 1);
    let table = on_url(url, &["show", "import-2"], 0).stdout;
    assert!(table.contains("run      import-2\n"), "{table}");
    let dot = on_url(url, &["dot", "import-2"], 0).stdout;
    assert!(dot.starts_with("digraph"), "{dot}");

    let out = on_url(url, &["redrive", "import-2", "parse"], 0);
    assert!(
        out.stdout
            .contains("reset 2 steps of run `import-2` (job `Import`): parse, store\n"),
        "{}",
        out.stdout
    );
    let run = on_url(url, &["show", "import-2", "--json"], 0).json();
    assert_eq!(run["state"], "pending");
    // import-4 is held by its runner's live lease: reported, not reset, exit 1.
    let out = on_url(url, &["redrive", "--failed", "parse", "--job", "Import"], 1);
    assert!(
        out.stdout.contains("import-3") && out.stdout.contains("import-4"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("1 run was not reset"), "{}", out.stderr);
    // From the environment too.
    let out = jobgraph(&["runs", "--json"], &[("JOBGRAPH_STORE", url)]);
    assert_eq!((out.code, ids(&out.json()).len()), (0, 5), "{}", out.stderr);
}

#[test]
fn a_postgres_database_without_a_store_is_an_error_and_stays_so() {
    let Some(db) = block_on(jobgraph_tests::pg::database()) else {
        return;
    };
    for _ in 0..2 {
        let out = on_url(db.url(), &["runs"], 1);
        assert!(
            out.stderr.starts_with("error: no store in the database")
                && out.stderr.contains("no jobgraph tables"),
            "{}",
            out.stderr
        );
    }
    // A database that does not exist is the server's error.
    let missing = db.url_of("no_such_database");
    let out = on_url(&missing, &["runs"], 1);
    assert!(
        out.stderr.starts_with("error: cannot open the store")
            && out.stderr.contains("no_such_database"),
        "{}",
        out.stderr
    );
}

/// Two runs submitted to the queue of a fresh SQLite store as batch `nightly`, and a third,
/// `manual`; the first ready step (`nightly/0`'s `fetch`) claimed by worker `w-1`.
fn queued() -> Fixture {
    use jobgraph::store::queue::{Queue, Submission};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    block_on(async {
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let graph = import_graph();
        let template = Submission {
            id: "",
            job: "Import",
            input: "{}",
            graph: &graph,
            batch: None,
            key: None,
            held: false,
            limits: &[],
            fan_outs: &[],
            ttrs: &[],
            priority: 0,
            run_at: Some(0),
            ttl: None,
            max_attempts: 3,
            max_fails: None,
        };
        let inputs = ["{}".to_owned(), "{}".to_owned()];
        store
            .submit_batch("nightly", template, &inputs)
            .await
            .unwrap();
        store
            .submit(Submission {
                id: "manual",
                ..template
            })
            .await
            .unwrap();
        store
            .claim("w-1", &["Import"], 1, Duration::from_secs(600))
            .await
            .unwrap();
        store.close().await;
    });
    Fixture { _dir: dir, path }
}

#[test]
fn workers_lists_the_claims_and_abort_ends_runs_and_batches() {
    let f = queued();
    let out = on(&f, &["workers"], 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("HOLDER"), "{}", out.stdout);
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines[1].starts_with("w-1 "), "{}", out.stdout);
    assert!(lines[1].contains(" fetch "), "{}", out.stdout);
    let json = on(&f, &["workers", "--json"], 0).json();
    assert_eq!(json[0]["holder"], "w-1");
    assert_eq!(json[0]["attempt"], 1);

    let out = on(&f, &["abort", "--batch", "nightly"], 0);
    assert_eq!(out.stdout, "batch `nightly`: aborted 2 runs\n");
    let out = on(&f, &["abort", "--batch", "nightly"], 0);
    assert_eq!(
        out.stdout,
        "batch `nightly`: nothing to abort, every run had already ended\n"
    );
    let run = on(&f, &["abort", "nightly/0", "--json"], 0).json();
    assert_eq!(run["aborted"], 0);
    let out = on(&f, &["abort", "missing"], 1);
    assert!(out.stderr.contains("no run `missing`"), "{}", out.stderr);
    on(&f, &["abort"], 2);
    let shown = on(&f, &["show", "nightly/1", "--json"], 0).json();
    assert_eq!(shown["state"], "cancelled");
}

#[test]
fn workers_lists_each_element_claim_of_a_fan_out() {
    use jobgraph::store::queue::{FanOut, Queue, Submission};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    block_on(async {
        let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
        let graph = import_graph();
        // `parse` runs once per element of `fetch`'s output.
        let fan_outs = [FanOut {
            step: 1,
            over: 0,
            bound: None,
        }];
        store
            .submit(Submission {
                id: "fanned",
                job: "Import",
                input: "{}",
                graph: &graph,
                batch: None,
                key: None,
                held: false,
                limits: &[],
                fan_outs: &fan_outs,
                ttrs: &[],
                priority: 0,
                run_at: Some(0),
                ttl: None,
                max_attempts: 3,
                max_fails: None,
            })
            .await
            .unwrap();
        let lease = Duration::from_secs(600);
        let fetch = store.claim("w-1", &["Import"], 1, lease).await.unwrap();
        store
            .complete("w-1", &fetch[0].id, "[1,2]", 0)
            .await
            .unwrap();
        let claims = store.claim("w-2", &["Import"], 10, lease).await.unwrap();
        assert_eq!(claims.len(), 3, "{claims:?}");
        store.close().await;
    });
    let f = Fixture { _dir: dir, path };
    let out = on(&f, &["workers"], 0);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(out.stdout.contains(" parse[0] "), "{}", out.stdout);
    assert!(out.stdout.contains(" parse[1] "), "{}", out.stdout);
    assert!(out.stdout.contains(" audit "), "{}", out.stdout);
    let json = on(&f, &["workers", "--json"], 0).json();
    let elements: Vec<_> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["element"].clone())
        .collect();
    assert!(elements.contains(&serde_json::json!(0)), "{json}");
    assert!(elements.contains(&serde_json::json!(null)), "{json}");
}
