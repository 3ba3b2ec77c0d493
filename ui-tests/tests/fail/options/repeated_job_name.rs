// `name` given twice in `#[job(..)]`.
use jobgraph::job;

pub struct Mailer;

#[job(name = "mailer", name = "mail")]
impl Mailer {
    #[step]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
