//! How a step's arguments are lent to it and its result taken back: a parent's output lent as
//! the parameter's type (a `Vec<T>` as `[T]`, a `String` as `str`), one element of a `for_each`
//! parent, and a step's `Result` split into output and error. The traits carry the compile
//! errors a user sees when a parameter's type does not match.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::error::BoxError;

/// The `Result` a step method returns, split into output and error.
#[diagnostic::on_unimplemented(
    message = "the error type of a `#[step]` must implement `std::error::Error + Send + Sync + 'static`",
    label = "this step's `Result` has an error type jobgraph cannot carry",
    note = "a step that returns `Result<T, E>` outputs `T` and fails with `E`; `E` must convert into `Box<dyn Error + Send + Sync>`"
)]
pub trait StepResult {
    /// What the step outputs on success.
    type Output;
    /// Converts into the scheduler's result.
    fn into_step_result(self) -> Result<Self::Output, BoxError>;
}

#[diagnostic::do_not_recommend]
impl<T, E: Into<BoxError>> StepResult for Result<T, E> {
    type Output = T;
    #[inline]
    fn into_step_result(self) -> Result<T, BoxError> {
        self.map_err(Into::into)
    }
}

/// Wraps the value of an infallible step.
#[inline]
pub fn infallible<T>(value: T) -> Result<T, BoxError> {
    Ok(value)
}

pin_project_lite::pin_project! {
    /// The future of an infallible step that takes no context: its method's own future, its
    /// value wrapped in `Ok`. What an `async` block around the call would do, without a state
    /// machine of its own.
    pub struct Infallible<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Infallible<F> {
    #[inline]
    /// The step method's future, its value wrapped in `Ok`.
    pub fn new(future: F) -> Self {
        Infallible { future }
    }
}

impl<F: Future> Future for Infallible<F> {
    type Output = Result<F::Output, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().future.poll(cx).map(Ok)
    }
}

/// How a parent's output is lent to a child's parameter: as itself, or a `Vec<T>` as `[T]` and a
/// `String` as `str`.
#[diagnostic::on_unimplemented(
    message = "this parameter takes `&{P}`, but the step it names outputs `{Self}`",
    label = "expected `&{Self}` here (the output of the step this parameter names)",
    note = "a parameter `name: &T` takes the output of step `name`: `T` must be that step's output type (or `[U]` for a `Vec<U>`, `str` for a `String`)"
)]
pub trait OutputAs<P: ?Sized> {
    /// The output, as the parameter takes it.
    fn output_as(&self) -> &P;
}

impl<T: ?Sized> OutputAs<T> for T {
    #[inline]
    fn output_as(&self) -> &T {
        self
    }
}

#[diagnostic::do_not_recommend]
impl<T> OutputAs<[T]> for Vec<T> {
    #[inline]
    fn output_as(&self) -> &[T] {
        self
    }
}

#[diagnostic::do_not_recommend]
impl OutputAs<str> for String {
    #[inline]
    fn output_as(&self) -> &str {
        self
    }
}

/// A parent's output, lent to a child's parameter of type `&P`.
#[inline]
pub fn parent<O: OutputAs<P>, P: ?Sized>(output: &O) -> &P {
    OutputAs::output_as(output)
}

/// What a `#[step(for_each(..))]` step can run over: a sequence of elements.
#[diagnostic::on_unimplemented(
    message = "`for_each` runs this step once per element of the parent's output, but `{Self}` is not a sequence",
    label = "this parameter takes one element of the parent's output `{Self}`",
    note = "with `#[step(for_each(name))]`, step `name`'s output must be a `Vec<E>`, a `Box<[E]>` or an array `[E; N]`, and the parameter `name: &E` takes one element"
)]
pub trait Elements {
    /// The type of one element.
    type Item;
    /// The elements, in order.
    fn elements(&self) -> &[Self::Item];
}

impl<E> Elements for Vec<E> {
    type Item = E;
    #[inline]
    fn elements(&self) -> &[E] {
        self
    }
}

impl<E> Elements for Box<[E]> {
    type Item = E;
    #[inline]
    fn elements(&self) -> &[E] {
        self
    }
}

impl<E, const N: usize> Elements for [E; N] {
    type Item = E;
    #[inline]
    fn elements(&self) -> &[E] {
        self
    }
}

/// The elements a `for_each` step runs over: its parent's output.
#[inline]
pub fn elements<O: Elements>(output: &O) -> &[O::Item] {
    Elements::elements(output)
}

/// How one element is lent to a `for_each` parameter of type `&P`: as itself, or a `Vec<T>` as
/// `[T]` and a `String` as `str`, as whole outputs are.
#[diagnostic::on_unimplemented(
    message = "this parameter takes each element as `&{P}`, but the parent's output holds `{Self}` elements",
    label = "expected `&{Self}` here (one element of the parent's output)",
    note = "with `#[step(for_each(name))]`, the parameter `name: &E` takes one element of step `name`'s output `Vec<E>` (or `[U]` for a `Vec<U>` element, `str` for a `String`)"
)]
pub trait ElementAs<P: ?Sized> {
    /// The element, as the parameter takes it.
    fn element_as(&self) -> &P;
}

impl<T: ?Sized> ElementAs<T> for T {
    #[inline]
    fn element_as(&self) -> &T {
        self
    }
}

#[diagnostic::do_not_recommend]
impl<T> ElementAs<[T]> for Vec<T> {
    #[inline]
    fn element_as(&self) -> &[T] {
        self
    }
}

#[diagnostic::do_not_recommend]
impl ElementAs<str> for String {
    #[inline]
    fn element_as(&self) -> &str {
        self
    }
}

/// One element, lent to a `for_each` parameter of type `&P`.
#[inline]
pub fn element<T: ElementAs<P>, P: ?Sized>(element: &T) -> &P {
    ElementAs::element_as(element)
}
