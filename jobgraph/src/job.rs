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

    /// The enrichment of `#[job(enrich = ..)]`, run before every attempt of every step.
    #[doc(hidden)]
    const __ENRICH: Option<fn(&mut StepContext)> = None;

    /// Runs the graph with the given run state; what `run`, `Runner` and `start` drive.
    #[doc(hidden)]
    fn __run<'a>(
        &'a self,
        run: &'a RunCore<Self::Step>,
    ) -> impl Future<Output = Result<Self::Outputs, JobError<Self::Step>>> + 'a;
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
        }
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
