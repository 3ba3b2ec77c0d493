// A `for_each` bound may name an associated constant of the job, as step-level limits may.
use jobgraph::job;

pub struct Crawl;

impl Crawl {
    const WORKERS: u32 = 2;
}

#[job]
impl Crawl {
    #[step]
    async fn pages(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(pages, concurrency = Self::WORKERS), concurrency = Self::WORKERS)]
    async fn fetch(&self, pages: &u32) -> u32 {
        pages * 2
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = Crawl.run().await.unwrap();
    assert_eq!(out.fetch, [2, 4, 6]);
}
