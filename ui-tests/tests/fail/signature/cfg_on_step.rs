// `#[cfg]` on a step or on a step's parameter would change the graph after `#[job]` built it.
use jobgraph::job;

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    async fn total(&self) -> u32 {
        1
    }

    #[cfg(feature = "tax")]
    #[step]
    async fn tax(&self, total: &u32) -> u32 {
        *total / 5
    }

    #[step]
    async fn print(&self, #[cfg(feature = "tax")] total: &u32) -> String {
        String::new()
    }
}

fn main() {}
