//! Checks on one step's signature: what the scheduler can call.

use syn::{Attribute, FnArg, GenericParam, ReturnType, Type};

use crate::error::Ctxt;
use crate::model::{Param, Step};

pub(super) fn signature(step: &Step<'_>, cx: &mut Ctxt) {
    let sig = &step.method.sig;
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            format_args!(
                "step `{}` must be an `async fn`: write `async fn {}`",
                step.ident, step.ident
            ),
        );
    }
    if let syn::Safety::Unsafe(unsafety) = &sig.safety {
        cx.error_spanned_by(
            unsafety,
            format_args!(
                "step `{}` cannot be an `unsafe fn`: the scheduler calls it and cannot uphold \
                 what it requires; make it a safe `async fn` with an `unsafe` block inside",
                step.ident
            ),
        );
    }
    receiver(step, cx);
    for_each(step, cx);
    cfg(step, cx);
    lent_lifetimes(step, cx);
    sized_output(step, cx);
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            GenericParam::Type(_) | GenericParam::Const(_) => cx.error_spanned_by(
                param,
                format_args!(
                    "step `{}` cannot be generic: the scheduler calls it with concrete types; \
                     put the parameter on the job's impl instead (`impl<T> MyJob<T>`)",
                    step.ident
                ),
            ),
        }
    }
    let mut context = None;
    let mut resources = None;
    for param in &step.params {
        match param {
            Param::Parent { name, ty } => {
                if let Some(impl_trait) = find_impl_trait(ty) {
                    cx.error_spanned_by(
                        impl_trait,
                        format_args!(
                            "`impl Trait` is not supported in step parameters: `{name}` takes \
                             the output of step `{name}`, whose type is concrete; write that type"
                        ),
                    );
                }
            }
            Param::Context(pat_type) => {
                if let Some(first) = context.replace(*pat_type) {
                    cx.error_spanned_by(
                        pat_type,
                        format_args!(
                            "step `{}` takes `&StepContext` twice; one parameter is enough \
                             (the first is `{}`)",
                            step.ident,
                            quote::ToTokens::to_token_stream(&first.pat)
                        ),
                    );
                }
            }
            Param::Resources(pat_type) => {
                if let Some(first) = resources.replace(*pat_type) {
                    cx.error_spanned_by(
                        pat_type,
                        format_args!(
                            "step `{}` takes the job's resources twice; one parameter is enough \
                             (the first is `{}`)",
                            step.ident,
                            quote::ToTokens::to_token_stream(&first.pat)
                        ),
                    );
                }
            }
            Param::Unsupported(pat_type) => unsupported(pat_type, cx),
        }
    }
}

fn receiver(step: &Step<'_>, cx: &mut Ctxt) {
    let sig = &step.method.sig;
    let Some(FnArg::Receiver(receiver)) = sig.inputs.first() else {
        cx.error_spanned_by(
            &sig.ident,
            format_args!(
                "step `{}` needs a `&self` receiver: write `async fn {}(&self, ..)`",
                step.ident, step.ident
            ),
        );
        return;
    };
    let ok = matches!(&receiver.kind, syn::ReceiverKind::Reference(_, _, None));
    if !ok {
        let why = match &receiver.kind {
            syn::ReceiverKind::Reference(..) => {
                "steps run concurrently and share the job, so they cannot take `&mut self`"
            }
            _ => "steps share the job, so they borrow it",
        };
        cx.error_spanned_by(
            receiver,
            format_args!("step `{}` must take `&self`: {why}", step.ident),
        );
    }
}

fn unsupported(pat_type: &syn::PatType, cx: &mut Ctxt) {
    let ty = &*pat_type.ty;
    match ty {
        Type::Reference(r) if r.mutability.is_some() => cx.error_spanned_by(
            ty,
            format_args!(
                "a parent's output is shared by all its children: take it as `&{}`, not `&mut`",
                crate::model::type_text(&r.elem)
            ),
        ),
        Type::Reference(_) => cx.error_spanned_by(
            &pat_type.pat,
            "a step parameter must be a plain name: the name of the step whose output it takes \
             (destructure inside the body)",
        ),
        _ => {
            let name = quote::ToTokens::to_token_stream(&pat_type.pat).to_string();
            if crate::model::is_step_context(ty) {
                cx.error_spanned_by(
                    ty,
                    format_args!(
                        "the run context is lent to the step: write `{name}: &StepContext`"
                    ),
                );
            } else if let Some(impl_trait) = find_impl_trait(ty) {
                cx.error_spanned_by(
                    impl_trait,
                    "`impl Trait` is not supported in step parameters; a parameter takes a \
                     parent's output by reference, `name: &T`",
                );
            } else {
                cx.error_spanned_by(
                    ty,
                    format_args!(
                        "step parameters borrow their parent's output: write `{name}: &{}`",
                        crate::model::type_text(ty)
                    ),
                );
            }
        }
    }
}

fn find_impl_trait(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        Type::Reference(r) => find_impl_trait(&r.elem),
        Type::Paren(p) => find_impl_trait(&p.elem),
        _ => None,
    }
}

/// `for_each(param)` must name one of the step's parent parameters.
fn for_each(step: &Step<'_>, cx: &mut Ctxt) {
    let Some(for_each) = &step.for_each else {
        return;
    };
    if step.parents().any(|name| *name == for_each.param) {
        return;
    }
    let parents: Vec<String> = step.parents().map(ToString::to_string).collect();
    let target = for_each.param.to_string();
    let is_context = step.params.iter().any(|p| {
        matches!(p, Param::Context(pat) if matches!(&*pat.pat, syn::Pat::Ident(i) if i.ident == target))
    });
    let hint = match crate::error::did_you_mean(&target, parents.iter().map(String::as_str)) {
        _ if is_context => format!("; `{target}` is the step's context, not a parent's output"),
        Some(close) => format!("; did you mean `{close}`?"),
        None => match parents.as_slice() {
            [] => format!(
                "; step `{}` takes no parent's output: add a parameter `{target}: &T` naming the \
                 step whose `Vec<T>` output to run over",
                step.ident
            ),
            [only] => format!("; its only parent is `{only}`"),
            _ => format!(
                "; its parents are {}",
                parents
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    cx.error_spanned_by(
        &for_each.param,
        format_args!(
            "`for_each({target})` names no parent of step `{}`: it runs the step once per \
             element of a parent's output, so it must name a parameter that takes one{hint}",
            step.ident
        ),
    );
}

/// `#[cfg]` on a step or on a step's parameter: `#[job]` sees the impl before `cfg` is evaluated,
/// so the graph would keep a step or a parameter that the compiled impl has not.
fn cfg(step: &Step<'_>, cx: &mut Ctxt) {
    let is_cfg = |attr: &&Attribute| attr.path().is_ident("cfg");
    for attr in step.method.attrs.iter().filter(is_cfg) {
        cx.error_spanned_by(
            attr,
            format_args!(
                "`#[cfg]` on step `{}` is not supported: `#[job]` builds the graph before `cfg` \
                 is evaluated; put the whole `#[job]` impl under `#[cfg]`, or test the \
                 condition inside the step (`if cfg!(..)`)",
                step.ident
            ),
        );
    }
    for input in &step.method.sig.inputs {
        let attrs = match input {
            FnArg::Receiver(r) => &r.attrs,
            FnArg::Typed(t) => &t.attrs,
        };
        for attr in attrs.iter().filter(is_cfg) {
            cx.error_spanned_by(
                attr,
                format_args!(
                    "`#[cfg]` on a parameter of step `{}` is not supported: the graph gives a \
                     step every parameter it declares; test the condition inside the step \
                     (`if cfg!(..)`)",
                    step.ident
                ),
            );
        }
    }
}

/// A parameter `&'static T` (or `&'a T` with `'a` not the method's own): what a step is lent, a
/// parent's output or the run context, lives for the run only.
fn lent_lifetimes(step: &Step<'_>, cx: &mut Ctxt) {
    let sig = &step.method.sig;
    let own = |lifetime: &syn::Lifetime| {
        lifetime.ident == "_" || sig.generics.lifetimes().any(|l| l.lifetime == *lifetime)
    };
    for input in &sig.inputs {
        let FnArg::Typed(pat_type) = input else {
            continue;
        };
        let Type::Reference(reference) = &*pat_type.ty else {
            continue;
        };
        let Some(lifetime) = reference.lifetime.as_ref().filter(|l| !own(l)) else {
            continue;
        };
        let what = if crate::model::is_step_context(&reference.elem) {
            "the run context".to_owned()
        } else {
            let name = quote::ToTokens::to_token_stream(&pat_type.pat).to_string();
            format!("the output of step `{name}`")
        };
        cx.error_spanned_by(
            lifetime,
            format_args!(
                "step `{}` is lent {what} for the run only, not for `{lifetime}`: write `&{}`",
                step.ident,
                crate::model::type_text(&reference.elem)
            ),
        );
    }
}

/// An output whose size is not known (`[T]`, `str`, `dyn Trait`): it is stored for the children,
/// and an `async fn` cannot return it anyway.
fn sized_output(step: &Step<'_>, cx: &mut Ctxt) {
    let Some((output, without_size)) = unsized_output(step) else {
        return;
    };
    let instead = match without_size {
        Type::Slice(slice) => format!(
            "`Vec<{0}>` (or `Box<[{0}]>`)",
            crate::model::type_text(&slice.elem)
        ),
        Type::TraitObject(_) => {
            format!("`Box<{}>`", crate::model::type_text(output))
        }
        _ => "`String` (or `Box<str>`)".to_owned(),
    };
    cx.error_spanned_by(
        output,
        format_args!(
            "step `{}` outputs `{}`, whose size is not known at compile time; its children \
             borrow the output from where it is stored: return {instead}",
            step.ident,
            crate::model::type_text(output)
        ),
    );
}

/// The output a step returns (`T` of `Result<T, E>`) and the type without a size in it, when it
/// has one.
pub(super) fn unsized_output<'a>(step: &Step<'a>) -> Option<(&'a Type, &'a Type)> {
    let ReturnType::Type(_, written) = &step.method.sig.output else {
        return None;
    };
    let output = crate::model::result_types(written).map_or(&**written, |(ok, _)| ok);
    unsized_type(output).map(|without_size| (output, without_size))
}

/// True if the step's output names one of the step's own type or const parameters (`signature`
/// reports such a step as generic): outside the method, that name means nothing.
pub(super) fn output_names_own_generics(step: &Step<'_>) -> bool {
    let own: Vec<&syn::Ident> = step
        .method
        .sig
        .generics
        .params
        .iter()
        .filter_map(|param| match param {
            GenericParam::Type(t) => Some(&t.ident),
            GenericParam::Const(c) => Some(&c.ident),
            GenericParam::Lifetime(_) => None,
        })
        .collect();
    !own.is_empty() && mentions(quote::ToTokens::to_token_stream(&step.output.ty), &own)
}

/// True if `tokens` hold one of `names` at any depth.
fn mentions(tokens: proc_macro2::TokenStream, names: &[&syn::Ident]) -> bool {
    tokens.into_iter().any(|tree| match tree {
        proc_macro2::TokenTree::Ident(ident) => names.contains(&&ident),
        proc_macro2::TokenTree::Group(group) => mentions(group.stream(), names),
        _ => false,
    })
}

/// `ty` itself when it is written as a type without a size: a slice, `str`, a bare `dyn Trait`.
fn unsized_type(ty: &Type) -> Option<&Type> {
    match ty {
        Type::Slice(_) | Type::TraitObject(_) => Some(ty),
        Type::Path(p) if p.qself.is_none() && p.path.is_ident("str") => Some(ty),
        Type::Paren(p) => unsized_type(&p.elem),
        Type::Group(g) => unsized_type(&g.elem),
        _ => None,
    }
}
