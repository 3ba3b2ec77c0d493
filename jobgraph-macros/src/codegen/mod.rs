//! Code generation, from a validated model: the user's impl (without the macro's attributes), the
//! step enum, the outputs and partial outputs structs, the `Job` impl and the inherent items with
//! the scheduler, and a function per step; for a job with errors, the items that keep the rest of
//! the crate compiling (`fallback`).

mod checks;
mod dot;
mod durable;
mod fallback;
mod items;
mod paths;
mod scheduler;
mod steps;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt as _;
use syn::{ImplItem, ItemImpl};

use crate::model::{Job, is_step_attr};
use crate::validate::Graph;

pub(crate) use fallback::fallback;

/// The user's impl with the `#[step]` attributes removed: what is emitted in every case, so the
/// rest of the crate keeps compiling even when the job has errors.
///
/// A step defined a second time is left out: `validate` reports it once, and rustc would report it
/// again as a duplicate definition.
pub(crate) fn user_impl(item: &ItemImpl) -> ItemImpl {
    let mut item = item.clone();
    let mut steps: Vec<String> = Vec::new();
    item.items.retain(|member| match member {
        ImplItem::Fn(f) if f.attrs.iter().any(is_step_attr) => {
            let name = f.sig.ident.unraw().to_string();
            let again = steps.contains(&name);
            steps.push(name);
            !again
        }
        _ => true,
    });
    for member in &mut item.items {
        if let ImplItem::Fn(f) = member
            && f.attrs.iter().any(is_step_attr)
        {
            f.attrs.retain(|a| !is_step_attr(a));
            // The graph dictates a step's parameters: a parent's `&Vec<T>` output, many
            // parents. Clippy's advice on them could not be followed.
            f.attrs.push(syn::parse_quote!(
                #[allow(clippy::ptr_arg, clippy::borrowed_box, clippy::too_many_arguments)]
            ));
        }
    }
    item
}

/// Everything `#[job]` adds next to the user's impl.
pub(crate) fn generate(job: &Job<'_>, graph: &Graph) -> TokenStream {
    let paths = paths::Paths::new(job);
    let step_enum = items::step_enum(job, Some(graph), &paths);
    let outputs = items::outputs_struct(job, &paths);
    let partial = items::partial_struct(job, &paths);
    let job_impl = items::job_impl(job, Some(graph), &paths);
    let step_fns = steps::step_fns(job, &paths);
    let chunk_fns = scheduler::chunk_fns(job, graph, &paths);
    let durable = durable::durable_impl(job, &paths);
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
        #step_fns
        #chunk_fns
        #durable
        #checks
    }
}
