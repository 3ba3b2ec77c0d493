// A parameter type that differs from its parent's output in a generic job.
use jobgraph::job;

pub trait Db {
    fn rows(&self) -> Vec<u32>;
}

pub struct Report<D> {
    db: D,
}

#[job]
impl<D: Db> Report<D> {
    #[step]
    async fn load(&self) -> Vec<u32> {
        self.db.rows()
    }

    #[step]
    async fn total(&self, load: &Vec<u64>) -> u64 {
        load.iter().sum()
    }
}

fn main() {}
