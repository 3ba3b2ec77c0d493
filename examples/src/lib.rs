//! Runnable examples of jobgraph live in `examples/`.
