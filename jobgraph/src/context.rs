//! [`StepContext`]: what a step may learn about the run it is part of.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// The identity of one run of a job, shared by the contexts of all its steps.
#[derive(Debug)]
pub(crate) struct RunInfo {
    pub(crate) job_name: &'static str,
    pub(crate) job_id: Arc<str>,
    pub(crate) cancel: CancellationToken,
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
        &self.run.job_id
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
        &self.run.cancel
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
            .field("job_id", &self.run.job_id)
            .field("step_name", &self.step_name)
            .field("attempt", &self.attempt)
            .field("element", &self.element)
            .field("values", &self.values.len())
            .field("fields", &self.fields)
            .finish()
    }
}
