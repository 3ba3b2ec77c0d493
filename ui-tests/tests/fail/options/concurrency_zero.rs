// A literal `concurrency = 0` is rejected at compile time: the step could never run.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = 0)]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
