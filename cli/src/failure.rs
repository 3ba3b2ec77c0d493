//! An error of a command: one message that says what went wrong and what to do.

use std::error::Error;
use std::fmt;

/// What the command prints after `error: ` before it exits with code 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure(String);

impl Failure {
    /// A failure with this message.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Failure(message.into())
    }

    /// An error and its causes, `: `-separated (a `StoreError::Database` says what to check, its
    /// cause says what SQLite said).
    pub(crate) fn chain(error: &dyn Error) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Failure(message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
