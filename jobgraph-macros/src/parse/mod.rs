//! Parsing: the options of `#[job(...)]` and `#[step(...)]`.
//!
//! Options are parsed into plain structs; an unknown, repeated or malformed option is recorded in
//! the [`Ctxt`] and parsing goes on, so one compile reports every mistake.

use std::num::NonZeroU32;

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::{Attribute, Expr, ExprCall, Ident, Lit, LitStr, Path, Token};

use crate::error::Ctxt;

/// The grammar of `rate = "..."`: the very file the runtime parses `Rate` with, so an attribute
/// and a configuration string are read, and refused, alike.
#[path = "../../../jobgraph/src/limit/grammar.rs"]
mod rate_grammar;

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
    /// `durable`: the job's value and every output are stored, so runs checkpoint and resume.
    pub(crate) durable: Option<Ident>,
    /// `resources = Type`: what steps borrow besides their parents' outputs (clients, pools),
    /// given to each run and not stored.
    pub(crate) resources: Option<syn::Type>,
}

const JOB_OPTIONS: &str = "`name = \"...\"`, `enrich = path`, `local`, `durable`, \
                           `resources = Type`, `crate = path`";

/// The options of one `#[step(...)]`.
#[derive(Default)]
pub(crate) struct StepArgs {
    /// `after(a, b)`: steps to run after without taking their outputs.
    pub(crate) after: Vec<Ident>,
    /// `retry = expr`: the step's `RetryPolicy`.
    pub(crate) retry: Option<Expr>,
    /// `timeout = expr`: the `Duration` each attempt may take.
    pub(crate) timeout: Option<Expr>,
    /// `concurrency = expr`: at most this many attempts in flight across all runs.
    pub(crate) concurrency: Option<Expr>,
    /// `rate = "10/s"`: attempts start no faster than this, across all runs.
    pub(crate) rate: Option<RateLit>,
    /// `burst = expr`: how many attempts may start at once under `rate`.
    pub(crate) burst: Option<Expr>,
    /// `for_each(param)` or `for_each(param, concurrency = n)`: run once per element.
    pub(crate) for_each: Option<ForEach>,
}

/// `for_each(param, concurrency = n)`: the step runs once per element of `param`'s output.
#[derive(Clone)]
pub(crate) struct ForEach {
    /// The parameter whose parent's output holds the elements.
    pub(crate) param: Ident,
    /// At most this many elements at once in one run.
    pub(crate) concurrency: Option<Expr>,
}

/// A `rate = "..."` literal, parsed by the shared grammar: `count` starts per `period_secs`.
#[derive(Clone)]
pub(crate) struct RateLit {
    pub(crate) count: u32,
    pub(crate) period_secs: u64,
    pub(crate) burst: Option<u32>,
}

const STEP_OPTIONS: &str = "`after(step, ...)`, `retry = <RetryPolicy>`, `timeout = <Duration>`, \
                            `concurrency = <u32>`, `rate = \"<count>/<s|m|h>\"`, `burst = <u32>`, \
                            `for_each(param)`";

/// Parses the tokens inside `#[job(...)]`.
pub(crate) fn job_args(tokens: TokenStream, cx: &mut Ctxt) -> JobArgs {
    let mut args = JobArgs::default();
    let mut seen = Seen::default();
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            seen.once(&meta, cx);
            let lit: LitStr = value(&meta, "name = \"...\"")?.parse()?;
            if lit.value().trim().is_empty() {
                cx.error_spanned_by(&lit, "the job's `name` must not be empty");
            }
            args.name = Some(lit);
        } else if meta.path.is_ident("crate") {
            seen.once(&meta, cx);
            args.krate = Some(value(&meta, "crate = ::jobgraph")?.parse()?);
        } else if meta.path.is_ident("enrich") {
            seen.once(&meta, cx);
            args.enrich = Some(value(&meta, "enrich = my_enrich_fn")?.parse()?);
        } else if meta.path.is_ident("local") {
            seen.once(&meta, cx);
            if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                return Err(meta.error("`local` takes no value: write `#[job(local)]`"));
            }
            args.local = true;
        } else if meta.path.is_ident("durable") {
            seen.once(&meta, cx);
            if !meta.input.is_empty() && !meta.input.peek(Token![,]) {
                return Err(meta.error("`durable` takes no value: write `#[job(durable)]`"));
            }
            args.durable = meta.path.get_ident().cloned();
        } else if meta.path.is_ident("resources") {
            seen.once(&meta, cx);
            args.resources = Some(value(&meta, "resources = MyClients")?.parse()?);
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
            let expr: Expr =
                value(&meta, "retry = Retry::fixed(3, Duration::from_millis(100))")?.parse()?;
            check_retry(&expr, cx);
            args.retry = Some(expr);
        } else if meta.path.is_ident("timeout") {
            seen.once(&meta, cx);
            let expr: Expr = value(&meta, "timeout = Duration::from_secs(5)")?.parse()?;
            check_timeout(&expr, cx);
            args.timeout = Some(expr);
        } else if meta.path.is_ident("concurrency") {
            seen.once(&meta, cx);
            let expr: Expr = value(&meta, "concurrency = 4")?.parse()?;
            check_positive(
                &expr,
                "concurrency",
                "attempts of this step could ever run",
                cx,
            );
            args.concurrency = Some(expr);
        } else if meta.path.is_ident("rate") {
            seen.once(&meta, cx);
            let lit: LitStr = meta.value()?.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "expected a rate as a string: `rate = \"10/s\"` (also `/m`, `/h`)",
                )
            })?;
            match rate_grammar::parse(&lit.value()) {
                Ok(rate) => {
                    args.rate = Some(RateLit {
                        count: rate.count.get(),
                        period_secs: rate.period_secs,
                        burst: rate.burst.map(NonZeroU32::get),
                    })
                }
                Err(error) => cx.error_spanned_by(&lit, error),
            }
        } else if meta.path.is_ident("for_each") {
            seen.once(&meta, cx);
            args.for_each = Some(for_each(&meta, cx)?);
        } else if meta.path.is_ident("burst") {
            seen.once(&meta, cx);
            let expr: Expr = value(&meta, "burst = 5")?.parse()?;
            check_positive(&expr, "burst", "attempt could ever start", cx);
            args.burst = Some(expr);
        } else {
            return Err(unknown_option(&meta, "#[step]", STEP_OPTIONS));
        }
        Ok(())
    });
    if let Err(error) = result {
        cx.syn_error(error);
    }
    if let Some(burst) = &args.burst {
        match &args.rate {
            None => cx.error_spanned_by(
                burst,
                "`burst` applies to a `rate`: add `rate = \"<count>/s\"`, or remove `burst`",
            ),
            Some(rate) if rate.burst.is_some() => cx.error_spanned_by(
                burst,
                "the burst is given twice: in the `rate` string and as `burst`; keep one",
            ),
            Some(_) => {}
        }
    }
    args
}

/// `for_each(param)` or `for_each(param, concurrency = n)`.
fn for_each(meta: &ParseNestedMeta<'_>, cx: &mut Ctxt) -> syn::Result<ForEach> {
    let usage = "expected the parameter to run over: `for_each(ids)`, or with a bound on the \
                 elements run at once, `for_each(ids, concurrency = 8)`";
    if !meta.input.peek(syn::token::Paren) {
        return Err(meta.error(usage));
    }
    let content;
    syn::parenthesized!(content in meta.input);
    if content.is_empty() {
        return Err(meta.error(usage));
    }
    let param: Ident = content.parse()?;
    let mut concurrency = None;
    while !content.is_empty() {
        content.parse::<Token![,]>()?;
        if content.is_empty() {
            break;
        }
        let name: Ident = content.parse()?;
        if name != "concurrency" {
            return Err(syn::Error::new(
                name.span(),
                format_args!(
                    "unknown option `{name}` for `for_each`; the only option is `concurrency = <u32>`"
                ),
            ));
        }
        if concurrency.is_some() {
            cx.error_spanned_by(&name, "option `concurrency` is given twice");
        }
        content.parse::<Token![=]>()?;
        let expr: Expr = content.parse()?;
        check_positive(&expr, "concurrency", "element could ever run", cx);
        concurrency = Some(expr);
    }
    Ok(ForEach { param, concurrency })
}

/// A literal `0` where only a positive count makes sense, or one too large for the `u32` it is.
fn check_positive(expr: &Expr, option: &str, consequence: &str, cx: &mut Ctxt) {
    if let Expr::Lit(syn::ExprLit {
        lit: Lit::Str(text),
        ..
    }) = expr
    {
        cx.error_spanned_by(
            expr,
            format_args!(
                "`{option}` is a number, not a string: write `{option} = {}`",
                text.value().trim()
            ),
        );
    } else if int_literal(expr) == Some(0) {
        cx.error_spanned_by(
            expr,
            format_args!("`{option} = 0` means no {consequence}: give at least 1"),
        );
    } else if let Some(n) = int_literal(expr).filter(|&n| n > u128::from(u32::MAX)) {
        cx.error_spanned_by(
            expr,
            format_args!(
                "`{option} = {n}` does not fit in a `u32`: the most is {}",
                u32::MAX
            ),
        );
    } else if matches!(expr, Expr::Unary(u) if matches!(u.op, syn::UnOp::Neg(_))) {
        cx.error_spanned_by(
            expr,
            format_args!("`{option}` cannot be negative: give at least 1"),
        );
    }
}

/// What follows `option =`, or an error on the option's name when no `=` follows it: syn's own
/// "expected `=`" points past the option, at the whole attribute when the option comes last.
fn value<'a>(
    meta: &'a ParseNestedMeta<'_>,
    usage: &str,
) -> syn::Result<syn::parse::ParseStream<'a>> {
    if meta.input.peek(Token![=]) {
        return meta.value();
    }
    let name = quote::ToTokens::to_token_stream(&meta.path).to_string();
    Err(syn::Error::new_spanned(
        &meta.path,
        format_args!("`{name}` takes a value: write `{usage}`"),
    ))
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
    if is_zero_duration_call(expr) {
        cx.error_spanned_by(
            expr,
            "a timeout of zero would fail every attempt: give a positive `Duration`",
        );
        return;
    }
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

/// `Duration::new(0, 0)`, `Duration::default()` or `Default::default()` (a timeout is a
/// `Duration`, so the latter is one too).
fn is_zero_duration_call(expr: &Expr) -> bool {
    let Expr::Call(ExprCall { func, args, .. }) = expr else {
        return false;
    };
    let Expr::Path(path) = &**func else {
        return false;
    };
    let segments: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    // `<Duration as Default>::default()` is `Default`, `default` too.
    let [.., owner, function] = segments.as_slice() else {
        return false;
    };
    match (owner.as_str(), function.as_str()) {
        ("Duration" | "Default", "default") => args.is_empty(),
        ("Duration", "new") => args.len() == 2 && args.iter().all(|a| int_literal(a) == Some(0)),
        _ => false,
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
