// A parameter typed `&impl Trait` instead of its parent's concrete output type.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> String {
        "a,b".to_owned()
    }

    #[step]
    async fn parse(&self, fetch: &impl AsRef<str>) -> usize {
        fetch.as_ref().split(',').count()
    }
}

fn main() {}
