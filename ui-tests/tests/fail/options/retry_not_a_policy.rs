// `retry = ..` must be a `RetryPolicy`; `timeout = ..` a `Duration`.
use jobgraph::job;

struct Fetch;

#[job]
impl Fetch {
    #[step(retry = 3, timeout = 500)]
    async fn page(&self) -> u32 {
        1
    }
}

fn main() {}
