// `after(..)` misspells a step: the error is on the name and suggests the step.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn check_auth(&self) {}

    #[step(after(check_auht))]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
