// Concurrency bounds are `u32`: a literal past `u32::MAX` does not fit (it is not 0).
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = 4294967296)]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids, concurrency = 4294967296))]
    async fn fetch(&self, ids: &u32) -> u32 {
        *ids
    }
}

fn main() {}
