// `#[job(name = "custom", crate = ::jobgraph)]`: the name reaches the context, DOT and `Job::NAME`.
use jobgraph::{Job, StepContext, job};

pub struct Mailer;

#[job(name = "custom", crate = ::jobgraph)]
impl Mailer {
    #[step]
    async fn send(&self, ctx: &StepContext) -> String {
        ctx.job_name().to_owned()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = Mailer.run().await.unwrap();
    assert_eq!(out.send, "custom");
    assert_eq!(<Mailer as Job>::NAME, "custom");
    assert!(Mailer::DOT.starts_with("digraph \"custom\""));
}
