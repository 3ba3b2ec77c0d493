//! Parsing: the options of `#[job(...)]` and `#[step(...)]`.
//!
//! Options are parsed into plain structs; an unknown, repeated or malformed option is recorded in
//! the [`Ctxt`] and parsing goes on, so one compile reports every mistake.

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprCall, Ident, Lit, LitStr, Path, Token};

use crate::error::Ctxt;

/// The options of `#[job(...)]`.
#[derive(Default)]
pub(crate) struct JobArgs {
    /// `name = "..."`: the job's name in reports, DOT and errors.
    pub(crate) name: Option<LitStr>,
    /// `crate = path`: where the runtime crate is, when it is re-exported.
    pub(crate) krate: Option<Path>,
    /// `enrich = path`: a `fn(&mut StepContext)` run before every attempt of every step.
    pub(crate) enrich: Option<Path>,
    /// `local`: no `start`, so steps' futures need not be `Send`.
    pub(crate) local: bool,
}

const JOB_OPTIONS: &str = "`name = \"...\"`, `enrich = path`, `local`, `crate = path`";

/// The options of one `#[step(...)]`.
#[derive(Default)]
pub(crate) struct StepArgs {
    /// `after(a, b)`: steps to run after without taking their outputs.
    pub(crate) after: Vec<Ident>,
    /// `retry = expr`: the step's `RetryPolicy`.
    pub(crate) retry: Option<Expr>,
    /// `timeout = expr`: the `Duration` each attempt may take.
    pub(crate) timeout: Option<Expr>,
}

const STEP_OPTIONS: &str = "`after(step, ...)`, `retry = <RetryPolicy>`, `timeout = <Duration>`";

/// Parses the tokens inside `#[job(...)]`.
pub(crate) fn job_args(tokens: TokenStream, cx: &mut Ctxt) -> JobArgs {
    let mut args = JobArgs::default();
    let mut seen = Seen::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            seen.once(&meta, cx);
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().trim().is_empty() {
                cx.error_spanned_by(&lit, "the job's `name` must not be empty");
            }
            args.name = Some(lit);
        } else if meta.path.is_ident("crate") {
            seen.once(&meta, cx);
            args.krate = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("enrich") {
            seen.once(&meta, cx);
            args.enrich = Some(meta.value()?.parse()?);
        } else if meta.path.is_ident("local") {
            seen.once(&meta, cx);
            if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                return Err(meta.error("`local` takes no value: write `#[job(local)]`"));
            }
            args.local = true;
        } else {
            return Err(unknown_option(&meta, "#[job]", JOB_OPTIONS));
        }
        Ok(())
    });
    if let Err(error) = syn::parse::Parser::parse2(parser, tokens) {
        cx.syn_error(error);
    }
    args
}

/// Parses one `#[step]` or `#[step(...)]` attribute.
pub(crate) fn step_args(attr: &Attribute, cx: &mut Ctxt) -> StepArgs {
    let mut args = StepArgs::default();
    if let syn::Meta::Path(_) = attr.meta {
        return args;
    }
    let mut seen = Seen::default();
    let result = attr.parse_nested_meta(|meta| {
        if meta.path.is_ident("after") {
            seen.once(&meta, cx);
            if !meta.input.peek(syn::token::Paren) {
                return Err(meta.error("expected a list of steps: `after(step, ...)`"));
            }
            let content;
            syn::parenthesized!(content in meta.input);
            let names = Punctuated::<Ident, Token![,]>::parse_terminated(&content)?;
            if names.is_empty() {
                return Err(meta.error("`after()` names no step: list at least one, or remove it"));
            }
            args.after.extend(names);
        } else if meta.path.is_ident("retry") {
            seen.once(&meta, cx);
            let expr: Expr = meta.value()?.parse()?;
            check_retry(&expr, cx);
            args.retry = Some(expr);
        } else if meta.path.is_ident("timeout") {
            seen.once(&meta, cx);
            let expr: Expr = meta.value()?.parse()?;
            check_timeout(&expr, cx);
            args.timeout = Some(expr);
        } else {
            return Err(unknown_option(&meta, "#[step]", STEP_OPTIONS));
        }
        Ok(())
    });
    if let Err(error) = result {
        cx.syn_error(error);
    }
    args
}

fn unknown_option(meta: &ParseNestedMeta<'_>, attr: &str, valid: &str) -> syn::Error {
    let name = quote::ToTokens::to_token_stream(&meta.path)
        .to_string()
        .replace(' ', "");
    meta.error(format_args!(
        "unknown option `{name}` for `{attr}`; the options are {valid}"
    ))
}

/// The option names met so far in one attribute, to report repeats.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    fn once(&mut self, meta: &ParseNestedMeta<'_>, cx: &mut Ctxt) {
        let name = quote::ToTokens::to_token_stream(&meta.path).to_string();
        if self.0.contains(&name) {
            cx.error_spanned_by(&meta.path, format_args!("option `{name}` is given twice"));
        } else {
            self.0.push(name);
        }
    }
}

/// `Retry::fixed(0, ..)` or `Retry::exponential(0, ..)` with a literal 0: a step runs at least once.
fn check_retry(expr: &Expr, cx: &mut Ctxt) {
    let Some((name, first)) = constructor_call(expr, &["fixed", "exponential"]) else {
        return;
    };
    if int_literal(first) == Some(0) {
        cx.error_spanned_by(
            first,
            format_args!(
                "`Retry::{name}(0, ..)` would never run the step: `max_attempts` counts the first \
                 try, so it is at least 1 (1 means no retry)"
            ),
        );
    }
}

/// A literal zero or negative `Duration`: no attempt could ever finish.
fn check_timeout(expr: &Expr, cx: &mut Ctxt) {
    if let Expr::Path(p) = expr {
        if p.path.segments.last().is_some_and(|s| s.ident == "ZERO") {
            cx.error_spanned_by(
                expr,
                "a timeout of zero would fail every attempt: give a positive `Duration`",
            );
        }
        return;
    }
    let constructors = [
        "from_secs",
        "from_millis",
        "from_micros",
        "from_nanos",
        "from_secs_f32",
        "from_secs_f64",
        "from_mins",
        "from_hours",
    ];
    let Some((_, first)) = constructor_call(expr, &constructors) else {
        return;
    };
    let negative = matches!(first, Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_)));
    let zero = int_literal(first) == Some(0) || float_literal(first) == Some(0.0);
    if negative {
        cx.error_spanned_by(
            first,
            "a timeout cannot be negative: give a positive `Duration`",
        );
    } else if zero {
        cx.error_spanned_by(
            first,
            "a timeout of zero would fail every attempt: give a positive `Duration`",
        );
    }
}

/// For `Type::name(first, ..)` with `name` in `names`: the name and the first argument.
fn constructor_call<'a>(expr: &'a Expr, names: &[&str]) -> Option<(String, &'a Expr)> {
    let mut expr = expr;
    // Look through builder calls: `Retry::fixed(0, d).jitter()`.
    while let Expr::MethodCall(m) = expr {
        expr = &m.receiver;
    }
    let Expr::Call(ExprCall { func, args, .. }) = expr else {
        return None;
    };
    let Expr::Path(path) = &**func else {
        return None;
    };
    let name = path.path.segments.last()?.ident.to_string();
    if !names.contains(&name.as_str()) {
        return None;
    }
    Some((name, args.first()?))
}

fn int_literal(expr: &Expr) -> Option<u128> {
    match expr {
        Expr::Lit(l) => match &l.lit {
            Lit::Int(i) => i.base10_parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

fn float_literal(expr: &Expr) -> Option<f64> {
    match expr {
        Expr::Lit(l) => match &l.lit {
            Lit::Float(f) => f.base10_parse().ok(),
            _ => None,
        },
        _ => None,
    }
}
