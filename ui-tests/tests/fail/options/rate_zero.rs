// A rate of zero starts per period is rejected at compile time: the step could never run.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(rate = "0/s")]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
