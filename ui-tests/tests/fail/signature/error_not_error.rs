// A step's `Result` error type does not implement `std::error::Error`.
use jobgraph::job;

#[derive(Debug)]
pub struct FetchFailed;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn fetch(&self) -> Result<String, FetchFailed> {
        Err(FetchFailed)
    }
}

fn main() {}
