// A step that is not an `async fn`.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> String {
        "a,b".to_owned()
    }

    #[step]
    fn parse(&self, fetch: &String) -> usize {
        fetch.split(',').count()
    }
}

fn main() {}
