//! Error details that keep their cause. [`Detail`] is what an error variant says
//! (`StoreError::Unavailable`, `AgentError::Unreachable`, `SinkError`, …): one line of
//! text and, when an adapter's error caused it, that error, still alive behind
//! [`Error::source`]. [`Report`] renders an error and its causes as one line.
//!
//! Core names no adapter's error type: a cause is held as `dyn Error`, so reqwest, sqlx
//! or serenity errors come in from the adapters without core importing them.
//!
//! # The rule
//!
//! - A variant that holds a [`Detail`] shows it in its own text and marks it
//!   `#[source]`: `#[error("store unavailable: {0}")] Unavailable(#[source] Detail)`.
//! - Where an adapter's error caused the failure, pass it in
//!   ([`Detail::caused_by`], [`Detail::from_error`]) instead of `format!("…: {e}")`;
//!   text without an underlying error stays [`Detail::new`] (or `.into()`).
//! - A chain walked for text goes through [`Report`], not `{:#}`, so the cause is not
//!   shown twice.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// The text of an error variant, plus the error that caused it (if any). Cheap to
/// clone (one `Arc`), compared by its text.
///
/// The text already includes the cause, as the bridge has always shown it
/// (`"cannot connect to PostgreSQL: <the driver's message>"`), and
/// [`source`](Error::source) returns that same cause. std's guidance is to do one or
/// the other; a `Detail` does both on purpose:
///
/// - The texts users, peers and operators see (chat replies, `reply.failed` reasons,
///   HTTP error bodies, log lines) were written as "context: cause" and stay byte for
///   byte what they were, wherever an error is turned into text with `{e}`.
/// - Only the cause's own text belongs in them: the adapters' errors carry chains of
///   their own (reqwest → hyper → io, rusqlite → SQLite's code, sqlx's database error
///   shown *and* returned as its source) that a full walk would add, repeated or not.
///
/// The live cause is there for code that inspects it (`source()`, `downcast_ref`).
/// [`Report`] ends its walk at a `Detail`, so a chain rendered through it shows the
/// cause once.
///
/// `Debug` prints the text only (like the `String` it replaces), never the cause's
/// `Debug`: reqwest's and hyper's name URLs and addresses the text leaves out on
/// purpose.
#[derive(Clone)]
pub struct Detail(Arc<Inner>);

struct Inner {
    /// The whole line, cause included.
    text: String,
    cause: Option<Box<dyn Error + Send + Sync + 'static>>,
}

impl Detail {
    /// Plain text, with no underlying error.
    pub fn new(text: impl Into<String>) -> Self {
        Detail(Arc::new(Inner {
            text: text.into(),
            cause: None,
        }))
    }

    /// `"{context}: {cause}"`, keeping `cause`.
    pub fn caused_by(
        context: impl fmt::Display,
        cause: impl Error + Send + Sync + 'static,
    ) -> Self {
        Self::with_cause(format!("{context}: {cause}"), cause)
    }

    /// The cause's own text, keeping the cause.
    pub fn from_error(cause: impl Error + Send + Sync + 'static) -> Self {
        Self::with_cause(cause.to_string(), cause)
    }

    /// `text`, already showing `cause` the way the caller wants it (in parentheses,
    /// shortened, scrubbed), keeping `cause`.
    pub fn with_cause(text: impl Into<String>, cause: impl Error + Send + Sync + 'static) -> Self {
        Detail(Arc::new(Inner {
            text: text.into(),
            cause: Some(Box::new(cause)),
        }))
    }

    /// The whole text, cause included (what `Display` writes).
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    pub fn is_empty(&self) -> bool {
        self.0.text.is_empty()
    }

    /// The underlying error, if one caused this.
    pub fn cause(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.0.cause.as_deref()
    }
}

impl fmt::Display for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.text)
    }
}

impl fmt::Debug for Detail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0.text, f)
    }
}

impl Error for Detail {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0
            .cause
            .as_deref()
            .map(|cause| cause as &(dyn Error + 'static))
    }
}

impl PartialEq for Detail {
    fn eq(&self, other: &Self) -> bool {
        self.0.text == other.0.text
    }
}

impl Eq for Detail {}

impl From<String> for Detail {
    fn from(text: String) -> Self {
        Detail::new(text)
    }
}

impl From<&str> for Detail {
    fn from(text: &str) -> Self {
        Detail::new(text)
    }
}

/// An error and its causes as one line, each level's text joined by `": "` as
/// anyhow's `{:#}` does, except that the walk ends at a [`Detail`] (its text already
/// shows its cause) and at a level whose source is one (that level shows its
/// `Detail`, by [the rule](self#the-rule)). For a chain without a `Detail` it is
/// exactly `{:#}`.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut level = self.0;
        write!(f, "{level}")?;
        while !level.is::<Detail>() {
            match level.source() {
                Some(next) if !next.is::<Detail>() => {
                    write!(f, ": {next}")?;
                    level = next;
                }
                _ => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner2);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner2;

    #[derive(Debug, thiserror::Error)]
    enum Holder {
        #[error("store unavailable: {0}")]
        Unavailable(#[source] Detail),
    }

    #[test]
    fn detail_shows_its_cause_once_and_keeps_it_as_the_source() {
        let d = Detail::caused_by("cannot connect", Outer(Inner2));
        assert_eq!(d.to_string(), "cannot connect: outer");
        assert_eq!(format!("{d:?}"), "\"cannot connect: outer\"");
        let source = d.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("outer"));
        assert!(d.cause().is_some_and(|c| c.is::<Outer>()));
        assert_eq!(d, Detail::new("cannot connect: outer"));
        assert!(Detail::new("plain").source().is_none());
    }

    #[test]
    fn report_joins_levels_and_ends_at_a_detail() {
        assert_eq!(Report(&Outer(Inner2)).to_string(), "outer: inner");
        let held = Holder::Unavailable(Detail::caused_by("cannot connect", Outer(Inner2)));
        assert_eq!(held.to_string(), "store unavailable: cannot connect: outer");
        assert_eq!(Report(&held).to_string(), held.to_string());
        let d = Detail::from_error(Outer(Inner2));
        assert_eq!(Report(&d).to_string(), "outer");
    }
}
