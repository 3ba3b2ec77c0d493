//! The scheduler: the body of `Job::__run`, generated per job from masks known at compile time.
//!
//! The run future owns a cell per step's output and a pinned place per step's future, so nothing
//! is boxed or allocated per step. Steps are numbered by their position in a topological order,
//! and the scheduler keeps three bitmasks: ready (dependencies completed, not started), running
//! and done. Each poll visits only the ready and running steps, lowest position first: a ready
//! step is started and polled, a running one is polled, and a step that completes marks its
//! children ready. Children come later in the order, so a step starts in the very poll its last
//! parent completes in, never at a level barrier, and a poll costs what the running steps cost,
//! not what the whole graph does.
//!
//! A job's compile time grows linearly with its number of steps: nothing rustc checks or
//! compiles grows with the number of steps in two ways at once. With a local per step's future
//! and per cell, held across the block's `.await`s, it grew with the cube: rustc's layout of an
//! `async` block (which `cargo check` computes too, for the `Send` analysis) compares every two
//! such locals at every statement, 54% of `cargo check` of a 300-step chain under `perf`
//! (`StorageConflictVisitor::apply_state`), and borrow checking's liveness of those locals took
//! 13% more; a 1,000-step chain took 708 s to build. So:
//! - the cells are one tuple, and the steps' futures are in chunks of sixteen ([`CHUNK`]
//!   consecutive positions), one pinned local each: the `async` block holds a few locals per
//!   sixteen steps across its `.await`s;
//! - each chunk's turn is a closure of its own, called at once (inlined in a release build),
//!   holding the match over the chunk's steps: the `async` block holds an arm per chunk;
//! - a step's place is typed where it is declared, from its start function's signature
//!   (`jobgraph::__private::unstarted`), and no closure is made per step: the type
//!   checker carries no unknown per step through the body (it checks what is still unknown again
//!   and again, and a closure's captures stay unknown until the end of the body);
//! - the graph's masks are built by a `const fn` from the edges, not written out.
//!
//! Every call is fully qualified (`Sched::take_ready(&mut s, ..)`, not `s.take_ready(..)`), so no
//! trait of the user's in scope can take a method call over.

use proc_macro2::TokenStream;
use quote::quote;

use super::paths::{Paths, local, local1};
use super::steps::start_fn;
use crate::model::{Job, Param};
use crate::validate::Graph;

/// How many steps' futures one chunk of the run's future holds: the places of
/// `jobgraph::__private::Chunk`.
const CHUNK: usize = 16;

pub(crate) fn run_body(job: &Job<'_>, graph: &Graph, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let n = job.steps.len();
    let words = n.div_ceil(64);
    let step_enum = job.step_enum();
    let partial = job.partial_struct();

    let run = local1("run");
    // The run's resources (`&()` when the job declares none), given to each step's start function.
    let res = local1("res");
    let seed = local1("seed");
    let sched = local1("sched");
    let stop = local1("stop");
    let failures = local1("failures");
    let cx = local1("cx");
    let waker = local1("waker");
    let graph_const = quote::format_ident!("__JG_GRAPH", span = proc_macro2::Span::mixed_site());
    let cells = local1("outputs");
    // Step `i`'s output cell: a field of the one tuple of cells.
    let cell = |i: usize| {
        let i = syn::Index::from(i);
        quote!(#cells.#i)
    };
    let seeded = |i: usize| local("seed", i);
    let chunk = |c: usize| local("chunk", c);
    // The place of the future of the step at position `k`, in its chunk's closure.
    let place = |k: usize| local("f", k % CHUNK);
    let chunks = n.div_ceil(CHUNK);
    let idents: Vec<_> = job.steps.iter().map(|s| s.ident).collect();

    let seeds = (0..n).map(seeded);
    let cell_values = job.steps.iter().enumerate().map(|(i, s)| {
        let seeded = seeded(i);
        let ty = &s.output.ty;
        quote!(#p::OutputCell::<#ty>::seeded(#seeded),)
    });
    let is_set = (0..n).map(|i| {
        let cell = cell(i);
        quote!(#p::OutputCell::is_set(&#cell))
    });
    // The start function of the step at position `k`, and its parents' cells.
    let start_of = |k: usize| {
        let s = &job.steps[graph.topo[k]];
        let start = start_fn(s);
        let parents = s.params.iter().filter_map(|param| match param {
            Param::Parent { name, .. } => {
                let parent = cell(job.step_index(name).expect("validated parent"));
                Some(quote!(&#parent,))
            }
            _ => None,
        });
        (quote!(Self::#start), quote!((#(#parents)*)))
    };
    let chunk_decls = (0..chunks).map(|c| {
        let chunk = chunk(c);
        let places = (0..CHUNK).map(|j| {
            if c * CHUNK + j < n {
                let (start, _) = start_of(c * CHUNK + j);
                quote!(#p::unstarted(#start))
            } else {
                quote!(())
            }
        });
        quote!(let mut #chunk = #p::pin!(#p::Chunk::new(#(#places),*));)
    });

    // Positions in the topological order.
    let mut position = vec![0; n];
    for (k, &i) in graph.topo.iter().enumerate() {
        position[i] = k;
    }
    // Each step's dependencies by position, one list after another, and where each list ends.
    let mut dep_positions = Vec::new();
    let dep_ends: Vec<usize> = graph
        .topo
        .iter()
        .map(|&i| {
            dep_positions.extend(graph.deps[i].iter().map(|&d| position[d]));
            dep_positions.len()
        })
        .collect();

    let arm = |k: usize| {
        let i = graph.topo[k];
        let s = &job.steps[i];
        let variant = &s.variant;
        let (own_cell, place) = (cell(i), place(k));
        let (start, parents) = start_of(k);
        quote! {
            #k => #p::turn(
                self,
                #res,
                #run,
                &mut *#sched,
                &#graph_const,
                #k,
                #step_enum::#variant,
                #p::Pin::as_mut(&mut #place),
                #start,
                #parents,
                &#own_cell,
                &mut *#failures,
                &mut *#cx,
            ),
        }
    };
    // `let (__jg_f0, .., __jg_f15) = Chunk::places(..)`: the places of chunk `c`'s steps.
    let places = |c: usize| {
        let names = (0..CHUNK).map(|j| {
            if c * CHUNK + j < n {
                let place = place(c * CHUNK + j);
                quote!(mut #place)
            } else {
                quote!(_)
            }
        });
        quote!(let (#(#names),*) = #p::Chunk::places(__jg_chunk);)
    };
    // A chunk's turn: a closure of its own, called at once, holding the match over the chunk's
    // steps (see the module's docs). A `move` closure given references, so it captures a
    // reference to the cells' tuple, not one per parent it reads.
    let chunk_arms = (0..chunks).map(|c| {
        let places = places(c);
        let chunk = chunk(c);
        let arms = (c * CHUNK..n.min((c + 1) * CHUNK)).map(arm);
        quote! {
            #c => {
                let (#cells, #sched, #failures, #cx, __jg_chunk) = (
                    &#cells,
                    &mut #sched,
                    &mut #failures,
                    &mut *#cx,
                    #p::Pin::as_mut(&mut #chunk),
                );
                (move || {
                    #places
                    match __jg_k {
                        #(#arms)*
                        _ => #p::unreachable_step(),
                    }
                })()
            }
        }
    });

    // A stopped run drops the futures of its running steps, chunk by chunk, then records them
    // as stopped, in declaration order.
    let drop_running = (0..chunks).map(|c| {
        let places = places(c);
        let chunk = chunk(c);
        let drops = (c * CHUNK..n.min((c + 1) * CHUNK)).map(|k| {
            let place = place(k);
            quote! {
                if #p::Sched::is_running(#sched, #k) {
                    #p::Pin::set(&mut #place, #p::None);
                }
            }
        });
        quote! {
            {
                let (#sched, __jg_chunk) = (&#sched, #p::Pin::as_mut(&mut #chunk));
                (move || {
                    #places
                    #(#drops)*
                })();
            }
        }
    });
    let record_stopped = job.steps.iter().enumerate().map(|(i, s)| {
        let variant = &s.variant;
        let k = position[i];
        quote! {
            if #p::Sched::is_running(#sched, #k) {
                #p::RunCore::stopped_step(#run, #step_enum::#variant, &mut *#failures);
            }
        }
    });

    let fields = job.steps.iter().enumerate().map(|(i, s)| {
        let ident = s.ident;
        let cell = cell(i);
        quote!(#ident: #p::OutputCell::into_inner(#cell),)
    });
    let marker =
        (!job.item.generics.params.is_empty()).then(|| quote!(__jobgraph_marker: #p::PhantomData,));

    quote! {
        let #partial { #(#idents: #seeds,)* .. } = #seed;
        let #cells = (#(#cell_values)*);
        let mut #failures = #p::Failures::<#step_enum>::new();
        {
            const #graph_const: #p::TopoGraph<#words, #n> = #p::TopoGraph::new(
                [#(#position),*],
                &[#(#dep_positions),*],
                [#(#dep_ends),*],
            );
            let mut #sched = #p::RunCore::sched(#run, &#graph_const, || [#(#is_set),*]);
            let mut #stop = #p::RunCore::stop(#run);
            #(#chunk_decls)*
            // The passes run in this async block itself, not in a `poll_fn` closure held across
            // its `.await`s: the cells are not `Sync`, so the block may hold references to them
            // only within a pass (the chunks' closures, made in the pass), or it is not `Send`.
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
                            match __jg_k / #CHUNK {
                                #(#chunk_arms)*
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
                #(#drop_running)*
                let (#sched, #failures) = (&#sched, &mut #failures);
                (move || {
                    #(#record_stopped)*
                })();
            }
        }
        let __jg_partial = #partial {
            #(#fields)*
            #marker
        };
        match #p::RunCore::conclude(#run, #failures) {
            #p::Ok(()) => #p::Ok(__jg_partial),
            #p::Err(__jg_error) => #p::Err(#p::JobError::with_partial(__jg_error, __jg_partial)),
        }
    }
}
