// A job whose impl defines `run` itself, which `#[job]` generates: the clash is the only error.
// The user's `run` is the one called; the generated items that do not clash are still there.
use jobgraph::job;

pub struct Mailer;

#[job]
impl Mailer {
    #[step]
    async fn render(&self) -> String {
        "hi".to_owned()
    }

    #[step]
    async fn send(&self, render: &String) -> usize {
        render.len()
    }

    pub fn run(&self) -> usize {
        0
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let sent: usize = Mailer.run();
    let out: MailerOutputs = Mailer.runner().run().await.unwrap();
    println!("{sent} {} {}", out.render, out.send);
    println!("{}", MailerStep::Send.name());
}
