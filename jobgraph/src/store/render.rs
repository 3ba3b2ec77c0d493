//! A stored run's report from the store alone: its DOT and its Mermaid Gantt chart, built from a
//! [`StoredRun`] (the graph from its [`GraphSpec`], each step's state, attempts, timings and
//! error from its [`StoredStep`]). No job type is needed, so an operator's tool can draw any run
//! of any job; the text is escaped with the rules of a live run's [`JobReport`](crate::JobReport).

use std::fmt::Write as _;
use std::time::Duration;

use super::{StepStatus, StepTally, StoredRun, StoredStep};
use crate::report::{StepState, dot_text, mermaid_text};

impl StoredStep {
    /// From the start of its first attempt to its end, if both are stored; zero if the clock
    /// went back in between.
    pub fn duration(&self) -> Option<Duration> {
        let (start, end) = (self.started_at?, self.ended_at?);
        Some(Duration::from_millis(
            u64::try_from(end.saturating_sub(start)).unwrap_or(0),
        ))
    }
}

impl StoredRun {
    /// How many of its steps are in each state.
    pub fn tally(&self) -> StepTally {
        let mut tally = StepTally::default();
        for step in &self.steps {
            tally.add(step.state);
        }
        tally
    }

    /// For a skipped step, the failed step it depends on (through `parents` or `after`, directly
    /// or not) that caused the skip: the first such step in graph order. `None` if `step` is not
    /// skipped, or if the stored graph names no failed step upstream of it.
    pub fn skipped_because(&self, step: &str) -> Option<&str> {
        if self.step(step)?.state != StepStatus::Skipped {
            return None;
        }
        let upstream = ancestors(self, self.graph.position(step)?);
        self.graph
            .steps
            .iter()
            .zip(upstream)
            .filter(|(_, up)| *up)
            .map(|(spec, _)| spec.name.as_str())
            .find(|name| {
                self.step(name)
                    .is_some_and(|s| s.state == StepStatus::Failed)
            })
    }

    /// Graphviz DOT of this run, like a live run's [`JobReport::dot`](crate::JobReport::dot):
    /// the stored graph (data edges solid, `after` edges dashed) with each step filled by its
    /// state and a tooltip with its start (after the run's creation), duration, attempts and
    /// error; the graph's label names the job, the run and its state.
    ///
    /// The text is valid DOT whatever the store holds: every name and error is a quoted string
    /// with quotes and backslashes escaped, line breaks as DOT's `\n`, other control characters
    /// as `\u{..}`, and cut after 2,000 characters (then `… (N characters)`). A step of the graph
    /// that has no stored row is drawn white with the state `not stored`; a stored step missing
    /// from the graph is drawn without edges; edges to steps that do not exist are left out.
    pub fn dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", dot_text(&self.job));
        let _ = writeln!(
            out,
            "    label=\"{} run {} ({})\";",
            dot_text(&self.job),
            dot_text(&self.id),
            self.state
        );
        out.push_str("    labelloc=t;\n    rankdir=TB;\n");
        out.push_str("    node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
        for name in self.node_names() {
            let Some(step) = self.step(name) else {
                let _ = writeln!(
                    out,
                    "    \"{}\" [fillcolor=white, tooltip=\"State: not stored\"];",
                    dot_text(name)
                );
                continue;
            };
            let mut tip = format!("State: {}", step.state);
            if let Some(started) = step.started_at {
                let after = u64::try_from(started.saturating_sub(self.created_at)).unwrap_or(0);
                let _ = write!(tip, "\\nStarted: +{:?}", Duration::from_millis(after));
            }
            if let Some(d) = step.duration() {
                let _ = write!(tip, "\\nDuration: {d:?}");
            }
            if step.attempts > 0 {
                let _ = write!(tip, "\\nAttempts: {}", step.attempts);
            }
            if let Some(e) = &step.error {
                let _ = write!(tip, "\\nError: {}", dot_text(e));
            }
            if let Some(because) = self.skipped_because(name) {
                let _ = write!(tip, "\\nSkipped because `{}` failed", dot_text(because));
            }
            let _ = writeln!(
                out,
                "    \"{}\" [fillcolor={}, tooltip=\"{tip}\"];",
                dot_text(name),
                state(step.state).colour()
            );
        }
        let steps = &self.graph.steps;
        for step in steps {
            let child = dot_text(&step.name);
            for parent in step.parents.iter().filter_map(|&p| steps.get(p)) {
                let _ = writeln!(out, "    \"{}\" -> \"{child}\";", dot_text(&parent.name));
            }
            for parent in step.after.iter().filter_map(|&p| steps.get(p)) {
                let _ = writeln!(
                    out,
                    "    \"{}\" -> \"{child}\" [style=dashed];",
                    dot_text(&parent.name)
                );
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid Gantt chart of this run, like a live run's
    /// [`JobReport::mermaid_gantt`](crate::JobReport::mermaid_gantt): a bar per step that has a
    /// stored start, from its start to its end; completed steps are marked `done`, failed and
    /// cancelled ones `crit`. Steps that never started are left out.
    ///
    /// A stored run may span several processes (it resumed after a crash), so the bars are at
    /// their wall-clock times: Unix milliseconds (`dateFormat x`), the axis in `%H:%M:%S`. The
    /// title names the job and the run; it and each step's name stay one line of text: line
    /// breaks, other control characters and the characters Mermaid gives a meaning (`#`, `;`,
    /// `%`, `<`, `>`, and `:` in a step's name) are written as entity codes (`#10;`, `#58;`,
    /// ...), each cut after 2,000 characters.
    pub fn mermaid_gantt(&self) -> String {
        let mut out = String::new();
        out.push_str("gantt\n");
        let _ = writeln!(
            out,
            "    title {} run {}",
            mermaid_text(&self.job),
            mermaid_text(&self.id)
        );
        out.push_str("    dateFormat x\n    axisFormat %H:%M:%S\n");
        for (i, name) in self.node_names().into_iter().enumerate() {
            let Some(step) = self.step(name) else {
                continue;
            };
            let Some(begin) = step.started_at else {
                continue;
            };
            let end = step.ended_at.unwrap_or(begin).max(begin.saturating_add(1));
            let tag = match step.state {
                StepStatus::Completed => "done, ",
                StepStatus::Failed | StepStatus::Cancelled => "crit, ",
                _ => "",
            };
            let task = mermaid_text(name).replace(':', "#58;");
            let _ = writeln!(out, "    {task} :{tag}s{i}, {begin}, {end}");
        }
        out
    }

    /// The steps to draw: the graph's, then stored steps the graph does not name.
    fn node_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.graph.steps.iter().map(|s| s.name.as_str()).collect();
        for step in &self.steps {
            if self.graph.position(&step.name).is_none() {
                names.push(&step.name);
            }
        }
        names
    }
}

/// Every step that step `root` depends on, directly or not, as a mask over the graph's steps
/// (`root` itself excluded unless on a cycle). Edges out of range are ignored.
fn ancestors(run: &StoredRun, root: usize) -> Vec<bool> {
    let steps = &run.graph.steps;
    let mut hit = vec![false; steps.len()];
    let mut todo = vec![root];
    while let Some(i) = todo.pop() {
        let Some(step) = steps.get(i) else { continue };
        for &p in step.parents.iter().chain(&step.after) {
            if p < steps.len() && !hit[p] {
                hit[p] = true;
                todo.push(p);
            }
        }
    }
    hit
}

/// The live report's state of a stored status (for its colour).
fn state(status: StepStatus) -> StepState {
    match status {
        StepStatus::Pending => StepState::Pending,
        StepStatus::Completed => StepState::Completed,
        StepStatus::Failed => StepState::Failed,
        StepStatus::Skipped => StepState::Skipped,
        StepStatus::Cancelled => StepState::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GraphSpec, RunState, StepSpec};

    fn spec(name: &str, parents: &[usize], after: &[usize]) -> StepSpec {
        StepSpec {
            name: name.to_owned(),
            parents: parents.to_vec(),
            after: after.to_vec(),
        }
    }

    fn step(name: &str, state: StepStatus, times: Option<(i64, i64)>) -> StoredStep {
        StoredStep {
            name: name.to_owned(),
            state,
            attempts: u32::from(times.is_some()),
            output: None,
            error: None,
            started_at: times.map(|t| t.0),
            ended_at: times.map(|t| t.1),
        }
    }

    /// fetch -> parse -> store, `audit` after fetch; parse failed, store skipped.
    fn run() -> StoredRun {
        let mut parse = step("parse", StepStatus::Failed, Some((1_000_100, 1_000_350)));
        parse.attempts = 3;
        parse.error = Some("bad \"row\" at C:\\data\r\nline 2\u{0}\u{1b}[31m".to_owned());
        StoredRun {
            id: "import-7; #1 <x>".to_owned(),
            job: "Import \"v2\"".to_owned(),
            batch: None,
            input: "{}".to_owned(),
            graph: GraphSpec {
                steps: vec![
                    spec("fetch", &[], &[]),
                    spec("parse", &[0], &[]),
                    spec("store", &[1], &[]),
                    spec("audit", &[], &[0]),
                ],
            },
            state: RunState::Failed,
            error: Some("step `parse` failed".to_owned()),
            created_at: 1_000_000,
            updated_at: 1_000_400,
            steps: vec![
                step("fetch", StepStatus::Completed, Some((1_000_000, 1_000_100))),
                parse,
                step("store", StepStatus::Skipped, None),
                step("audit", StepStatus::Completed, Some((1_000_100, 1_000_100))),
            ],
        }
    }

    /// Every line's quoted strings are closed (a `"` preceded by an escaping `\` does not count).
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
    fn dot_draws_the_stored_graph_escaped() {
        let dot = run().dot();
        assert!(
            dot.starts_with("digraph \"Import \\\"v2\\\"\" {\n"),
            "{dot}"
        );
        assert!(dot.ends_with("}\n"));
        for line in dot.lines() {
            assert!(quotes_balanced(line), "unbalanced quotes: {line}");
            assert!(
                !line.chars().any(char::is_control),
                "control character: {line:?}"
            );
        }
        assert!(dot.contains("label=\"Import \\\"v2\\\" run import-7; #1 <x> (failed)\";"));
        assert!(dot.contains("\"fetch\" [fillcolor=palegreen, tooltip=\"State: completed\\nStarted: +0ns\\nDuration: 100ms\\nAttempts: 1\"];"), "{dot}");
        assert!(
            dot.contains(
                "\"parse\" [fillcolor=tomato, tooltip=\"State: failed\\nStarted: +100ms\\nDuration: 250ms\\nAttempts: 3\\nError: bad \\\"row\\\" at C:\\\\data\\nline 2\\\\u{0}\\\\u{1b}[31m\"];"
            ),
            "{dot}"
        );
        assert!(dot.contains(
            "\"store\" [fillcolor=lightgrey, tooltip=\"State: skipped\\nSkipped because `parse` failed\"];"
        ));
        assert!(dot.contains("    \"fetch\" -> \"parse\";\n    \"parse\" -> \"store\";\n    \"fetch\" -> \"audit\" [style=dashed];\n"));
    }

    #[test]
    fn dot_survives_a_graph_that_does_not_match_the_steps() {
        let mut run = run();
        run.graph.steps.push(spec("ghost", &[0, 99], &[42]));
        run.steps
            .push(step("orphan \"x\"", StepStatus::Pending, None));
        let dot = run.dot();
        assert!(dot.contains("\"ghost\" [fillcolor=white, tooltip=\"State: not stored\"];"));
        assert!(
            dot.contains("\"orphan \\\"x\\\"\" [fillcolor=white, tooltip=\"State: pending\"];")
        );
        assert!(dot.contains("\"fetch\" -> \"ghost\";"));
        assert!(!dot.contains("99") && !dot.contains("42"));
        assert!(dot.lines().all(quotes_balanced));
    }

    #[test]
    fn long_errors_are_cut() {
        let mut run = run();
        run.steps[1].error = Some("\"".repeat(5_000));
        let dot = run.dot();
        assert!(dot.contains("… (5000 characters)"));
        assert!(dot.len() < 16_000);
        assert!(dot.lines().all(quotes_balanced));
    }

    #[test]
    fn gantt_has_a_bar_per_started_step_at_wall_clock_times() {
        let gantt = run().mermaid_gantt();
        let lines: Vec<&str> = gantt.lines().collect();
        assert_eq!(
            lines,
            [
                "gantt",
                "    title Import \"v2\" run import-7#59; #35;1 #60;x#62;",
                "    dateFormat x",
                "    axisFormat %H:%M:%S",
                "    fetch :done, s0, 1000000, 1000100",
                "    parse :crit, s1, 1000100, 1000350",
                "    audit :done, s3, 1000100, 1000101",
            ]
        );
    }

    #[test]
    fn gantt_task_names_stay_one_task() {
        let mut run = run();
        run.steps[0].name = "a: b\n%%{init}%%".to_owned();
        run.graph.steps[0].name = run.steps[0].name.clone();
        let gantt = run.mermaid_gantt();
        assert!(
            gantt.contains("    a#58; b#10;#37;#37;{init}#37;#37; :done, s0, 1000000, 1000100\n"),
            "{gantt}"
        );
        assert_eq!(gantt.lines().count(), 7);
    }

    #[test]
    fn tally_duration_and_skip_cause() {
        let run = run();
        let tally = run.tally();
        assert_eq!((tally.completed, tally.failed, tally.skipped), (2, 1, 1));
        assert_eq!(run.steps[1].duration(), Some(Duration::from_millis(250)));
        assert_eq!(run.steps[2].duration(), None);
        assert_eq!(run.skipped_because("store"), Some("parse"));
        assert_eq!(run.skipped_because("fetch"), None);
        assert_eq!(run.skipped_because("nope"), None);
        let mut back = run.steps[0].clone();
        back.ended_at = Some(0);
        assert_eq!(back.duration(), Some(Duration::ZERO));
    }
}
