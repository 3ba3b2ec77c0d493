// Three steps feed each other in a loop: the whole path is reported, with a span on each edge.
use jobgraph::job;

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

fn main() {}
