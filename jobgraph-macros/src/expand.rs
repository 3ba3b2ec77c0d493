//! The pipeline: parse -> model -> validate -> codegen, or every error, the user's impl and the
//! fallback items that keep the rest of the crate compiling.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{Item, ItemImpl};

use crate::codegen;
use crate::error::Ctxt;
use crate::model::Job;
use crate::{parse, validate};

/// Expands `#[job(args)] input`.
pub(crate) fn job(args: TokenStream, input: TokenStream) -> TokenStream {
    let item: ItemImpl = match syn::parse2::<Item>(input.clone()) {
        Ok(Item::Impl(item)) => item,
        Ok(other) => {
            let error = not_an_impl(&other).to_compile_error();
            return quote!(#error #input);
        }
        // Not an item at all: rustc reports the syntax error itself.
        Err(_) => return input,
    };
    let mut cx = Ctxt::default();
    let names_crate = names_crate(&args);
    let args = parse::job_args(args, &mut cx);
    let model = Job::from_syn(&item, args, &mut cx);
    let graph = model.as_ref().and_then(|job| validate::job(job, &mut cx));
    let stripped = codegen::user_impl(&item);
    match (cx.check(), model, graph) {
        (Ok(()), Some(job), Some(graph)) => {
            let generated = codegen::generate(&job, &graph);
            quote!(#stripped #generated)
        }
        (Err(errors), model, _) => {
            // A `crate = ..` the errors left unread: the fallback's paths to `::jobgraph` could
            // fail to resolve at every use, so there is none.
            let fallback = model
                .filter(|job| job.krate.is_some() || !names_crate)
                .map(|job| codegen::fallback(&job));
            quote!(#errors #stripped #fallback)
        }
        (Ok(()), ..) => unreachable!("validation failed without reporting an error"),
    }
}

/// True if the `#[job(..)]` arguments name the `crate` option, read or not.
fn names_crate(args: &TokenStream) -> bool {
    args.clone()
        .into_iter()
        .any(|token| matches!(token, proc_macro2::TokenTree::Ident(ident) if ident == "crate"))
}

/// The error for `#[job]` on an item other than an `impl`, on the item's name when it has one.
fn not_an_impl(item: &Item) -> syn::Error {
    let named = |kind: &str, ident: &syn::Ident| {
        syn::Error::new(
            ident.span(),
            format!(
                "`#[job]` goes on the `impl` block of a type, not on a {kind}: \
                 `#[job] impl MyJob {{ #[step] async fn .. }}`"
            ),
        )
    };
    match item {
        Item::Struct(s) => syn::Error::new(
            s.ident.span(),
            format!(
                "`#[job]` goes on `impl {} {{ .. }}`, the block with the steps, not on the struct",
                s.ident
            ),
        ),
        Item::Enum(e) => named("enum", &e.ident),
        Item::Fn(f) => named("function", &f.sig.ident),
        Item::Trait(t) => named("trait", &t.ident),
        Item::Mod(m) => named("module", &m.ident),
        _ => syn::Error::new(
            proc_macro2::Span::call_site(),
            "`#[job]` goes on the `impl` block of a type: `#[job] impl MyJob { #[step] async fn .. }`",
        ),
    }
}
