::core::compile_error! {
    "unknown option `retries` for `#[step]`; the options are `after(step, ...)`"
}
::core::compile_error! {
    "step `not_async` must be an `async fn`: write `async fn not_async`"
}
::core::compile_error! {
    "step `typo` takes the output of `not_asyn`, but `impl Broken` has no step `not_asyn`; did you mean `not_async`?"
}
impl Broken {
    fn not_async(&self) -> u32 {
        1
    }
    async fn typo(&self, not_asyn: &u32) -> u32 {
        *not_asyn
    }
    async fn extra(&self) {}
}
