// A durable job stores its value as the run's input: a job type that is not `Serialize` and
// `Deserialize` is reported on the impl's type.
use jobgraph::job;

pub struct Import {
    customer: u64,
}

#[job(durable)]
impl Import {
    #[step]
    async fn count(&self) -> u64 {
        self.customer
    }
}

fn main() {}
