// A job that declares resources is run with them: `run()` alone does not compile.
use jobgraph::job;

struct Api;

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
    let _ = Invoice.run().await;
}
