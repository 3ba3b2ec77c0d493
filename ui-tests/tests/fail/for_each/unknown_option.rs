// An unknown option inside `for_each(..)`: the error names the one option there is.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids, limit = 3))]
    async fn fetch(&self, ids: &u32) -> u32 {
        *ids
    }
}

fn main() {}
