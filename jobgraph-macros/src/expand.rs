//! The pipeline: parse -> model -> validate -> codegen, or the user's impl plus every error.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemImpl;

use crate::codegen;
use crate::error::Ctxt;
use crate::model::Job;
use crate::{parse, validate};

/// Expands `#[job(args)] input`.
pub(crate) fn job(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: ItemImpl = match syn::parse2(input.clone()) {
        Ok(item) => item,
        Err(_) => {
            let error = syn::Error::new(
                proc_macro2::Span::call_site(),
                "`#[job]` goes on an `impl` block: `#[job] impl MyJob { #[step] async fn .. }`",
            )
            .to_compile_error();
            return quote!(#error #input);
        }
    };
    let mut cx = Ctxt::default();
    let args = parse::job_args(args, &mut cx);
    let model = Job::from_syn(&item, args, &mut cx);
    let graph = model.as_ref().and_then(|job| validate::job(job, &mut cx));
    let stripped = codegen::user_impl(&item);
    match (cx.check(), model, graph) {
        (Ok(()), Some(job), Some(graph)) => {
            let generated = codegen::generate(&job, &graph);
            quote!(#stripped #generated)
        }
        (Err(errors), ..) => quote!(#errors #stripped),
        (Ok(()), ..) => unreachable!("validation failed without reporting an error"),
    }
}
