// An unknown `#[job(..)]` option: the error lists the valid ones.
use jobgraph::job;

pub struct Mailer;

#[job(title = "mailer")]
impl Mailer {
    #[step]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
