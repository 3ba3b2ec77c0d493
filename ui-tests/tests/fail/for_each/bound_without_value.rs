// `concurrency` inside `for_each(..)` without its value.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids, concurrency))]
    async fn fetch(&self, ids: &u32) -> u32 {
        *ids
    }
}

fn main() {}
