// A step output that is not `Send` (`Rc`) makes the `run()` future not `Send` (`local`: no `start`).
use std::rc::Rc;

use jobgraph::job;

fn assert_send<T: Send>(_: &T) {}

pub struct Cache;

#[job(local)]
impl Cache {
    #[step]
    async fn load(&self) -> Rc<u32> {
        Rc::new(1)
    }

    #[step]
    async fn total(&self, load: &Rc<u32>) -> u32 {
        **load
    }
}

fn main() {
    let future = Cache.run();
    assert_send(&future);
}
