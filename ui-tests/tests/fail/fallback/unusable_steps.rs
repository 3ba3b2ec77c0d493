// Mistakes that leave some generated items impossible: a step defined twice, two steps with one
// variant, a step without a sized output, a generic step. Each is reported once; the items they
// leave possible are generated and used below without further errors.
use jobgraph::job;

pub struct Import;

#[job]
impl Import {
    #[step]
    async fn load_db(&self) -> u32 {
        1
    }

    #[step]
    async fn load__db(&self) -> u32 {
        2
    }

    #[step]
    async fn merge(&self, load_db: &u32, load__db: &u32) -> u32 {
        load_db + load__db
    }

    #[step]
    async fn merge(&self) -> u32 {
        0
    }

    #[step]
    async fn bytes(&self) -> [u8] {
        todo!()
    }

    #[step]
    async fn fetch<T: Default>(&self) -> T {
        T::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = Import.run().await.unwrap();
    println!("{} {} {}", out.load_db, out.load__db, out.merge);
    for step in [
        ImportStep::LoadDb,
        ImportStep::Merge,
        ImportStep::Bytes,
        ImportStep::Fetch,
    ] {
        println!("{step}");
    }
}
