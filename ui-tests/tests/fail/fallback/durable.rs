// A durable job with a mistake (an unknown option), run with a store: only the mistake is
// reported, not that the job is no `DurableJob`.
use jobgraph::job;
use jobgraph::store::MemoryStore;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
pub struct Import {
    customer: u64,
}

#[job(durable)]
impl Import {
    #[step(retries = 3)]
    async fn profile(&self) -> String {
        self.customer.to_string()
    }

    #[step]
    async fn orders(&self, profile: &String) -> Vec<u64> {
        vec![profile.len() as u64]
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = MemoryStore::new();
    let job = Import { customer: 7 };
    let out = job
        .runner()
        .store(&store)
        .job_id("import-7")
        .run()
        .await
        .ok()
        .unwrap();
    println!("{} {:?}", out.profile, out.orders);
}
