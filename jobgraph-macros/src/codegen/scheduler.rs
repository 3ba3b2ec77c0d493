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
//! - each chunk is made by a function of its own (`__jg_chunk<c>`, [`chunk_fns`]) returning
//!   `impl ChunkTurn<..>`: the chunk's places and a closure holding the match over its steps'
//!   turns, typed and checked in that function. The run's `async` block holds an opaque value
//!   per chunk and an arm per chunk, never the steps' futures' types. With those types in the
//!   block (each chunk's turn a closure inside it), they added 2.6 s to `cargo check` of a
//!   1,000-step chain and 0.07 s to that of a 100-step one: rustc interned, folded and proved
//!   things about the whole block's types again and again;
//! - a chunk's places start as `None`, typed by the steps' turns in the chunk's function (16
//!   unknowns in a small body), and no closure is made per step;
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
    let chunk_decls = (0..chunks).map(|c| {
        let chunk = chunk(c);
        let make = chunk_fn(c);
        quote!(let mut #chunk = #p::pin!(Self::#make(self, #res, #run));)
    });
    // Step `k`'s turn: its chunk's (see `chunk_fns`).
    let chunk_arms = (0..chunks).map(|c| {
        let chunk = chunk(c);
        quote! {
            #c => #p::ChunkTurn::turn(
                #p::Pin::as_mut(&mut #chunk),
                __jg_k,
                &mut #sched,
                &#graph_const,
                &#cells,
                &mut #failures,
                &mut *#cx,
            ),
        }
    });
    // A stopped run drops the futures of its running steps, chunk by chunk, then records them
    // as stopped, in declaration order.
    let drop_running = (0..chunks).map(|c| {
        let chunk = chunk(c);
        quote!(#p::ChunkTurn::drop_running(#p::Pin::as_mut(&mut #chunk), &#sched);)
    });
    let position = positions(graph);
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
            // only within a pass (lent to each turn), or it is not `Send`.
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

/// Each step's position in the topological order, by its index in declaration order.
fn positions(graph: &Graph) -> Vec<usize> {
    let mut position = vec![0; graph.topo.len()];
    for (k, &i) in graph.topo.iter().enumerate() {
        position[i] = k;
    }
    position
}

/// `__jg_chunk<c>`: the function making chunk `c` of a run.
fn chunk_fn(c: usize) -> syn::Ident {
    quote::format_ident!("__jg_chunk{}", c)
}

/// The type of the job's output cells ([`JobCells`](jobgraph::__private::JobCells)), and a
/// function per chunk of sixteen steps (by position) making that chunk of a run: the places of
/// its steps' futures and the turn of each step, `impl ChunkTurn<..>` (see the module's docs).
pub(crate) fn chunk_fns(job: &Job<'_>, graph: &Graph, paths: &Paths) -> TokenStream {
    let p = &paths.private;
    let n = job.steps.len();
    let words = n.div_ceil(64);
    let step_enum = job.step_enum();
    let (impl_generics, _, where_clause) = job.item.generics.split_for_impl();
    let self_ty = &job.item.self_ty;
    let resources = job
        .resources
        .as_ref()
        .map_or_else(|| quote!(()), |ty| quote!(#ty));
    let cell_types = job.steps.iter().map(|s| {
        let ty = &s.output.ty;
        quote!(#p::OutputCell<#ty>,)
    });

    let run = local1("run");
    let res = local1("res");
    let sched = local1("sched");
    let graph_param = local1("graph");
    let cells = local1("outputs");
    let failures = local1("failures");
    let cx = local1("cx");
    let cell = |i: usize| {
        let i = syn::Index::from(i);
        quote!(#cells.#i)
    };
    // The place of the future of the step at position `k`, in its chunk.
    let place = |k: usize| local("f", k % CHUNK);
    // The start function of the step at position `k`.
    let start_of = |k: usize| {
        let start = start_fn(&job.steps[graph.topo[k]]);
        quote!(Self::#start)
    };
    let chunks = (0..n.div_ceil(CHUNK)).map(|c| {
        let make = chunk_fn(c);
        let first = c * CHUNK;
        // No future yet in a step's place: its type is inferred from the step's turn.
        let places = (0..CHUNK).map(|j| {
            if first + j < n {
                quote!(#p::None)
            } else {
                quote!(())
            }
        });
        let names = (0..CHUNK).map(|j| {
            if first + j < n {
                let place = place(first + j);
                quote!(mut #place)
            } else {
                quote!(_)
            }
        });
        let arms = (first..n.min(first + CHUNK)).map(|k| {
            let i = graph.topo[k];
            let s = &job.steps[i];
            let variant = &s.variant;
            let (own_cell, place, start) = (cell(i), place(k), start_of(k));
            let parents = s.params.iter().filter_map(|param| match param {
                Param::Parent { name, .. } => {
                    let parent = cell(job.step_index(name).expect("validated parent"));
                    Some(quote!(&#parent,))
                }
                _ => None,
            });
            quote! {
                #k => #p::turn(
                    self,
                    #res,
                    #run,
                    #sched,
                    #graph_param,
                    #k,
                    #step_enum::#variant,
                    #p::Pin::as_mut(&mut #place),
                    #start,
                    (#(#parents)*),
                    &#own_cell,
                    #failures,
                    #cx,
                ),
            }
        });
        quote! {
            #[inline(always)]
            fn #make<'__jg>(
                &'__jg self,
                #res: &'__jg #resources,
                #run: &'__jg #p::RunCore<#step_enum>,
            ) -> impl #p::ChunkTurn<
                '__jg,
                <Self as #p::JobCells>::Cells,
                #words,
                #n,
                #step_enum,
            > + '__jg {
                #p::ChunkOf::new(
                    #first,
                    #p::Chunk::new(#(#places),*),
                    move |__jg_chunk: #p::Pin<&mut _>,
                          __jg_k: #p::usize,
                          #sched: &mut #p::Sched<#words>,
                          #graph_param: &#p::TopoGraph<#words, #n>,
                          #cells: &'__jg <Self as #p::JobCells>::Cells,
                          #failures: &mut #p::Failures<#step_enum>,
                          #cx: &mut #p::Context<'_>| {
                        let (#(#names),*) = #p::Chunk::places(__jg_chunk);
                        match __jg_k {
                            #(#arms)*
                            _ => #p::unreachable_step(),
                        }
                    },
                )
            }
        }
    });
    quote! {
        #[doc(hidden)]
        impl #impl_generics #p::JobCells for #self_ty #where_clause {
            type Cells = (#(#cell_types)*);
        }

        #[doc(hidden)]
        #[allow(clippy::type_complexity, clippy::too_many_arguments)]
        impl #impl_generics #self_ty #where_clause {
            #(#chunks)*
        }
    }
}
