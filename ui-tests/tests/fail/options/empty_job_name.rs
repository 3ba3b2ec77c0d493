// An empty `#[job(name = "")]`.
use jobgraph::job;

pub struct Mailer;

#[job(name = "")]
impl Mailer {
    #[step]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
