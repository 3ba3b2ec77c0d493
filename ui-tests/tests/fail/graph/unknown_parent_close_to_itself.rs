// A misspelled parameter whose closest step name is the step itself: the suggestion must not be
// a self-dependency.
use jobgraph::job;

pub struct Summary;

#[job]
impl Summary {
    #[step]
    async fn fetch(&self) -> u32 {
        1
    }

    #[step]
    async fn total(&self, totl: &u32) -> u32 {
        *totl
    }
}

fn main() {}
