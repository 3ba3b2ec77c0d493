// `#[job(crate = ..)]` must name the jobgraph crate (or a re-export of it).
use jobgraph::job;

pub struct Invoice;

#[job(crate = ::std)]
impl Invoice {
    #[step]
    async fn total(&self) -> u32 {
        1
    }
}

pub struct Receipt;

#[job(crate = ::jobgrap)]
impl Receipt {
    #[step]
    async fn total(&self) -> u32 {
        1
    }
}

fn main() {}
