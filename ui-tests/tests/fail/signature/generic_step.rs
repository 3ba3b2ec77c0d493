// A step with a type parameter of its own.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch<T: Default>(&self) -> T {
        T::default()
    }
}

fn main() {}
