// One parameter borrows the resources; a second one is an error.
use jobgraph::job;

struct Api;

struct Invoice;

#[job(resources = Api)]
impl Invoice {
    #[step]
    async fn fetch(&self, api: &Api, again: &Api) -> u32 {
        let _ = (api, again);
        1
    }
}

fn main() {}
