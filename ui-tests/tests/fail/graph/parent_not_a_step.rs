// A parameter names a method of the impl that is not marked #[step].
use jobgraph::job;

pub struct Summary;

#[job]
impl Summary {
    async fn fetch(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step]
    async fn total(&self, fetch: &Vec<u32>) -> u32 {
        fetch.iter().sum()
    }
}

fn main() {}
