// A generic job with a mistake (a step that is not `async`), used with a concrete type: only the
// mistake is reported, not the uses of `run`, `start` and the outputs.
use jobgraph::job;

pub trait Source: Send + Sync + 'static {
    fn rows(&self) -> Vec<u32>;
}

pub struct Fixed;

impl Source for Fixed {
    fn rows(&self) -> Vec<u32> {
        vec![1, 2]
    }
}

pub struct Report<S> {
    source: S,
}

#[job]
impl<S: Source> Report<S> {
    #[step]
    async fn load(&self) -> Vec<u32> {
        self.source.rows()
    }

    #[step]
    fn total(&self, load: &Vec<u32>) -> u32 {
        load.iter().sum()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let report = Report { source: Fixed };
    let out: ReportOutputs<Fixed> = report.run().await.unwrap();
    println!("{} {}", out.load.len(), out.total);
    let handle = Report { source: Fixed }.start();
    println!("{}", handle.wait().await.is_ok());
    println!("{}", ReportStep::Total);
}
