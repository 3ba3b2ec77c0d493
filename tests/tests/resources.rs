//! Resources (`#[job(resources = T)]`): one value per run (or per batch, or per resume) that
//! every step taking a `&T` borrows, besides its parents' outputs. Not part of the job's value,
//! so a durable run stores its input without them and a resume is given them again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use jobgraph::store::MemoryStore;
use jobgraph::{Batch, StepContext, job};
use serde::{Deserialize, Serialize};

/// A stand-in for a client: what a step calls, and a record of the calls, which a test reads.
#[derive(Default)]
struct Api {
    base: u64,
    calls: Mutex<BTreeMap<String, u32>>,
}

impl Api {
    fn new(base: u64) -> Self {
        Api {
            base,
            calls: Mutex::default(),
        }
    }

    fn call(&self, what: &str) -> u64 {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(what.to_owned())
            .or_default() += 1;
        self.base
    }

    fn calls(&self, what: &str) -> u32 {
        self.calls.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

struct Invoice {
    id: u64,
}

#[job(resources = Api)]
impl Invoice {
    #[step]
    async fn customer(&self, api: &Api) -> u64 {
        api.call("customer") + self.id
    }

    /// A parent's output, the context and the resources, in any order.
    #[step]
    async fn total(&self, ctx: &StepContext, customer: &u64, api: &Api) -> u64 {
        assert!(!ctx.job_id().is_empty());
        api.call("total") + customer * 10
    }

    /// A step may leave the resources alone.
    #[step]
    async fn label(&self, total: &u64) -> String {
        format!("#{total}")
    }
}

#[job(resources = Api)]
impl Lines {
    #[step]
    async fn count(&self) -> Vec<u64> {
        (0..self.n).collect()
    }

    #[step(for_each(count, concurrency = 2))]
    async fn priced(&self, count: &u64, client: &Api) -> u64 {
        client.call("priced") + count
    }
}

struct Lines {
    n: u64,
}

#[tokio::test]
async fn every_step_that_asks_borrows_the_runs_resources() {
    let api = Api::new(1000);
    let out = Invoice { id: 7 }.run(&api).await.unwrap();
    assert_eq!(out.customer, 1007);
    assert_eq!(out.total, 1000 + 10_070);
    assert_eq!(out.label, "#11070");
    assert_eq!(api.calls("customer"), 1);
    assert_eq!(api.calls("total"), 1);

    let lines = Lines { n: 5 }.run(&api).await.unwrap();
    assert_eq!(lines.priced, vec![1000, 1001, 1002, 1003, 1004]);
    assert_eq!(api.calls("priced"), 5);
}

#[tokio::test]
async fn runner_until_and_start_take_the_resources_too() {
    let api = Api::new(1);
    let partial = Invoice { id: 2 }
        .runner(&api)
        .until(InvoiceStep::Customer)
        .run()
        .await
        .unwrap();
    assert_eq!(partial.customer, Some(3));
    assert_eq!(partial.total, None);
    assert_eq!(api.calls("total"), 0);

    let shared = Arc::new(Api::new(5));
    let handle = Invoice { id: 1 }.start(Arc::clone(&shared));
    assert_eq!(handle.wait().await.unwrap().customer, 6);
    let handle = Invoice { id: 2 }.start_with(Arc::clone(&shared), |run| run.job_id("inv-2"));
    assert_eq!(handle.id(), "inv-2");
    assert_eq!(handle.wait().await.unwrap().customer, 7);
    assert_eq!(shared.calls("customer"), 2);
}

#[tokio::test]
async fn a_batch_lends_one_value_to_all_its_runs() {
    let api = Arc::new(Api::new(100));
    let done = Batch::with_resources((0..20).map(|id| Invoice { id }), Arc::clone(&api))
        .concurrency(4)
        .run()
        .await;
    assert!(done.is_success());
    assert_eq!(done.results[3].as_ref().unwrap().customer, 103);
    assert_eq!(api.calls("customer"), 20);
}

/// A durable job: its value is stored, the client is not.
#[derive(Serialize, Deserialize)]
struct Import {
    customer: u64,
}

/// Counts executions per step and fails `pull` while `broken` is set: state a stored input
/// cannot carry, and the reason resources exist.
#[derive(Default)]
struct Crm {
    pulls: AtomicU32,
    pushes: AtomicU32,
    broken: std::sync::atomic::AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("the CRM is down")]
struct CrmDown;

#[job(durable, resources = Crm)]
impl Import {
    #[step]
    async fn pull(&self, crm: &Crm) -> Result<u64, CrmDown> {
        crm.pulls.fetch_add(1, Ordering::SeqCst);
        if crm.broken.load(Ordering::SeqCst) {
            return Err(CrmDown);
        }
        Ok(self.customer * 2)
    }

    #[step]
    async fn push(&self, pull: &u64, crm: &Crm) -> u64 {
        crm.pushes.fetch_add(1, Ordering::SeqCst);
        pull + 1
    }
}

#[tokio::test]
async fn a_durable_run_and_its_resume_are_given_the_resources() {
    let store = MemoryStore::new();
    let crm = Crm::default();
    crm.broken.store(true, Ordering::SeqCst);
    let failed = Import { customer: 4 }
        .runner(&crm)
        .store(&store)
        .job_id("import-4")
        .run()
        .await;
    assert!(failed.is_err());
    assert_eq!(crm.pulls.load(Ordering::SeqCst), 1);

    // Resumed from the stored input alone, with a client that works now.
    let fixed = Crm::default();
    let out = jobgraph::durable::resume_with::<Import>(&store, "import-4", &fixed)
        .await
        .unwrap();
    assert_eq!((out.pull, out.push), (8, 9));
    assert_eq!(fixed.pulls.load(Ordering::SeqCst), 1);

    // Completed: nothing runs again.
    let again = Crm::default();
    let out = jobgraph::durable::resume_with::<Import>(&store, "import-4", &again)
        .await
        .unwrap();
    assert_eq!(out.push, 9);
    assert_eq!(again.pulls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_durable_batch_and_its_resume_are_given_the_resources() {
    let store = MemoryStore::new();
    let crm = Arc::new(Crm::default());
    let done = Batch::with_resources(
        (0..10).map(|customer| Import { customer }),
        Arc::clone(&crm),
    )
    .store(&store, "imports")
    .run()
    .await
    .unwrap();
    assert!(done.is_success());
    assert_eq!(crm.pushes.load(Ordering::SeqCst), 10);

    let other = Arc::new(Crm::default());
    let resumed =
        jobgraph::durable::resume_batch_with::<Import>(&store, "imports", Arc::clone(&other))
            .run()
            .await
            .unwrap();
    assert_eq!(resumed.loaded, 10);
    assert_eq!(resumed.results[9].as_ref().unwrap().push, 19);
    assert_eq!(other.pulls.load(Ordering::SeqCst), 0);
}
