// A type of the user's own named `StepContext` is not the run context.
use jobgraph::job;

pub struct StepContext;

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    async fn total(&self, ctx: &StepContext) -> u32 {
        let _ = ctx;
        1
    }
}

fn main() {}
