// `for_each` over a `Vec<String>` whose parameter takes each element as `&str`: an element is
// lent as itself or, like a whole output, a `String` as `str` and a `Vec<T>` as `[T]`.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn urls(&self) -> Vec<String> {
        vec!["a".to_owned()]
    }

    #[step(for_each(urls))]
    async fn fetch(&self, urls: &str) -> usize {
        urls.len()
    }
}

fn main() {}
