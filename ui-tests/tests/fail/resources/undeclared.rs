// A client taken as a parameter without `#[job(resources = ..)]` names no step: the error says
// how to declare it.
use jobgraph::job;

struct Api;

struct Invoice;

#[job]
impl Invoice {
    #[step]
    async fn fetch(&self, api: &Api) -> u32 {
        let _ = api;
        1
    }
}

fn main() {}
