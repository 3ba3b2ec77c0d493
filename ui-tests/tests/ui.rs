//! Compile-fail and pass cases of `#[job]`. Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p jobgraph-ui-tests`, then read every one as a user would.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/fail/*/*.rs");
    t.pass("tests/pass/*.rs");
}
