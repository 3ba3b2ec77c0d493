// A parameter names no step and nothing close to one: the error lists the job's steps.
use jobgraph::job;

pub struct Summary;

#[job]
impl Summary {
    #[step]
    async fn fetch(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step]
    async fn total(&self, rows: &Vec<u32>) -> u32 {
        rows.iter().sum()
    }
}

fn main() {}
