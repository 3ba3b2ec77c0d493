// A raw-identifier job type and step names whose UpperCamelCase form is not an identifier by
// itself: `Step` goes in front of such a variant.
#![allow(non_snake_case)]
use jobgraph::job;

pub struct r#Invoice;

#[job]
impl r#Invoice {
    #[step]
    async fn __(&self) -> u32 {
        1
    }

    #[step]
    async fn _1(&self, __: &u32) -> u32 {
        *__ + 1
    }

    #[step]
    async fn _9lives(&self, _1: &u32) -> u32 {
        *_1 + 1
    }

    #[step]
    async fn self_(&self, _9lives: &u32) -> u32 {
        *_9lives + 1
    }

    #[step]
    async fn r#type(&self, self_: &u32) -> u32 {
        *self_ + 1
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let out = r#Invoice.run().await.unwrap();
    assert_eq!(out.r#type, 5);
    assert_eq!(
        InvoiceStep::ALL,
        [
            InvoiceStep::Step,
            InvoiceStep::Step1,
            InvoiceStep::Step9lives,
            InvoiceStep::StepSelf,
            InvoiceStep::Type,
        ]
    );
    assert_eq!(InvoiceStep::Step9lives.name(), "_9lives");
    assert_eq!(<r#Invoice as jobgraph::Job>::NAME, "Invoice");
}
