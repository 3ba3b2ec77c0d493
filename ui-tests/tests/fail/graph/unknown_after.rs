// `after(..)` names no step and nothing close to one: the error lists the job's steps.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn check_auth(&self) {}

    #[step(after(login))]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
