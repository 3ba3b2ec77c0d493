// `for_each` on a step that takes no parent's output: there is nothing to run over.
use jobgraph::{StepContext, job};

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids), after(ids))]
    async fn fetch(&self, ctx: &StepContext) -> u32 {
        ctx.attempt()
    }
}

fn main() {}
