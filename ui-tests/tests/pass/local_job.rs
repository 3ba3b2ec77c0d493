// `#[job(local)]`: steps whose futures are not `Send` run in place with `run`; no `start`.
use std::rc::Rc;

use jobgraph::job;

struct Cache;

#[job(local)]
impl Cache {
    #[step]
    async fn load(&self) -> u32 {
        let shared = Rc::new(1);
        tokio::task::yield_now().await;
        *shared
    }

    #[step]
    async fn double(&self, load: &u32) -> u32 {
        load * 2
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = Cache.run().await.unwrap();
    assert_eq!(out.double, 2);
}
