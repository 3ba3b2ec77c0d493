// `resources` names the type the steps borrow.
use jobgraph::job;

struct Invoice;

#[job(resources)]
impl Invoice {
    #[step]
    async fn fetch(&self) -> u32 {
        1
    }
}

fn main() {}
