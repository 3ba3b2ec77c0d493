//! The `#[job]` attribute of [jobgraph](https://docs.rs/jobgraph). Use it through that crate:
//! `jobgraph::job`. Its documentation lives there.

mod codegen;
mod error;
mod expand;
mod model;
mod parse;
mod validate;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Turns an inherent `impl` block into a compile-time checked job graph.
///
/// See the [`jobgraph` crate documentation](https://docs.rs/jobgraph) for the DSL, the generated
/// items and the checks.
#[proc_macro_attribute]
pub fn job(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::job(args.into(), input.into()).into()
}
