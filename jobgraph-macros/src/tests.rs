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

/// Every step option and `enrich`: the per-step functions that evaluate them, the policies as
/// data, and the partial outputs a seeded run starts from.
#[test]
fn every_option() {
    check(
        quote!(enrich = tag_tenant, resources = Api),
        quote! {
            impl Crawl {
                #[step(retry = Retry::fixed(3, Duration::from_millis(10)), timeout = Duration::from_secs(self.secs))]
                async fn pages(&self) -> Result<Vec<u32>, Error> { Ok(vec![1, 2]) }
                #[step(for_each(pages, concurrency = 4), concurrency = Self::POOL, rate = "10/s", burst = 2)]
                async fn fetch(&self, ctx: &StepContext, pages: &u32, api: &Api) -> String { pages.to_string() }
                #[step]
                async fn index(&self, fetch: &[String]) -> usize { fetch.len() }
            }
        },
        expect_file!["snapshots/every_option.rs"],
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

/// A job with errors still gets its generated items, so code using them compiles and only the
/// errors are reported; with no graph, `STEPS` have no edges and the scheduler only panics. Left
/// out: the variant of a step whose variant an earlier step took, the field of a step whose output
/// has no size, the second definition of a step, and the `run` the user's impl defines itself.
#[test]
fn errors_emit_fallback_items() {
    check(
        quote!(),
        quote! {
            impl Loop {
                #[step]
                async fn load_db(&self, render: &String) -> u32 { 1 }
                #[step]
                async fn load__db(&self) -> u32 { 2 }
                #[step]
                async fn render(&self, load_db: &u32) -> String { String::new() }
                #[step]
                async fn render(&self) -> String { String::new() }
                #[step]
                async fn bytes(&self) -> [u8] { todo!() }
                fn run(&self) {}
            }
        },
        expect_file!["snapshots/errors_emit_fallback_items.rs"],
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

/// A cycle through 300 steps printed 887,000 characters: every edge's error repeated the whole
/// path. The path is named once now, and each edge has a short line of its own.
#[test]
fn long_cycle_names_its_path_once() {
    let n = 300;
    let steps: String = (0..n)
        .map(|i| {
            let parent = (i + n - 1) % n;
            format!("#[step] async fn step{i}(&self, step{parent}: &u32) -> u32 {{ 1 }}\n")
        })
        .collect();
    let out = expand_text("", &format!("impl Ring {{ {steps} }}"));
    let path_start = "`step0` -> `step1` -> `step2`";
    assert_eq!(out.matches(path_start).count(), 1, "the path is named once");
    assert_eq!(out.matches("compile_error").count(), n, "an error per edge");
    assert_eq!(out.matches("part of the dependency cycle").count(), n - 2);
    assert_eq!(out.matches("closes the dependency cycle").count(), 1);
    let errors: usize = out
        .split("compile_error")
        .skip(1)
        .map(|e| e.split('}').next().map_or(0, str::len))
        .sum();
    assert!(errors < 40_000, "{errors} characters of errors");
}

/// Without a graph the fallback items name the runtime's paths: when the errors left a `crate = ..`
/// unread, those paths are unknown, and none are emitted; nor for a trait impl, which is no job.
#[test]
fn no_fallback_without_the_runtimes_path_or_for_a_trait_impl() {
    let step = "#[step] async fn a(&self) -> u32 { 1 }";
    for (args, source) in [
        (
            "retries = 3, crate = ::my::jobgraph",
            format!("impl Bad {{ {step} }}"),
        ),
        ("crate", format!("impl Bad {{ {step} }}")),
        ("", format!("impl Display for Bad {{ {step} }}")),
    ] {
        let out = expand_text(args, &source);
        assert!(out.contains("compile_error"), "{out}");
        assert!(!out.contains("BadStep"), "#[job({args})] {source}: {out}");
    }
    let out = expand_text(
        "crate = ::my::jobgraph",
        "impl Bad { #[step(retries = 3)] async fn a(&self) -> u32 { 1 } }",
    );
    assert!(out.contains("compile_error"), "{out}");
    assert!(out.contains("pub enum BadStep"), "{out}");
}
