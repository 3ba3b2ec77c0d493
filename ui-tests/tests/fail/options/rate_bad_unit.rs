// The unit of a rate is `s`, `m` or `h`.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(rate = "10/x")]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
