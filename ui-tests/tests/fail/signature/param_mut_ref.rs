// A parameter taking its parent's output by `&mut`.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> Vec<u32> {
        vec![3, 1, 2]
    }

    #[step]
    async fn sort(&self, fetch: &mut Vec<u32>) -> u32 {
        fetch.sort();
        fetch[0]
    }
}

fn main() {}
