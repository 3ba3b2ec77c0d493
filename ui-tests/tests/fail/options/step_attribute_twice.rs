// A method marked `#[step]` twice.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn render(&self) -> String {
        "hi".to_owned()
    }

    #[step]
    #[step(after(render))]
    async fn send(&self) -> u32 {
        1
    }
}

fn main() {}
