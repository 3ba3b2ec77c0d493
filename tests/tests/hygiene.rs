//! Hygiene: a `#[job]` expands and runs where the prelude, `core`, `std` and `jobgraph` are all
//! shadowed by local items, with every warning denied.

#![deny(warnings, missing_docs)]

/// Every name the generated code might reach for, shadowed by something useless.
#[allow(
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_macros,
    clippy::upper_case_acronyms,
    clippy::module_inception,
    clippy::new_ret_no_self,
    clippy::wrong_self_convention
)]
mod shadowed {
    // The prelude's types and traits.
    pub(crate) struct Result;
    pub(crate) struct Option;
    pub(crate) struct Box;
    pub(crate) struct Vec;
    pub(crate) struct String;
    pub(crate) struct PhantomData;
    pub(crate) struct Pin;
    pub(crate) struct Poll;
    pub(crate) struct Context;
    pub(crate) trait Clone {}
    pub(crate) trait Copy {}
    pub(crate) trait Debug {}
    pub(crate) trait Display {}
    pub(crate) trait Send {}
    pub(crate) trait Sync {}
    pub(crate) trait Sized {}
    pub(crate) trait Eq {}
    pub(crate) trait PartialEq {}
    pub(crate) trait Ord {}
    pub(crate) trait PartialOrd {}
    pub(crate) trait Hash {}
    pub(crate) trait Default {}
    pub(crate) trait Drop {}
    pub(crate) trait Fn {}
    pub(crate) trait FnMut {}
    pub(crate) trait FnOnce {}
    pub(crate) trait Future {}
    pub(crate) trait IntoFuture {}
    pub(crate) trait Into {}
    pub(crate) trait From {}
    pub(crate) trait Iterator {}
    pub(crate) trait IntoIterator {}
    pub(crate) trait ToString {}
    pub(crate) trait ToOwned {}
    pub(crate) trait AsRef {}
    pub(crate) trait AsMut {}

    // The prelude's values.
    pub(crate) fn Ok() {}
    pub(crate) fn Err() {}
    pub(crate) fn Some() {}
    pub(crate) const None: () = ();
    pub(crate) fn drop() {}

    // Primitive type names.
    pub(crate) struct str;
    pub(crate) struct usize;
    pub(crate) struct u64;
    pub(crate) struct u32;
    pub(crate) struct bool;

    // Crate roots, as relative paths.
    mod core {}
    mod std {}
    mod alloc {}
    mod jobgraph {}
    mod tokio {}
    mod futures {}

    // What the runtime calls things.
    pub(crate) struct Slot;
    pub(crate) struct Sched;
    pub(crate) struct Mask;
    pub(crate) struct Run;
    pub(crate) struct Failures;
    pub(crate) struct StepInfo;
    pub(crate) struct Job;
    pub(crate) struct JobStep;
    pub(crate) struct JobError;
    pub(crate) struct StepResult;
    pub(crate) fn infallible() {}
    pub(crate) fn none_of() {}
    pub(crate) fn poll_fn() {}

    // Macros the expansion or std's derives might use.
    macro_rules! panic {
        ($($t:tt)*) => {
            compile_error!("shadowed panic!")
        };
    }
    macro_rules! assert {
        ($($t:tt)*) => {
            compile_error!("shadowed assert!")
        };
    }
    macro_rules! unreachable {
        ($($t:tt)*) => {
            compile_error!("shadowed unreachable!")
        };
    }
    macro_rules! format {
        ($($t:tt)*) => {
            compile_error!("shadowed format!")
        };
    }
    macro_rules! write {
        ($($t:tt)*) => {
            compile_error!("shadowed write!")
        };
    }
    macro_rules! pin {
        ($($t:tt)*) => {
            compile_error!("shadowed pin!")
        };
    }
    macro_rules! matches {
        ($($t:tt)*) => {
            compile_error!("shadowed matches!")
        };
    }

    // A blanket trait in scope whose methods share names with calls the expansion makes; the
    // expansion must keep resolving to its own methods. (Names it does not survive yet are listed
    // in the `hijack` module below.)
    pub(crate) trait Blanket: ::core::marker::Sized {
        fn step(self) {}
        fn get(self) {}
        fn take(self) {}
        fn poll(self) {}
        fn index(self) {}
        fn done(self) {}
        fn as_pin_mut(self) {}
        fn write_str(self) {}
        fn into_step_result(self) {}
        fn new(self) {}
    }
    impl<T> Blanket for T {}

    /// The job, spelled with absolute paths only.
    pub(crate) struct Shadowed {
        pub(crate) base: ::core::primitive::u32,
    }

    /// The error of the fallible step.
    #[derive(::core::fmt::Debug)]
    pub(crate) struct Oops;

    impl ::core::fmt::Display for Oops {
        fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
            f.write_str("oops")
        }
    }

    impl ::std::error::Error for Oops {}

    #[::jobgraph::job]
    impl Shadowed {
        /// The root.
        #[step]
        async fn root(&self) -> ::core::primitive::u32 {
            self.base
        }

        #[step]
        async fn fallible(
            &self,
            root: &::core::primitive::u32,
        ) -> ::core::result::Result<::core::primitive::u32, Oops> {
            ::core::result::Result::Ok(root + 1)
        }

        #[step]
        async fn io(&self) -> ::std::io::Result<::core::primitive::u8> {
            ::core::result::Result::Ok(8)
        }

        #[step]
        async fn unit(&self) {}

        #[step(after(unit))]
        async fn with_ctx(
            &self,
            ctx: &::jobgraph::StepContext,
            fallible: &::core::primitive::u32,
            io: &::core::primitive::u8,
        ) -> (&'static ::core::primitive::str, ::core::primitive::u32) {
            (
                ctx.step_name(),
                fallible + ::core::primitive::u32::from(*io),
            )
        }

        #[step]
        async fn fail(
            &self,
            with_ctx: &(&'static ::core::primitive::str, ::core::primitive::u32),
        ) -> ::core::result::Result<(), Oops> {
            if with_ctx.1 > 100 {
                ::core::result::Result::Err(Oops)
            } else {
                ::core::result::Result::Ok(())
            }
        }
    }

    /// Tags every attempt (for `#[job(enrich)]`).
    pub(crate) fn tag(ctx: &mut ::jobgraph::StepContext) {
        ctx.record("tagged", "yes");
    }

    /// Every step option, with everything above shadowed.
    pub(crate) struct AllOptions;

    impl AllOptions {
        const POOL: ::core::primitive::u32 = 2;
    }

    /// The resources of `AllOptions`' steps.
    pub(crate) struct Pool {
        pub(crate) factor: ::core::primitive::u64,
    }

    #[::jobgraph::job(enrich = tag, durable, resources = Pool)]
    impl AllOptions {
        #[step(
            retry = ::jobgraph::Retry::fixed(2, ::core::time::Duration::from_millis(1)),
            timeout = ::core::time::Duration::from_secs(5)
        )]
        async fn items(&self) -> ::std::vec::Vec<::core::primitive::u32> {
            ::std::vec![1, 2, 3]
        }

        #[step(
            for_each(items, concurrency = 2),
            concurrency = Self::POOL,
            rate = "1000/s",
            burst = 4
        )]
        async fn double(
            &self,
            items: &::core::primitive::u32,
            pool: &Pool,
        ) -> ::core::primitive::u64 {
            ::core::primitive::u64::from(*items) * pool.factor
        }

        #[step]
        async fn total(&self, double: &[::core::primitive::u64]) -> ::core::primitive::u64 {
            double.iter().sum()
        }
    }

    impl ::serde::Serialize for AllOptions {
        fn serialize<S: ::serde::Serializer>(
            &self,
            serializer: S,
        ) -> ::core::result::Result<S::Ok, S::Error> {
            serializer.serialize_unit()
        }
    }

    impl<'de> ::serde::Deserialize<'de> for AllOptions {
        fn deserialize<D: ::serde::Deserializer<'de>>(
            deserializer: D,
        ) -> ::core::result::Result<Self, D::Error> {
            <() as ::serde::Deserialize>::deserialize(deserializer)?;
            ::core::result::Result::Ok(AllOptions)
        }
    }
}

use std::error::Error as _;

use shadowed::{Oops, Shadowed, ShadowedStep};

#[tokio::test]
async fn a_job_runs_with_everything_shadowed() {
    let out = Shadowed { base: 1 }.run().await.unwrap();
    assert_eq!(out.root, 1);
    assert_eq!(out.fallible, 2);
    assert_eq!(out.io, 8);
    assert_eq!(out.with_ctx, ("with_ctx", 10));
    assert_eq!(ShadowedStep::ALL.len(), 6);
    assert_eq!(ShadowedStep::WithCtx.to_string(), "with_ctx");
    assert_eq!(format!("{:?}", ShadowedStep::WithCtx), "WithCtx");
    assert_eq!(Shadowed::STEPS[0].doc(), "The root.");
    assert!(Shadowed::DOT.contains(r#""unit" -> "with_ctx" [style=dashed];"#));
}

#[tokio::test]
async fn every_option_works_with_everything_shadowed() {
    let out = shadowed::AllOptions
        .run(&shadowed::Pool { factor: 2 })
        .await
        .unwrap();
    assert_eq!(out.double, [2, 4, 6]);
    assert_eq!(out.total, 12);
}

#[tokio::test]
async fn a_shadowed_job_fails_normally() {
    let err = Shadowed { base: 100 }.run().await.unwrap_err();
    assert_eq!(err.step(), ShadowedStep::Fail);
    assert!(err.source().unwrap().is::<Oops>());
    assert_eq!(
        err.to_string(),
        "job `Shadowed` failed: step `fail` returned an error"
    );
}

/// A user trait with a blanket impl and a `&self` method called `name`, in scope of the job.
mod hijack {
    /// Names anything.
    pub(crate) trait Named {
        /// Not the step's name.
        fn name(&self) -> &'static str {
            "hijacked"
        }
    }

    impl<T> Named for T {}

    /// Methods named like the scheduler's internals, for every type: the generated code must
    /// call its own, fully qualified.
    #[allow(dead_code, clippy::wrong_self_convention)]
    pub(crate) trait Internals: Sized {
        /// Not `Pin::set`.
        fn set(self, _x: u8) {}
        /// Not `Sched::try_start`.
        fn try_start(self, _a: u8, _b: u8) {}
        /// Not `Sched::finish`.
        fn finish(self, _a: u8) {}
        /// Not `Sched::idle`.
        fn idle(self, _a: u8) {}
        /// Not `Failures::push`.
        fn push(self, _a: u8) {}
        /// Not `Pin::as_mut`.
        fn as_mut(self, _a: u8) {}
        /// Not `Option::as_pin_mut`.
        fn as_pin_mut(self, _a: u8) {}
        /// Not `Option::is_some`.
        fn is_some(self, _a: u8) {}
        /// Not `Future::poll`.
        fn poll(self, _a: u8) {}
        /// Not `Clone::clone`.
        fn clone(self, _a: u8) {}
    }

    impl<T> Internals for T {}

    /// A one-step job.
    pub(crate) struct Hijack;

    #[::jobgraph::job]
    impl Hijack {
        #[step]
        async fn real_name(&self) {}
    }
}

#[tokio::test]
async fn display_ignores_user_traits_in_scope() {
    hijack::Hijack.run().await.unwrap();
    assert_eq!(hijack::Named::name(&()), "hijacked");
    assert_eq!(hijack::HijackStep::RealName.name(), "real_name");
    assert_eq!(hijack::HijackStep::RealName.to_string(), "real_name");
}

/// The runtime crate re-exported under another name, as a framework would.
mod reexport {
    pub(crate) use ::jobgraph as engine;
}

/// A job that reaches the runtime through `crate = ..`.
struct ViaReexport;

#[reexport::engine::job(crate = crate::reexport::engine)]
impl ViaReexport {
    #[step]
    async fn one(&self) -> u8 {
        1
    }

    #[step]
    async fn two(&self, one: &u8, ctx: &reexport::engine::StepContext) -> u8 {
        assert_eq!(ctx.job_name(), "ViaReexport");
        one + 1
    }
}

#[tokio::test]
async fn the_crate_option_routes_every_path() {
    let out = ViaReexport.run().await.unwrap();
    assert_eq!(out.two, 2);
    assert_eq!(
        <ViaReexport as reexport::engine::Job>::STEPS[1].parents(),
        ["one"]
    );
}

#[tokio::test]
async fn a_job_declared_inside_a_function_body() {
    struct Local;

    #[::jobgraph::job]
    impl Local {
        #[step]
        async fn only(&self) -> u8 {
            5
        }
    }

    assert_eq!(Local.run().await.unwrap().only, 5);
    assert_eq!(LocalStep::Only.name(), "only");
}
