// `#[job]` on an impl with no `#[step]` method.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
