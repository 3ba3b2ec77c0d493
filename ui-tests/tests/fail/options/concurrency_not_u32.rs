// `concurrency` is a `u32`, not a string.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = "4")]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
