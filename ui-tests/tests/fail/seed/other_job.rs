// The outputs of one job cannot seed another, nor can another job's step end its run.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> u32 {
        1
    }
}

pub struct Export;

#[job]
impl Export {
    #[step]
    async fn fetch(&self) -> u32 {
        2
    }
}

async fn mixed() {
    let _ = Import.runner().seed(ExportPartial::default()).run().await;
    let _ = Import.runner().until(ExportStep::Fetch).run().await;
}

fn main() {
    drop(mixed());
}
