// A rate is given as a string, as in `rate = "10/s"`.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(rate = 10)]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
