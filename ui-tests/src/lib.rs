//! trybuild cases of the `#[job]` macro live in `tests/`.
