// A parameter taking its parent's output by value instead of by reference.
use jobgraph::job;

pub struct Counter;

#[job]
impl Counter {
    #[step]
    async fn count(&self) -> u32 {
        3
    }

    #[step]
    async fn double(&self, count: u32) -> u32 {
        count * 2
    }
}

fn main() {}
