// The bound of `for_each` is a constant: a value known only at run time is rejected where it is
// written.
use jobgraph::job;

pub struct Crawler {
    workers: usize,
}

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids, concurrency = self.workers))]
    async fn fetch(&self, ids: &u32) -> u32 {
        *ids
    }
}

fn main() {}
