// A burst of 0 is rejected at compile time, given as `burst` or in the rate string.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(rate = "10/s", burst = 0)]
    async fn fetch(&self) -> u32 {
        1
    }

    #[step(rate = "10/s burst 0")]
    async fn parse(&self) -> u32 {
        2
    }
}

fn main() {}
