// `for_each` names a step that is a parent of nobody here: the step's parameters are listed.
use jobgraph::job;

pub struct Crawler;

#[job]
impl Crawler {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step]
    async fn config(&self) -> String {
        "cfg".to_owned()
    }

    #[step(for_each(pages))]
    async fn fetch(&self, ids: &Vec<u32>, config: &String) -> usize {
        ids.len() + config.len()
    }
}

fn main() {}
