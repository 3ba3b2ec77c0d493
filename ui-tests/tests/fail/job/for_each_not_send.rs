// A `for_each` step's elements run inside the step's own future; one holding an `Rc` across an
// `.await` makes the run's future not `Send`, so `start` is an error (as for any step:
// start_not_send.rs).
use std::rc::Rc;

use jobgraph::job;

struct Pages;

#[job]
impl Pages {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2]
    }

    #[step(for_each(ids))]
    async fn fetch(&self, ids: &u32) -> u32 {
        let shared = Rc::new(*ids);
        tokio::task::yield_now().await;
        *shared
    }
}

fn main() {}
