//! Durable runs: every step's output is committed as it completes, a run resumes where it
//! stopped (also after its process died: the run's future dropped mid-way, its lease aged in the
//! store), a completed run returns its stored outputs without running anything, a run id is run
//! by one runner at a time, and a stored output that no longer decodes is a clear error until
//! its step is reset. Each case runs on the in-memory store, on SQLite and on PostgreSQL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jobgraph::durable::{DurableError, resume};
use jobgraph::job;
use jobgraph::store::{MemoryStore, PgStore, RunState, SqliteStore, StepStatus, Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("the CRM is down")]
struct CrmDown;

/// How often each step ran, per customer (each test uses its own customers), and which steps
/// fail: the job's value is stored and decoded again, so it cannot carry its own counters.
static RAN: Mutex<Option<HashMap<(u64, &'static str), u32>>> = Mutex::new(None);
static FAILING: Mutex<Option<HashMap<u64, &'static str>>> = Mutex::new(None);

fn ran(customer: u64, step: &'static str) -> u32 {
    RAN.lock()
        .unwrap()
        .as_ref()
        .and_then(|m| m.get(&(customer, step)).copied())
        .unwrap_or(0)
}

fn mark(customer: u64, step: &'static str) {
    *RAN.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry((customer, step))
        .or_default() += 1;
}

fn fail(customer: u64, step: Option<&'static str>) {
    let mut failing = FAILING.lock().unwrap();
    let failing = failing.get_or_insert_with(HashMap::new);
    match step {
        Some(step) => failing.insert(customer, step),
        None => failing.remove(&customer),
    };
}

fn fails(customer: u64, step: &'static str) -> bool {
    FAILING
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|m| m.get(&customer) == Some(&step))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    name: String,
    tier: u8,
}

/// `profile` -> `orders` -> `invoice`; `audit` on its own.
#[derive(Serialize, Deserialize)]
struct Import {
    customer: u64,
}

#[job(durable)]
impl Import {
    #[step]
    async fn profile(&self) -> Result<Profile, CrmDown> {
        mark(self.customer, "profile");
        if fails(self.customer, "profile") {
            return Err(CrmDown);
        }
        Ok(Profile {
            name: format!("customer-{}", self.customer),
            tier: 2,
        })
    }

    #[step]
    async fn orders(&self, profile: &Profile) -> Result<Vec<u32>, CrmDown> {
        mark(self.customer, "orders");
        if fails(self.customer, "orders") {
            return Err(CrmDown);
        }
        Ok(vec![u32::from(profile.tier), 10, 20])
    }

    #[step]
    async fn audit(&self) -> u64 {
        mark(self.customer, "audit");
        self.customer * 2
    }

    #[step]
    async fn invoice(&self, profile: &Profile, orders: &[u32], audit: &u64) -> String {
        mark(self.customer, "invoice");
        let total: u32 = orders.iter().sum();
        format!("{}: {total} (audit {audit})", profile.name)
    }
}

jobgraph_tests::on_both_stores! {
    checkpoints_each_step_and_resumes_only_the_rest => checkpoints_and_resumes,
    a_completed_run_returns_its_stored_outputs => completed_run_runs_nothing,
    resume_needs_only_the_stored_input => resume_from_input,
    a_dropped_run_resumes_after_its_lease_expires => dropped_run_resumes,
    one_runner_at_a_time => one_runner_at_a_time_case,
    an_output_that_no_longer_decodes_is_a_clear_error => undecodable_output,
    a_fan_out_resumes_only_its_unfinished_elements => fan_out_resumes,
}

async fn checkpoints_and_resumes<S: Store + Clone>(store: S, base: u64) {
    let customer = base + 101;
    fail(customer, Some("orders"));
    let err = Import { customer }
        .runner()
        .store(&store)
        .job_id("import-101")
        .run()
        .await
        .unwrap_err();
    let DurableError::Job(err) = err else {
        panic!("expected the run's error, got {err}")
    };
    assert_eq!(err.step(), ImportStep::Orders);
    let stored = store.load_run("import-101").await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Failed);
    let state = |name: &str| {
        let step = stored.steps.iter().find(|s| s.name == name).unwrap();
        (step.state, step.attempts)
    };
    assert_eq!(state("profile"), (StepStatus::Completed, 1));
    assert_eq!(state("audit"), (StepStatus::Completed, 1));
    assert_eq!(state("orders"), (StepStatus::Failed, 1));
    assert_eq!(state("invoice").0, StepStatus::Skipped);
    let profile = stored.steps.iter().find(|s| s.name == "profile").unwrap();
    assert_eq!(
        profile.output.as_deref(),
        Some(format!(r#"{{"name":"customer-{customer}","tier":2}}"#).as_str())
    );

    // The same id again: what completed is loaded, not run.
    fail(customer, None);
    let out = Import { customer }
        .runner()
        .store(&store)
        .job_id("import-101")
        .run()
        .await
        .unwrap();
    assert_eq!(
        out.invoice,
        format!("customer-{customer}: 32 (audit {})", customer * 2)
    );
    assert_eq!(out.profile.name, format!("customer-{customer}"));
    assert_eq!(
        (ran(customer, "profile"), ran(customer, "audit")),
        (1, 1),
        "completed steps ran again"
    );
    assert_eq!(ran(customer, "orders"), 2);
    assert_eq!(ran(customer, "invoice"), 1);
    let stored = store.load_run("import-101").await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Succeeded);
}

async fn completed_run_runs_nothing<S: Store + Clone>(store: S, base: u64) {
    let customer = base + 102;
    let first = Import { customer }
        .runner()
        .store(&store)
        .job_id("import-102")
        .run()
        .await
        .unwrap();
    let again = Import { customer }
        .runner()
        .store(&store)
        .job_id("import-102")
        .run()
        .await
        .unwrap();
    assert_eq!(again.invoice, first.invoice);
    assert_eq!(again.orders, first.orders);
    for step in ["profile", "orders", "audit", "invoice"] {
        assert_eq!(ran(customer, step), 1, "{step} ran again");
    }
}

async fn resume_from_input<S: Store + Clone>(store: S, base: u64) {
    let customer = base + 103;
    fail(customer, Some("profile"));
    let _ = Import { customer }
        .runner()
        .store(&store)
        .job_id("import-103")
        .run()
        .await
        .unwrap_err();
    fail(customer, None);
    let out = resume::<Import>(&store, "import-103").await.unwrap();
    assert_eq!(
        out.invoice,
        format!("customer-{customer}: 32 (audit {})", customer * 2)
    );
    assert_eq!(
        ran(customer, "audit"),
        1,
        "`audit` completed in the first run"
    );

    let missing = resume::<Import>(&store, "no-such-run").await.unwrap_err();
    assert!(
        matches!(
            missing,
            DurableError::Store {
                error: StoreError::NoSuchRun { .. },
                ..
            }
        ),
        "{missing}"
    );
}

/// A job that stops in the middle: `first` completes, `second` never ends.
#[derive(Serialize, Deserialize)]
struct Stuck {
    customer: u64,
    hang: bool,
}

#[job(durable)]
impl Stuck {
    #[step]
    async fn first(&self) -> u64 {
        mark(self.customer, "first");
        self.customer
    }

    #[step]
    async fn second(&self, first: &u64) -> u64 {
        mark(self.customer, "second");
        if self.hang {
            std::future::pending::<()>().await;
        }
        first + 1
    }
}

async fn dropped_run_resumes<S: Store + Clone>(store: S, base: u64) {
    let customer = base + 104;
    let job = Stuck {
        customer,
        hang: true,
    };
    // The process "dies" while `second` runs: its future is dropped, its lease left behind.
    let run = job.runner().store(&store).job_id("stuck-104").run();
    let timed_out = tokio::time::timeout(Duration::from_millis(300), run).await;
    assert!(timed_out.is_err());
    let stored = store.load_run("stuck-104").await.unwrap().unwrap();
    assert_eq!(stored.state, RunState::Running);

    // Another runner is refused while the lease lives, and gets in once it expired.
    let busy = Stuck {
        customer,
        hang: false,
    }
    .runner()
    .store(&store)
    .job_id("stuck-104")
    .run()
    .await
    .unwrap_err();
    assert!(
        matches!(
            busy,
            DurableError::Store {
                error: StoreError::Busy { .. },
                ..
            }
        ),
        "{busy}"
    );
    age(&store, Duration::from_secs(3600)).await;
    let out = Stuck {
        customer,
        hang: false,
    }
    .runner()
    .store(&store)
    .job_id("stuck-104")
    .run()
    .await
    .unwrap();
    assert_eq!(out.second, customer + 1);
    assert_eq!(ran(customer, "first"), 1, "the committed step ran again");
    assert_eq!(ran(customer, "second"), 2);
}

/// Ages every lease of `store` by `by`, as time passing would.
async fn age<S: Store>(store: &S, by: Duration) {
    let any: &dyn std::any::Any = store;
    if let Some(memory) = any.downcast_ref::<MemoryStore>() {
        memory.age_leases(by).await;
    } else if let Some(sqlite) = any.downcast_ref::<SqliteStore>() {
        sqlite.age_leases(by).await;
    } else if let Some(postgres) = any.downcast_ref::<PgStore>() {
        postgres.age_leases(by).await;
    } else {
        unreachable!("a store of the suite");
    }
}

async fn one_runner_at_a_time_case<S: Store + Clone>(store: S, base: u64) {
    let customer = base + 105;
    let slow = Stuck {
        customer,
        hang: true,
    };
    let running = slow.runner().store(&store).job_id("stuck-105").run();
    let second = async {
        // Let the first runner open the run.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Stuck {
            customer,
            hang: false,
        }
        .runner()
        .store(&store)
        .job_id("stuck-105")
        .run()
        .await
    };
    tokio::select! {
        _ = running => panic!("the stuck run ended"),
        second = second => {
            let err = second.unwrap_err();
            assert!(err.to_string().contains("stuck-105"), "{err}");
            assert!(
                matches!(err, DurableError::Store { error: StoreError::Busy { .. }, .. }),
                "{err}"
            );
        }
    }
    assert_eq!(ran(customer, "second"), 1, "the second runner ran nothing");
}

/// The same job as `Import`, as if its `profile` step's output type changed since the run was
/// stored.
#[derive(Serialize, Deserialize)]
struct ImportV2 {
    customer: u64,
}

#[job(durable, name = "Import")]
impl ImportV2 {
    #[step]
    async fn profile(&self) -> Result<u64, CrmDown> {
        mark(self.customer, "profile-v2");
        Ok(self.customer)
    }

    #[step]
    async fn orders(&self, profile: &u64) -> Vec<u32> {
        vec![*profile as u32]
    }

    #[step]
    async fn audit(&self) -> u64 {
        0
    }

    #[step]
    async fn invoice(&self, profile: &u64, orders: &[u32], audit: &u64) -> String {
        format!("{profile}: {orders:?} {audit}")
    }
}

async fn undecodable_output<S: Store + Clone>(store: S, base: u64) {
    let customer = base + 106;
    fail(customer, Some("orders"));
    let _ = Import { customer }
        .runner()
        .store(&store)
        .job_id("import-106")
        .run()
        .await
        .unwrap_err();
    let err = ImportV2 { customer }
        .runner()
        .store(&store)
        .job_id("import-106")
        .run()
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("import-106") && text.contains("`profile`") && text.contains("reset"),
        "{text}"
    );
    assert!(matches!(err, DurableError::Decode { .. }), "{err:?}");
    // Discard it: the step runs again.
    let reset = store.reset_step("import-106", "profile").await.unwrap();
    assert!(reset.contains(&"profile".to_owned()), "{reset:?}");
    let out = ImportV2 { customer }
        .runner()
        .store(&store)
        .job_id("import-106")
        .run()
        .await
        .unwrap();
    assert_eq!(out.profile, customer);
    assert_eq!(ran(customer, "profile-v2"), 1);
}

/// A fan-out whose elements run one at a time; element `3` fails while `FAILING` says so.
#[derive(Serialize, Deserialize)]
struct Fan {
    customer: u64,
}

const ELEMENT: [&str; 5] = ["e0", "e1", "e2", "e3", "e4"];

#[job(durable)]
impl Fan {
    #[step]
    async fn items(&self) -> Vec<u32> {
        vec![0, 1, 2, 3, 4]
    }

    #[step(for_each(items, concurrency = 1))]
    async fn square(&self, items: &u32) -> Result<u32, CrmDown> {
        mark(self.customer, ELEMENT[*items as usize]);
        if *items == 3 && fails(self.customer, "square") {
            return Err(CrmDown);
        }
        Ok(items * items)
    }

    #[step]
    async fn total(&self, square: &[u32]) -> u32 {
        square.iter().sum()
    }
}

async fn fan_out_resumes<S: Store + Clone>(store: S, base: u64) {
    let customer = base + 107;
    fail(customer, Some("square"));
    let err = Fan { customer }
        .runner()
        .store(&store)
        .job_id("fan-107")
        .run()
        .await
        .unwrap_err();
    assert_eq!(err.job_error().map(|e| e.step()), Some(FanStep::Square));
    fail(customer, None);
    let out = Fan { customer }
        .runner()
        .store(&store)
        .job_id("fan-107")
        .run()
        .await
        .unwrap();
    assert_eq!(out.square, [0, 1, 4, 9, 16]);
    assert_eq!(out.total, 30);
    let runs: Vec<u32> = ELEMENT.iter().map(|e| ran(customer, e)).collect();
    // Elements 0-2 completed in the first run and are not run again; 3 failed, 4 never started.
    assert_eq!(runs, [1, 1, 1, 2, 1]);
}
