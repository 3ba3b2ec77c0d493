// A step with two `&StepContext` parameters.
use jobgraph::{StepContext, job};

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn send(&self, ctx: &StepContext, again: &StepContext) -> String {
        format!("{} {}", ctx.job_id(), again.attempt())
    }
}

fn main() {}
