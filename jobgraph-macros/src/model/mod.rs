//! The model: a job's steps, their parameters, outputs and edges, borrowed from the user's `impl`
//! so that every error can point at the user's own tokens.

use syn::ext::IdentExt as _;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, Lit, Meta,
    PatType, Path, PathArguments, ReturnType, Type,
};

use crate::error::Ctxt;
use crate::parse::{self, JobArgs};

/// One `#[job]` impl block. `Clone` so a job with errors can generate from the steps it still can
/// (`codegen::fallback`).
#[derive(Clone)]
pub(crate) struct Job<'a> {
    pub(crate) item: &'a ItemImpl,
    /// The self type's name: `Foo` for `impl<D> Foo<D>`, and for `impl r#Foo` (the names derived
    /// from it, `FooStep` and `FooOutputs`, are not raw).
    pub(crate) ident: Ident,
    /// The job's name in DOT, reports and errors.
    pub(crate) name: String,
    /// `#[job(crate = ...)]`: the runtime crate's path, when it is not `::jobgraph`.
    pub(crate) krate: Option<Path>,
    /// `#[job(enrich = ..)]`.
    pub(crate) enrich: Option<Path>,
    /// `#[job(local)]`: no `start`.
    pub(crate) local: bool,
    /// `#[job(durable)]`, with the option's span: the job is a `DurableJob`.
    pub(crate) durable: Option<Ident>,
    /// `#[job(resources = T)]`: what the steps borrow besides their parents' outputs.
    pub(crate) resources: Option<Type>,
    pub(crate) steps: Vec<Step<'a>>,
    /// Every method of the impl, steps or not, to find collisions with generated items.
    pub(crate) methods: Vec<&'a ImplItemFn>,
}

/// One `#[step]` method.
#[derive(Clone)]
pub(crate) struct Step<'a> {
    pub(crate) method: &'a ImplItemFn,
    pub(crate) ident: &'a Ident,
    /// The step's name: the method's, without `r#`.
    pub(crate) name: String,
    /// The step enum's variant: `GetConnection` for `get_connection`.
    pub(crate) variant: Ident,
    pub(crate) after: Vec<Ident>,
    pub(crate) retry: Option<syn::Expr>,
    pub(crate) timeout: Option<syn::Expr>,
    /// `concurrency`, `rate` and `burst`: limits shared by every run of the job.
    pub(crate) concurrency: Option<syn::Expr>,
    pub(crate) rate: Option<crate::parse::RateLit>,
    pub(crate) burst: Option<syn::Expr>,
    /// `for_each(param, ..)`: the step runs once per element of `param`'s output, and outputs a
    /// `Vec` of what each element's call returns.
    pub(crate) for_each: Option<crate::parse::ForEach>,
    /// The parameters after the receiver, in order.
    pub(crate) params: Vec<Param<'a>>,
    pub(crate) output: Output,
    pub(crate) doc: String,
}

/// A step's parameter, classified by what the scheduler passes to it.
#[derive(Clone)]
pub(crate) enum Param<'a> {
    /// `name: &T`: the output of step `name`.
    Parent { name: &'a Ident, ty: &'a Type },
    /// `_: &StepContext`: the run context.
    Context(&'a PatType),
    /// `name: &T`, where `T` is the job's `resources` type and `name` is not a step: the
    /// resources given to the run.
    Resources(&'a PatType),
    /// A parameter the scheduler cannot fill; `validate` says why.
    Unsupported(&'a PatType),
}

/// What a step outputs.
#[derive(Clone)]
pub(crate) struct Output {
    /// The type stored for the children: `T` of `Result<T, E>`, or the return type; for a
    /// `for_each` step, a `Vec` of that.
    pub(crate) ty: Type,
    /// True when the step returns a `Result`, whose error fails the step.
    pub(crate) fallible: bool,
    /// For a `Result`, the span of its error type (of the whole type for `io::Result<T>`).
    pub(crate) error_span: Option<proc_macro2::Span>,
    /// For a `for_each` step, the output of one element: `ty` is a `Vec` of it.
    pub(crate) element: Option<Type>,
}

/// The name of the attribute marking steps.
pub(crate) const STEP_ATTR: &str = "step";

impl<'a> Job<'a> {
    /// Builds the model of `item`; malformed options are reported to `cx` and left out.
    pub(crate) fn from_syn(item: &'a ItemImpl, args: JobArgs, cx: &mut Ctxt) -> Option<Self> {
        let ident = match self_ident(&item.self_ty) {
            Some(ident) => ident.unraw(),
            None => {
                cx.error_spanned_by(
                    &item.self_ty,
                    "`#[job]` goes on an inherent impl of a named struct, like `impl MyJob { .. }`",
                );
                return None;
            }
        };
        let methods: Vec<&ImplItemFn> = item
            .items
            .iter()
            .filter_map(|i| match i {
                ImplItem::Fn(f) => Some(f),
                _ => None,
            })
            .collect();
        let mut steps: Vec<Step<'a>> = methods
            .iter()
            .filter_map(|method| {
                let mut attrs = method.attrs.iter().filter(|a| is_step_attr(a));
                let attr = attrs.next()?;
                for extra in attrs {
                    cx.error_spanned_by(extra, "this method is already marked `#[step]`");
                }
                let args = parse::step_args(attr, cx);
                Some(Step::from_syn(method, args))
            })
            .collect();
        if let Some(resources) = &args.resources {
            resources_params(&mut steps, resources);
        }
        Some(Job {
            name: args.name.map_or_else(|| ident.to_string(), |n| n.value()),
            krate: args.krate,
            enrich: args.enrich,
            local: args.local,
            durable: args.durable,
            resources: args.resources,
            ident,
            item,
            steps,
            methods,
        })
    }

    /// The index of the step called `name`.
    pub(crate) fn step_index(&self, name: &Ident) -> Option<usize> {
        self.steps.iter().position(|s| s.ident == name)
    }

    /// `FooStep`.
    pub(crate) fn step_enum(&self) -> Ident {
        Ident::new(&format!("{}Step", self.ident), self.ident.span())
    }

    /// `FooOutputs`.
    pub(crate) fn outputs_struct(&self) -> Ident {
        Ident::new(&format!("{}Outputs", self.ident), self.ident.span())
    }

    /// `FooPartial`.
    pub(crate) fn partial_struct(&self) -> Ident {
        Ident::new(&format!("{}Partial", self.ident), self.ident.span())
    }
}

/// Marks as [`Param::Resources`] every parameter that takes `&resources` and does not name a
/// step (a step's name wins: its output is what the parameter takes).
fn resources_params(steps: &mut [Step<'_>], resources: &Type) {
    let names: Vec<String> = steps.iter().map(|s| s.ident.to_string()).collect();
    let resources = type_text(resources);
    for step in steps {
        for param in &mut step.params {
            if let Param::Parent { name, ty } = *param
                && !names.iter().any(|n| *name == n)
                && type_text(ty) == resources
                && let FnArg::Typed(pat_type) = step
                    .method
                    .sig
                    .inputs
                    .iter()
                    .find(|arg| matches!(arg, FnArg::Typed(p) if is_named(p, name)))
                    .expect("the parameter is the method's")
            {
                *param = Param::Resources(pat_type);
            }
        }
    }
}

/// Whether `pat_type`'s pattern is the plain name `name`.
fn is_named(pat_type: &PatType, name: &Ident) -> bool {
    matches!(&*pat_type.pat, syn::Pat::Ident(p) if p.ident == *name)
}

impl<'a> Step<'a> {
    fn from_syn(method: &'a ImplItemFn, args: parse::StepArgs) -> Self {
        let ident = &method.sig.ident;
        let params = method
            .sig
            .inputs
            .iter()
            .filter_map(|arg| match arg {
                FnArg::Receiver(_) => None,
                FnArg::Typed(pat_type) => Some(Param::from_syn(pat_type)),
            })
            .collect();
        let name = ident.to_string();
        let name = name.strip_prefix("r#").unwrap_or(&name).to_owned();
        Step {
            method,
            ident,
            variant: Ident::new(&variant_name(&name), ident.span()),
            name,
            after: args.after,
            retry: args.retry,
            timeout: args.timeout,
            concurrency: args.concurrency,
            rate: args.rate,
            burst: args.burst,
            output: Output::from_syn(&method.sig.output, args.for_each.is_some()),
            for_each: args.for_each,
            params,
            doc: doc_comment(&method.attrs),
        }
    }

    /// The names of the steps whose outputs this step takes, in parameter order.
    pub(crate) fn parents(&self) -> impl Iterator<Item = &'a Ident> + '_ {
        self.params.iter().filter_map(|p| match p {
            Param::Parent { name, .. } => Some(*name),
            _ => None,
        })
    }
}

impl<'a> Param<'a> {
    fn from_syn(pat_type: &'a PatType) -> Self {
        let Type::Reference(reference) = &*pat_type.ty else {
            return Param::Unsupported(pat_type);
        };
        if reference.mutability.is_some() {
            return Param::Unsupported(pat_type);
        }
        if is_step_context(&reference.elem) {
            return Param::Context(pat_type);
        }
        match &*pat_type.pat {
            syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => Param::Parent {
                name: &p.ident,
                ty: &reference.elem,
            },
            _ => Param::Unsupported(pat_type),
        }
    }
}

impl Output {
    fn from_syn(output: &ReturnType, for_each: bool) -> Self {
        let (ty, fallible, error_span) = match output {
            ReturnType::Default => (syn::parse_quote!(()), false, None),
            ReturnType::Type(_, written) => match result_types(written) {
                Some((ok, error)) => (
                    ok.clone(),
                    true,
                    Some(error.map_or_else(|| written.span(), |e| e.span())),
                ),
                None => ((**written).clone(), false, None),
            },
        };
        if for_each {
            let span = ty.span();
            return Output {
                ty: syn::parse_quote_spanned!(span=> ::std::vec::Vec<#ty>),
                fallible,
                error_span,
                element: Some(ty),
            };
        }
        Output {
            ty,
            fallible,
            error_span,
            element: None,
        }
    }
}

/// `T` (and `E` if written) when `ty` is spelled `Result<T, ..>` (any path ending in `Result`,
/// so `io::Result<T>` too).
pub(crate) fn result_types(ty: &Type) -> Option<(&Type, Option<&Type>)> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let ok = match args.args.first()? {
        GenericArgument::Type(ok) => ok,
        _ => return None,
    };
    let error = match args.args.iter().nth(1) {
        Some(GenericArgument::Type(error)) => Some(error),
        _ => None,
    };
    Some((ok, error))
}

/// True for `StepContext` spelled with any path (`jobgraph::StepContext`).
pub(crate) fn is_step_context(ty: &Type) -> bool {
    match ty {
        Type::Path(p) if p.qself.is_none() => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "StepContext" && s.arguments.is_none()),
        Type::Paren(p) => is_step_context(&p.elem),
        _ => false,
    }
}

pub(crate) fn is_step_attr(attr: &Attribute) -> bool {
    attr.path().is_ident(STEP_ATTR)
}

fn self_ident(ty: &Type) -> Option<&Ident> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| &s.ident),
        _ => None,
    }
}

/// The `///` doc comment, lines joined with `\n`, common indentation trimmed.
fn doc_comment(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(lit) => match &lit.lit {
                    Lit::Str(s) => Some(s.value()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .collect();
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let text: Vec<&str> = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect();
    text.join("\n").trim().to_owned()
}

/// A type as a user would write it: `Vec<u32>`, not `Vec < u32 >`.
pub(crate) fn type_text(ty: &Type) -> String {
    let text = quote::ToTokens::to_token_stream(ty).to_string();
    [
        (" < ", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ::", "::"),
        (":: ", "::"),
        (" ,", ","),
        ("& ", "&"),
        ("' ", "'"),
    ]
    .iter()
    .fold(text, |t, (from, to)| t.replace(from, to))
}

/// The step enum's variant for the step `name`: its UpperCamelCase form when that is an
/// identifier (`get_connection` -> `GetConnection`), else `Step` followed by it (`_1` -> `Step1`,
/// `__` -> `Step`, `self_` -> `StepSelf`), which always is one: `Step` starts an identifier and
/// what follows is made of a step name's characters, each of which may continue one.
pub(crate) fn variant_name(name: &str) -> String {
    let camel = upper_camel(name);
    if is_identifier(&camel) {
        camel
    } else {
        format!("Step{camel}")
    }
}

/// True if `text` is a non-raw identifier other than a keyword a variant cannot be named
/// (`Self`: the only keyword an UpperCamelCase form can be, as the others are lowercase).
fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(unicode_ident::is_xid_start)
        && chars.all(unicode_ident::is_xid_continue)
        && text != "Self"
}

/// `get_connection` -> `GetConnection`; a raw `r#type` -> `Type`. Not always an identifier:
/// see [`variant_name`].
pub(crate) fn upper_camel(snake: &str) -> String {
    let snake = snake.strip_prefix("r#").unwrap_or(snake);
    let mut out = String::with_capacity(snake.len());
    let mut upper = true;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_case() {
        assert_eq!(upper_camel("get_connection"), "GetConnection");
        assert_eq!(upper_camel("query_table1"), "QueryTable1");
        assert_eq!(upper_camel("r#type"), "Type");
        assert_eq!(upper_camel("a"), "A");
    }

    /// Step names whose UpperCamelCase form is not an identifier by itself: the macro panicked
    /// on each (`Ident::new` of an invalid identifier).
    #[test]
    fn variants_are_identifiers() {
        for (step, variant) in [
            ("get_connection", "GetConnection"),
            ("r#type", "Type"),
            ("__", "Step"),
            ("_1", "Step1"),
            ("_9lives", "Step9lives"),
            ("self_", "StepSelf"),
            ("_\u{301}", "Step\u{301}"),
            ("日本_語", "日本語"),
        ] {
            assert_eq!(variant_name(step), variant, "the variant of `{step}`");
            let _ = Ident::new(&variant_name(step), proc_macro2::Span::call_site());
        }
    }

    #[test]
    fn result_detection() {
        let ty: Type = syn::parse_quote!(std::io::Result<u8>);
        assert!(result_types(&ty).is_some_and(|(_, e)| e.is_none()));
        let ty: Type = syn::parse_quote!(Result<Vec<u8>, E>);
        let (ok, error) = result_types(&ty).unwrap();
        assert_eq!(quote::quote!(#ok #error).to_string(), "Vec < u8 > E");
        assert!(result_types(&syn::parse_quote!(Option<u8>)).is_none());
    }
}
