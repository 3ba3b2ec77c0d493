// A step returning `std::io::Result<T>` outputs `T`.
use jobgraph::job;

pub struct Files;

#[job]
impl Files {
    #[step]
    async fn read(&self) -> std::io::Result<Vec<u8>> {
        Ok(b"hello".to_vec())
    }

    #[step]
    async fn size(&self, read: &Vec<u8>) -> std::io::Result<usize> {
        Ok(read.len())
    }

    #[step]
    async fn fail(&self) -> std::io::Result<u8> {
        Err(std::io::Error::other("disk full"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let error = Files.run().await.unwrap_err();
    assert_eq!(error.step(), FilesStep::Fail);
    let source = std::error::Error::source(&error).unwrap();
    assert!(source.to_string().contains("disk full"));
}
