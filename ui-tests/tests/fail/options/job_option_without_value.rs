// Options that take a value, given none: the error is on the option, not the whole attribute.
use jobgraph::job;

pub struct Invoice;

#[job(enrich)]
impl Invoice {
    #[step]
    async fn total(&self) -> u32 {
        1
    }
}

pub struct Receipt;

#[job(crate)]
impl Receipt {
    #[step]
    async fn total(&self) -> u32 {
        1
    }
}

pub struct Refund;

#[job]
impl Refund {
    #[step(timeout)]
    async fn total(&self) -> u32 {
        1
    }
}

fn main() {}
