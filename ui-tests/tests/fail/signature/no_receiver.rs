// A step without a receiver (an associated function).
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch() -> String {
        "a,b".to_owned()
    }
}

fn main() {}
