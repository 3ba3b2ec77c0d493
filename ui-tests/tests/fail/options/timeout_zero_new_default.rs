// `Duration::new(0, 0)` and `Duration::default()` are zero timeouts too.
use std::time::Duration;

use jobgraph::job;

struct Fetch;

#[job]
impl Fetch {
    #[step(timeout = Duration::new(0, 0))]
    async fn page(&self) -> u32 {
        1
    }

    #[step(timeout = Duration::default())]
    async fn meta(&self) -> u32 {
        2
    }

    #[step(timeout = Duration::new(0, 1))]
    async fn body(&self) -> u32 {
        3
    }
}

fn main() {}
