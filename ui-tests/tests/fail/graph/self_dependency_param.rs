// A step takes its own output as a parameter.
use jobgraph::job;

pub struct Counter;

#[job]
impl Counter {
    #[step]
    async fn init(&self) -> u32 {
        0
    }

    #[step]
    async fn total(&self, total: &u32) -> u32 {
        total + 1
    }
}

fn main() {}
