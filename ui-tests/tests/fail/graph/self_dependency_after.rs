// A step lists itself in `after(..)`.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn render(&self) -> String {
        "hi".to_owned()
    }

    #[step(after(notify))]
    async fn notify(&self, render: &String) -> usize {
        render.len()
    }
}

fn main() {}
