//! The job of the kill test (`tests/kill.rs`) as pure functions: the child process
//! (`src/bin/durable_child.rs`) computes each step's output with them, and the test computes the
//! expected outputs of every run with them to compare with what the store holds.
//!
//! ```text
//! seed ── grow ──┬── split ── fan (for_each) ──┐
//!                ├── left (sleeps) ────────────┼── join
//!                └── right ────────────────────┘
//! ```

/// How many runs the batch has: input `n` (0..RUNS) is run `kill/n`.
pub const RUNS: u64 = 300;

/// How many runs the child runs at once.
pub const CONCURRENCY: usize = 6;

/// The batch's name in the store.
pub const BATCH: &str = "kill";

/// The job's steps, in graph order. Each records its execution before its work, except `fan`,
/// whose elements record theirs (as `fan[INDEX]`).
pub const STEPS: [&str; 7] = ["seed", "grow", "split", "fan", "left", "right", "join"];

/// splitmix64's finalizer: a bijective mix of the bits of `x`.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Step `seed` of input `n`.
pub fn seed(n: u64) -> u64 {
    mix(n)
}

/// Step `grow`, from `seed`.
pub fn grow(n: u64, seed: u64) -> u64 {
    mix(seed ^ n.rotate_left(17))
}

/// Step `split`, from `grow`: 2 to 5 elements for `fan`.
pub fn split(grow: u64) -> Vec<u64> {
    (0..2 + grow % 4)
        .map(|i| mix(grow.wrapping_add(i)) >> 8)
        .collect()
}

/// One element of step `fan`, from one element of `split`.
pub fn fan(n: u64, element: u64) -> u64 {
    mix(element ^ n) % 1_000_000
}

/// Step `left`, from `grow`.
pub fn left(grow: u64) -> u64 {
    mix(grow ^ 0x5eed) >> 16
}

/// Step `right`, from `grow`.
pub fn right(n: u64, grow: u64) -> String {
    format!("{n}:{:x}", mix(grow) & 0xffff_ffff)
}

/// Step `join`, from `left`, `right` and `fan`.
pub fn join(left: u64, right: &str, fan: &[u64]) -> u64 {
    let right = right.bytes().fold(0u64, |h, b| mix(h ^ u64::from(b)));
    fan.iter().fold(mix(left ^ right), |h, &x| mix(h ^ x))
}

/// How long step `left` of input `n` sleeps, in milliseconds: long enough that kills land in
/// it, and that the batch outlasts the kill delays of the test.
pub fn left_ms(n: u64) -> u64 {
    50 + n % 4 * 15
}

/// How long element `element` of step `fan` sleeps, in milliseconds.
pub fn fan_ms(element: u64) -> u64 {
    4 + element % 5
}

/// How long step `grow` sleeps, in milliseconds.
pub const GROW_MS: u64 = 4;
