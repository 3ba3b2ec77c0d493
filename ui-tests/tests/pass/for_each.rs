// Every form of `for_each`: over a `Vec`, a `Box<[T]>` and an array; a bound given as a literal or
// a user's const expression, with a trailing comma; beside `retry`, `timeout`, `concurrency`,
// `rate` and `after`; with other parents and the context around the element; fallible; on a job
// generic over its source and on one generic over the element type; one `for_each` step feeding
// another; children taking the output as `&Vec<T>` or `&[T]`; and `start` (every step's future
// is `Send`).
use std::time::Duration;

use jobgraph::{Retry, StepContext, job};

const WORKERS: u32 = 2;

#[derive(Debug, thiserror::Error)]
#[error("not found")]
pub struct NotFound;

pub trait Source: Send + Sync + 'static {
    fn get(&self, id: u32) -> Option<String>;
}

pub struct Table;

impl Source for Table {
    fn get(&self, id: u32) -> Option<String> {
        Some(format!("row {id}"))
    }
}

pub struct Crawler<S> {
    source: S,
}

#[job]
impl<S: Source> Crawler<S> {
    #[step]
    async fn ids(&self) -> Vec<u32> {
        vec![1, 2, 3]
    }

    #[step]
    async fn boxed(&self) -> Box<[u32]> {
        vec![4, 5].into_boxed_slice()
    }

    #[step]
    async fn array(&self) -> [u8; 2] {
        [6, 7]
    }

    #[step]
    async fn prefix(&self) -> String {
        "#".to_owned()
    }

    /// Fallible, with every per-element option.
    #[step(
        for_each(ids, concurrency = WORKERS * 2),
        retry = Retry::fixed(2, Duration::from_millis(1)),
        timeout = Duration::from_secs(5),
        concurrency = 8,
        rate = "1000/s",
    )]
    async fn rows(&self, ids: &u32) -> Result<String, NotFound> {
        self.source.get(*ids).ok_or(NotFound)
    }

    /// Another parent before the element, the context after it.
    #[step(for_each(boxed, concurrency = 1), after(rows))]
    async fn labelled(&self, prefix: &String, boxed: &u32, ctx: &StepContext) -> String {
        format!("{prefix}{boxed}@{}", ctx.element().unwrap_or(usize::MAX))
    }

    #[step(for_each(array))]
    async fn widened(&self, array: &u8) -> u64 {
        u64::from(*array)
    }

    /// Runs over another `for_each` step's output.
    #[step(for_each(rows))]
    async fn lengths(&self, rows: &String) -> std::io::Result<usize> {
        Ok(rows.len())
    }

    #[step]
    async fn total(&self, lengths: &[usize], widened: &Vec<u64>, labelled: &[String]) -> usize {
        lengths.iter().sum::<usize>() + widened.len() + labelled.len()
    }
}

/// Generic over the element type: the `for_each` step's output, `Vec<T>`, mentions `T`.
pub struct Each<T> {
    items: Vec<T>,
}

#[job]
impl<T: Clone + Send + Sync + 'static> Each<T> {
    #[step]
    async fn items(&self) -> Vec<T> {
        self.items.clone()
    }

    #[step(for_each(items, concurrency = 1,))]
    async fn copies(&self, items: &T) -> (T, T) {
        (items.clone(), items.clone())
    }
}

fn assert_outputs<S: Source>(out: &CrawlerOutputs<S>) {
    let rows: &Vec<String> = &out.rows;
    assert_eq!(rows, &["row 1", "row 2", "row 3"]);
    assert_eq!(out.labelled, ["#4@0", "#5@1"]);
    assert_eq!(out.widened, [6, 7]);
    assert_eq!(out.lengths, [5, 5, 5]);
    assert_eq!(out.total, 19);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = Crawler { source: Table }.run().await.unwrap();
    assert_outputs(&out);
    let out = Crawler { source: Table }.start().wait().await.unwrap();
    assert_outputs(&out);
    let out: EachOutputs<&'static str> = Each {
        items: vec!["a", "b"],
    }
    .start()
    .wait()
    .await
    .unwrap();
    assert_eq!(out.copies, [("a", "a"), ("b", "b")]);
}
