//! The one grammar of fenced code blocks (CommonMark), shared by everything that
//! must agree on where code starts and ends: `chunk` (splitting an answer), `render`
//! (closing a partial answer for display) and Slack's `mrkdwn` (converting it).
//!
//! A fence line is indented by at most three spaces, then three or more backticks or
//! tildes; the rest is the info string, which for a backtick fence may not contain a
//! backtick (```` ```inline``` ```` is inline code, not a fence). A block is closed by
//! a fence line of the same character, at least as long, with nothing after it; a
//! block never closed runs to the end of the text. Pure and std-only.

/// An open fenced code block: its marker character and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub marker: char,
    pub len: usize,
}

impl Fence {
    /// The block `line` opens, with its info string (trimmed), if it is a fence line.
    pub fn opened_by(line: &str) -> Option<(Fence, &str)> {
        let rest = strip_indent(line)?;
        let marker = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
        // Both markers are one byte each, so the byte count is the character count.
        let len = rest.len() - rest.trim_start_matches(marker).len();
        let info = &rest[len..];
        if len < 3 || (marker == '`' && info.contains('`')) {
            return None;
        }
        Some((Fence { marker, len }, info.trim()))
    }

    /// Whether `line` closes this block.
    pub fn is_closed_by(&self, line: &str) -> bool {
        let Some(rest) = strip_indent(line) else {
            return false;
        };
        let after = rest.trim_start_matches(self.marker);
        rest.len() - after.len() >= self.len && after.trim().is_empty()
    }

    /// The fence's own characters, e.g. ```` ``` ````: what closes it again.
    pub fn text(&self) -> String {
        self.marker.to_string().repeat(self.len)
    }
}

/// At most three spaces of indentation, or `None` (four make an indented code line).
pub fn strip_indent(line: &str) -> Option<&str> {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    (spaces <= 3).then(|| &line[spaces..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_lines_follow_commonmark() {
        let ticks = Fence {
            marker: '`',
            len: 3,
        };
        assert_eq!(Fence::opened_by("```rust\n"), Some((ticks.clone(), "rust")));
        assert_eq!(
            Fence::opened_by("   ~~~~ x").map(|(f, _)| f.text()),
            Some("~~~~".into())
        );
        assert_eq!(
            Fence::opened_by("    ```"),
            None,
            "four spaces: indented code"
        );
        assert_eq!(Fence::opened_by("``"), None);
        assert_eq!(Fence::opened_by("```inline```"), None);
        assert!(
            Fence::opened_by("~~~ a`b").is_some(),
            "tildes allow backticks"
        );
        assert!(ticks.is_closed_by("````  \n"));
        assert!(!ticks.is_closed_by("~~~"));
        assert!(!ticks.is_closed_by("``` x"));
        assert!(!ticks.is_closed_by("``"));
    }
}
