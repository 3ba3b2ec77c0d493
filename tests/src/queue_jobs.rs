//! The job the multi-process queue tests submit and their worker processes
//! (`src/bin/queue_worker.rs`) run, with the pure evaluation the tests compare outputs with.

use jobgraph::job;
use serde::{Deserialize, Serialize};

/// The batch the tests submit.
pub const BATCH: &str = "fleet";

/// A fan-out and fan-in: `load` feeds four independent steps, which `merge` joins; `parts`
/// fans out over `load`'s output element by element.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fan {
    /// The run's number.
    pub n: u64,
}

#[job(durable)]
impl Fan {
    #[step]
    async fn load(&self) -> Vec<u64> {
        (0..self.n % 4 + 1).map(|i| self.n * 10 + i).collect()
    }

    #[step]
    async fn north(&self, load: &[u64]) -> u64 {
        load.iter().sum::<u64>() + 1
    }

    #[step]
    async fn south(&self, load: &[u64]) -> u64 {
        load.iter().sum::<u64>() + 2
    }

    #[step]
    async fn east(&self, load: &[u64]) -> u64 {
        load.len() as u64 * 3
    }

    #[step(for_each(load))]
    async fn parts(&self, load: &u64) -> u64 {
        load * 2
    }

    #[step]
    async fn merge(&self, north: &u64, south: &u64, east: &u64, parts: &[u64]) -> u64 {
        north + south + east + parts.iter().sum::<u64>()
    }
}

/// What a run of `Fan { n }` outputs at `merge`, computed without the job.
pub fn expected_merge(n: u64) -> u64 {
    let load: Vec<u64> = (0..n % 4 + 1).map(|i| n * 10 + i).collect();
    let sum: u64 = load.iter().sum();
    (sum + 1) + (sum + 2) + load.len() as u64 * 3 + load.iter().map(|x| x * 2).sum::<u64>()
}
