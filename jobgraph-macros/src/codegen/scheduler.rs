//! The scheduler: `async fn run`, generated per job from masks known at compile time.
//!
//! The run future owns a slot per step's output and a pinned slot per step's future, so nothing is
//! boxed or allocated per step. Each poll walks the steps in topological order: a step whose
//! dependencies have all completed is started, a running step is polled, and a completed step's
//! output is stored for its children, which come later in the same walk. A step therefore starts
//! in the very poll its last parent completes in, never at a level barrier.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::paths::{Paths, local, local1};
use crate::model::{Job, Param};
use crate::validate::Graph;

pub(crate) fn run_method(job: &Job<'_>, graph: &Graph, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let n = job.steps.len();
    let words = n.div_ceil(64);
    let step_enum = job.step_enum();
    let outputs = job.outputs_struct();
    let (_, ty_generics, _) = job.item.generics.split_for_impl();

    let run = local1("run");
    let sched = local1("sched");
    let failures = local1("failures");
    let cx = local1("cx");
    let ctx = local1("ctx");
    let deps_const = quote::format_ident!("__JG_DEPS", span = proc_macro2::Span::mixed_site());
    let slot = |i: usize| local("slot", i);
    let start = |i: usize| local("start", i);
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

    let starters = job.steps.iter().enumerate().map(|(i, s)| {
        let method = s.ident;
        let variant = &s.variant;
        let args = s.params.iter().map(|param| match param {
            Param::Parent { name, .. } => {
                let parent = job.step_index(name).expect("validated parent");
                let parent_slot = slot(parent);
                let ty_span = match param {
                    Param::Parent { ty, .. } => ty.span(),
                    _ => unreachable!(),
                };
                // Spanned on the user's parameter type: a mismatch is reported there.
                quote_spanned!(ty_span=> #p::Slot::get(#parent_slot))
            }
            Param::Context(_) => quote!(&#ctx),
            Param::Unsupported(_) => unreachable!("validated parameters"),
        });
        let call = quote!(Self::#method(self, #(#args),*).await);
        let result = if s.output.fallible {
            let span = s.output.written.map_or_else(|| s.ident.span(), |t| t.span());
            quote_spanned!(span=> #p::StepResult::into_step_result(#call))
        } else {
            quote!(#p::infallible(#call))
        };
        let start = start(i);
        let fut = fut(i);
        quote! {
            let #start = || #run.step(#step_enum::#variant, move |#ctx: #p::StepContext| async move {
                #result
            });
            let mut #fut = #p::pin!(#p::none_of(&#start));
        }
    });

    let deps = graph.deps.iter().map(|deps| {
        let mut mask = vec![0u64; words];
        for &d in deps {
            mask[d / 64] |= 1 << (d % 64);
        }
        quote!(#p::Mask([#(#mask),*]))
    });

    let walk = graph.topo.iter().map(|&i| {
        let variant = &job.steps[i].variant;
        let (slot, start, fut) = (slot(i), start(i), fut(i));
        quote! {
            if #sched.try_start(#i, &#deps_const[#i]) {
                #fut.set(#p::Some(#start()));
            }
            if let #p::Some(__jg_f) = #fut.as_mut().as_pin_mut() {
                if let #p::Poll::Ready(__jg_r) = #p::Future::poll(__jg_f, #cx) {
                    #fut.set(#p::None);
                    match __jg_r {
                        #p::Ok(__jg_v) => {
                            #slot.set(__jg_v);
                            #sched.finish(#i, true);
                        }
                        #p::Err(__jg_e) => {
                            #sched.finish(#i, false);
                            #failures.push(#step_enum::#variant, __jg_e);
                        }
                    }
                }
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
    let doc = format!(
        "Runs the job in the caller's task: each step starts as soon as the steps it waits for \
         have completed.\n\nReturns every step's output, or the [`JobError`]({p_doc}::JobError) \
         naming the step that failed first. Dropping the future cancels every running step.",
        p_doc = quote!(#p)
            .to_string()
            .replace(' ', "")
            .trim_end_matches("::__private")
    );

    quote! {
        #[doc = #doc]
        pub async fn run(&self) -> #p::Result<#outputs #ty_generics, #p::JobError<#step_enum>> {
            let #run = #p::Run::<#step_enum>::new(<Self as #p::Job>::NAME);
            #(#slot_decls)*
            let mut #sched = #p::Sched::<#words>::new();
            let mut #failures = #p::Failures::<#step_enum>::new();
            {
                const #deps_const: [#p::Mask<#words>; #n] = [#(#deps),*];
                let #run = &#run;
                #(#slot_refs)*
                #(#starters)*
                #p::poll_fn(|#cx: &mut #p::Context<'_>| {
                    #(#walk)*
                    if #sched.idle() { #p::Poll::Ready(()) } else { #p::Poll::Pending }
                })
                .await;
            }
            if let #p::Err(__jg_error) = #run.finish(&#sched, #failures) {
                return #p::Err(__jg_error);
            }
            #p::Ok(#outputs {
                #(#fields)*
                #marker
            })
        }
    }
}
