//! [`StepContext`]: what a step may learn about the run it is part of.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// The identity of one run of a job, shared by the contexts of all its steps.
///
/// Its id and its cancellation token are made when first asked for: most runs never need
/// either, and a run should cost what its steps cost.
#[derive(Debug)]
pub(crate) struct RunInfo {
    pub(crate) job_name: &'static str,
    /// The id given, or one made from `number` on first use.
    job_id: OnceLock<Arc<str>>,
    number: u64,
    cancel: OnceLock<CancellationToken>,
    /// Set when the run is cancelled or ends: a token made after that is made cancelled.
    cancelled: AtomicBool,
}

impl RunInfo {
    /// A run's identity: `job_id` if given, else a process-unique one; `cancel` if the run must
    /// be cancellable from the start.
    pub(crate) fn new(
        job_name: &'static str,
        job_id: Option<Arc<str>>,
        cancel: Option<CancellationToken>,
    ) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        let number = match job_id {
            Some(_) => 0,
            None => COUNTER.fetch_add(1, Ordering::Relaxed),
        };
        RunInfo {
            job_name,
            job_id: job_id.map_or_else(OnceLock::new, OnceLock::from),
            number,
            cancel: cancel.map_or_else(OnceLock::new, OnceLock::from),
            cancelled: AtomicBool::new(false),
        }
    }

    /// The run's id: the one given, else a hash of the process id, then the run's number.
    pub(crate) fn job_id(&self) -> &Arc<str> {
        self.job_id.get_or_init(|| {
            static PROCESS: OnceLock<u32> = OnceLock::new();
            let process = *PROCESS.get_or_init(|| {
                use std::hash::{BuildHasher, Hasher};
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u32(std::process::id());
                h.finish() as u32
            });
            Arc::from(format!("{process:08x}-{}", self.number))
        })
    }

    /// The run's cancellation token.
    pub(crate) fn token(&self) -> &CancellationToken {
        let token = self.cancel.get_or_init(CancellationToken::new);
        if self.cancelled.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }

    /// Cancels the run's token, now or when it is made.
    pub(crate) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        if let Some(token) = self.cancel.get() {
            token.cancel();
        }
    }
}

/// An enrichment function: called before every attempt of every step (see
/// [`Runner::enrich`](crate::Runner::enrich) and `#[job(enrich = ..)]`).
pub type Enrich = Arc<dyn Fn(&mut StepContext) + Send + Sync>;

/// The run context a step receives when it declares a `&StepContext` parameter.
///
/// Each attempt of a step gets a fresh context: enrichment runs again before every attempt, so
/// what it adds can depend on [`attempt`](StepContext::attempt).
///
/// ```
/// use jobgraph::{job, StepContext};
///
/// struct Greeter;
///
/// /// Runs before every attempt of every step of `Greeter`.
/// fn tenant(ctx: &mut StepContext) {
///     ctx.insert(Tenant("acme"));
///     ctx.record("tenant", "acme");
/// }
///
/// struct Tenant(&'static str);
///
/// #[job(enrich = tenant)]
/// impl Greeter {
///     #[step]
///     async fn hello(&self, ctx: &StepContext) -> String {
///         let tenant = ctx.get::<Tenant>().map_or("?", |t| t.0);
///         format!("{} of {} for {tenant} (attempt {})", ctx.step_name(), ctx.job_name(), ctx.attempt())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let out = Greeter.run().await.unwrap();
/// assert_eq!(out.hello, "hello of Greeter for acme (attempt 1)");
/// # }
/// ```
pub struct StepContext {
    run: Arc<RunInfo>,
    step_name: &'static str,
    attempt: u32,
    element: Option<usize>,
    values: Vec<(TypeId, Box<dyn Any + Send + Sync>)>,
    fields: Vec<(&'static str, String)>,
}

impl StepContext {
    pub(crate) fn new(run: &Arc<RunInfo>, step_name: &'static str, attempt: u32) -> Self {
        StepContext {
            run: Arc::clone(run),
            step_name,
            attempt,
            element: None,
            values: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// The job's name (`#[job(name = "...")]`, or the type's name).
    pub fn job_name(&self) -> &'static str {
        self.run.job_name
    }

    /// The id of this run of the job: [`Runner::job_id`](crate::Runner::job_id), or one generated
    /// unique within the process.
    pub fn job_id(&self) -> &str {
        self.run.job_id()
    }

    /// The step's name, as written in the `impl` block.
    pub fn step_name(&self) -> &'static str {
        self.step_name
    }

    /// Which attempt of the step this is, starting at 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// For a `#[step(for_each(..))]` step, the index of the element this attempt runs for, in
    /// the parent's output; `None` for other steps.
    pub fn element(&self) -> Option<usize> {
        self.element
    }

    pub(crate) fn set_element(&mut self, element: Option<usize>) {
        self.element = element;
    }

    /// The run's cancellation token: cancelled when the run is cancelled or dropped, so work a
    /// step hands elsewhere (a spawned task, a blocking thread) can stop with it.
    pub fn cancellation_token(&self) -> &CancellationToken {
        self.run.token()
    }

    /// Adds a typed value for the step to read with [`get`](StepContext::get), replacing any
    /// value of the same type.
    pub fn insert<T: Send + Sync + 'static>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        match self.values.iter_mut().find(|(t, _)| *t == id) {
            Some(slot) => slot.1 = Box::new(value),
            None => self.values.push((id, Box::new(value))),
        }
    }

    /// The value of type `T` enrichment added, if any.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.values
            .iter()
            .find(|(t, _)| *t == id)
            .and_then(|(_, v)| v.downcast_ref())
    }

    /// Adds `key=value` to the attempt's tracing span (its `fields` field), replacing an earlier
    /// value of the same key.
    pub fn record(&mut self, key: &'static str, value: impl fmt::Display) {
        let value = value.to_string();
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    /// The fields added with [`record`](StepContext::record), as `key=value` pairs.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.fields.iter().map(|(k, v)| (*k, v.as_str()))
    }
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext")
            .field("job_name", &self.run.job_name)
            .field("job_id", self.run.job_id())
            .field("step_name", &self.step_name)
            .field("attempt", &self.attempt)
            .field("element", &self.element)
            .field("values", &self.values.len())
            .field("fields", &self.fields)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_made_after_the_run_was_cancelled_is_cancelled() {
        let info = RunInfo::new("job", None, None);
        info.cancel();
        assert!(info.token().is_cancelled());
    }

    #[test]
    fn cancelling_cancels_a_token_made_before() {
        let info = RunInfo::new("job", None, None);
        let token = info.token().clone();
        assert!(!token.is_cancelled());
        info.cancel();
        assert!(token.is_cancelled());
        // The token given at the start is the run's.
        let given = CancellationToken::new();
        let info = RunInfo::new("job", None, Some(given.clone()));
        info.cancel();
        assert!(given.is_cancelled());
    }

    #[test]
    fn ids_are_made_once_and_differ_between_runs() {
        let (a, b) = (
            RunInfo::new("job", None, None),
            RunInfo::new("job", None, None),
        );
        assert_eq!(a.job_id(), a.job_id());
        assert_ne!(a.job_id(), b.job_id());
        let given = RunInfo::new("job", Some(Arc::from("mine")), None);
        assert_eq!(&**given.job_id(), "mine");
    }
}
