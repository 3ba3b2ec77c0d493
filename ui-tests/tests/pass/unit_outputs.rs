// Steps whose output is `()`: implicit, written `-> ()`, and `Result<(), E>`.
use std::sync::atomic::{AtomicU32, Ordering};

use jobgraph::job;

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

pub struct Setup {
    calls: AtomicU32,
}

#[job]
impl Setup {
    #[step]
    async fn migrate(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    #[step(after(migrate))]
    async fn seed(&self) -> () {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    #[step]
    async fn check(&self, seed: &()) -> Result<(), Never> {
        let () = *seed;
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let setup = Setup {
        calls: AtomicU32::new(0),
    };
    let out = setup.run().await.unwrap();
    let () = out.check;
    assert_eq!(setup.calls.load(Ordering::SeqCst), 3);
}
