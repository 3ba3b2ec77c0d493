// `burst` only means something next to a `rate`.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = 2, burst = 5)]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
