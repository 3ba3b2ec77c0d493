//! Run reports: each step's state, timing, attempts and error, rendered as DOT or a Mermaid Gantt
//! chart; and the events a listener receives as they happen.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::{JobStep, StepError};

/// Where a step is in its run.
///
/// Non-exhaustive: later versions add states (durable runs will), so a `match` on it needs a
/// wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StepState {
    /// Not started yet: it waits for the steps it depends on.
    Pending,
    /// Started and not finished (possibly between retries).
    Running,
    /// Finished with an output.
    Completed,
    /// Finished with an error, after its last attempt.
    Failed,
    /// Never started, because a step it depends on failed or was skipped.
    Skipped,
    /// Stopped or never started because the run was cancelled.
    Cancelled,
}

impl StepState {
    /// The lower-case name: `completed`, `failed`, ...
    pub fn name(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Completed => "completed",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }

    /// True for the states a step never leaves.
    pub fn is_final(self) -> bool {
        !matches!(self, StepState::Pending | StepState::Running)
    }

    /// The DOT fill colour of a step in this state (also used by stored runs' DOT).
    pub(crate) fn colour(self) -> &'static str {
        match self {
            StepState::Pending => "white",
            StepState::Running => "gold",
            StepState::Completed => "palegreen",
            StepState::Failed => "tomato",
            StepState::Skipped => "lightgrey",
            StepState::Cancelled => "orange",
        }
    }
}

impl fmt::Display for StepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What happened to one step in one run.
#[derive(Debug, Clone)]
pub struct StepReport<S> {
    pub(crate) step: S,
    pub(crate) state: StepState,
    pub(crate) started: Option<Duration>,
    pub(crate) duration: Option<Duration>,
    pub(crate) attempts: u32,
    pub(crate) error: Option<String>,
    pub(crate) skipped_because: Option<S>,
}

impl<S: JobStep> StepReport<S> {
    /// The step.
    pub fn step(&self) -> S {
        self.step
    }

    /// Its state.
    pub fn state(&self) -> StepState {
        self.state
    }

    /// When its first attempt started (its first poll), measured from the start of the run.
    pub fn started(&self) -> Option<Duration> {
        self.started
    }

    /// From the start of its first attempt to its end (retries and back-off included); `None`
    /// until it ends.
    pub fn duration(&self) -> Option<Duration> {
        self.duration
    }

    /// How many attempts started.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The error of its last attempt, as text, if it failed or was cancelled.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// For a skipped step, the failed step that caused the skip.
    pub fn skipped_because(&self) -> Option<S> {
        self.skipped_because
    }
}

/// The report of one run: every step's [`StepReport`], in declaration order.
#[derive(Debug, Clone)]
pub struct JobReport<S> {
    pub(crate) job_name: &'static str,
    pub(crate) job_id: Arc<str>,
    pub(crate) started_at: SystemTime,
    pub(crate) elapsed: Option<Duration>,
    pub(crate) steps: Vec<StepReport<S>>,
}

impl<S: JobStep> JobReport<S> {
    /// The job's name.
    pub fn job_name(&self) -> &'static str {
        self.job_name
    }

    /// The run's id.
    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    /// The wall-clock time the run started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// How long the run took; `None` while it runs.
    pub fn elapsed(&self) -> Option<Duration> {
        self.elapsed
    }

    /// Every step's report, in declaration order.
    pub fn steps(&self) -> &[StepReport<S>] {
        &self.steps
    }

    /// One step's report.
    pub fn step(&self, step: S) -> &StepReport<S> {
        &self.steps[step.index()]
    }

    /// The steps in `state`, in declaration order.
    pub fn steps_in(&self, state: StepState) -> Vec<S> {
        self.steps
            .iter()
            .filter(|r| r.state == state)
            .map(|r| r.step)
            .collect()
    }

    /// Graphviz DOT of this run: the job's graph with each step filled by its state and a tooltip
    /// with its start, duration, attempts and error (asyncjob's instance view).
    ///
    /// The text is valid DOT whatever the job's name and the steps' errors hold: quotes and
    /// backslashes are escaped, a line break becomes a tooltip line break, and other control
    /// characters (NUL included) are written as `\u{..}`. Graphviz rejects a quoted string of
    /// 16,384 bytes or more, so an error (or a job name) longer than 2,000 characters is cut
    /// there and ends with `… (N characters)`, N its full length.
    pub fn dot(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", dot_text(self.job_name));
        out.push_str("    rankdir=TB;\n");
        out.push_str("    node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\"];\n");
        for r in &self.steps {
            let mut tip = format!("State: {}", r.state);
            if let Some(s) = r.started {
                let _ = write!(tip, "\\nStarted: +{s:?}");
            }
            if let Some(d) = r.duration {
                let _ = write!(tip, "\\nDuration: {d:?}");
            }
            if r.attempts > 0 {
                let _ = write!(tip, "\\nAttempts: {}", r.attempts);
            }
            if let Some(e) = &r.error {
                let _ = write!(tip, "\\nError: {}", dot_text(e));
            }
            if let Some(b) = r.skipped_because {
                let _ = write!(tip, "\\nSkipped because `{}` failed", b.name());
            }
            let _ = writeln!(
                out,
                "    \"{}\" [fillcolor={}, tooltip=\"{}\"];",
                r.step.name(),
                r.state.colour(),
                tip
            );
        }
        for &step in S::ALL {
            let info = &S::STEPS[step.index()];
            for parent in info.parents() {
                let _ = writeln!(out, "    \"{parent}\" -> \"{}\";", step.name());
            }
            for parent in info.after() {
                let _ = writeln!(
                    out,
                    "    \"{parent}\" -> \"{}\" [style=dashed];",
                    step.name()
                );
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid Gantt chart of this run: a bar per step that started, from its start to its end
    /// in milliseconds since the run started; failed steps are marked `crit`, running ones
    /// `active`. Steps that never started are left out.
    ///
    /// The title names the job and the run's id. Whatever they hold, it stays one line of text:
    /// line breaks, other control characters and the characters Mermaid gives a meaning (`#`,
    /// `;`, `%`, `<`, `>`) are written as Mermaid's entity codes (`#10;`, `#35;`, ...), which the
    /// chart shows as the characters themselves; each is cut after 2,000 characters and then
    /// ends with `… (N characters)`.
    pub fn mermaid_gantt(&self) -> String {
        let mut out = String::new();
        out.push_str("gantt\n");
        let _ = writeln!(
            out,
            "    title {} run {}",
            mermaid_text(self.job_name),
            mermaid_text(&self.job_id)
        );
        out.push_str("    dateFormat x\n    axisFormat %S.%L s\n");
        for (i, r) in self.steps.iter().enumerate() {
            let Some(start) = r.started else { continue };
            let begin = start.as_millis();
            let end = match r.duration {
                Some(d) => (start + d).as_millis(),
                None => self.elapsed.map_or(begin, |e| e.as_millis()),
            }
            .max(begin + 1);
            let tag = match r.state {
                StepState::Completed => "done, ",
                StepState::Failed | StepState::Cancelled => "crit, ",
                StepState::Running => "active, ",
                _ => "",
            };
            let _ = writeln!(out, "    {} :{tag}s{i}, {begin}, {end}", r.step.name());
        }
        out
    }
}

pub(crate) use crate::dot_text::{TEXT_MAX_CHARS, dot_text};

/// `s` as text on one line of a Mermaid chart: every character that Mermaid's preprocessing or
/// its gantt lexer reads as more than text (line breaks and other control characters end a line
/// or break parsing; `#` and `;` start entity codes, comments and, in older versions, end a title;
/// `%` starts comments and `%%{init}%%` directives; `<` and `>` open HTML) becomes the entity code
/// `#<decimal>;`, which Mermaid shows as the character. At most [`TEXT_MAX_CHARS`] characters,
/// then `… (N characters)`: Mermaid refuses a whole chart longer than 50,000 characters.
/// A stored run's Gantt (`store/render.rs`) calls this one too.
pub(crate) fn mermaid_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(TEXT_MAX_CHARS));
    for (written, c) in s.chars().enumerate() {
        if written == TEXT_MAX_CHARS {
            let _ = write!(out, "… ({} characters)", s.chars().count());
            break;
        }
        if matches!(c, '#' | ';' | '%' | '<' | '>') || c.is_control() {
            let _ = write!(out, "#{};", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// What a listener hears about each step, as it happens (see [`Runner::listener`](crate::Runner::listener)).
///
/// Non-exhaustive: later versions add events, so a `match` on it needs a wildcard arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum StepEvent<'a, S> {
    /// An attempt started.
    Started {
        /// The step.
        step: S,
        /// The attempt, from 1.
        attempt: u32,
    },
    /// An attempt failed and the step will be tried again after `delay`.
    Retrying {
        /// The step.
        step: S,
        /// The attempt that failed.
        attempt: u32,
        /// The back-off before the next attempt.
        delay: Duration,
        /// Why the attempt failed.
        error: &'a StepError,
    },
    /// The step completed.
    Completed {
        /// The step.
        step: S,
        /// How many attempts it took.
        attempts: u32,
        /// From its first attempt's start to its end.
        duration: Duration,
    },
    /// The step failed for good.
    Failed {
        /// The step.
        step: S,
        /// How many attempts it took.
        attempts: u32,
        /// The last attempt's error.
        error: &'a StepError,
    },
    /// The step will not run: `because` failed.
    Skipped {
        /// The step.
        step: S,
        /// The failed step it depends on.
        because: S,
    },
    /// The run was cancelled while the step ran or waited.
    Cancelled {
        /// The step.
        step: S,
    },
}

/// A function called with every [`StepEvent`] of a run, from the task that runs the job.
pub type Listener<S> = Arc<dyn Fn(&StepEvent<'_, S>) + Send + Sync>;
