//! The generated items: the outputs struct's typed fields, `DOT`, `STEPS`, the step enum, the
//! `Job` impl, `#[job(name = "..")]`, and the values a `StepContext` carries.

use std::collections::HashSet;
use std::io;

use jobgraph::{Job, JobStep, StepContext, job};

/// Asserts at compile time that `value` has type `T`.
fn has_type<T>(_value: &T) {}

/// An output type that is neither `Clone` nor `Copy` nor `Debug`.
struct Handle {
    id: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("never happens")]
struct Never;

/// One step per kind of return type.
struct Typed;

// Parents' outputs are lent as exactly `&T`: clippy's advice to take `&str`, `&T` for `&Box<T>`
// or fewer parameters does not apply to steps.
#[job]
#[allow(clippy::ptr_arg, clippy::borrowed_box, clippy::too_many_arguments)]
impl Typed {
    #[step]
    async fn implicit_unit(&self) {}

    #[step]
    #[allow(clippy::unused_unit)]
    async fn explicit_unit(&self) -> () {}

    #[step]
    async fn fallible_unit(&self) -> Result<(), Never> {
        Ok(())
    }

    #[step]
    async fn std_io(&self) -> std::io::Result<u64> {
        Ok(64)
    }

    #[step]
    async fn short_io(&self) -> io::Result<String> {
        Ok("io".to_owned())
    }

    #[step]
    async fn boxed_error(&self) -> Result<i8, Box<dyn std::error::Error + Send + Sync>> {
        Ok(-8)
    }

    #[step]
    async fn io_error(&self) -> Result<Vec<u8>, io::Error> {
        Ok(vec![1, 2])
    }

    #[step]
    async fn optional(&self) -> Option<u8> {
        None
    }

    #[step]
    async fn handle(&self) -> Handle {
        Handle { id: 9 }
    }

    #[step]
    async fn fallible_handle(&self) -> Result<Handle, Never> {
        Ok(Handle { id: 10 })
    }

    #[step]
    async fn itself(&self) -> Box<Self> {
        Box::new(Typed)
    }

    #[step]
    async fn uses_all(
        &self,
        std_io: &u64,
        short_io: &String,
        handle: &Handle,
        fallible_handle: &Handle,
        implicit_unit: &(),
        optional: &Option<u8>,
        itself: &Box<Self>,
    ) -> u64 {
        let _ = (implicit_unit, itself);
        std_io + short_io.len() as u64 + u64::from(handle.id + fallible_handle.id)
            - u64::from(optional.unwrap_or(0))
    }
}

#[tokio::test]
async fn outputs_have_the_step_output_types() {
    let out: TypedOutputs = Typed.run().await.unwrap();
    has_type::<()>(&out.implicit_unit);
    has_type::<()>(&out.explicit_unit);
    has_type::<()>(&out.fallible_unit);
    has_type::<u64>(&out.std_io);
    has_type::<String>(&out.short_io);
    has_type::<i8>(&out.boxed_error);
    has_type::<Vec<u8>>(&out.io_error);
    has_type::<Option<u8>>(&out.optional);
    has_type::<Handle>(&out.handle);
    has_type::<Handle>(&out.fallible_handle);
    has_type::<Box<Typed>>(&out.itself);
    assert_eq!(out.std_io, 64);
    assert_eq!(out.short_io, "io");
    assert_eq!(out.boxed_error, -8);
    assert_eq!(out.io_error, [1, 2]);
    assert_eq!(out.optional, None);
    assert_eq!((out.handle.id, out.fallible_handle.id), (9, 10));
    assert_eq!(out.uses_all, 64 + 2 + 19);
    // The outputs are owned: a non-`Clone` output can be moved out.
    let Handle { id } = out.handle;
    assert_eq!(id, 9);
}

#[tokio::test]
async fn outputs_is_the_job_trait_outputs() {
    let out: <Typed as Job>::Outputs = Typed.run().await.unwrap();
    let _: TypedOutputs = out;
    let step: <Typed as Job>::Step = TypedStep::Handle;
    assert_eq!(step.name(), "handle");
}

#[derive(Debug, thiserror::Error)]
#[error("io step failed")]
struct IoFailure;

struct IoFails;

#[job]
impl IoFails {
    #[step]
    async fn read(&self) -> io::Result<u8> {
        Err(io::Error::new(io::ErrorKind::NotFound, IoFailure))
    }
}

#[tokio::test]
async fn an_io_result_step_fails_with_its_io_error() {
    let err = IoFails.run().await.unwrap_err();
    let source = std::error::Error::source(&err).unwrap();
    let io_error = source.downcast_ref::<io::Error>().unwrap();
    assert_eq!(io_error.kind(), io::ErrorKind::NotFound);
    assert_eq!(
        err.to_string(),
        "job `IoFails` failed: step `read` returned an error"
    );
}

/// A small graph for the static descriptions: two roots, data edges and an `after` edge.
struct Small;

#[job]
impl Small {
    /// Loads the input.
    #[step]
    async fn load(&self) -> u32 {
        1
    }

    /// Checks permissions.
    ///
    /// Runs beside `load`.
    #[step]
    async fn audit(&self) {}

    #[step]
    async fn parse_all(&self, load: &u32) -> u64 {
        u64::from(*load)
    }

    ///   Saves, after the audit.
    #[step(after(audit))]
    async fn save(&self, parse_all: &u64, load: &u32) -> u64 {
        parse_all + u64::from(*load)
    }

    /// Not a step: left alone.
    fn helper(&self) -> u8 {
        3
    }
}

const SMALL_DOT: &str = r#"digraph "Small" {
    rankdir=TB;
    node [shape=box, style=rounded, fontname="Helvetica"];
    "load";
    "audit";
    "parse_all";
    "save";
    "load" -> "parse_all";
    "parse_all" -> "save";
    "load" -> "save";
    "audit" -> "save" [style=dashed];
}
"#;

#[test]
fn dot_is_exact() {
    assert_eq!(Small::DOT, SMALL_DOT);
    assert_eq!(<Small as Job>::DOT, SMALL_DOT);
}

#[test]
fn steps_describe_names_parents_after_and_docs() {
    let steps = Small::STEPS;
    assert_eq!(steps, <Small as Job>::STEPS);
    let names: Vec<_> = steps.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["load", "audit", "parse_all", "save"]);

    assert!(steps[0].parents().is_empty() && steps[0].after().is_empty());
    assert_eq!(steps[0].doc(), "Loads the input.");

    assert!(steps[1].parents().is_empty() && steps[1].after().is_empty());
    assert_eq!(steps[1].doc(), "Checks permissions.\n\nRuns beside `load`.");

    assert_eq!(steps[2].parents(), ["load"]);
    assert!(steps[2].after().is_empty());
    assert_eq!(steps[2].doc(), "", "no doc comment");

    assert_eq!(steps[3].parents(), ["parse_all", "load"], "parameter order");
    assert_eq!(steps[3].after(), ["audit"]);
    assert_eq!(steps[3].doc(), "Saves, after the audit.", "trimmed");

    for (i, step) in SmallStep::ALL.iter().enumerate() {
        assert_eq!(step.index(), i);
        assert_eq!(steps[step.index()].name(), step.name());
    }
}

#[tokio::test]
async fn non_step_methods_are_left_alone() {
    assert_eq!(Small.helper(), 3);
    assert_eq!(Small::STEPS.len(), 4);
    let out = Small.run().await.unwrap();
    assert_eq!((out.load, out.parse_all, out.save), (1, 1, 2));
}

#[test]
fn step_enum_names_variants_and_traits() {
    assert_eq!(
        SmallStep::ALL,
        [
            SmallStep::Load,
            SmallStep::Audit,
            SmallStep::ParseAll,
            SmallStep::Save
        ]
    );
    assert_eq!(SmallStep::ParseAll.name(), "parse_all");
    assert_eq!(SmallStep::ParseAll.to_string(), "parse_all");
    assert_eq!(format!("{:?}", SmallStep::ParseAll), "ParseAll");
    assert_eq!(SmallStep::Load.index(), 0);
    assert_eq!(SmallStep::Save.index(), 3);

    // Copy + Eq + Hash.
    let step = SmallStep::Audit;
    let copy = step;
    assert_eq!(step, copy);
    let set: HashSet<SmallStep> = SmallStep::ALL.iter().copied().collect();
    assert_eq!(set.len(), 4);

    // `name` and `index` are usable in constants.
    const NAME: &str = SmallStep::Save.name();
    const INDEX: usize = SmallStep::Save.index();
    assert_eq!((NAME, INDEX), ("save", 3));

    // The same through the traits generic code uses.
    assert_eq!(<SmallStep as JobStep>::ALL, SmallStep::ALL);
    assert_eq!(<SmallStep as JobStep>::name(SmallStep::Audit), "audit");
    assert_eq!(<SmallStep as JobStep>::index(SmallStep::Audit), 1);
}

/// What generic runtime code can learn from any job.
fn describe<J: Job>() -> Vec<String> {
    <J::Step as JobStep>::ALL
        .iter()
        .map(|s| format!("{}.{}:{}", J::NAME, s.index(), s))
        .collect()
}

#[test]
fn generic_code_reads_jobs_through_the_trait() {
    assert_eq!(<Small as Job>::NAME, "Small");
    assert_eq!(
        describe::<Small>(),
        [
            "Small.0:load",
            "Small.1:audit",
            "Small.2:parse_all",
            "Small.3:save"
        ]
    );
}

/// A job whose name is not its type's.
struct Renamed;

#[job(name = "nightly-etl")]
impl Renamed {
    #[step]
    async fn extract(&self, ctx: &StepContext) -> &'static str {
        ctx.job_name()
    }

    #[step]
    async fn load(&self, extract: &&'static str) -> Result<(), Never> {
        let _ = extract;
        Ok(())
    }
}

#[tokio::test]
async fn a_custom_name_is_used_everywhere() {
    assert_eq!(<Renamed as Job>::NAME, "nightly-etl");
    assert_eq!(
        Renamed::DOT,
        r#"digraph "nightly-etl" {
    rankdir=TB;
    node [shape=box, style=rounded, fontname="Helvetica"];
    "extract";
    "load";
    "extract" -> "load";
}
"#
    );
    let out = Renamed.run().await.unwrap();
    assert_eq!(out.extract, "nightly-etl");
    // The generated items keep the type's name.
    let _: RenamedOutputs = out;
    assert_eq!(RenamedStep::Extract.name(), "extract");
}

/// A name that needs escaping in DOT.
struct Quoted;

#[job(name = r#"say "hi" \ bye"#)]
impl Quoted {
    #[step]
    async fn only(&self) {}
}

#[tokio::test]
async fn dot_escapes_the_job_name() {
    Quoted.run().await.unwrap();
    assert_eq!(<Quoted as Job>::NAME, r#"say "hi" \ bye"#);
    assert!(
        Quoted::DOT.starts_with(r#"digraph "say \"hi\" \\ bye" {"#),
        "{}",
        Quoted::DOT
    );
}

/// Steps declared before the steps they depend on.
struct Backwards;

#[job]
impl Backwards {
    #[step]
    async fn last(&self, middle: &u8) -> u8 {
        middle + 1
    }

    #[step]
    async fn middle(&self, first: &u8) -> u8 {
        first + 1
    }

    #[step]
    async fn first(&self) -> u8 {
        1
    }
}

#[tokio::test]
async fn declaration_order_is_free() {
    let out = Backwards.run().await.unwrap();
    assert_eq!((out.first, out.middle, out.last), (1, 2, 3));
    // `ALL` and `STEPS` keep declaration order.
    assert_eq!(
        BackwardsStep::ALL,
        [
            BackwardsStep::Last,
            BackwardsStep::Middle,
            BackwardsStep::First
        ]
    );
    let names: Vec<_> = Backwards::STEPS.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["last", "middle", "first"]);
    // DOT lists nodes parents first.
    let nodes: Vec<&str> = Backwards::DOT
        .lines()
        .filter(|l| l.trim_end().ends_with("\";") && !l.contains("->"))
        .map(str::trim)
        .collect();
    assert_eq!(nodes, [r#""first";"#, r#""middle";"#, r#""last";"#]);
}

/// Records what each step's context says.
struct Contexts;

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    job_name: &'static str,
    job_id: String,
    step_name: &'static str,
    attempt: u32,
}

impl Seen {
    fn of(ctx: &StepContext) -> Self {
        Seen {
            job_name: ctx.job_name(),
            job_id: ctx.job_id().to_owned(),
            step_name: ctx.step_name(),
            attempt: ctx.attempt(),
        }
    }
}

#[job]
impl Contexts {
    #[step]
    async fn first(&self, ctx: &StepContext) -> Seen {
        Seen::of(ctx)
    }

    /// The context first, a parent after it, under another name.
    #[step]
    async fn second(&self, context: &StepContext, first: &Seen) -> (Seen, Seen) {
        (Seen::of(context), first.clone())
    }

    /// The context between two parents, with a leading underscore.
    #[step]
    async fn third(&self, first: &Seen, _c: &jobgraph::StepContext, second: &(Seen, Seen)) -> Seen {
        assert_eq!(first, &second.1);
        Seen::of(_c)
    }
}

#[tokio::test]
async fn step_context_carries_the_run_and_step() {
    let out = Contexts.run().await.unwrap();
    let (second, _) = &out.second;
    for (seen, step) in [
        (&out.first, "first"),
        (second, "second"),
        (&out.third, "third"),
    ] {
        assert_eq!(seen.job_name, "Contexts");
        assert_eq!(seen.step_name, step);
        assert_eq!(seen.attempt, 1);
        assert!(!seen.job_id.is_empty());
    }
    assert_eq!(out.first.job_id, second.job_id, "one id per run");
    assert_eq!(out.first.job_id, out.third.job_id);

    let again = Contexts.run().await.unwrap();
    assert_ne!(
        again.first.job_id, out.first.job_id,
        "each run has its own id"
    );
}

#[tokio::test]
async fn concurrent_runs_have_distinct_ids() {
    let runs = futures::future::join_all((0..8).map(|_| Contexts.run())).await;
    let ids: HashSet<String> = runs.into_iter().map(|r| r.unwrap().first.job_id).collect();
    assert_eq!(ids.len(), 8);
}

/// A failing run whose error carries the id its steps saw.
struct FailingContext;

#[job]
#[allow(clippy::ptr_arg)]
impl FailingContext {
    #[step]
    async fn id(&self, ctx: &StepContext) -> String {
        ctx.job_id().to_owned()
    }

    #[step]
    async fn fail(&self, id: &String) -> Result<(), IdError> {
        Err(IdError(id.clone()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("failed in run {0}")]
struct IdError(String);

#[tokio::test]
async fn the_error_names_the_run_its_steps_saw() {
    let err = FailingContext.run().await.unwrap_err();
    let seen = &std::error::Error::source(&err)
        .unwrap()
        .downcast_ref::<IdError>()
        .unwrap()
        .0;
    assert_eq!(err.job_id(), seen);
    assert_eq!(err.job_name(), "FailingContext");
}

/// A step named with a raw identifier.
struct Raw;

#[job]
impl Raw {
    #[step]
    async fn r#type(&self, ctx: &StepContext) -> &'static str {
        ctx.step_name()
    }

    #[step]
    async fn r#use(&self, r#type: &&'static str) -> usize {
        r#type.len()
    }
}

#[tokio::test]
async fn raw_identifier_steps_run() {
    let out = Raw.run().await.unwrap();
    assert_eq!(out.r#type, "type");
    assert_eq!(out.r#use, 4);
    assert_eq!(RawStep::Type.name(), "type");
    assert_eq!(RawStep::Use.to_string(), "use");
}

#[test]
fn raw_identifier_steps_have_one_name_everywhere() {
    let names: Vec<_> = Raw::STEPS.iter().map(|s| s.name()).collect();
    assert_eq!(names, ["type", "use"], "STEPS agrees with RawStep::name()");
    assert_eq!(Raw::STEPS[1].parents(), ["type"]);
    assert!(Raw::DOT.contains(r#""type" -> "use";"#), "{}", Raw::DOT);
}
