// `durable` is a flag.
use jobgraph::job;

pub struct Import;

#[job(durable = true)]
impl Import {
    #[step]
    async fn count(&self) -> u64 {
        1
    }
}

fn main() {}
