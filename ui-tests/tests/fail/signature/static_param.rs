// A parent's output is lent for the run, never for `'static`.
use jobgraph::{StepContext, job};

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    async fn total(&self) -> u32 {
        1
    }

    #[step]
    async fn tax(&self, total: &'static u32, ctx: &'static StepContext) -> u32 {
        let _ = ctx;
        *total / 5
    }
}

fn main() {}
