// A seed is typed per step: an output of the wrong type does not compile.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> Vec<u8> {
        b"a,b".to_vec()
    }

    #[step]
    async fn parse(&self, fetch: &[u8]) -> usize {
        fetch.len()
    }
}

async fn stand_in() {
    let _ = Import
        .runner()
        .seed(ImportPartial {
            fetch: Some("a,b".to_owned()),
            ..Default::default()
        })
        .run()
        .await;
}

fn main() {
    drop(stand_in());
}
