//! Code generation, from a validated model: the user's impl (without the macro's attributes), the
//! step enum, the outputs struct, the `Job` impl and the inherent items with the scheduler.

mod dot;
mod items;
mod paths;
mod scheduler;

use proc_macro2::TokenStream;
use quote::quote;
use syn::{ImplItem, ItemImpl};

use crate::model::{Job, is_step_attr};
use crate::validate::Graph;

/// The user's impl with the `#[step]` attributes removed: what is emitted in every case, so the
/// rest of the crate keeps compiling even when the job has errors.
pub(crate) fn user_impl(item: &ItemImpl) -> ItemImpl {
    let mut item = item.clone();
    for member in &mut item.items {
        if let ImplItem::Fn(f) = member {
            f.attrs.retain(|a| !is_step_attr(a));
        }
    }
    item
}

/// Everything `#[job]` adds next to the user's impl.
pub(crate) fn generate(job: &Job<'_>, graph: &Graph) -> TokenStream {
    let paths = paths::Paths::new(job);
    let step_enum = items::step_enum(job, &paths);
    let outputs = items::outputs_struct(job, &paths);
    let job_impl = items::job_impl(job, graph, &paths);
    let run = scheduler::run_method(job, graph, &paths);
    let (impl_generics, _, where_clause) = job.item.generics.split_for_impl();
    let self_ty = &job.item.self_ty;
    quote! {
        #step_enum
        #outputs
        #job_impl
        impl #impl_generics #self_ty #where_clause {
            #run
        }
    }
}
