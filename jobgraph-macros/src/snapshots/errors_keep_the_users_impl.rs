::core::compile_error! {
    "unknown option `retries` for `#[step]`; the options are `after(step, ...)`, `retry = <RetryPolicy>`, `timeout = <Duration>`, `concurrency = <u32>`, `rate = \"<count>/<s|m|h>\"`, `burst = <u32>`, `for_each(param)`"
}
::core::compile_error! {
    "step `not_async` must be an `async fn`: write `async fn not_async`"
}
::core::compile_error! {
    "step `typo` takes the output of `not_asyn`, but `impl Broken` has no step `not_asyn`; did you mean `not_async`?"
}
impl Broken {
    #[allow(clippy::ptr_arg, clippy::borrowed_box, clippy::too_many_arguments)]
    fn not_async(&self) -> u32 {
        1
    }
    #[allow(clippy::ptr_arg, clippy::borrowed_box, clippy::too_many_arguments)]
    async fn typo(&self, not_asyn: &u32) -> u32 {
        *not_asyn
    }
    #[allow(clippy::ptr_arg, clippy::borrowed_box, clippy::too_many_arguments)]
    async fn extra(&self) {}
}
