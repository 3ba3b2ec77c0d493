// `#[job]` on `impl Invoice` defines `InvoiceStep` and `InvoiceOutputs` next to it.
use jobgraph::job;

pub struct Invoice;

pub struct InvoiceStep;

#[job]
impl Invoice {
    #[step]
    async fn total(&self) -> u32 {
        1
    }
}

fn main() {}
