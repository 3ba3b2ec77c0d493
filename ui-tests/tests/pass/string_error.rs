// Error types that are not `std::error::Error` but convert into `Box<dyn Error + Send + Sync>`:
// `String` and `&'static str`.
use jobgraph::job;

pub struct Parse {
    input: &'static str,
}

#[job]
impl Parse {
    #[step]
    async fn number(&self) -> Result<u8, String> {
        self.input.parse().map_err(|e| format!("bad input: {e}"))
    }

    #[step]
    async fn half(&self, number: &u8) -> Result<u8, &'static str> {
        if number % 2 == 0 {
            Ok(number / 2)
        } else {
            Err("odd")
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = Parse { input: "8" }.run().await.ok().unwrap();
    assert_eq!(out.half, 4);

    let error = Parse { input: "x" }.run().await.unwrap_err();
    assert_eq!(error.step(), ParseStep::Number);
    let source = std::error::Error::source(&error).unwrap();
    assert!(source.to_string().starts_with("bad input"));

    let error = Parse { input: "3" }.run().await.unwrap_err();
    assert_eq!(error.step(), ParseStep::Half);
}
