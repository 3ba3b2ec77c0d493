// A type has one job graph: a second `#[job]` impl of it cannot add steps to the first.
use jobgraph::job;

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    async fn total(&self) -> u32 {
        1
    }
}

#[job]
impl Invoice {
    #[step]
    async fn tax(&self) -> u32 {
        2
    }
}

fn main() {}
