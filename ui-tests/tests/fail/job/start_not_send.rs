// `start` spawns the run on tokio, so a step holding an `Rc` across an `.await` is an error
// (`#[job(local)]` leaves `start` out; see pass/local_job.rs).
use std::rc::Rc;

use jobgraph::job;

struct Cache;

#[job]
impl Cache {
    #[step]
    async fn load(&self) -> u32 {
        let shared = Rc::new(1);
        tokio::task::yield_now().await;
        *shared
    }
}

fn main() {}
