// `concurrency` may be any const expression; one that evaluates to 0 fails const evaluation.
use jobgraph::job;

const WORKERS: u32 = 0;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = WORKERS)]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
