// A literal `max_attempts` of 0 is rejected at compile time: a step runs at least once.
use std::time::Duration;

use jobgraph::{job, Retry};

struct Fetch;

#[job]
impl Fetch {
    #[step(retry = Retry::exponential(0, Duration::from_millis(10)).jitter())]
    async fn page(&self) -> u32 {
        1
    }
}

fn main() {}
