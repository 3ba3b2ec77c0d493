//! The `durable_import` example survives a crash: run with `--crash-after 100`, it exits with
//! runs in flight; run again on the same database, it loads what completed and runs only the
//! rest.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The example's binary, built (or found up to date) by cargo: `cargo test --test
/// durable_import` does not build the examples, and a stale binary would test old code.
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    // target/<profile>/deps/durable_import-HASH -> target/<profile>/examples/durable_import
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the target directory");
    let path = dir
        .join("examples")
        .join(format!("durable_import{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "-p",
        "jobgraph-examples",
        "--example",
        "durable_import",
    ]);
    if dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build.status().expect("run cargo");
    assert!(status.success(), "building the example failed");
    assert!(path.exists(), "cargo built no {}", path.display());
    path
}

fn run(example: &std::path::Path, db: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(example)
        .arg("--db")
        .arg(db)
        .args(extra)
        .output()
        .expect("run the example")
}

/// The numbers after `label` on its line of `out`: `"ran: 200 runs, 812 steps"` gives
/// `[200, 812]` for `"ran:"`.
fn numbers(out: &str, label: &str) -> Vec<usize> {
    let line = out
        .lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{out}"));
    line[label.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

#[test]
fn a_crashed_import_resumes_and_runs_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("import.db");
    let example = example();

    let crashed = run(&example, &db, &["--crash-after", "100"]);
    let stderr = String::from_utf8_lossy(&crashed.stderr);
    assert_eq!(crashed.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("crash: exiting with"), "{stderr}");

    let resumed = run(&example, &db, &[]);
    let out = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    // Before: every input stored; at least the 100 runs that succeeded, and steps of the runs in
    // flight too.
    let before = numbers(&out, "before:");
    let (stored, succeeded, steps_before) = (before[0], before[1], before[2]);
    assert_eq!(stored, 300, "{out}");
    assert!((100..300).contains(&succeeded), "{out}");
    assert!(steps_before >= 4 * succeeded, "{out}");
    // Ran: only the runs that had not succeeded, and only the steps that had not completed.
    let ran = numbers(&out, "ran:");
    assert_eq!(ran[0], 300 - succeeded, "{out}");
    assert_eq!(ran[1], 4 * 300 - steps_before, "{out}");
    assert_eq!(numbers(&out, "loaded:")[0], succeeded, "{out}");
    assert_eq!(numbers(&out, "summary:")[..2], [300, 300], "{out}");
    assert_eq!(numbers(&out, "after:"), [300, 300, 1200], "{out}");
}
