// A method that is not a step, named `run`, which collides with the generated `run()`.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn render(&self) -> String {
        "hi".to_owned()
    }

    pub fn run(&self) -> usize {
        0
    }
}

fn main() {}
