// `for_each` over a `Vec<String>` with a parameter of another element type: the error is on the
// parameter's type.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn urls(&self) -> Vec<String> {
        vec!["a".to_owned()]
    }

    #[step(for_each(urls))]
    async fn fetch(&self, urls: &u32) -> u32 {
        *urls
    }
}

fn main() {}
