//! Errors of steps and of whole runs.

use std::any::Any;
use std::error::Error;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use crate::JobStep;
use crate::report::{JobReport, StepState};

/// A boxed error, as steps' errors are stored once they leave the step.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Why one step failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StepError {
    /// The step returned `Err`; this is its error.
    Error(BoxError),
    /// The step panicked; the panic was caught.
    Panic(StepPanic),
    /// The attempt ran longer than its timeout (`#[step(timeout = ..)]`) and was dropped.
    Timeout(Duration),
    /// The run was cancelled (by [`JobHandle::cancel`](crate::JobHandle::cancel), or by
    /// [`fail_fast`](crate::Runner::fail_fast) after another step failed) while this step ran.
    Cancelled,
    /// A policy of the step could not be used. Either an expression of its attribute panicked,
    /// or its value is invalid (a timeout of zero), and the step did not run; or its retry policy
    /// (or that policy's [`when`](crate::Retry::when) predicate) panicked when asked about a
    /// failed attempt, and the text says what panicked and how that attempt failed.
    Policy(String),
    /// The step's output could not be stored (a `#[job(durable)]` run): the store's error. The
    /// output is lost; the next resume runs the step again.
    Checkpoint(BoxError),
    /// One element of a `#[step(for_each(..))]` step failed (after its own retries): which one,
    /// by its index in the parent's output, and why. The other elements were cancelled.
    Element {
        /// The element's index in the parent's output.
        index: usize,
        /// Why it failed.
        error: Box<StepError>,
    },
}

impl StepError {
    /// The user's error (or the caught panic) as a `dyn Error`, for downcasting.
    ///
    /// A timeout or cancellation, which has no error of its own, is the `StepError` itself.
    pub fn as_error(&self) -> &(dyn Error + Send + Sync + 'static) {
        match self {
            StepError::Error(e) => &**e,
            StepError::Panic(p) => p,
            StepError::Timeout(_) | StepError::Cancelled | StepError::Policy(_) => self,
            StepError::Checkpoint(e) => &**e,
            StepError::Element { error, .. } => error.as_error(),
        }
    }

    /// The step's own error as `E`, if it returned an error of that type (for a `for_each`
    /// step: the failed element's).
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        match self.innermost() {
            StepError::Error(e) => e.downcast_ref(),
            _ => None,
        }
    }

    /// True if the step (or the failed element of a `for_each` step) panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self.innermost(), StepError::Panic(_))
    }

    /// True if the attempt (or the failed element's last attempt) timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self.innermost(), StepError::Timeout(_))
    }

    /// True if the run was cancelled while the step ran.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, StepError::Cancelled)
    }

    /// For a failed element of a `for_each` step, its index in the parent's output.
    pub fn element(&self) -> Option<usize> {
        match self {
            StepError::Element { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The error itself, looking through [`StepError::Element`].
    fn innermost(&self) -> &StepError {
        match self {
            StepError::Element { error, .. } => error.innermost(),
            other => other,
        }
    }
}

impl StepError {
    /// The error this one carries: the step's own error or the caught panic (for a `for_each`
    /// step, the failed element's); `None` for a timeout or a cancellation.
    fn cause(&self) -> Option<&(dyn Error + 'static)> {
        match self.innermost() {
            StepError::Error(e) => Some(&**e),
            StepError::Panic(p) => Some(p),
            StepError::Checkpoint(e) => Some(&**e),
            _ => None,
        }
    }

    /// What happened, without the text of [`cause`](Self::cause): `returned an error`,
    /// `panicked`, `element 2: timed out after 5s`, ...
    fn fmt_without_cause(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Error(_) => f.write_str("returned an error"),
            StepError::Panic(_) => f.write_str("panicked"),
            StepError::Timeout(d) => write!(f, "timed out after {d:?}"),
            StepError::Cancelled => f.write_str("was cancelled"),
            StepError::Policy(message) => write!(f, "has an invalid policy: {message}"),
            StepError::Checkpoint(_) => {
                f.write_str("completed, but its output could not be stored")
            }
            StepError::Element { index, error } => {
                write!(f, "element {index}: ")?;
                error.fmt_without_cause(f)
            }
        }
    }
}

/// The whole story on one line (`returned an error: disk full`, `element 2: panicked: boom`),
/// as reports, listeners and retry policies show it. So its [`source`](Error::source) is not the
/// user's error, whose text is already here, but that error's own source; reach the user's error
/// with [`downcast_ref`](StepError::downcast_ref) or [`as_error`](StepError::as_error).
impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.fmt_without_cause(f)?;
        match self.cause() {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl Error for StepError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.cause().and_then(Error::source)
    }
}

/// A panic caught while a step ran, with its message when the payload was a string.
#[derive(Debug, Clone)]
pub struct StepPanic {
    message: String,
}

impl StepPanic {
    pub(crate) fn new(message: String) -> Self {
        StepPanic { message }
    }

    pub(crate) fn from_payload(payload: Box<dyn Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "<non-string panic payload>".to_owned()
        };
        drop_payload(payload);
        StepPanic::new(message)
    }

    /// The panic message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Drops a caught panic's payload, which is the user's value: a payload whose `Drop` panics too
/// is caught there, and that second payload is leaked rather than dropped, since dropping it
/// could panic again, without end.
pub(crate) fn drop_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
        tracing::error!("a panic's payload panicked when dropped: its own payload is leaked");
    }
}

/// The panic message alone: what panicked is said by the error that carries it.
impl fmt::Display for StepPanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for StepPanic {}

/// One failed step of a run: which step, and why.
#[derive(Debug)]
pub struct StepFailure<S> {
    step: S,
    error: StepError,
}

impl<S: JobStep> StepFailure<S> {
    pub(crate) fn new(step: S, error: StepError) -> Self {
        StepFailure { step, error }
    }

    /// The step that failed.
    pub fn step(&self) -> S {
        self.step
    }

    /// Why it failed.
    pub fn error(&self) -> &StepError {
        &self.error
    }
}

impl<S: JobStep> fmt::Display for StepFailure<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` {}", self.step.name(), self.error)
    }
}

/// The error of a run in which at least one step failed, or which was cancelled.
///
/// [`step`](JobError::step) is the root cause: the step that failed first. The steps that depend
/// on a failed step did not run ([`skipped`](JobError::skipped)); independent branches ran to the
/// end (unless [`fail_fast`](crate::Runner::fail_fast)) and may have failed too
/// ([`failures`](JobError::failures) lists every failure in the order they happened).
/// [`report`](JobError::report) has the state and timing of every step.
///
/// Its `Display` says which job and step failed and how, and stops before the user's error:
/// ``job `Crawl` failed: step `fetch` element 2: returned an error``. That error (or the caught
/// [`StepPanic`]) is [`source`](Error::source), so
/// `err.source().unwrap().downcast_ref::<MyError>()` recovers it, and a printer of the whole
/// chain (anyhow's `{:#}`, or a loop over `source()`) names it once:
/// ``job `Crawl` failed: step `fetch` element 2: returned an error: page 404 not found``. A
/// timeout or a cancellation has no source: ``job `X` failed: step `x` timed out after 5s``.
///
/// `P` is what the run hands back: the generated `FooPartial` for `impl Foo`, with the output of
/// every step that completed ([`partial`](JobError::partial),
/// [`into_partial`](JobError::into_partial)), so a caller can use what was done, or start a new
/// run from it ([`Runner::seed`](crate::Runner::seed)).
pub struct JobError<S: JobStep, P = ()> {
    failures: Vec<StepFailure<S>>,
    report: JobReport<S>,
    partial: P,
}

impl<S: JobStep> JobError<S> {
    pub(crate) fn new(failures: Vec<StepFailure<S>>, report: JobReport<S>) -> Self {
        assert!(!failures.is_empty(), "a JobError has a failed step");
        JobError {
            failures,
            report,
            partial: (),
        }
    }
}

impl<S: JobStep, P> JobError<S, P> {
    /// This error, handing back `partial` instead.
    #[doc(hidden)]
    pub fn with_partial<Q>(self, partial: Q) -> JobError<S, Q> {
        JobError {
            failures: self.failures,
            report: self.report,
            partial,
        }
    }

    /// The outputs of every step that completed before the run ended (`FooPartial`: an `Option`
    /// per step, `Some` for each step that completed).
    pub fn partial(&self) -> &P {
        &self.partial
    }

    /// The outputs of every step that completed, owned: to use what was done, or to start a new
    /// run from it with [`Runner::seed`](crate::Runner::seed).
    pub fn into_partial(self) -> P {
        self.partial
    }

    /// The name of the job that failed.
    pub fn job_name(&self) -> &'static str {
        self.report.job_name()
    }

    /// The id of the failed run.
    pub fn job_id(&self) -> &str {
        self.report.job_id()
    }

    /// The step that failed first: the root cause.
    pub fn step(&self) -> S {
        self.root_cause().step
    }

    /// The first failure of the run, with its step and error.
    pub fn root_cause(&self) -> &StepFailure<S> {
        &self.failures[0]
    }

    /// Every step that failed, in the order they failed; the first is the root cause. Steps that
    /// were running when the run was cancelled are here too, with [`StepError::Cancelled`].
    pub fn failures(&self) -> &[StepFailure<S>] {
        &self.failures
    }

    /// The steps that did not run because a step they depend on failed, in declaration order.
    pub fn skipped(&self) -> Vec<S> {
        self.report.steps_in(StepState::Skipped)
    }

    /// True if the run was cancelled rather than stopped by a step's own failure alone.
    pub fn is_cancelled(&self) -> bool {
        self.root_cause().error.is_cancelled()
    }

    /// The report of the run: every step's state, timings, attempts and error.
    pub fn report(&self) -> &JobReport<S> {
        &self.report
    }
}

impl<S: JobStep, P> fmt::Display for JobError<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let root = self.root_cause();
        if root.error.is_cancelled() {
            // Cancelled by its caller (its handle, its token, its batch), not failed: say which
            // steps were stopped.
            write!(f, "job `{}` was cancelled", self.job_name())?;
            let running: Vec<&str> = self
                .failures
                .iter()
                .filter(|failure| {
                    failure.error.is_cancelled()
                        && self.report.step(failure.step).started().is_some()
                })
                .map(|failure| failure.step.name())
                .collect();
            return match running.as_slice() {
                [] => Ok(()),
                [one] => write!(f, " while step `{one}` ran"),
                many => write!(f, " while steps `{}` ran", many.join("`, `")),
            };
        }
        write!(
            f,
            "job `{}` failed: step `{}` ",
            self.job_name(),
            root.step.name()
        )?;
        root.error.fmt_without_cause(f)?;
        match self.failures.len() {
            1 => Ok(()),
            2 => write!(f, " (and 1 more step failed)"),
            n => write!(f, " (and {} more steps failed)", n - 1),
        }
    }
}

impl<S: JobStep, P> fmt::Debug for JobError<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("job_name", &self.job_name())
            .field("job_id", &self.job_id())
            .field("failures", &self.failures)
            .field("skipped", &self.skipped())
            .finish()
    }
}

impl<S: JobStep, P> Error for JobError<S, P> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.root_cause().error.cause()
    }
}
