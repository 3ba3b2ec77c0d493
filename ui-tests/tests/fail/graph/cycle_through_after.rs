// A cycle closed by an `after(..)` edge: the `after` name is one of the reported edges.
use jobgraph::job;

pub struct Backup;

#[job]
impl Backup {
    #[step(after(verify))]
    async fn snapshot(&self) -> Vec<u8> {
        vec![1, 2, 3]
    }

    #[step]
    async fn verify(&self, snapshot: &Vec<u8>) -> bool {
        !snapshot.is_empty()
    }
}

fn main() {}
