//! `#[job(durable)]`: the job's value and every step's output are stored.
//!
//! Each stored type gets one codec function, `__jg_codec_<step>` (and `DurableJob::__input` for
//! the job's value), spanned on the user's type: a type that is not `Serialize` and
//! `Deserialize` is reported there, once. The per-step start functions encode outputs with it;
//! `DurableJob::__decode` decodes a stored run's outputs with it.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::paths::Paths;
use crate::model::{Job, Step};

/// `__jg_codec_<step>`: how step `s`'s output is stored.
pub(crate) fn codec_fn(s: &Step<'_>) -> syn::Ident {
    format_ident!("__jg_codec_{}", s.name)
}

/// The codec functions of a durable job's outputs (nothing for other jobs).
pub(crate) fn codec_fns(job: &Job<'_>, paths: &Paths) -> TokenStream {
    if job.durable.is_none() {
        return TokenStream::new();
    }
    let fns = job.steps.iter().map(|s| {
        let f = codec_fn(s);
        // Spanned on the step's return type: the output that cannot be stored is named there.
        let span = match &s.method.sig.output {
            syn::ReturnType::Type(_, ty) => ty.span(),
            syn::ReturnType::Default => s.ident.span(),
        };
        let p_at = paths.private_at(span);
        // A `for_each` step's elements are stored one by one: its codec is its element's, with
        // the `Vec`'s beside it.
        match &s.output.element {
            Some(element) => quote_spanned! {span=>
                #[inline]
                fn #f() -> #p_at::ElementsCodec<#element> {
                    #p_at::elements_codec::<#element>()
                }
            },
            None => {
                let ty = &s.output.ty;
                quote_spanned! {span=>
                    #[inline]
                    fn #f() -> #p_at::Codec<#ty> {
                        #p_at::codec::<#ty>()
                    }
                }
            }
        }
    });
    quote!(#(#fns)*)
}

/// The codec argument of a step's start in a durable job: its codec's `encode` (for a
/// `for_each` step, its elements' codec).
pub(crate) fn encode_arg(job: &Job<'_>, s: &Step<'_>, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    match (&job.durable, &s.output.element) {
        (Some(_), Some(_)) => {
            let f = codec_fn(s);
            quote!(#p::Some(Self::#f()))
        }
        (Some(_), None) => {
            let f = codec_fn(s);
            quote!(#p::Some(Self::#f().encode))
        }
        (None, _) => quote!(#p::None),
    }
}

/// `impl DurableJob for Foo`.
pub(crate) fn durable_impl(job: &Job<'_>, paths: &Paths) -> TokenStream {
    let Some(option) = &job.durable else {
        return TokenStream::new();
    };
    let p = &paths.private;
    let (impl_generics, ty_generics, where_clause) = job.item.generics.split_for_impl();
    let self_ty = &job.item.self_ty;
    let partial = job.partial_struct();
    let run = format_ident!("__jg_run");
    let fields = job.steps.iter().map(|s| {
        let ident = s.ident;
        let name = &s.name;
        let f = codec_fn(s);
        let codec = match s.output.element {
            Some(_) => quote!(Self::#f().all),
            None => quote!(Self::#f()),
        };
        quote!(#ident: #p::decode(#run, #name, #codec)?,)
    });
    let step_enum = job.step_enum();
    let partial_param = format_ident!("__jg_partial");
    let step_param = format_ident!("__jg_step");
    let encodes = job.steps.iter().map(|s| {
        let ident = s.ident;
        let variant = &s.variant;
        let f = codec_fn(s);
        let encode = match s.output.element {
            Some(_) => quote!(Self::#f().all.encode),
            None => quote!(Self::#f().encode),
        };
        quote!(#step_enum::#variant => #p::encode(&#partial_param.#ident, #encode),)
    });
    let marker =
        (!job.item.generics.params.is_empty()).then(|| quote!(__jobgraph_marker: #p::PhantomData,));
    // The job's value is the run's input: spanned on the impl's type, with the option.
    let span = self_ty.span();
    let p_at = paths.private_at(span);
    let input = quote_spanned! {span=>
        fn __input() -> #p_at::Codec<Self> {
            #p_at::codec::<Self>()
        }
    };
    let _ = option;
    quote! {
        impl #impl_generics #p::DurableJob for #self_ty #where_clause {
            #input

            fn __decode(
                #run: &#p::StoredRun,
            ) -> #p::Result<#partial #ty_generics, #p::DecodeError> {
                #p::Ok(#partial {
                    #(#fields)*
                    #marker
                })
            }

            fn __encode(
                #partial_param: &#partial #ty_generics,
                #step_param: #step_enum,
            ) -> #p::Result<#p::Option<#p::String>, #p::JsonError> {
                match #step_param {
                    #(#encodes)*
                }
            }
        }
    }
}
