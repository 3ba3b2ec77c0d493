// A step taking `self` by value.
use jobgraph::job;

pub struct Import {
    url: String,
}

#[job]
impl Import {
    #[step]
    async fn fetch(self) -> String {
        self.url
    }
}

fn main() {}
