//! Snapshots of the expansion: a change in generated code shows in review as a diff of these
//! files. Regenerate with `UPDATE_EXPECT=1 cargo test -p jobgraph-macros`, then read the diff.

use expect_test::{ExpectFile, expect_file};
use proc_macro2::TokenStream;
use quote::quote;

fn check(args: TokenStream, input: TokenStream, expected: ExpectFile) {
    let output = crate::expand::job(args, input);
    let file: syn::File = syn::parse2(output).expect("the expansion parses as items");
    expected.assert_eq(&prettyplease::unparse(&file));
}

#[test]
fn diamond() {
    check(
        quote!(),
        quote! {
            impl Diamond {
                /// The root.
                #[step]
                async fn a(&self) -> u32 { 1 }
                #[step]
                async fn b(&self, a: &u32) -> Result<u32, Error> { Ok(*a) }
                #[step]
                async fn c(&self, ctx: &StepContext, a: &u32) -> String { a.to_string() }
                #[step(after(c))]
                async fn d(&self, b: &u32) {}
                fn helper(&self) {}
            }
        },
        expect_file!["snapshots/diamond.rs"],
    );
}

#[test]
fn generic_with_options() {
    check(
        quote!(name = "report", crate = ::my::jobgraph),
        quote! {
            impl<'a, D: Db> Report<'a, D> where D: Send {
                #[step]
                async fn load(&self) -> Result<Vec<D::Row>, D::Error> { self.db.load().await }
                #[step]
                async fn render(&self, load: &Vec<D::Row>) -> Option<Box<Self>> { None }
            }
        },
        expect_file!["snapshots/generic_with_options.rs"],
    );
}

#[test]
fn errors_keep_the_users_impl() {
    check(
        quote!(),
        quote! {
            impl Broken {
                #[step]
                fn not_async(&self) -> u32 { 1 }
                #[step]
                async fn typo(&self, not_asyn: &u32) -> u32 { *not_asyn }
                #[step(after(typo), retries = 3)]
                async fn extra(&self) {}
            }
        },
        expect_file!["snapshots/errors_keep_the_users_impl.rs"],
    );
}

/// Expands `source` (parsed as tokens from text, so it may hold any identifier) and returns the
/// expansion's text.
fn expand_text(args: &str, source: &str) -> String {
    let args: TokenStream = args.parse().expect("the arguments lex");
    let input: TokenStream = source.parse().expect("the input lexes");
    crate::expand::job(args, input).to_string()
}

/// A raw-identifier job type and step names whose UpperCamelCase form is not an identifier made
/// the macro panic; they expand now, with `Step` in front of such variants.
#[test]
fn odd_names_expand() {
    let out = expand_text(
        "",
        "impl r#Invoice {
            #[step] async fn __(&self) -> u32 { 1 }
            #[step] async fn _1(&self) -> u32 { 1 }
            #[step] async fn _9lives(&self) -> u32 { 1 }
            #[step] async fn _\u{301}(&self) -> u32 { 1 }
        }",
    );
    assert!(!out.contains("compile_error"), "{out}");
    assert!(out.contains("pub enum InvoiceStep"), "{out}");
    assert!(out.contains("pub struct InvoiceOutputs"), "{out}");
    for variant in ["Step ,", "Step1", "Step9lives", "Step\u{301}"] {
        assert!(out.contains(variant), "no variant `{variant}` in {out}");
    }
}
