// A step named `run`, which collides with the generated `run()`.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn render(&self) -> String {
        "hi".to_owned()
    }

    #[step]
    async fn run(&self, render: &String) -> usize {
        render.len()
    }
}

fn main() {}
