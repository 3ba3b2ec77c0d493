// `after(..)` lists the same step twice.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn lock(&self) {}

    #[step(after(lock, lock))]
    async fn load(&self) -> u32 {
        1
    }
}

fn main() {}
