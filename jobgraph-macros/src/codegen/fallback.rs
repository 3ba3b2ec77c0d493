//! The generated items of a job with errors, so that the rest of the crate keeps compiling and
//! rustc reports the job's mistakes alone, not at every use of the job the items those mistakes
//! kept from being generated (`no method named run`, `cannot find type FooOutputs`).
//!
//! They are the items [`generate`](super::generate) emits, made by the same functions from what
//! the errors leave usable, with nothing that needs the graph:
//! - the step enum, with a variant per step but those `validate` refused one (a step defined
//!   twice, a variant taken by an earlier step, `ALL`), and `STEPS` without edges;
//! - the outputs and partial outputs structs, with a field per step but those whose output a
//!   field cannot hold (a step defined twice, an output without a size or of the step's own
//!   generic type);
//! - `impl Job` and the inherent `DOT`, `STEPS`, `run`, `runner` and `start` with their real
//!   signatures, so code using them type-checks as it will once the job is fixed. `DOT` is empty
//!   and the scheduler's body only panics: the crate does not compile, so it never runs;
//! - `impl DurableJob` with its codecs, and the checks of `&StepContext` parameters: they need no
//!   graph, and report what they report for a job without mistakes.
//!
//! Left out: the step functions (they need each parent to exist and each parameter to be one the
//! scheduler can fill); the generated inherent items the user's impl defines itself (`validate`
//! reported the clash; a second definition would be reported again); and everything for a trait
//! impl, which is no job at all.

use std::collections::HashSet;

use proc_macro2::TokenStream;
use quote::{ToTokens as _, quote};
use syn::ext::IdentExt as _;
use syn::{ImplItem, Item};

use super::paths::Paths;
use super::{checks, durable, items};
use crate::model::Job;
use crate::validate;

/// What `#[job]` emits beside the errors and the user's impl when `job` has errors.
pub(crate) fn fallback(job: &Job<'_>) -> TokenStream {
    if job.item.trait_.is_some() {
        return TokenStream::new();
    }
    let variants = keeping(job, validate::keeps_variant);
    let fields = keeping(job, validate::keeps_field);
    let paths = Paths::new(job);
    let step_enum = items::step_enum(&variants, None, &paths);
    let outputs = items::outputs_struct(&fields, &paths);
    let partial = items::partial_struct(&fields, &paths);
    let job_impl = without_users_items(job, items::job_impl(&fields, None, &paths));
    let codecs = codecs(&fields, &paths);
    let durable = durable::durable_impl(&fields, &paths);
    let checks = checks::checks(job, &paths);
    let import = &paths.import;
    let one_job = items::one_job_per_type(job);
    quote! {
        #one_job
        #import
        #step_enum
        #outputs
        #partial
        #job_impl
        #codecs
        #durable
        #checks
    }
}

/// The body of a generated function that a job with errors cannot have: it never runs, as the
/// crate does not compile.
pub(super) fn never_runs(paths: &Paths) -> TokenStream {
    let p = &paths.private;
    quote!(#p::panic!("`#[job]` reported errors in this job; it has no graph to run"))
}

/// `job` with only the steps for which `keep(job, index)` holds.
fn keeping<'a>(job: &Job<'a>, keep: fn(&Job<'_>, usize) -> bool) -> Job<'a> {
    let mut kept = job.clone();
    let mut index = 0;
    kept.steps.retain(|_| {
        index += 1;
        keep(job, index - 1)
    });
    kept
}

/// The codec functions `impl DurableJob` calls, in a hidden inherent impl (for a job that
/// succeeds, among the step functions).
fn codecs(job: &Job<'_>, paths: &Paths) -> TokenStream {
    let fns = durable::codec_fns(job, paths);
    if fns.is_empty() {
        return fns;
    }
    let (impl_generics, _, where_clause) = job.item.generics.split_for_impl();
    let self_ty = &job.item.self_ty;
    quote! {
        #[doc(hidden)]
        #[allow(dead_code)]
        impl #impl_generics #self_ty #where_clause {
            #fns
        }
    }
}

/// `generated` without the inherent items whose names the user's impl defines: `validate` has
/// reported each clash, and two definitions would be reported again as duplicates.
fn without_users_items(job: &Job<'_>, generated: TokenStream) -> TokenStream {
    let users: HashSet<String> = job.item.items.iter().filter_map(name).collect();
    if users.is_empty() {
        return generated;
    }
    let Ok(mut file) = syn::parse2::<syn::File>(generated.clone()) else {
        return generated;
    };
    for item in &mut file.items {
        if let Item::Impl(item) = item
            && item.trait_.is_none()
        {
            item.items
                .retain(|member| name(member).is_none_or(|n| !users.contains(&n)));
        }
    }
    file.into_token_stream()
}

/// The name of an impl's function, constant or type.
fn name(member: &ImplItem) -> Option<String> {
    match member {
        ImplItem::Fn(f) => Some(f.sig.ident.unraw().to_string()),
        ImplItem::Const(c) => Some(c.ident.unraw().to_string()),
        ImplItem::Type(t) => Some(t.ident.unraw().to_string()),
        _ => None,
    }
}
