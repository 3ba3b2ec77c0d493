// Two steps with one name: the second is reported once, as defined twice.
use jobgraph::job;

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    async fn total(&self) -> u32 {
        1
    }

    #[step]
    async fn total(&self) -> u32 {
        2
    }
}

fn main() {}
