//! The scheduler: the body of `Job::__run`, generated per job from masks known at compile time.
//!
//! The run future owns a slot per step's output and a pinned slot per step's future, so nothing is
//! boxed or allocated per step. Each poll walks the steps in topological order: a step whose
//! dependencies have all completed is started, a running step is polled, and a completed step's
//! output is stored for its children, which come later in the same walk. A step therefore starts
//! in the very poll its last parent completes in, never at a level barrier.
//!
//! Every call is fully qualified (`Sched::try_start(&mut s, ..)`, not `s.try_start(..)`), so no
//! trait of the user's in scope can take a method call over.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::paths::{Paths, local, local1, respan};
use crate::model::{Job, Param, Step};
use crate::validate::Graph;

pub(crate) fn run_body(job: &Job<'_>, graph: &Graph, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let n = job.steps.len();
    let words = n.div_ceil(64);
    let step_enum = job.step_enum();
    let outputs = job.outputs_struct();

    let run = local1("run");
    let sched = local1("sched");
    let stop = local1("stop");
    let failures = local1("failures");
    let cx = local1("cx");
    let deps_const = quote::format_ident!("__JG_DEPS", span = proc_macro2::Span::mixed_site());
    let slot = |i: usize| local("slot", i);
    let fut = |i: usize| local("fut", i);

    let slot_decls = job.steps.iter().enumerate().map(|(i, s)| {
        let slot = slot(i);
        let ty = &s.output.ty;
        quote!(let #slot: #p::Slot<#ty> = #p::Slot::new();)
    });
    let slot_refs = (0..n).map(|i| {
        let slot = slot(i);
        quote!(let #slot = &#slot;)
    });
    let starters = job
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| starter(job, i, s, paths));

    let deps = graph.deps.iter().map(|deps| {
        let mut mask = vec![0u64; words];
        for &d in deps {
            mask[d / 64] |= 1 << (d % 64);
        }
        quote!(#p::Mask([#(#mask),*]))
    });

    let walk = graph.topo.iter().map(|&i| {
        let variant = &job.steps[i].variant;
        let (slot, start, fut) = (slot(i), local("start", i), fut(i));
        quote! {
            if #p::Sched::try_start(&mut #sched, #i, &#deps_const[#i]) {
                #p::Pin::set(&mut #fut, #p::Some(#start()));
            }
            if let #p::Some(__jg_f) = #p::Option::as_pin_mut(#p::Pin::as_mut(&mut #fut)) {
                if let #p::Poll::Ready(__jg_r) = #p::Future::poll(__jg_f, #cx) {
                    #p::Pin::set(&mut #fut, #p::None);
                    match __jg_r {
                        #p::Ok(__jg_v) => {
                            #p::Slot::set(#slot, __jg_v);
                            #p::Sched::finish(&mut #sched, #i, true);
                        }
                        #p::Err(__jg_e) => {
                            #p::Sched::finish(&mut #sched, #i, false);
                            #p::Failures::push(&mut #failures, #step_enum::#variant, __jg_e);
                        }
                    }
                }
            }
        }
    });

    let cancel_running = job.steps.iter().enumerate().map(|(i, s)| {
        let variant = &s.variant;
        let fut = fut(i);
        quote! {
            if #p::Option::is_some(&*#fut) {
                #p::Pin::set(&mut #fut, #p::None);
                #p::Sched::finish(&mut #sched, #i, false);
                #p::RunCore::cancelled_step(#run, #step_enum::#variant, &mut #failures);
            }
        }
    });

    let fields = job.steps.iter().enumerate().map(|(i, s)| {
        let ident = s.ident;
        let slot = slot(i);
        quote!(#ident: #p::Slot::take(#slot),)
    });
    let marker =
        (!job.item.generics.params.is_empty()).then(|| quote!(__jobgraph_marker: #p::PhantomData,));

    quote! {
        #(#slot_decls)*
        let mut #failures = #p::Failures::<#step_enum>::new();
        {
            const #deps_const: [#p::Mask<#words>; #n] = [#(#deps),*];
            let mut #sched = #p::RunCore::sched::<#words>(#run);
            let mut #stop = #p::RunCore::stop(#run);
            #(#slot_refs)*
            #(#starters)*
            #p::poll_fn(|#cx: &mut #p::Context<'_>| {
                'stop: {
                    if #p::Stop::cancelled(&mut #stop, #cx) {
                        break 'stop;
                    }
                    #(#walk)*
                    if #p::Stop::failed_fast(&#stop, &#failures) {
                        break 'stop;
                    }
                    return if #p::Sched::idle(&#sched) {
                        #p::Poll::Ready(())
                    } else {
                        #p::Poll::Pending
                    };
                }
                #(#cancel_running)*
                #p::Poll::Ready(())
            })
            .await;
        }
        if let #p::Err(__jg_error) = #p::RunCore::end(#run, #failures) {
            return #p::Err(__jg_error);
        }
        #p::Ok(#outputs {
            #(#fields)*
            #marker
        })
    }
}

/// The closure that starts step `i` (called once, when its dependencies completed) and the pinned
/// slot its future lives in.
fn starter(job: &Job<'_>, i: usize, s: &Step<'_>, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let run = local1("run");
    let ctx = local1("ctx");
    let step_enum = job.step_enum();
    let method = s.ident;
    let variant = &s.variant;
    let args = s.params.iter().map(|param| match param {
        Param::Parent { name, ty } => {
            let parent = job.step_index(name).expect("validated parent");
            let parent_slot = local("slot", parent);
            // Spanned on the user's parameter type, the parent's output type too: a mismatch is
            // reported on the parameter.
            let span = ty.span();
            let out = respan(
                quote::ToTokens::to_token_stream(&job.steps[parent].output.ty),
                span,
            );
            let p_at = paths.private_at(span);
            quote_spanned!(span=> #p_at::parent::<#out, #ty>(#parent_slot))
        }
        Param::Context(_) => quote!(&#ctx),
        Param::Unsupported(_) => unreachable!("validated parameters"),
    });
    let call = quote!(Self::#method(self, #(#args),*).await);
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
    let retry_local = local("retry", i);
    let (retry_decl, retry) = match &s.retry {
        Some(expr) => {
            let span = expr.span();
            let p_at = paths.private_at(span);
            (
                quote_spanned!(span=> let #retry_local = #p_at::retry_policy(#expr);),
                quote!(#p::Some(&#retry_local as &dyn #p::RetryPolicy)),
            )
        }
        None => (quote!(), quote!(#p::None)),
    };
    let timeout = match &s.timeout {
        Some(expr) => {
            let name = &s.name;
            quote!(#p::Some(#p::timeout(#name, #expr)))
        }
        None => quote!(#p::None),
    };
    let start = local("start", i);
    let fut = local("fut", i);
    quote! {
        #retry_decl
        let #start = || #p::RunCore::step(
            #run,
            #step_enum::#variant,
            #retry,
            #timeout,
            move |#ctx: #p::StepContext| async move { #result },
        );
        let mut #fut = #p::pin!(#p::none_of(&#start));
    }
}
