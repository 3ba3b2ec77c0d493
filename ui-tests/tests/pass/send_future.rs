// The future of `run()` is `Send` when the job and its outputs are, so it can be spawned.
use jobgraph::{StepContext, job};

fn assert_send<T: Send>(_: &T) {}

pub struct Crawler {
    urls: Vec<String>,
}

#[job]
impl Crawler {
    #[step]
    async fn fetch(&self) -> Vec<String> {
        self.urls.iter().map(|u| format!("<{u}>")).collect()
    }

    #[step]
    async fn count(&self, fetch: &Vec<String>, ctx: &StepContext) -> usize {
        assert_eq!(ctx.attempt(), 1);
        fetch.len()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let crawler = Crawler {
        urls: vec!["a".to_owned(), "b".to_owned()],
    };
    let future = crawler.run();
    assert_send(&future);
    let out = future.await.unwrap();
    assert_eq!(out.count, 2);
}
