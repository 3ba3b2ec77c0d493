// A step whose variant would be `ALL` collides with the generated constant `InvoiceStep::ALL`.
use jobgraph::job;

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    #[allow(non_snake_case)]
    async fn ALL(&self) -> u32 {
        1
    }
}

pub struct Receipt;

#[job]
impl Receipt {
    #[step]
    async fn a_l_l(&self) -> u32 {
        1
    }
}

fn main() {}
