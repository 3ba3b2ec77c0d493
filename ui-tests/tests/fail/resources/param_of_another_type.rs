// A parameter that names no step and is not `&Api` (the declared resources) is an error that
// says how to take the resources.
use jobgraph::job;

struct Api;
struct Database;

struct Invoice;

#[job(resources = Api)]
impl Invoice {
    #[step]
    async fn fetch(&self, db: &Database) -> u32 {
        let _ = db;
        1
    }
}

fn main() {}
