// `concurrency` is evaluated at compile time: a value only known at run time is rejected (set it
// with `LimitRegistry::set_concurrency` instead).
use jobgraph::job;

fn workers() -> u32 {
    4
}

pub struct Crawler;

#[job]
impl Crawler {
    #[step(concurrency = workers())]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
