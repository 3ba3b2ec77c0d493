// `#[job]` on a function instead of an impl block.
use jobgraph::job;

#[job]
async fn send() -> u32 {
    1
}

fn main() {}
