//! The chaos workload: five jobs of different shapes, whose every step records its execution
//! in the witness table ([`Witness`]) before it works, and whose outputs a pure evaluation
//! ([`expected`]) gives from the run's number alone.
//!
//! ```text
//! Chain:   a ── b ── c ── d
//! Diamond: top ──┬── left ──┬── bottom
//!                └── right ─┘
//! Fan:     split ── parts (for_each, one witness per element) ── join
//! Long:    prep ── long (sleeps past the lease: kept by heartbeats) ── done
//! Single:  only (a run of one step, which ends with its step)
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use jobgraph::{Retry, StepContext, job};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::witness::{Witness, WitnessError};
use crate::kill::mix;

/// A job's steps in graph order, each with its parents.
pub type Steps = &'static [(&'static str, &'static [&'static str])];

/// The jobs, by name, with their steps.
pub const SHAPES: [(&str, Steps); 5] = [
    (
        "Chain",
        &[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["c"])],
    ),
    (
        "Diamond",
        &[
            ("top", &[]),
            ("left", &["top"]),
            ("right", &["top"]),
            ("bottom", &["left", "right"]),
        ],
    ),
    (
        "Fan",
        &[("split", &[]), ("parts", &["split"]), ("join", &["parts"])],
    ),
    (
        "Long",
        &[("prep", &[]), ("long", &["prep"]), ("done", &["long"])],
    ),
    ("Single", &[("only", &[])]),
];

/// The job of run number `n`: most runs are short, one in twelve is [`Long`] and one in twelve
/// [`Single`].
pub fn shape_of(n: u64) -> &'static str {
    match n % 12 {
        11 => "Long",
        10 => "Single",
        k => ["Chain", "Diamond", "Fan"][(k % 3) as usize],
    }
}

/// The steps of job `job`, with their parents.
pub fn steps_of(job: &str) -> Steps {
    SHAPES
        .iter()
        .find(|(name, _)| *name == job)
        .map(|(_, steps)| *steps)
        .unwrap_or_else(|| panic!("no chaos job `{job}`"))
}

/// The parents of a witnessed unit of job `job`: a step, or an element `parts[i]` of `Fan`.
pub fn parents_of(job: &str, unit: &str) -> &'static [&'static str] {
    let step = unit.split('[').next().unwrap_or(unit);
    steps_of(job)
        .iter()
        .find(|(name, _)| *name == step)
        .map(|(_, parents)| *parents)
        .unwrap_or_else(|| panic!("job `{job}` has no unit `{unit}`"))
}

/// Every step retries its errors (the witness's database was unreachable) through the queue.
fn again() -> Retry {
    Retry::fixed(10_000, Duration::from_millis(100))
}

/// How long step `long` sleeps (ms): set by the harness (`CHAOS_LONG_MS`) past the workers'
/// lease, so only heartbeats keep its claim.
pub fn long_ms() -> u64 {
    std::env::var("CHAOS_LONG_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_500)
}

/// A pause, so that workers hold steps when faults land: 20 to 79 ms.
async fn work(x: u64) {
    tokio::time::sleep(Duration::from_millis(20 + x % 60)).await;
}

/// A run of `a ── b ── c ── d`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Chain {
    /// The run's number.
    pub n: u64,
}

#[job(durable, resources = Witness)]
impl Chain {
    #[step(retry = again())]
    async fn a(&self, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "a").await?;
        work(self.n).await;
        Ok(pure::a(self.n))
    }

    #[step(retry = again())]
    async fn b(&self, a: &u64, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "b").await?;
        work(*a).await;
        Ok(pure::b(*a))
    }

    #[step(retry = again())]
    async fn c(&self, b: &u64, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "c").await?;
        work(*b).await;
        Ok(pure::b(*b ^ 1))
    }

    #[step(retry = again())]
    async fn d(&self, c: &u64, w: &Witness, ctx: &StepContext) -> Result<String, WitnessError> {
        w.record(ctx, "d").await?;
        Ok(pure::d(self.n, *c))
    }
}

/// A run of the diamond: `top` feeds `left` and `right`, which `bottom` joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Diamond {
    /// The run's number.
    pub n: u64,
}

#[job(durable, resources = Witness)]
impl Diamond {
    #[step(retry = again())]
    async fn top(&self, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "top").await?;
        Ok(pure::a(self.n ^ 0xd1a))
    }

    #[step(retry = again())]
    async fn left(&self, top: &u64, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "left").await?;
        work(*top).await;
        Ok(pure::b(*top ^ 2))
    }

    #[step(retry = again())]
    async fn right(&self, top: &u64, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "right").await?;
        work(*top >> 3).await;
        Ok(pure::b(*top ^ 3))
    }

    #[step(retry = again())]
    async fn bottom(
        &self,
        left: &u64,
        right: &u64,
        w: &Witness,
        ctx: &StepContext,
    ) -> Result<u64, WitnessError> {
        w.record(ctx, "bottom").await?;
        Ok(mix(*left ^ right.rotate_left(7)))
    }
}

/// A run of the fan-out: `split` makes 2 to 6 elements, `parts` runs once per element (each
/// witnessed as `parts[i]`), `join` folds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fan {
    /// The run's number.
    pub n: u64,
}

#[job(durable, resources = Witness)]
impl Fan {
    #[step(retry = again())]
    async fn split(&self, w: &Witness, ctx: &StepContext) -> Result<Vec<u64>, WitnessError> {
        w.record(ctx, "split").await?;
        Ok(pure::split(self.n))
    }

    #[step(for_each(split), retry = again())]
    async fn parts(
        &self,
        split: &u64,
        w: &Witness,
        ctx: &StepContext,
    ) -> Result<u64, WitnessError> {
        let unit = format!("parts[{}]", ctx.element().unwrap_or(usize::MAX));
        w.record(ctx, &unit).await?;
        work(*split).await;
        Ok(pure::part(*split))
    }

    #[step(retry = again())]
    async fn join(
        &self,
        parts: &[u64],
        w: &Witness,
        ctx: &StepContext,
    ) -> Result<u64, WitnessError> {
        w.record(ctx, "join").await?;
        Ok(pure::join(parts))
    }
}

/// A run with a step longer than the workers' lease ([`long_ms`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Long {
    /// The run's number.
    pub n: u64,
}

#[job(durable, resources = Witness)]
impl Long {
    #[step(retry = again())]
    async fn prep(&self, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "prep").await?;
        Ok(pure::a(self.n ^ 0x10))
    }

    #[step(retry = again())]
    async fn long(&self, prep: &u64, w: &Witness, ctx: &StepContext) -> Result<u64, WitnessError> {
        w.record(ctx, "long").await?;
        tokio::time::sleep(Duration::from_millis(long_ms())).await;
        Ok(pure::b(*prep))
    }

    #[step(retry = again())]
    async fn done(
        &self,
        long: &u64,
        w: &Witness,
        ctx: &StepContext,
    ) -> Result<String, WitnessError> {
        w.record(ctx, "done").await?;
        Ok(pure::d(self.n, *long))
    }
}

/// A run of one step. On PostgreSQL its completion is its run's end: the run's row is not
/// written (`ClaimId::only_step`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Single {
    /// The run's number.
    pub n: u64,
}

#[job(durable, resources = Witness)]
impl Single {
    #[step(retry = again())]
    async fn only(&self, w: &Witness, ctx: &StepContext) -> Result<String, WitnessError> {
        w.record(ctx, "only").await?;
        work(self.n).await;
        Ok(pure::d(self.n, pure::a(self.n ^ 0x51)))
    }
}

/// The steps' functions, without the jobs.
mod pure {
    use super::mix;

    pub(super) fn a(n: u64) -> u64 {
        mix(n)
    }

    pub(super) fn b(x: u64) -> u64 {
        mix(x.rotate_left(17) ^ 0xb)
    }

    pub(super) fn d(n: u64, c: u64) -> String {
        format!("{n}:{:x}", c & 0xffff_ffff)
    }

    pub(super) fn split(n: u64) -> Vec<u64> {
        let seed = mix(n ^ 0xfa);
        (0..2 + seed % 5).map(|i| mix(seed + i) >> 12).collect()
    }

    pub(super) fn part(x: u64) -> u64 {
        mix(x ^ 0x9a27) % 1_000_000
    }

    pub(super) fn join(parts: &[u64]) -> u64 {
        parts.iter().fold(7, |h, &x| mix(h ^ x))
    }
}

/// What run `n` of job `job` outputs, step by step (JSON, as the store holds it), computed
/// without the job; and the units that must be witnessed (its steps, and `parts[i]` for each
/// element of `Fan`'s fan-out instead of `parts`).
pub fn expected(job: &str, n: u64) -> (BTreeMap<&'static str, Value>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut units: Vec<String> = steps_of(job).iter().map(|(s, _)| (*s).to_owned()).collect();
    match job {
        "Chain" => {
            let a = pure::a(n);
            let b = pure::b(a);
            let c = pure::b(b ^ 1);
            out.insert("a", a.into());
            out.insert("b", b.into());
            out.insert("c", c.into());
            out.insert("d", pure::d(n, c).into());
        }
        "Diamond" => {
            let top = pure::a(n ^ 0xd1a);
            let left = pure::b(top ^ 2);
            let right = pure::b(top ^ 3);
            out.insert("top", top.into());
            out.insert("left", left.into());
            out.insert("right", right.into());
            out.insert("bottom", mix(left ^ right.rotate_left(7)).into());
        }
        "Fan" => {
            let split = pure::split(n);
            let parts: Vec<u64> = split.iter().map(|&x| pure::part(x)).collect();
            units.retain(|u| u != "parts");
            units.extend((0..parts.len()).map(|i| format!("parts[{i}]")));
            out.insert("join", pure::join(&parts).into());
            out.insert("split", split.into());
            out.insert("parts", parts.into());
        }
        "Long" => {
            let prep = pure::a(n ^ 0x10);
            let long = pure::b(prep);
            out.insert("prep", prep.into());
            out.insert("long", long.into());
            out.insert("done", pure::d(n, long).into());
        }
        "Single" => {
            out.insert("only", pure::d(n, pure::a(n ^ 0x51)).into());
        }
        other => panic!("no chaos job `{other}`"),
    }
    (out, units)
}
