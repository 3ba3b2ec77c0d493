// `#[job]` on a struct instead of its impl block.
use jobgraph::job;

#[job]
pub struct Mailer {
    pub to: String,
}

fn main() {}
