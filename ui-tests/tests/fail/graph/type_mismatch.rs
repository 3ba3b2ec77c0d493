// A parameter's type differs from its parent's output: the error lands on the parameter's type.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> Vec<u8> {
        b"a,b".to_vec()
    }

    #[step]
    async fn parse(&self, fetch: &String) -> usize {
        fetch.split(',').count()
    }
}

fn main() {}
