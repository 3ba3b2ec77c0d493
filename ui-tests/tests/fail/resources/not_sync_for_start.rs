// `start` spawns the run on tokio's threads, which share the resources: they must be `Sync`.
use std::cell::Cell;
use std::sync::Arc;

use jobgraph::job;

struct Api {
    calls: Cell<u32>,
}

struct Invoice;

#[job(resources = Api)]
impl Invoice {
    #[step]
    async fn fetch(&self, api: &Api) -> u32 {
        api.calls.set(api.calls.get() + 1);
        1
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let api = Arc::new(Api { calls: Cell::new(0) });
    let _ = Invoice.start(api).wait().await;
}
