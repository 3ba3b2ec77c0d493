// `after = step` instead of `after(step)`.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn check_auth(&self) {}

    #[step(after = check_auth)]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
