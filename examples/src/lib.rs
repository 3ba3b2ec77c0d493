//! Runnable examples of jobgraph live in `examples/`.

use std::error::Error;

/// `error` and each error down its `source()` chain, joined by `: `, as anyhow's `{:#}` prints
/// them. A `JobError`'s `Display` stops before the step's own error (its source), so this is how
/// the examples show the whole story.
pub fn error_chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}
