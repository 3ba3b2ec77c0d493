// `after()` naming no step.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step(after())]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
