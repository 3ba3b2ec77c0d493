// A job generic over a trait: `impl<D: Db> Report<D>`.
use jobgraph::job;

pub trait Db {
    fn rows(&self) -> Vec<u32>;
}

pub struct Memory(Vec<u32>);

impl Db for Memory {
    fn rows(&self) -> Vec<u32> {
        self.0.clone()
    }
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
    async fn total(&self, load: &Vec<u32>) -> u32 {
        load.iter().sum()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let report = Report {
        db: Memory(vec![1, 2, 3]),
    };
    let out: ReportOutputs<Memory> = report.run().await.unwrap();
    assert_eq!(out.load, vec![1, 2, 3]);
    assert_eq!(out.total, 6);
}
