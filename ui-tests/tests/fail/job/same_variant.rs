// Two steps, `load_db` and `load__db`, map to the same step enum variant `LoadDb`.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn load_db(&self) -> u32 {
        1
    }

    #[step]
    async fn load__db(&self) -> u32 {
        2
    }
}

fn main() {}
