// A child of a `for_each` step takes its output as the single value each element returned: the
// output is a `Vec` of them.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &u32) -> String {
        ids.to_string()
    }

    #[step]
    async fn join(&self, fetch: &String) -> usize {
        fetch.len()
    }
}

fn main() {}
