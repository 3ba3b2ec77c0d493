//! [`ProgressBars`]: a batch's status drawn as terminal progress bars, with indicatif (feature
//! `progress`).

use std::fmt::{self, Write as _};
use std::sync::{Arc, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{BatchStatus, StatusListener};
use crate::JobStep;

/// A [`StatusListener`] that draws a batch's progress: one bar for the runs, then one per step.
///
/// The runs' bar counts the runs that ended (succeeded, failed or cancelled) of the batch's
/// [`total`](BatchStatus::total), with the elapsed time and, as its message, how many run and
/// how many failed or were cancelled. Each step's bar counts the runs in which the step ended
/// (completed, failed, skipped or cancelled), with how many run it now, and how many failed,
/// were skipped or cancelled. While the number of inputs is not known
/// ([`total_known`](BatchStatus::total_known) false) a bar's length is the inputs taken so far.
/// When the batch ends, the bars stay on screen as they are.
///
/// [`new`](ProgressBars::new) draws on stderr at most 20 times a second, whatever the batch's
/// pace; when stderr is not a terminal, indicatif draws nothing. [`hidden`](ProgressBars::hidden)
/// never draws (for tests), and [`with_draw_target`](ProgressBars::with_draw_target) draws where
/// you say. Clones share the bars: keep one to add your own bars or print above them through
/// [`multi_progress`](ProgressBars::multi_progress).
///
/// ```
/// use jobgraph::{Batch, ProgressBars, job};
///
/// struct Fetch {
///     page: u32,
/// }
///
/// #[job]
/// impl Fetch {
///     #[step]
///     async fn download(&self) -> u32 {
///         self.page
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let results = Batch::new((0..100).map(|page| Fetch { page }))
///     .concurrency(8)
///     .status_listener(ProgressBars::new())
///     .run()
///     .await;
/// assert!(results.is_success());
/// # }
/// ```
#[derive(Clone)]
pub struct ProgressBars {
    inner: Arc<Inner>,
}

struct Inner {
    multi: MultiProgress,
    /// Made at the first status, which names the steps.
    bars: OnceLock<Bars>,
}

struct Bars {
    runs: ProgressBar,
    steps: Vec<ProgressBar>,
}

impl ProgressBars {
    /// Bars drawn on stderr, if it is a terminal.
    pub fn new() -> Self {
        Self::with_draw_target(ProgressDrawTarget::stderr())
    }

    /// Bars that are never drawn, but keep their state: for tests.
    pub fn hidden() -> Self {
        Self::with_draw_target(ProgressDrawTarget::hidden())
    }

    /// Bars drawn on `target`.
    pub fn with_draw_target(target: ProgressDrawTarget) -> Self {
        ProgressBars {
            inner: Arc::new(Inner {
                multi: MultiProgress::with_draw_target(target),
                bars: OnceLock::new(),
            }),
        }
    }

    /// The `MultiProgress` the bars are drawn in: to add bars of your own, or
    /// [`println`](MultiProgress::println) above them.
    pub fn multi_progress(&self) -> &MultiProgress {
        &self.inner.multi
    }

    /// The runs' bar, then each step's, once the first status arrived.
    #[cfg(test)]
    fn bars(&self) -> Option<&Bars> {
        self.inner.bars.get()
    }

    fn make_bars<S: JobStep>(&self, status: &BatchStatus<S>) -> Bars {
        let names: Vec<&str> = status.steps.iter().map(|c| c.step.name()).collect();
        let width = names.iter().map(|n| n.len()).max().unwrap_or(0).max(4);
        let style = |template: String| {
            ProgressStyle::with_template(&template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let runs = self.inner.multi.add(ProgressBar::new(0).with_style(style(format!(
            "{{prefix:>{width}.bold}} [{{bar:40.green}}] {{pos:>7}}/{{len:<7}} {{elapsed_precise}} {{msg}}"
        ))));
        runs.set_prefix("runs");
        let step_style = style(format!(
            "{{prefix:>{width}}} [{{bar:40.cyan}}] {{pos:>7}}/{{len:<7}} {{msg}}"
        ));
        let steps = names
            .into_iter()
            .map(|name| {
                let bar = self
                    .inner
                    .multi
                    .add(ProgressBar::new(0).with_style(step_style.clone()));
                bar.set_prefix(name);
                bar
            })
            .collect();
        Bars { runs, steps }
    }
}

impl Default for ProgressBars {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ProgressBars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProgressBars")
            .field("hidden", &self.inner.multi.is_hidden())
            .finish_non_exhaustive()
    }
}

impl<S: JobStep> StatusListener<S> for ProgressBars {
    fn on_status(&self, status: &BatchStatus<S>) {
        let bars = self.inner.bars.get_or_init(|| self.make_bars(status));
        let total = status.total as u64;
        let runs = &status.runs;
        update(
            &bars.runs,
            total,
            runs.done(),
            message(
                runs.running,
                &[(runs.failed, "failed"), (runs.cancelled, "cancelled")],
            ),
        );
        for (bar, counts) in bars.steps.iter().zip(&status.steps) {
            update(
                bar,
                total,
                counts.done(),
                message(
                    counts.running,
                    &[
                        (counts.failed, "failed"),
                        (counts.skipped, "skipped"),
                        (counts.cancelled, "cancelled"),
                    ],
                ),
            );
        }
        if status.finished {
            bars.runs.abandon();
            for bar in &bars.steps {
                bar.abandon();
            }
        }
    }
}

fn update(bar: &ProgressBar, total: u64, done: usize, message: String) {
    bar.set_length(total);
    bar.set_position(done as u64);
    bar.set_message(message);
}

/// `3 running, 1 failed`: the running count always, the others when not zero.
fn message(running: usize, others: &[(usize, &str)]) -> String {
    let mut out = format!("{running} running");
    for &(n, what) in others {
        if n > 0 {
            let _ = write!(out, ", {n} {what}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Batch, job};

    struct Item {
        fail: bool,
    }

    #[job(crate = crate)]
    impl Item {
        #[step]
        async fn load(&self) -> u32 {
            1
        }

        #[step]
        async fn check(&self, load: &u32) -> Result<u32, std::io::Error> {
            if self.fail {
                Err(std::io::Error::other("bad item"))
            } else {
                Ok(*load)
            }
        }

        #[step]
        async fn store(&self, check: &u32) -> u32 {
            *check
        }
    }

    #[tokio::test]
    async fn the_bars_follow_the_batch_to_its_end() {
        let bars = ProgressBars::hidden();
        let results = Batch::new((0..10).map(|i| Item { fail: i % 5 == 0 }))
            .concurrency(3)
            .status_listener(bars.clone())
            .run()
            .await;
        assert_eq!(results.summary.failed, 2);
        let drawn = bars.bars().expect("the listener was called");
        let seen = |bar: &ProgressBar| {
            (
                bar.prefix(),
                bar.position(),
                bar.length(),
                bar.message(),
                bar.is_finished(),
            )
        };
        let at = |prefix: &str, pos, message: &str| {
            (prefix.to_owned(), pos, Some(10), message.to_owned(), true)
        };
        assert_eq!(seen(&drawn.runs), at("runs", 10, "0 running, 2 failed"));
        let steps: Vec<_> = drawn.steps.iter().map(seen).collect();
        assert_eq!(
            steps,
            [
                at("load", 10, "0 running"),
                at("check", 10, "0 running, 2 failed"),
                at("store", 10, "0 running, 2 skipped"),
            ]
        );
    }

    #[tokio::test]
    async fn unknown_totals_grow_as_inputs_are_taken() {
        let bars = ProgressBars::hidden();
        let mut n = 0;
        let inputs = std::iter::from_fn(move || {
            n += 1;
            (n <= 4).then_some(Item { fail: false })
        });
        let results = Batch::new(inputs)
            .concurrency(2)
            .status_listener(bars.clone())
            .run()
            .await;
        assert!(results.is_success());
        let drawn = bars.bars().expect("the listener was called");
        assert_eq!(drawn.runs.length(), Some(4));
        assert_eq!(drawn.runs.position(), 4);
        assert!(format!("{bars:?}").contains("hidden: true"));
    }
}
