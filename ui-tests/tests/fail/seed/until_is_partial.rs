// A run stopped by `until` returns `FooPartial`: each output is an `Option`, not the output.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> u32 {
        1
    }

    #[step]
    async fn parse(&self, fetch: &u32) -> u32 {
        *fetch
    }
}

async fn first_step() -> u32 {
    let partial = Import.runner().until(ImportStep::Fetch).run().await.unwrap();
    partial.fetch
}

fn main() {
    drop(first_step());
}
