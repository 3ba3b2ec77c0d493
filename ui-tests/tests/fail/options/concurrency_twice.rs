// `concurrency` given twice on one step.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = 2, concurrency = 4)]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
