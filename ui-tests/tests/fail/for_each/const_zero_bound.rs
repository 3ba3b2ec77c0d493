// The bound of `for_each` may be any const expression; one that evaluates to 0 fails const
// evaluation.
use jobgraph::job;

const N: u32 = 0;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids, concurrency = N))]
    async fn fetch(&self, ids: &u32) -> u32 {
        *ids
    }
}

fn main() {}
