// `for_each` over a parent whose output is a single value, not a sequence: the error is on the
// parameter's type.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn count(&self) -> u32 {
        3
    }

    #[step(for_each(count))]
    async fn fetch(&self, count: &u32) -> u32 {
        *count
    }
}

fn main() {}
