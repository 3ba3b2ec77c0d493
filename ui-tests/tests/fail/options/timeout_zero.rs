// A literal zero or negative timeout is rejected at compile time.
use std::time::Duration;

use jobgraph::job;

struct Fetch;

#[job]
impl Fetch {
    #[step(timeout = Duration::from_secs(0))]
    async fn page(&self) -> u32 {
        1
    }

    #[step(timeout = Duration::ZERO)]
    async fn meta(&self) -> u32 {
        2
    }

    #[step(timeout = Duration::from_secs_f64(-1.5))]
    async fn body(&self) -> u32 {
        3
    }
}

fn main() {}
