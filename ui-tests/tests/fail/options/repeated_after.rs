// `after` given twice on one step.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn check_auth(&self) {}

    #[step]
    async fn render(&self) {}

    #[step(after(check_auth), after(render))]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
