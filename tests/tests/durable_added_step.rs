//! A run that succeeded before its job gained a step: running its id again, or its batch, is an
//! error naming the new step, not a panic (the stored run has no output for it).

use jobgraph::durable::DurableError;
use jobgraph::store::{Store, StoreError};
use jobgraph::{Batch, job};
use serde::{Deserialize, Serialize};

/// The job as it was when its runs succeeded: one step.
#[derive(Serialize, Deserialize)]
struct Before {
    n: u64,
}

#[job(durable, name = "Grows")]
impl Before {
    #[step]
    async fn fetch(&self) -> u64 {
        self.n
    }
}

/// The same job after it gained step `score`.
#[derive(Serialize, Deserialize)]
struct After {
    n: u64,
}

#[job(durable, name = "Grows")]
impl After {
    #[step]
    async fn fetch(&self) -> u64 {
        self.n
    }

    #[step]
    async fn score(&self, fetch: &u64) -> u64 {
        fetch + 1
    }
}

jobgraph_tests::on_both_stores! {
    a_run_that_succeeded_before_its_job_gained_a_step_is_an_error => gained_a_step,
}

fn names_the_new_step<P>(err: &DurableError<AfterStep, P>, run: &str) {
    match err {
        DurableError::Store {
            error: StoreError::NoSuchStep { run: r, step },
            ..
        } => assert_eq!((r.as_str(), step.as_str()), (run, "score")),
        other => panic!("{other}"),
    }
}

async fn gained_a_step<S: Store + Clone>(store: S, base: u64) {
    let n = base + 1;
    Before { n }
        .runner()
        .store(&store)
        .job_id("grows-1")
        .run()
        .await
        .unwrap();
    let err = After { n }
        .runner()
        .store(&store)
        .job_id("grows-1")
        .run()
        .await
        .unwrap_err();
    names_the_new_step(&err, "grows-1");

    let first = Batch::new([Before { n }])
        .store(&store, "grows")
        .run()
        .await
        .unwrap();
    assert!(first.is_success());
    let again = Batch::new([After { n }])
        .store(&store, "grows")
        .run()
        .await
        .unwrap();
    names_the_new_step(again.results[0].as_ref().unwrap_err(), "grows/0");
    let resumed = jobgraph::durable::resume_batch::<After>(&store, "grows")
        .run()
        .await
        .unwrap();
    names_the_new_step(resumed.results[0].as_ref().unwrap_err(), "grows/0");
}
