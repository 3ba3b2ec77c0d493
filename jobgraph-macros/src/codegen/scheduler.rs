//! The scheduler: the body of `Job::__run`, generated per job from masks known at compile time.
//!
//! The run future owns a slot per step's output and a pinned slot per step's future, so nothing is
//! boxed or allocated per step. Steps are numbered by their position in a topological order, and
//! the scheduler keeps three bitmasks: ready (dependencies completed, not started), running and
//! done. Each poll visits only the ready and running steps, lowest position first: a ready step
//! is started and polled, a running one is polled, and a step that completes marks its children
//! ready. Children come later in the order, so a step starts in the very poll its last parent
//! completes in, never at a level barrier, and a poll costs what the running steps cost, not what
//! the whole graph does.
//!
//! Every call is fully qualified (`Sched::take_ready(&mut s, ..)`, not `s.take_ready(..)`), so no
//! trait of the user's in scope can take a method call over.

use proc_macro2::TokenStream;
use quote::{ToTokens as _, quote, quote_spanned};
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
    let waker = local1("waker");
    let graph_const = quote::format_ident!("__JG_GRAPH", span = proc_macro2::Span::mixed_site());
    let slot = |i: usize| local("slot", i);
    let fut = |i: usize| local("fut", i);

    let slot_decls = job.steps.iter().enumerate().map(|(i, s)| {
        let slot = slot(i);
        let ty = &s.output.ty;
        quote!(let #slot: #p::Slot<#ty> = #p::Slot::new();)
    });
    let starters: Vec<Starter> = job
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| starter(job, i, s, paths))
        .collect();
    let starter_decls = starters.iter().map(|s| &s.decls);

    // Positions in the topological order.
    let mut position = vec![0; n];
    for (k, &i) in graph.topo.iter().enumerate() {
        position[i] = k;
    }
    let mask = |positions: &mut dyn Iterator<Item = usize>| {
        let mut mask = vec![0u64; words];
        for k in positions {
            mask[k / 64] |= 1 << (k % 64);
        }
        quote!(#p::Mask([#(#mask),*]))
    };
    let deps = graph
        .topo
        .iter()
        .map(|&i| mask(&mut graph.deps[i].iter().map(|&d| position[d])));
    let children = graph.topo.iter().map(|&i| {
        mask(
            &mut (0..n)
                .filter(|&c| graph.deps[c].contains(&i))
                .map(|c| position[c]),
        )
    });
    // A step's dependencies hold no step twice (naming one twice is an error), so a child that
    // waits for `i` alone has exactly `[i]`.
    let sole_children = graph.topo.iter().map(|&i| {
        mask(
            &mut (0..n)
                .filter(|&c| graph.deps[c] == [i])
                .map(|c| position[c]),
        )
    });

    let arms = graph.topo.iter().enumerate().map(|(k, &i)| {
        let variant = &job.steps[i].variant;
        let (slot, start, fut) = (slot(i), &starters[i].start, fut(i));
        quote! {
            #k => #p::turn(
                #run,
                &mut #sched,
                &#graph_const,
                #k,
                #step_enum::#variant,
                #p::Pin::as_mut(&mut #fut),
                &|| #start,
                &#slot,
                &mut #failures,
                #cx,
            ),
        }
    });

    let cancel_running = job.steps.iter().enumerate().map(|(i, s)| {
        let variant = &s.variant;
        let fut = fut(i);
        let k = position[i];
        quote! {
            if #p::Sched::is_running(&#sched, #k) {
                #p::Pin::set(&mut #fut, #p::None);
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
            const #graph_const: #p::Graph<#words, #n> = #p::Graph {
                deps: [#(#deps),*],
                children: [#(#children),*],
                sole_children: [#(#sole_children),*],
            };
            let mut #sched = #p::RunCore::sched(#run, &#graph_const);
            let mut #stop = #p::RunCore::stop(#run);
            #(#starter_decls)*
            // The passes run in this async block itself, not in a `poll_fn` closure: a closure
            // would capture a pointer per step's slot, start and future and load them all on
            // every poll, while the block reaches its locals where they are.
            let mut #waker = #p::waker().await;
            let __jg_stopped = 'stop: loop {
                {
                    let mut #cx = #p::Context::from_waker(&#waker);
                    let #cx = &mut #cx;
                    if #p::Stop::cancelled(&mut #stop, #cx) {
                        break 'stop true;
                    }
                    loop {
                        let mut __jg_from = 0;
                        while let #p::Some(__jg_k) = #p::Sched::next(&#sched, __jg_from) {
                            match __jg_k {
                                #(#arms)*
                                _ => #p::unreachable_step(),
                            }
                            __jg_from = __jg_k + 1;
                        }
                        if #p::Stop::failed_fast(&#stop, &#failures) {
                            break 'stop true;
                        }
                        // A sequential run starts one step per pass: go round again when that
                        // step completed at once and others are ready.
                        if !#p::Sched::more_to_start(&#sched) {
                            break;
                        }
                    }
                    if #p::Sched::idle(&#sched) {
                        break 'stop false;
                    }
                }
                #p::Suspend::new(&mut #waker).await;
                #p::RunCore::woken(#run);
            };
            if __jg_stopped {
                #(#cancel_running)*
            }
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

/// What starts one step.
struct Starter {
    /// Declares the pinned slot the step's future lives in (its type is inferred from the
    /// step's turn) and the step's retry policy.
    decls: TokenStream,
    /// Starts the step (its turn evaluates it once, when the step's dependencies completed):
    /// borrows the parents' outputs from their slots and returns the step's future.
    ///
    /// Evaluated in the scheduler's pass, so no reference to a slot (not `Sync`) lives across
    /// an `.await`: the step's future holds only the outputs it borrowed.
    start: TokenStream,
}

/// What starts step `i`: see [`Starter`].
fn starter(job: &Job<'_>, i: usize, s: &Step<'_>, paths: &Paths) -> Starter {
    let p = &paths.private;
    let run = local1("run");
    let ctx = local1("ctx");
    let step_enum = job.step_enum();
    let method = s.ident;
    let variant = &s.variant;
    let elem = local1("elem");
    let mut elements = None;
    // `let __jg_inJ = <parent J's output, lent as the parameter's type>;`, evaluated as the step
    // starts; the attempt closure captures these references.
    let mut inputs = Vec::new();
    let args = s.params.iter().enumerate().map(|(j, param)| match param {
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
            if s.for_each.as_ref().is_some_and(|f| f.param == **name) {
                // This parameter takes one element of the parent's output: the step runs once
                // per element.
                elements = Some(quote_spanned!(span=> #p_at::elements::<#out>(&#parent_slot)));
                quote_spanned!(span=> #p_at::element::<_, #ty>(#elem))
            } else {
                let input = local("in", j);
                inputs.push(
                    quote_spanned!(span=> let #input = #p_at::parent::<#out, #ty>(&#parent_slot);),
                );
                input.into_token_stream()
            }
        }
        Param::Context(_) => quote!(&#ctx),
        Param::Unsupported(_) => unreachable!("validated parameters"),
    });
    let args: Vec<TokenStream> = args.collect();
    let inputs = &inputs;
    // A step that takes no context is given none: building one costs more than a no-op step.
    let takes_context = s
        .params
        .iter()
        .any(|param| matches!(param, Param::Context(_)));
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
    let limits = limits(job, s, paths);
    let fut = local("fut", i);
    let call = match (&s.for_each, elements) {
        (Some(for_each), Some(elements)) => {
            let bound = match &for_each.concurrency {
                Some(expr) => {
                    let message = format!(
                        "`for_each(.., concurrency = ..)` of step `{}` is 0: no element could run; give at least 1",
                        s.name
                    );
                    quote_spanned!(expr.span()=> {
                        const __JG_BOUND: u32 = #expr;
                        const _: () = ::core::assert!(__JG_BOUND > 0, #message);
                        #p::Some(__JG_BOUND)
                    })
                }
                None => quote!(#p::None),
            };
            quote! {
                #p::RunCore::for_each(
                    #run,
                    #step_enum::#variant,
                    #retry,
                    #timeout,
                    #limits,
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
                    #attempt,
                )
            }
        }
    };
    Starter {
        decls: quote! {
            #retry_decl
            let mut #fut = #p::pin!(#p::None);
        },
        start: quote!({
            #(#inputs)*
            #call
        }),
    }
}

/// The step's `concurrency`, `rate` and `burst`, as a `&'static StepLimits` evaluated at compile
/// time. An inline `const` (not a `const` item) so the values may use `Self::X` and the impl's
/// generics; a constant that is zero fails with a message naming the step, at the user's value.
fn limits(job: &Job<'_>, s: &Step<'_>, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    if s.concurrency.is_none() && s.rate.is_none() {
        return quote!(&#p::StepLimits::NONE);
    }
    let positive = |expr: &syn::Expr, option: &str| {
        let message = format!("`{option}` of step `{}` is 0: give at least 1", s.name);
        quote_spanned!(expr.span()=> {
            let value: u32 = #expr;
            if value == 0 {
                ::core::panic!(#message);
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
    // A `const` item is evaluated by `cargo check`; an inline `const` only when the function is
    // compiled, but it alone can see `Self` and the impl's generics.
    let mentions_self = [&s.concurrency, &s.burst]
        .into_iter()
        .flatten()
        .any(|expr| mentions(quote::ToTokens::to_token_stream(expr), "Self"));
    if job.item.generics.params.is_empty() && !mentions_self {
        quote!({
            const __JG_STEP_LIMITS: #p::StepLimits = #limits;
            &__JG_STEP_LIMITS
        })
    } else {
        quote!(&const { #limits })
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
