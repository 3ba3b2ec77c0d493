// An unknown `#[step(..)]` option: the error lists the valid ones.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn render(&self) -> String {
        "hi".to_owned()
    }

    #[step(depends_on(render))]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
