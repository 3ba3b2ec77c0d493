//! Smoke.
use jobgraph::{StepContext, job};

struct Diamond {
    base: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("boom")]
struct Boom;

#[job]
impl Diamond {
    /// The root.
    #[step]
    async fn a(&self) -> u32 {
        self.base
    }
    #[step]
    async fn b(&self, a: &u32) -> Result<u32, Boom> {
        Ok(a + 1)
    }
    #[step]
    async fn c(&self, a: &u32, ctx: &StepContext) -> String {
        format!("{}{a}", ctx.step_name())
    }
    #[step(after(c))]
    async fn d(&self, b: &u32) -> u64 {
        u64::from(*b) * 2
    }
}

#[tokio::test]
async fn smoke() {
    let out = Diamond { base: 1 }.run().await.unwrap();
    assert_eq!(out.d, 4);
    assert_eq!(out.c, "c1");
    println!("{}", Diamond::DOT);
}
