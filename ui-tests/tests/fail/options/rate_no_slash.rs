// A rate is `<count>/<unit>`: a bare number is rejected.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step(rate = "10")]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
