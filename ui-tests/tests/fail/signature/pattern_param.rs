// A parameter that destructures its parent's output with a pattern.
use jobgraph::job;

pub struct Geometry;

#[job]
impl Geometry {
    #[step]
    async fn point(&self) -> (u8, u8) {
        (1, 2)
    }

    #[step]
    async fn sum(&self, (a, b): &(u8, u8)) -> u8 {
        a + b
    }
}

fn main() {}
