// The count of a rate is a whole number.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(rate = "ten/s")]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
