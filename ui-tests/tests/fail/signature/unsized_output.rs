// A step's output is stored for its children: it must have a size known at compile time.
use jobgraph::job;

#[derive(Debug, thiserror::Error)]
#[error("failed")]
pub struct Failed;

pub struct Invoice;

#[job]
impl Invoice {
    #[step]
    async fn bytes(&self) -> [u8] {
        todo!()
    }

    #[step]
    async fn text(&self) -> Result<str, Failed> {
        todo!()
    }
}

fn main() {}
