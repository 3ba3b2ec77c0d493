//! A function per step, and each step's policies as data.
//!
//! For each step the macro emits, in a hidden inherent impl of the job:
//! - `__jg_start_<step>(&self, resources, run, (parents..))`: starts the step from its parents'
//!   output cells (the parents' whole outputs, lent to the step's parameters as their declared
//!   types). Every engine runs a step through it; the in-process scheduler calls it the moment the
//!   step is ready.
//! - `__jg_retry_<step>`, `__jg_timeout_<step>`, `__jg_limits_<step>`, `__jg_bound_<step>` for
//!   the options its attribute declares: each attribute expression is emitted once, in its own
//!   function, so a mistake in it is reported once and the start function and
//!   [`Job::policies`](jobgraph::Job) evaluate the same code.
//!
//! The policy expressions run as the step starts, inside the step's failure boundary: a panic
//! there, or a timeout of zero, fails the step instead of the run.

use proc_macro2::TokenStream;
use quote::{ToTokens as _, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::paths::{Paths, local, local1, respan};
use crate::model::{Job, Param, Step};

/// The name of a per-step function: `__jg_<what>_<step>`.
fn step_fn(what: &str, s: &Step<'_>) -> syn::Ident {
    format_ident!("__jg_{}_{}", what, s.name)
}

/// `Self::__jg_start_<step>`: what the scheduler calls to start step `s`.
pub(crate) fn start_fn(s: &Step<'_>) -> syn::Ident {
    step_fn("start", s)
}

/// The hidden inherent impl holding every step's functions.
pub(crate) fn step_fns(job: &Job<'_>, paths: &Paths) -> TokenStream {
    let (impl_generics, _, where_clause) = job.item.generics.split_for_impl();
    let self_ty = &job.item.self_ty;
    let fns = job.steps.iter().map(|s| {
        let policies = policy_fns(job, s, paths);
        let start = start(job, s, paths);
        quote!(#policies #start)
    });
    let codecs = super::durable::codec_fns(job, paths);
    quote! {
        #[doc(hidden)]
        #[allow(clippy::type_complexity, clippy::too_many_arguments, dead_code)]
        impl #impl_generics #self_ty #where_clause {
            #(#fns)*
            #codecs
        }
    }
}

/// `__jg_start_<step>`: starts step `s` from its parents' outputs, or fails it if its policies
/// cannot be used.
fn start(job: &Job<'_>, s: &Step<'_>, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let run = local1("run");
    let ctx = local1("ctx");
    let elem = local1("elem");
    let res = local1("res");
    let step_enum = job.step_enum();
    let method = s.ident;
    let variant = &s.variant;
    let out_ty = &s.output.ty;
    let name = start_fn(s);

    // One cell per parent the step takes, in parameter order, as one tuple: the parent's whole
    // output, read from its cell here.
    let mut cell_names = Vec::new();
    let mut cell_types = Vec::new();
    let mut gets = Vec::new();
    // `let __jg_inJ = <parent J's output, lent as the parameter's type>;`; the attempt closure
    // captures these references.
    let mut inputs = Vec::new();
    let mut elements = None;
    let args: Vec<TokenStream> = s
        .params
        .iter()
        .enumerate()
        .map(|(j, param)| match param {
            Param::Parent { name, ty } => {
                let parent = job.step_index(name).expect("validated parent");
                let given = local("p", j);
                let cell = local("s", j);
                let parent_ty = &job.steps[parent].output.ty;
                cell_types.push(quote!(&'__jg #p::OutputCell<#parent_ty>));
                gets.push(quote!(let #given = #p::OutputCell::get(#cell);));
                cell_names.push(cell);
                // Spanned on the user's parameter type, the parent's output type too: a mismatch
                // is reported on the parameter.
                let span = ty.span();
                let out = respan(parent_ty.to_token_stream(), span);
                let p_at = paths.private_at(span);
                if s.for_each.as_ref().is_some_and(|f| f.param == **name) {
                    // This parameter takes one element of the parent's output: the step runs
                    // once per element.
                    elements = Some(quote_spanned!(span=> #p_at::elements::<#out>(#given)));
                    quote_spanned!(span=> #p_at::element::<_, #ty>(#elem))
                } else {
                    let input = local("in", j);
                    inputs.push(
                        quote_spanned!(span=> let #input = #p_at::parent::<#out, #ty>(#given);),
                    );
                    input.into_token_stream()
                }
            }
            Param::Context(_) => quote!(&#ctx),
            Param::Resources(_) => res.to_token_stream(),
            Param::Unsupported(_) => unreachable!("validated parameters"),
        })
        .collect();

    // A step that takes no context is given none: building one costs more than a no-op step.
    let takes_context = s.params.iter().any(|p| matches!(p, Param::Context(_)));
    let ctx_ty = if takes_context {
        quote!(#p::StepContext)
    } else {
        quote!(#p::NoContext)
    };
    // A step that borrows no context is its method's own future, its output mapped into the
    // scheduler's result: no `async` block around it, so one state machine less per step.
    let direct = quote!(Self::#method(self, #(#args),*));
    let call = quote!(#direct.await);
    let result = if s.output.fallible {
        // Spanned on the `E` of `Result<T, E>`: an error type that is not an `Error` is
        // reported there.
        let span = s.output.error_span.unwrap_or_else(|| s.ident.span());
        let p_at = paths.private_at(span);
        let out = proc_macro2::Ident::new("__jg_out", span);
        quote_spanned!(span=> { let #out = #call; #p_at::StepResult::into_step_result(#out) })
    } else {
        quote!(#p::infallible(#call))
    };

    let PolicyCalls {
        retry,
        timeout,
        limits,
        bound,
    } = PolicyCalls::new(s, paths);
    let retry = retry
        .map(|retry| quote!(#p::Some(#retry)))
        .unwrap_or_else(|| quote!(#p::None::<#p::NoRetry>));
    let encode = super::durable::encode_arg(job, s, paths);
    let started = match (&s.for_each, elements) {
        (Some(_), Some(elements)) => {
            quote! {
                #p::RunCore::for_each(
                    #run,
                    #step_enum::#variant,
                    #retry,
                    #timeout,
                    #limits,
                    #encode,
                    #bound,
                    #elements,
                    move |#ctx: #ctx_ty, #elem| async move { #result },
                )
            }
        }
        _ => {
            let attempt = if !takes_context && !s.output.fallible {
                quote!(move |_: #ctx_ty| #p::Infallible::new(#direct))
            } else {
                quote!(move |#ctx: #ctx_ty| async move { #result })
            };
            quote! {
                #p::RunCore::step(
                    #run,
                    #step_enum::#variant,
                    #retry,
                    #timeout,
                    #limits,
                    #encode,
                    #attempt,
                )
            }
        }
    };
    let doc = format!(
        "Starts step `{}` from its parents' outputs: its future, or why it cannot start.",
        s.name
    );
    // Every start function has the same parameters, so the scheduler can name one by its path
    // alone (the run's resources are `()` when the job declares none).
    let res_param = match &job.resources {
        Some(ty) => quote!(#res: &'__jg #ty),
        None => quote!(_: &'__jg ()),
    };
    quote! {
        #[doc = #doc]
        #[inline]
        fn #name<'__jg>(
            &'__jg self,
            #res_param,
            #run: &'__jg #p::RunCore<#step_enum>,
            (#(#cell_names,)*): (#(#cell_types,)*),
        ) -> #p::Result<
            #p::StepFuture<
                impl #p::Future<Output = #p::Result<#out_ty, #p::BoxError>> + '__jg,
                impl #p::Future<Output = #p::Result<#out_ty, #p::StepError>> + #p::Unpin + '__jg,
            >,
            #p::StepError,
        > {
            #(#gets)*
            #(#inputs)*
            #p::Ok(#started)
        }
    }
}

/// The functions evaluating the options step `s` declares, each expression once.
fn policy_fns(job: &Job<'_>, s: &Step<'_>, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let mut fns = TokenStream::new();
    // Each return type is spanned on the user's expression: a value of the wrong type is
    // reported there, once.
    if let Some(expr) = &s.retry {
        let f = step_fn("retry", s);
        let p_at = paths.private_at(expr.span());
        fns.extend(quote_spanned! {expr.span()=>
            #[inline]
            fn #f(&self) -> impl #p_at::RetryPolicy {
                #expr
            }
        });
    }
    if let Some(expr) = &s.timeout {
        let f = step_fn("timeout", s);
        let p_at = paths.private_at(expr.span());
        fns.extend(quote_spanned! {expr.span()=>
            #[inline]
            fn #f(&self) -> #p_at::Duration {
                #expr
            }
        });
    }
    // `&self`, though constants cannot use it: `self.n` is then reported as a value that is not
    // constant, not as a `self` missing.
    if s.concurrency.is_some() || s.rate.is_some() {
        let f = step_fn("limits", s);
        let limits = limits(job, s, paths);
        fns.extend(quote! {
            #[inline]
            fn #f(&self) -> &'static #p::StepLimits {
                #limits
            }
        });
    }
    if let Some(expr) = s.for_each.as_ref().and_then(|f| f.concurrency.as_ref()) {
        let f = step_fn("bound", s);
        let message = format!(
            "`for_each(.., concurrency = ..)` of step `{}` is 0: no element could run; give at least 1",
            s.name
        );
        let p_at = paths.private_at(expr.span());
        let check = quote_spanned! {expr.span()=> {
            let value: #p_at::u32 = #expr;
            if value == 0 {
                #p_at::panic!(#message);
            }
            value
        }};
        let bound = constant(job, quote!(#p::u32), check, &[expr], quote!());
        fns.extend(quote! {
            #[inline]
            fn #f(&self) -> #p::Option<#p::u32> {
                #p::Some(#bound)
            }
        });
    }
    fns
}

/// The calls that evaluate a step's policies (through its policy functions), as the start
/// function and `Job::policies` both use them.
struct PolicyCalls {
    /// The retry policy, if the step declares one.
    retry: Option<TokenStream>,
    /// `Option<Duration>`, a zero timeout returned as the step's error with `?`.
    timeout: TokenStream,
    /// `&'static StepLimits`.
    limits: TokenStream,
    /// `Option<u32>`: the `for_each` bound.
    bound: TokenStream,
}

impl PolicyCalls {
    fn new(s: &Step<'_>, paths: &Paths) -> Self {
        let p = &paths.private;
        let call = |what: &str| {
            let f = step_fn(what, s);
            quote!(Self::#f(self))
        };
        PolicyCalls {
            retry: s.retry.as_ref().map(|_| call("retry")),
            timeout: match &s.timeout {
                Some(_) => {
                    let timeout = call("timeout");
                    quote!(#p::Some(#p::timeout(#timeout)?))
                }
                None => quote!(#p::None),
            },
            limits: match s.concurrency.is_some() || s.rate.is_some() {
                true => call("limits"),
                false => quote!(&#p::StepLimits::NONE),
            },
            bound: match s.for_each.as_ref().and_then(|f| f.concurrency.as_ref()) {
                Some(_) => call("bound"),
                None => quote!(#p::None),
            },
        }
    }
}

/// The body of `Job::policies`: each step's options as data.
pub(crate) fn policies_body(job: &Job<'_>, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let step_enum = job.step_enum();
    let step = local1("step");
    let arms = job.steps.iter().map(|s| {
        let variant = &s.variant;
        let PolicyCalls {
            retry,
            timeout,
            limits,
            bound,
        } = PolicyCalls::new(s, paths);
        let retry = retry
            .map(|retry| quote!(#p::Some(#p::shared_retry(#retry))))
            .unwrap_or_else(|| quote!(#p::None));
        quote! {
            #step_enum::#variant => #p::Ok(#p::step_policies(#retry, #timeout, #limits, #bound)),
        }
    });
    quote! {
        #p::policies(|| match #step { #(#arms)* })
    }
}

/// The step's `concurrency`, `rate` and `burst`, as a `&'static StepLimits` evaluated at compile
/// time. An inline `const` (not a `const` item) so the values may use `Self::X` and the impl's
/// generics; a constant that is zero fails with a message naming the step, at the user's value.
fn limits(job: &Job<'_>, s: &Step<'_>, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let positive = |expr: &syn::Expr, option: &str| {
        let message = format!("`{option}` of step `{}` is 0: give at least 1", s.name);
        let p_at = paths.private_at(expr.span());
        quote_spanned!(expr.span()=> {
            let value: #p_at::u32 = #expr;
            if value == 0 {
                #p_at::panic!(#message);
            }
            value
        })
    };
    let mut limits = quote!(#p::StepLimits::NONE);
    if let Some(n) = &s.concurrency {
        let n = positive(n, "concurrency");
        limits = quote!(#p::StepLimits::with_concurrency(#limits, #n));
    }
    if let Some(rate) = &s.rate {
        let (count, secs) = (rate.count, rate.period_secs);
        let mut value = quote!(#p::Rate::new(#count, #p::Duration::from_secs(#secs)));
        if let Some(burst) = rate.burst {
            value = quote!(#p::Rate::burst(#value, #burst));
        }
        if let Some(burst) = &s.burst {
            let burst = positive(burst, "burst");
            value = quote!(#p::Rate::burst(#value, #burst));
        }
        limits = quote!(#p::StepLimits::with_rate(#limits, #value));
    }
    let exprs: Vec<&syn::Expr> = [&s.concurrency, &s.burst].into_iter().flatten().collect();
    constant(job, quote!(#p::StepLimits), limits, &exprs, quote!(&))
}

/// `value`, of type `ty`, evaluated at compile time, after `prefix` (`&` for a `&'static`).
///
/// A `const` item is evaluated by `cargo check`; an inline `const` only when the function is
/// compiled, but it alone can see `Self` and the impl's generics: the item unless one of `exprs`
/// (the user's expressions in `value`) needs them.
fn constant(
    job: &Job<'_>,
    ty: TokenStream,
    value: TokenStream,
    exprs: &[&syn::Expr],
    prefix: TokenStream,
) -> TokenStream {
    let mentions_self = exprs
        .iter()
        .any(|expr| mentions(expr.to_token_stream(), "Self"));
    if job.item.generics.params.is_empty() && !mentions_self {
        // Spanned on the user's expression: rustc's notes on a constant that failed, or that
        // cannot use a value, point there.
        let span = exprs
            .first()
            .map_or_else(proc_macro2::Span::call_site, |e| e.span());
        let prefix = respan(prefix, span);
        quote_spanned!(span=> {
            const __JG_VALUE: #ty = #value;
            #prefix __JG_VALUE
        })
    } else {
        quote!(#prefix const { #value })
    }
}

/// True if `tokens` contain the identifier `name` at any depth.
fn mentions(tokens: TokenStream, name: &str) -> bool {
    tokens.into_iter().any(|tree| match tree {
        proc_macro2::TokenTree::Ident(ident) => ident == name,
        proc_macro2::TokenTree::Group(group) => mentions(group.stream(), name),
        _ => false,
    })
}
