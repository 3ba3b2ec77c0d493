// A job with a cycle, used everywhere the generated items can be: the cycle is the only error.
// Without the graph the macro still emits the step enum, the outputs, `impl Job` and the
// inherent items with their real signatures, so the rest of the crate type-checks.
use std::time::Duration;

use jobgraph::{Job, Retry, job};

pub struct Loop;

#[job]
impl Loop {
    #[step]
    async fn parse(&self, render: &String) -> u32 {
        render.len() as u32
    }

    #[step]
    async fn check(&self, parse: &u32) -> bool {
        *parse > 0
    }

    #[step]
    async fn render(&self, check: &bool) -> String {
        check.to_string()
    }
}

fn describe<J: Job>() -> usize {
    J::STEPS.len() + J::DOT.len()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out: LoopOutputs = Loop.run().await.unwrap();
    let parsed: u32 = out.parse;
    let text: String = out.render;
    println!("{parsed} {text} {}", out.check);

    match Loop
        .runner()
        .job_id("nightly")
        .retry(LoopStep::Parse, Retry::fixed(2, Duration::from_millis(1)))
        .sequential()
        .run()
        .await
    {
        Ok(out) => println!("{}", out.render),
        Err(error) => {
            let step: LoopStep = error.step();
            let partial: &LoopPartial = error.partial();
            println!("{} {:?}", step.name(), partial.parse);
        }
    }

    let partial = Loop
        .runner()
        .seed(LoopPartial::default())
        .until(LoopStep::Check)
        .run()
        .await;
    println!("{:?}", partial.map(|p| p.check));

    let handle = Loop.start();
    println!("{}", handle.wait().await.is_ok());

    println!("{} {} {}", Loop::DOT, Loop::STEPS.len(), describe::<Loop>());
    for step in LoopStep::ALL {
        println!("{step} {}", step.index());
    }
}
