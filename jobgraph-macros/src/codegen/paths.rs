//! Every path the generated code names, in one place: through the runtime's `__private` module,
//! so nothing in the user's scope can shadow what the expansion relies on.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
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

    /// `private`, every token spanned at `span`: for checks whose error must point at the user's
    /// code rather than at the `#[job]` attribute.
    pub(crate) fn private_at(&self, span: Span) -> TokenStream {
        respan(self.private.clone(), span)
    }
}

/// `tokens` with every span set to `span`.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &token {
                let mut new = Group::new(group.delimiter(), respan(group.stream(), span));
                new.set_span(span);
                token = TokenTree::Group(new);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// A generated local: `__jg_<name><index>`, hygienic so it can clash with no user name.
pub(crate) fn local(name: &str, index: usize) -> Ident {
    format_ident!("__jg_{}{}", name, index, span = Span::mixed_site())
}

/// A generated local without an index.
pub(crate) fn local1(name: &str) -> Ident {
    format_ident!("__jg_{}", name, span = Span::mixed_site())
}
