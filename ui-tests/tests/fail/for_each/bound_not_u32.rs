// The bound of `for_each` is a `u32`, like `#[step(concurrency = ..)]`: a constant of another
// type is reported on the expression.
use jobgraph::job;

const N: usize = 4;

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
