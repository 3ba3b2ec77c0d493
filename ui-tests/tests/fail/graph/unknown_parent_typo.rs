// A parameter misspells its parent step: the error is on the parameter and suggests the step.
use jobgraph::job;

pub struct Summary;

#[job]
impl Summary {
    #[step]
    async fn get_connection(&self) -> u32 {
        7
    }

    #[step]
    async fn query(&self, get_conection: &u32) -> u32 {
        get_conection + 1
    }
}

fn main() {}
