// An ordinary type error inside a step's body keeps rustc's own message and spans.
use jobgraph::job;

pub struct Summary;

#[job]
impl Summary {
    #[step]
    async fn fetch(&self) -> u32 {
        "one"
    }

    #[step]
    async fn total(&self, fetch: &u32) -> u32 {
        *fetch
    }
}

fn main() {}
