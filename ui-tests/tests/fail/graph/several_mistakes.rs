// Several mistakes in one impl (unknown parent, not async, `&mut self`, unknown option, cycle)
// are all reported in one compile.
use jobgraph::job;

pub struct Summary;

#[job]
impl Summary {
    #[step]
    async fn get_connection(&self) -> u32 {
        1
    }

    #[step]
    fn check_auth(&self) -> bool {
        true
    }

    #[step]
    async fn query(&mut self, get_conection: &u32) -> u32 {
        get_conection + 1
    }

    #[step(retries = 3)]
    async fn summarize(&self, query: &u32) -> u32 {
        query * 2
    }

    #[step]
    async fn ping(&self, pong: &u32) -> u32 {
        *pong
    }

    #[step]
    async fn pong(&self, ping: &u32) -> u32 {
        *ping
    }
}

fn main() {}
