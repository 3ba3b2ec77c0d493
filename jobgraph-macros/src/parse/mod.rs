//! Parsing: the options of `#[job(...)]` and `#[step(...)]`.
//!
//! Options are parsed into plain structs; an unknown, repeated or malformed option is recorded in
//! the [`Ctxt`] and parsing goes on, so one compile reports every mistake.

use proc_macro2::TokenStream;
use syn::meta::ParseNestedMeta;
use syn::punctuated::Punctuated;
use syn::{Attribute, Ident, LitStr, Path, Token};

use crate::error::Ctxt;

/// The options of `#[job(...)]`.
#[derive(Default)]
pub(crate) struct JobArgs {
    /// `name = "..."`: the job's name in reports, DOT and errors.
    pub(crate) name: Option<LitStr>,
    /// `crate = path`: where the runtime crate is, when it is re-exported.
    pub(crate) krate: Option<Path>,
}

const JOB_OPTIONS: &str = "`name = \"...\"`, `crate = path`";

/// The options of one `#[step(...)]`.
#[derive(Default)]
pub(crate) struct StepArgs {
    /// `after(a, b)`: steps to run after without taking their outputs.
    pub(crate) after: Vec<Ident>,
}

const STEP_OPTIONS: &str = "`after(step, ...)`";

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
