//! Every path the generated code names, in one place: through the runtime's `__private` module,
//! so nothing in the user's scope can shadow what the expansion relies on.

use proc_macro2::{Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote};
use syn::Ident;
use syn::spanned::Spanned as _;

use crate::model::Job;

pub(crate) struct Paths {
    /// `::jobgraph::__private`, or the alias of the `crate = ..` path's (see [`Paths::import`]).
    pub(crate) private: TokenStream,
    /// With `#[job(crate = path)]`: `use path::__private as __jobgraph_private_Foo;`, emitted
    /// once beside the generated items, which name the alias.
    ///
    /// So a wrong path is one error, on the path the user wrote ("unresolved import"), instead
    /// of an error at every use: rustc reports a failed import once and stays silent on the
    /// uses of its name.
    pub(crate) import: Option<TokenStream>,
}

impl Paths {
    pub(crate) fn new(job: &Job<'_>) -> Self {
        let Some(krate) = &job.krate else {
            return Paths {
                private: quote!(::jobgraph::__private),
                import: None,
            };
        };
        let span = krate
            .segments
            .last()
            .map_or_else(|| krate.span(), |s| s.ident.span());
        // Spanned on the path as written: rustc's error is there.
        let alias = Ident::new(&format!("__jobgraph_private_{}", job.ident), span);
        let tree = respan(quote!(#krate::__private as #alias), span);
        Paths {
            import: Some(quote! {
                #[doc(hidden)]
                #[allow(unused_imports)]
                use #tree;
            }),
            private: quote!(#alias),
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
