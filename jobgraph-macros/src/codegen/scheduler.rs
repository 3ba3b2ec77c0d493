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
use quote::quote;

use super::paths::{Paths, local, local1};
use super::steps::start_fn;
use crate::model::{Job, Param};
use crate::validate::Graph;

pub(crate) fn run_body(job: &Job<'_>, graph: &Graph, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let n = job.steps.len();
    let words = n.div_ceil(64);
    let step_enum = job.step_enum();
    let partial = job.partial_struct();

    let run = local1("run");
    // The run's resources, given to each step's start function when the job declares them.
    let resources = job.resources.as_ref().map(|_| {
        let res = local1("res");
        quote!(#res,)
    });
    let seed = local1("seed");
    let sched = local1("sched");
    let stop = local1("stop");
    let failures = local1("failures");
    let cx = local1("cx");
    let waker = local1("waker");
    let graph_const = quote::format_ident!("__JG_GRAPH", span = proc_macro2::Span::mixed_site());
    let slot = |i: usize| local("slot", i);
    let seeded = |i: usize| local("seed", i);
    let fut = |i: usize| local("fut", i);
    let idents: Vec<_> = job.steps.iter().map(|s| s.ident).collect();

    let seeds = (0..n).map(seeded);
    let slot_decls = job.steps.iter().enumerate().map(|(i, s)| {
        let (slot, seeded) = (slot(i), seeded(i));
        let ty = &s.output.ty;
        quote!(let #slot: #p::Slot<#ty> = #p::Slot::seeded(#seeded);)
    });
    let is_set = (0..n).map(|i| {
        let slot = slot(i);
        quote!(#p::Slot::is_set(&#slot))
    });
    let fut_decls = (0..n).map(|i| {
        let fut = fut(i);
        quote!(let mut #fut = #p::pin!(#p::None);)
    });

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
        let s = &job.steps[i];
        let variant = &s.variant;
        let (slot, fut) = (slot(i), fut(i));
        let start = start_fn(s);
        // The step's parents' outputs, borrowed from their slots as the step starts: in the
        // scheduler's pass, so no reference to a slot (not `Sync`) lives across an `.await`.
        let parents = s.params.iter().filter_map(|param| match param {
            Param::Parent { name, .. } => {
                let parent = local("slot", job.step_index(name).expect("validated parent"));
                Some(quote!(#p::Slot::get(&#parent)))
            }
            _ => None,
        });
        quote! {
            #k => #p::turn(
                #run,
                &mut #sched,
                &#graph_const,
                #k,
                #step_enum::#variant,
                #p::Pin::as_mut(&mut #fut),
                &|| Self::#start(self, #resources #run, #(#parents),*),
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
                #p::RunCore::stopped_step(#run, #step_enum::#variant, &mut #failures);
            }
        }
    });

    let fields = job.steps.iter().enumerate().map(|(i, s)| {
        let ident = s.ident;
        let slot = slot(i);
        quote!(#ident: #p::Slot::into_inner(#slot),)
    });
    let marker =
        (!job.item.generics.params.is_empty()).then(|| quote!(__jobgraph_marker: #p::PhantomData,));

    quote! {
        let #partial { #(#idents: #seeds,)* .. } = #seed;
        #(#slot_decls)*
        let mut #failures = #p::Failures::<#step_enum>::new();
        {
            const #graph_const: #p::TopoGraph<#words, #n> = #p::TopoGraph {
                positions: [#(#position),*],
                deps: [#(#deps),*],
                children: [#(#children),*],
                sole_children: [#(#sole_children),*],
            };
            let mut #sched = #p::RunCore::sched(#run, &#graph_const, || [#(#is_set),*]);
            let mut #stop = #p::RunCore::stop(#run);
            #(#fut_decls)*
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
        let __jg_partial = #partial {
            #(#fields)*
            #marker
        };
        match #p::RunCore::end(#run, #failures) {
            #p::Ok(()) => #p::Ok(__jg_partial),
            #p::Err(__jg_error) => #p::Err(#p::JobError::with_partial(__jg_error, __jg_partial)),
        }
    }
}
