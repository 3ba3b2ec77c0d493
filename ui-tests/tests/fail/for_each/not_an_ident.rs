// `for_each` names its parameter as an identifier, not a string.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each("ids"))]
    async fn fetch(&self, ids: &u32) -> u32 {
        *ids
    }
}

fn main() {}
