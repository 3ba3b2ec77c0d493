// A negative `concurrency` is rejected at compile time.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = -2)]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
