// A worker runs steps on tokio's threads: a `#[job(local)]` job, whose steps' futures need not
// be `Send`, cannot be registered.
use jobgraph::store::SqliteStore;
use jobgraph::{Worker, job};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Report;

#[job(durable, local)]
impl Report {
    #[step]
    async fn load(&self) -> u32 {
        1
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let store = SqliteStore::open("sqlite::memory:").await.unwrap();
    let _ = Worker::new(&store).job::<Report>();
}
