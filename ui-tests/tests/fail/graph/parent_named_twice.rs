// A step takes a parent's output and also lists it in `after(..)`.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> String {
        "a,b".to_owned()
    }

    #[step(after(fetch))]
    async fn parse(&self, fetch: &String) -> usize {
        fetch.split(',').count()
    }
}

fn main() {}
