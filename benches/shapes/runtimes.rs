//! The two runtimes every benchmark measures on, shared by the `graphs` and `batch` benches
//! (included with `#[path]`).

use std::future::Future;

use tokio::runtime::{Builder, Runtime};

/// Which runtime a group runs on.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Flavor {
    /// `current_thread`: the timing loop runs in `block_on`.
    Current,
    /// `multi_thread` with 2 workers: the timing loop runs in a task spawned onto a worker.
    Multi,
}

impl Flavor {
    /// Both flavors, current_thread first.
    pub(crate) const ALL: [Flavor; 2] = [Flavor::Current, Flavor::Multi];

    /// The runtime's name in benchmark ids.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Flavor::Current => "current_thread",
            Flavor::Multi => "multi_thread",
        }
    }
}

/// A current_thread runtime and a multi_thread runtime with 2 workers.
pub(crate) struct Runtimes {
    /// The current_thread runtime, for what runs only there (`async_dag` is `!Send`).
    pub(crate) current: Runtime,
    multi: Runtime,
}

impl Runtimes {
    pub(crate) fn new() -> Self {
        Runtimes {
            current: Builder::new_current_thread().enable_all().build().unwrap(),
            multi: Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// Runs `future` (a timing loop, or one run to check its result) on the runtime of
    /// `flavor`: in `block_on` on current_thread, in a task spawned from `block_on` onto a worker
    /// on multi_thread.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        flavor: Flavor,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        match flavor {
            Flavor::Current => self.current.block_on(future),
            Flavor::Multi => self
                .multi
                .block_on(async { tokio::spawn(future).await.unwrap() }),
        }
    }
}
