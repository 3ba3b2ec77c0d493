// Every form of `concurrency`, `rate` and `burst`: a user's const expression, each unit of a rate
// (short and long), the burst in the rate string or as `burst`, and both limits on one step.
use jobgraph::{LimitRegistry, job};

const MAX: u32 = 2;
const BURST: u32 = 3;

pub struct Limited;

#[job]
impl Limited {
    #[step(concurrency = MAX * 2)]
    async fn fetch(&self) -> u32 {
        1
    }

    #[step(concurrency = 1, rate = "10/s")]
    async fn per_second(&self, fetch: &u32) -> u32 {
        *fetch + 1
    }

    #[step(rate = "600/m")]
    async fn per_minute(&self) -> u32 {
        2
    }

    #[step(rate = "36000 / h")]
    async fn per_hour(&self) -> u32 {
        3
    }

    #[step(rate = "10/sec burst 2")]
    async fn burst_in_string(&self) -> u32 {
        4
    }

    #[step(rate = "10/minute", burst = BURST)]
    async fn burst_option(&self) -> u32 {
        5
    }

    #[step(rate = "1/hour", burst = 1, concurrency = MAX, after(per_hour))]
    async fn everything(&self, per_second: &u32) -> u32 {
        *per_second + 1
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let limits = LimitRegistry::new();
    let out = Limited.runner().limits(&limits).run().await.unwrap();
    assert_eq!(
        (out.fetch, out.per_second, out.burst_option, out.everything),
        (1, 2, 5, 3)
    );
    // Runs without a registry use the global one.
    assert_eq!(Limited.run().await.unwrap().per_minute, 2);
}
