// A durable job stores every step's output: one that is not `Serialize` and `Deserialize` is
// reported on the step's return type.
use jobgraph::job;
use serde::{Deserialize, Serialize};

pub struct Connection;

#[derive(Serialize, Deserialize)]
pub struct Import {
    customer: u64,
}

#[job(durable)]
impl Import {
    #[step]
    async fn connect(&self) -> Connection {
        Connection
    }

    #[step]
    async fn count(&self, connect: &Connection) -> u64 {
        let _ = connect;
        self.customer
    }
}

fn main() {}
