//! Every path the generated code names, in one place: through the runtime's `__private` module,
//! so nothing in the user's scope can shadow what the expansion relies on.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::Ident;

use crate::model::Job;

pub(crate) struct Paths {
    /// `::jobgraph::__private`, or the `crate = ..` path's.
    pub(crate) private: TokenStream,
}

impl Paths {
    pub(crate) fn new(job: &Job<'_>) -> Self {
        let krate = &job.krate;
        Paths {
            private: quote!(#krate::__private),
        }
    }
}

/// A generated local: `__jg_<name><index>`, hygienic so it can clash with no user name.
pub(crate) fn local(name: &str, index: usize) -> Ident {
    format_ident!("__jg_{}{}", name, index, span = Span::mixed_site())
}

/// A generated local without an index.
pub(crate) fn local1(name: &str) -> Ident {
    format_ident!("__jg_{}", name, span = Span::mixed_site())
}
