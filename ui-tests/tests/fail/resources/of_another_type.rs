// The resources given to a run must be the type the job declares.
use jobgraph::job;

struct Api;
struct Database;

struct Invoice;

#[job(resources = Api)]
impl Invoice {
    #[step]
    async fn fetch(&self, api: &Api) -> u32 {
        let _ = api;
        1
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = Invoice.run(&Database).await;
}
