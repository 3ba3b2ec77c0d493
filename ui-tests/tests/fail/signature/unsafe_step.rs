// The scheduler calls a step; it cannot promise what an `unsafe fn` requires.
use jobgraph::job;

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    async unsafe fn total(&self) -> u32 {
        1
    }
}

fn main() {}
