// `for_each` over a `Vec<u32>` whose parameter takes the whole output as a slice: each call gets
// one element, so the parameter must be `&u32`.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &[u32]) -> usize {
        ids.len()
    }
}

fn main() {}
