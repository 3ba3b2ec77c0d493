// A `StepContext` parameter taken by value instead of `&StepContext`.
use jobgraph::{StepContext, job};

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn send(&self, ctx: StepContext) -> u32 {
        ctx.attempt()
    }
}

fn main() {}
