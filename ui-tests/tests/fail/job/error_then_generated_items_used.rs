// A job with one mistake whose generated items (`run`, `..Outputs`, `..Step`) are used elsewhere:
// only the mistake should be reported, not errors about missing generated items.
use jobgraph::job;

pub struct Summary;

#[job]
impl Summary {
    #[step]
    async fn fetch(&self) -> u32 {
        1
    }

    #[step]
    async fn total(&self, fetchh: &u32) -> u32 {
        *fetchh
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out: SummaryOutputs = Summary.run().await.ok().unwrap();
    assert_eq!(out.total, 1);
    assert_eq!(SummaryStep::Fetch.name(), "fetch");
}
