//! Integration tests and benchmarks of jobgraph live in `tests/` and `benches/`.
