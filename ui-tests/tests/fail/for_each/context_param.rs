// `for_each` names the context parameter: it is not a parent's output, so there is nothing to
// run over.
use jobgraph::{StepContext, job};

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ctx))]
    async fn fetch(&self, ids: &Vec<u32>, ctx: &StepContext) -> usize {
        ids.len() + ctx.attempt() as usize
    }
}

fn main() {}
