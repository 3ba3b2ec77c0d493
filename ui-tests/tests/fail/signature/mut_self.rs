// A step taking `&mut self`.
use jobgraph::job;

pub struct Import {
    seen: u32,
}

#[job]
impl Import {
    #[step]
    async fn fetch(&mut self) -> u32 {
        self.seen += 1;
        self.seen
    }
}

fn main() {}
