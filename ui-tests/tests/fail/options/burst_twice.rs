// The burst is given either in the rate string or as `burst`, not both.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(rate = "10/s burst 2", burst = 3)]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
