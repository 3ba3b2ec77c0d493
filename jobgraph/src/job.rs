//! The traits every `#[job]` implements, and the static description of a graph.

use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;

use crate::run::RunCore;
use crate::{JobError, StepContext};

/// A job type: an `impl` block compiled into a graph of steps by [`#[job]`](crate::job).
///
/// The macro implements this trait; generic runtime code (reports, batches, stores) works on any
/// `J: Job` through it. You never implement it by hand.
pub trait Job: Sized {
    /// The job's name: the type's name unless `#[job(name = "...")]` says otherwise.
    const NAME: &'static str;
    /// Graphviz DOT text of the graph, built at compile time.
    ///
    /// Data edges (a step consuming a parent's output) are solid; `after(..)` edges, which order
    /// steps without passing data, are dashed.
    const DOT: &'static str;
    /// Every step in declaration order, indexed like [`JobStep::index`].
    const STEPS: &'static [StepInfo];
    /// The generated step enum (`FooStep` for `impl Foo`).
    type Step: JobStep;
    /// The generated outputs struct (`FooOutputs` for `impl Foo`).
    type Outputs;
    /// The generated partial outputs (`FooPartial` for `impl Foo`): an `Option` per step, `Some`
    /// for each step whose output is known. A run can start from one
    /// ([`Runner::seed`](crate::Runner::seed)), a run stopped early returns one
    /// ([`Runner::until`](crate::Runner::until)), and a failed run hands one back
    /// ([`JobError::partial`]).
    type Partial: Default;
    /// What its steps borrow besides their parents' outputs (`#[job(resources = T)]`): clients,
    /// pools, configuration, anything that is not the job's input and is not stored with a
    /// durable run. One value is given to each run ([`Runner::with_resources`](crate::Runner::with_resources),
    /// the generated `run(&self, resources)`), and every step that takes a `&T` parameter
    /// borrows it. `()` for a job that declares none.
    type Resources: ?Sized;

    /// The enrichment of `#[job(enrich = ..)]`, run before every attempt of every step.
    #[doc(hidden)]
    const __ENRICH: Option<fn(&mut StepContext)> = None;

    /// Runs the graph with the given resources and run state, starting from the outputs in `seed`; what `run`,
    /// `Runner` and `start` drive. Returns every output the run has (all of them, unless it
    /// stopped at [`Runner::until`](crate::Runner::until)).
    #[doc(hidden)]
    fn __run<'a>(
        &'a self,
        resources: &'a Self::Resources,
        run: &'a RunCore<Self::Step>,
        seed: Self::Partial,
    ) -> impl Future<Output = Result<Self::Partial, JobError<Self::Step, Self::Partial>>> + 'a;

    /// The outputs of a run in which every step completed.
    #[doc(hidden)]
    fn __outputs(partial: Self::Partial) -> Self::Outputs;

    /// The policies of `step` in this job value: what its `#[step(..)]` attribute declares,
    /// evaluated now. An expression that panics, or a timeout of zero, is the step's error.
    ///
    /// This is the step's policies as data, for engines that run one step at a time; the
    /// in-process scheduler evaluates the same expressions as each step starts.
    fn policies(&self, step: Self::Step) -> Result<StepPolicies, crate::StepError>;
}

/// A job whose run future is `Send`, so that it can run on any thread: what `#[job]` implements
/// for every job but a `#[job(local)]` one (whose steps' futures need not be `Send`). A
/// [`Worker`](crate::Worker) runs only such jobs.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is a `#[job(local)]` job: its steps' futures need not be `Send`, so it cannot run on a worker",
    label = "a worker runs each step on tokio's threads",
    note = "leave `local` out of `#[job(..)]` (every step's future must then be `Send`)"
)]
pub trait SendJob: Job {
    /// [`Job::__run`], boxed as a `Send` future.
    #[doc(hidden)]
    #[allow(clippy::type_complexity)]
    fn __run_send<'a>(
        &'a self,
        resources: &'a Self::Resources,
        run: &'a RunCore<Self::Step>,
        seed: Self::Partial,
    ) -> std::pin::Pin<
        Box<
            dyn Future<Output = Result<Self::Partial, JobError<Self::Step, Self::Partial>>>
                + Send
                + 'a,
        >,
    >;
}

/// The policies of one step, as its `#[step(..)]` attribute declares them: what
/// [`Job::policies`] returns.
#[derive(Clone)]
#[non_exhaustive]
pub struct StepPolicies {
    /// `retry = ..`: when a failed attempt is tried again.
    pub retry: Option<std::sync::Arc<dyn crate::RetryPolicy>>,
    /// `timeout = ..`: the limit of each attempt.
    pub timeout: Option<std::time::Duration>,
    /// `concurrency`, `rate` and `burst`: the limits shared by every run of the job.
    pub limits: crate::StepLimits,
    /// `for_each(.., concurrency = n)`: at most `n` elements at once in a run.
    pub for_each_bound: Option<u32>,
}

impl std::fmt::Debug for StepPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepPolicies")
            .field("retry", &self.retry.as_ref().map(|_| ".."))
            .field("timeout", &self.timeout)
            .field("limits", &self.limits)
            .field("for_each_bound", &self.for_each_bound)
            .finish()
    }
}

/// The generated enum naming the steps of one job, one variant per step.
pub trait JobStep: Copy + Eq + Hash + Debug + Display + Send + Sync + 'static {
    /// The name of the job these are the steps of: its [`Job::NAME`]. With the step's
    /// [`name`](JobStep::name), it identifies the step in a
    /// [`LimitRegistry`](crate::LimitRegistry) (and, later, in a store).
    const JOB: &'static str;
    /// Every step, in declaration order.
    const ALL: &'static [Self];
    /// Every step's static description, indexed like [`JobStep::ALL`].
    const STEPS: &'static [StepInfo];
    /// The step's name as written in the `impl` block (`get_connection`).
    fn name(self) -> &'static str;
    /// The step's position in [`JobStep::ALL`] and [`Job::STEPS`].
    fn index(self) -> usize;
}

/// The static description of one step: what [`Job::STEPS`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepInfo {
    name: &'static str,
    parents: &'static [&'static str],
    after: &'static [&'static str],
    doc: &'static str,
    edges: StepEdges,
}

/// A step's edges by index into [`JobStep::ALL`] and [`Job::STEPS`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepEdges {
    pub parents: &'static [usize],
    pub after: &'static [usize],
    pub children: &'static [usize],
    pub for_each: Option<usize>,
}

impl StepEdges {
    /// No edges: a step on its own.
    pub const NONE: Self = StepEdges {
        parents: &[],
        after: &[],
        children: &[],
        for_each: None,
    };
}

impl StepInfo {
    #[doc(hidden)]
    pub const fn __new(
        name: &'static str,
        parents: &'static [&'static str],
        after: &'static [&'static str],
        doc: &'static str,
    ) -> Self {
        StepInfo {
            name,
            parents,
            after,
            doc,
            edges: StepEdges::NONE,
        }
    }

    #[doc(hidden)]
    pub const fn __edges(self, edges: StepEdges) -> Self {
        StepInfo { edges, ..self }
    }

    /// The steps whose outputs this step consumes, in parameter order, by index into
    /// [`JobStep::ALL`] (names: [`parents`](StepInfo::parents)).
    pub const fn parent_indices(&self) -> &'static [usize] {
        self.edges.parents
    }

    /// The steps this step runs after without consuming their output, by index (names:
    /// [`after`](StepInfo::after)).
    pub const fn after_indices(&self) -> &'static [usize] {
        self.edges.after
    }

    /// The steps that wait for this one (by consuming its output or through `after`), by index,
    /// ascending.
    pub const fn children(&self) -> &'static [usize] {
        self.edges.children
    }

    /// For a `#[step(for_each(param))]` step, the index of the step whose output's elements it
    /// runs over.
    pub const fn for_each(&self) -> Option<usize> {
        self.edges.for_each
    }

    /// The step's name (the method's name).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The steps whose outputs this step consumes, in parameter order.
    pub const fn parents(&self) -> &'static [&'static str] {
        self.parents
    }

    /// The steps this step runs after without consuming their output (`#[step(after(..))]`).
    pub const fn after(&self) -> &'static [&'static str] {
        self.after
    }

    /// The method's doc comment, trimmed; empty when it has none.
    pub const fn doc(&self) -> &'static str {
        self.doc
    }
}
