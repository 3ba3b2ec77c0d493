// `for_each` given twice on one step.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step]
    async fn pages(&self) -> Vec<u32> {
        vec![4, 5]
    }

    #[step(for_each(ids), for_each(pages))]
    async fn fetch(&self, ids: &u32, pages: &u32) -> u32 {
        ids + pages
    }
}

fn main() {}
