// `#[job]` on a trait impl.
use jobgraph::job;

pub trait Notify {
    fn send(&self) -> u32;
}

pub struct Mailer;

#[job]
impl Notify for Mailer {
    #[step]
    fn send(&self) -> u32 {
        1
    }
}

fn main() {}
