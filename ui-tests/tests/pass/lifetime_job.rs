// A job with a lifetime, `impl<'a> Report<'a>`, whose step outputs borrow `'a`.
use jobgraph::job;

pub struct Report<'a> {
    text: &'a str,
}

#[job]
impl<'a> Report<'a> {
    #[step]
    async fn lines(&self) -> Vec<&'a str> {
        self.text.lines().collect()
    }

    #[step]
    async fn longest(&self, lines: &Vec<&'a str>) -> &'a str {
        lines.iter().copied().max_by_key(|l| l.len()).unwrap_or("")
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let text = String::from("a\nccc\nbb");
    let out = Report { text: &text }.run().await.unwrap();
    assert_eq!(out.lines, ["a", "ccc", "bb"]);
    assert_eq!(out.longest, "ccc");
}
