//! Splitting an answer into messages that fit a platform's length limit (Discord 2,000
//! characters, Slack 3,900).
//!
//! [`split_text`] cuts at the best boundary it can find: a blank line, else a line
//! break, else whitespace, else between two characters (never inside one). When a cut
//! falls inside a fenced code block, the part before is closed with a fence and the part
//! after reopens it with the same info string, so both render as code.
//!
//! This module is pure and std-only: it knows nothing about Markdown beyond fence lines
//! (```` ``` ```` or `~~~`, in `core::fence`'s one grammar), nothing about a platform's
//! escaping (Slack's mrkdwn conversion happens before), and it never rewrites the text
//! between cuts.

use super::fence;

/// Splits `text` into parts of at most `limit` characters (`char`s, not bytes).
///
/// - Text that fits is returned as one part, untouched; empty or whitespace-only text
///   gives no parts at all.
/// - Each cut is the rightmost one that fits, of the best kind available: a blank line,
///   else a line break, else whitespace, else a character boundary inside a word.
/// - Whitespace is removed only at the cuts: the end of the part before, and blank lines
///   and spaces at the start of the part after. A line's indentation is kept, so code
///   continues correctly in the next part.
/// - A cut inside a fenced block appends its fence (`"\n```"`) to the part before and
///   puts `"```info\n"` at the start of the part after; these count towards `limit`. When the
///   fence lines would take more than half of `limit` (a tiny limit or a very long info
///   string) the info string is dropped, and if even that does not fit, the block is cut
///   without repair.
/// - No part is empty. A `limit` of 0 is treated as 1.
pub fn split_text(text: &str, limit: usize) -> Vec<String> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    let limit = limit.max(1);
    if text.chars().count() <= limit {
        return vec![text.to_owned()];
    }
    Splitter::new(text, limit).run()
}

/// The preference order of cut points, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    /// A blank (or whitespace-only) line.
    Paragraph,
    /// A single line break.
    Line,
    /// Spaces or tabs inside a line.
    Word,
}

/// A maximal run of whitespace that follows a non-whitespace character: a place where a
/// cut can happen without splitting a word.
#[derive(Debug)]
struct Gap {
    /// Byte offset where the run starts: the part before ends here.
    start: usize,
    /// Byte offset where the part after starts (see [`Splitter::resume_after`]).
    resume: usize,
    kind: Boundary,
}

/// A fenced code block, located by byte offsets into the text.
#[derive(Debug)]
struct Fence {
    /// Start of the opening fence line.
    open_start: usize,
    /// Start of the first line after the opening fence line.
    content_start: usize,
    /// Start of the closing fence line; `None` when the block runs to the end.
    close_start: Option<usize>,
    /// End of the closing fence's backticks (before trailing whitespace); the text's
    /// length when the block runs to the end.
    close_end: usize,
    /// The fence lines added at a cut, or `None` when they would not fit.
    repair: Option<Repair>,
}

#[derive(Debug)]
struct Repair {
    /// Appended to the part before the cut: `"\n```"`.
    close: String,
    /// Prepended to the part after the cut: `"```info\n"`.
    reopen: String,
}

/// Where a part that starts at some offset stands with respect to the code blocks.
enum Position<'f> {
    Outside,
    /// In the body of the block: the cut needs a repair.
    Inside(&'f Fence),
    /// At the start of a closing fence line, which would then open a new block.
    AtClose,
    /// Inside an opening or closing fence line, which a cut would break.
    InFenceLine,
}

/// One chosen cut: the part is `text[begin..end]` (plus fence lines), and the next one
/// starts at `resume`.
struct Cut<'f> {
    begin: usize,
    end: usize,
    resume: usize,
    close: Option<&'f str>,
    reopen: Option<&'f str>,
}

struct Splitter<'t> {
    text: &'t str,
    limit: usize,
    /// Byte offset of every char, so character counts between offsets are a binary
    /// search instead of a rescan (cuts are evaluated many times per part).
    offsets: Vec<usize>,
    gaps: Vec<Gap>,
    fences: Vec<Fence>,
}

impl<'t> Splitter<'t> {
    fn new(text: &'t str, limit: usize) -> Self {
        let mut splitter = Splitter {
            text,
            limit,
            offsets: text.char_indices().map(|(i, _)| i).collect(),
            gaps: Vec::new(),
            fences: find_fences(text, limit),
        };
        splitter.gaps = splitter.find_gaps();
        splitter
    }

    fn run(&self) -> Vec<String> {
        let mut parts = Vec::new();
        let mut start = 0;
        let mut reopen: Option<&str> = None;
        while start < self.text.len() {
            let prefix = reopen.unwrap_or("");
            let prefix_chars = prefix.chars().count();
            if prefix_chars + self.chars_between(start, self.text.len()) <= self.limit {
                parts.push(format!("{prefix}{}", &self.text[start..]));
                break;
            }
            let cut = self.best_cut(start, prefix_chars);
            let mut part = String::from(prefix);
            part.push_str(&self.text[cut.begin..cut.end]);
            part.push_str(cut.close.unwrap_or(""));
            parts.push(part);
            start = cut.resume;
            reopen = cut.reopen;
        }
        parts
    }

    /// The best cut for a part starting at `start` whose first `prefix_chars` characters
    /// are already taken by a reopened fence.
    fn best_cut(&self, start: usize, prefix_chars: usize) -> Cut<'_> {
        // Fence repairs take at most half the limit, so there is always room for text.
        let budget = self.limit.saturating_sub(prefix_chars).max(1);
        let first = self.char_index(start);
        let window_end = self.byte_at(first + budget);

        let lo = self.gaps.partition_point(|g| g.start <= start);
        let hi = self.gaps.partition_point(|g| g.start <= window_end);
        let gaps = &self.gaps[lo..hi];
        for kind in [Boundary::Paragraph, Boundary::Line, Boundary::Word] {
            let found = gaps
                .iter()
                .rev()
                .filter(|g| g.kind == kind)
                .find_map(|g| self.evaluate(start, prefix_chars, g.start, g.resume));
            if let Some(cut) = found {
                return cut;
            }
        }

        // No whitespace to cut at: cut inside a word, between two non-whitespace chars
        // (so no whitespace is lost), as far right as fits.
        let last = (first + budget).min(self.offsets.len().saturating_sub(1));
        for ci in (first + 1..=last).rev() {
            let at = self.byte_at(ci);
            let before = self.text[..at].chars().next_back();
            let after = self.text[at..].chars().next();
            if before.is_some_and(|c| !c.is_whitespace())
                && after.is_some_and(|c| !c.is_whitespace())
            {
                if let Some(cut) = self.evaluate(start, prefix_chars, at, at) {
                    return cut;
                }
            }
        }

        self.fallback_cut(start, budget)
    }

    /// The cut `text[start..end]` / resume at `resume`, if it keeps fences well formed
    /// and fits in the limit together with the fence lines it needs.
    fn evaluate(
        &self,
        start: usize,
        prefix_chars: usize,
        end: usize,
        resume: usize,
    ) -> Option<Cut<'_>> {
        let (close, reopen) = match self.position(resume) {
            Position::Outside => (None, None),
            // The next part would begin with the closing fence, which would then *open*
            // a block; a later cut (after the fence line) is always better. A cut inside
            // a fence line breaks the fence; only the fallback does that.
            Position::AtClose | Position::InFenceLine => return None,
            Position::Inside(fence) => {
                // Nothing of the block's body before the cut: cutting before the opening
                // line is better than an empty block.
                if end < fence.content_start {
                    return None;
                }
                match &fence.repair {
                    Some(r) => (Some(r.close.as_str()), Some(r.reopen.as_str())),
                    None => (None, None),
                }
            }
        };
        let chars =
            prefix_chars + self.chars_between(start, end) + close.map_or(0, |c| c.chars().count());
        (chars <= self.limit).then_some(Cut {
            begin: start,
            end,
            resume,
            close,
            reopen,
        })
    }

    /// The last resort, reached only when nothing else fits (e.g. indentation longer than
    /// the limit): drop the part's leading whitespace and take as much as fits, without
    /// fence repair.
    fn fallback_cut(&self, start: usize, budget: usize) -> Cut<'_> {
        let rest = &self.text[start..];
        let begin = start + (rest.len() - rest.trim_start().len());
        let raw_end = self.byte_at(self.char_index(begin) + budget);
        // `begin` is at a non-whitespace char (the rest is never whitespace-only), so
        // trimming the end cannot make the part empty.
        let end = begin + self.text[begin..raw_end].trim_end().len();
        Cut {
            begin,
            end,
            resume: self.resume_after(end),
            close: None,
            reopen: None,
        }
    }

    /// Where the part after a cut starts, given that the part before ends at `pos`:
    /// after the whitespace that follows, except that a line's indentation is kept.
    /// Trailing whitespace of the text resumes at its end (nothing left to send).
    fn resume_after(&self, pos: usize) -> usize {
        let rest = &self.text[pos..];
        let ws_len = rest.len() - rest.trim_start().len();
        if ws_len == rest.len() {
            return self.text.len();
        }
        match rest[..ws_len].rfind('\n') {
            Some(nl) => pos + nl + 1,
            None => pos + ws_len,
        }
    }

    fn position(&self, offset: usize) -> Position<'_> {
        let i = self.fences.partition_point(|f| f.open_start <= offset);
        let Some(fence) = i.checked_sub(1).and_then(|i| self.fences.get(i)) else {
            return Position::Outside;
        };
        let body_end = fence.close_start.unwrap_or(self.text.len());
        if offset == fence.open_start {
            Position::Outside
        } else if offset < fence.content_start {
            Position::InFenceLine
        } else if offset < body_end {
            Position::Inside(fence)
        } else if fence.close_start == Some(offset) {
            Position::AtClose
        } else if offset < fence.close_end {
            Position::InFenceLine
        } else {
            Position::Outside
        }
    }

    fn find_gaps(&self) -> Vec<Gap> {
        let mut gaps = Vec::new();
        let mut prev_is_text = false;
        let mut chars = self.text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if !c.is_whitespace() {
                prev_is_text = true;
                continue;
            }
            let mut newlines = usize::from(c == '\n');
            while let Some(&(_, c)) = chars.peek() {
                if !c.is_whitespace() {
                    break;
                }
                newlines += usize::from(c == '\n');
                chars.next();
            }
            // Whitespace at the very start of the text is not a place to cut.
            if prev_is_text {
                let kind = match newlines {
                    0 => Boundary::Word,
                    1 => Boundary::Line,
                    _ => Boundary::Paragraph,
                };
                gaps.push(Gap {
                    start: i,
                    resume: self.resume_after(i),
                    kind,
                });
            }
        }
        gaps
    }

    /// The char index of a byte offset that lies on a char boundary.
    fn char_index(&self, byte: usize) -> usize {
        match self.offsets.binary_search(&byte) {
            Ok(i) | Err(i) => i,
        }
    }

    /// The byte offset of a char index; the text's length past the last char.
    fn byte_at(&self, char_index: usize) -> usize {
        self.offsets
            .get(char_index)
            .copied()
            .unwrap_or(self.text.len())
    }

    fn chars_between(&self, from: usize, to: usize) -> usize {
        self.char_index(to) - self.char_index(from)
    }
}

/// Finds the fenced code blocks (`core::fence`'s grammar), by byte offsets.
fn find_fences(text: &str, limit: usize) -> Vec<Fence> {
    let mut fences = Vec::new();
    // (opening line start, body start, the fence, its info string)
    let mut open: Option<(usize, usize, fence::Fence, &str)> = None;
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let line_end = line_start + line.len();
        match &open {
            None => {
                if let Some((f, info)) = fence::Fence::opened_by(line) {
                    open = Some((line_start, line_end, f, info));
                }
            }
            Some((open_start, content_start, f, info)) if f.is_closed_by(line) => {
                fences.push(Fence {
                    open_start: *open_start,
                    content_start: *content_start,
                    close_start: Some(line_start),
                    close_end: line_start + line.trim_end().len(),
                    repair: repair(f, info, limit),
                });
                open = None;
            }
            Some(_) => {}
        }
        line_start = line_end;
    }
    if let Some((open_start, content_start, f, info)) = open {
        fences.push(Fence {
            open_start,
            content_start,
            close_start: None,
            close_end: text.len(),
            repair: repair(&f, info, limit),
        });
    }
    fences
}

/// The fence lines for a cut inside a block opened by `fence`, if they take at most
/// half the limit; the rest of the limit is left for the block's text.
fn repair(fence: &fence::Fence, info: &str, limit: usize) -> Option<Repair> {
    let marker = fence.text();
    let close = format!("\n{marker}");
    [format!("{marker}{info}\n"), format!("{marker}\n")]
        .into_iter()
        .find(|reopen| close.chars().count() + reopen.chars().count() <= limit / 2)
        .map(|reopen| Repair { close, reopen })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(text: &str, limit: usize, expected: &[&str]) {
        let parts = split_text(text, limit);
        assert_eq!(parts, expected, "split_text({text:?}, {limit})");
        assert_invariants(text, limit, &parts);
    }

    /// The properties every split must have; see [`reassembles`] for the content check.
    fn assert_invariants(text: &str, limit: usize, parts: &[String]) {
        for part in parts {
            let n = part.chars().count();
            assert!(n <= limit.max(1), "{n} chars > {limit}: {part:?}");
            assert!(!part.trim().is_empty(), "empty part in {parts:?}");
        }
        assert!(
            reassembles(text, parts),
            "parts do not reassemble the text\ntext:  {text:?}\nparts: {parts:#?}"
        );
    }

    /// Checks that the parts are the text, modulo whitespace at the cuts and the fence
    /// lines added there.
    ///
    /// Precisely: with every whitespace character removed from the text and the parts,
    /// the parts concatenate to the text once the added fence lines are taken out, where
    /// a part may have an added close (a trailing `\n` + 3 or more backticks) exactly when
    /// the next part has an added reopen (a first line starting with 3 or more
    /// backticks), the first part has no reopen and the last no close. Whether a fence
    /// line is added or the text's own is decided by search (each part has at most four
    /// readings), so this does not trust the splitter's own bookkeeping.
    fn reassembles(text: &str, parts: &[String]) -> bool {
        fn squeeze(s: &str) -> Vec<char> {
            s.chars().filter(|c| !c.is_whitespace()).collect()
        }
        fn added_reopen(part: &str) -> Option<&str> {
            let (first_line, rest) = part.split_once('\n')?;
            first_line.starts_with("```").then_some(rest)
        }
        fn added_close(part: &str) -> Option<&str> {
            let body = part.trim_end_matches('`');
            let ticks = part.len() - body.len();
            (ticks >= 3).then_some(body.strip_suffix('\n')?)
        }
        // Readings of part i: (content, has added reopen, has added close).
        let readings: Vec<Vec<(Vec<char>, bool, bool)>> = parts
            .iter()
            .map(|p| {
                let mut r = vec![(squeeze(p), false, false)];
                if let Some(c) = added_close(p) {
                    r.push((squeeze(c), false, true));
                }
                if let Some(o) = added_reopen(p) {
                    r.push((squeeze(o), true, false));
                    if let Some(oc) = added_close(o) {
                        r.push((squeeze(oc), true, true));
                    }
                }
                r
            })
            .collect();
        let want = squeeze(text);

        // Depth-first search over (part, position in `want`, previous part closed).
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(0usize, 0usize, false)];
        while let Some(state @ (i, pos, closed)) = stack.pop() {
            if !seen.insert(state) {
                continue;
            }
            if i == parts.len() {
                if pos == want.len() && !closed {
                    return true;
                }
                continue;
            }
            for (content, reopened, closes) in &readings[i] {
                if *reopened == closed && want[pos..].starts_with(content) {
                    stack.push((i + 1, pos + content.len(), *closes));
                }
            }
        }
        false
    }

    #[test]
    fn text_that_fits_is_one_untouched_part() {
        check("hello", 5, &["hello"]);
        check("  hello\n\n", 20, &["  hello\n\n"]);
        check("ééé", 3, &["ééé"]);
    }

    #[test]
    fn empty_or_blank_text_gives_no_parts() {
        check("", 10, &[]);
        check(" \n\t\n ", 2, &[]);
    }

    #[test]
    fn a_blank_line_is_preferred_to_a_later_line_break() {
        check(
            "one two\n\nthree\nfour five",
            18,
            &["one two", "three\nfour five"],
        );
        // A whitespace-only line counts as blank.
        check("aaa\n  \t\nbbb ccc", 10, &["aaa", "bbb ccc"]);
    }

    #[test]
    fn a_line_break_is_preferred_to_a_later_space() {
        check(
            "one two\nthree four five",
            16,
            &["one two", "three four five"],
        );
    }

    #[test]
    fn a_space_is_preferred_to_cutting_a_word() {
        check("alpha beta gamma", 12, &["alpha beta", "gamma"]);
        check("alpha \t beta", 7, &["alpha", "beta"]);
    }

    #[test]
    fn a_word_longer_than_the_limit_is_cut_between_characters() {
        check("abcdefghijkl mn", 5, &["abcde", "fghij", "kl mn"]);
        check("ééééééé", 3, &["ééé", "ééé", "é"]);
        check("🦀🦀🦀🦀🦀 x", 2, &["🦀🦀", "🦀🦀", "🦀", "x"]);
    }

    #[test]
    fn the_rightmost_boundary_of_the_best_kind_is_used() {
        check("a\n\nb\n\nc d e f", 10, &["a\n\nb", "c d e f"]);
    }

    #[test]
    fn whitespace_is_trimmed_only_at_the_cuts() {
        check(
            "  lead  in\n\n\n\n  middle  part  \n\n",
            11,
            &["  lead  in", "  middle", "part  \n\n"],
        );
    }

    #[test]
    fn indentation_is_kept_at_the_start_of_the_next_part() {
        check(
            "fn main() {\n    let x = 1;\n    call(x);\n}",
            28,
            &["fn main() {\n    let x = 1;", "    call(x);\n}"],
        );
    }

    #[test]
    fn a_cut_inside_a_code_block_closes_and_reopens_the_fence() {
        let text = "Here:\n\n```rust\nlet a = 1;\nlet b = 2;\nlet c = 3;\n```\n\nDone.";
        check(
            text,
            34,
            &[
                "Here:",
                "```rust\nlet a = 1;\nlet b = 2;\n```",
                "```rust\nlet c = 3;\n```\n\nDone.",
            ],
        );
    }

    #[test]
    fn fence_lines_added_at_a_cut_count_towards_the_limit() {
        let code: String = (0..40).map(|i| format!("line {i:02}\n")).collect();
        let text = format!("```python\n{code}```");

        let parts = split_text(&text, 60);

        assert!(parts.len() > 1);
        for (i, part) in parts.iter().enumerate() {
            assert!(part.chars().count() <= 60, "{part:?}");
            if i > 0 {
                assert!(part.starts_with("```python\n"), "{part:?}");
            }
            assert!(part.ends_with("\n```"), "{part:?}");
        }
        assert_invariants(&text, 60, &parts);
    }

    #[test]
    fn a_code_block_is_not_left_open_with_an_empty_body() {
        // The cut after "```sh" would leave an empty block; the one before it is used.
        check(
            "Run this\n```sh\nmake all install\n```",
            20,
            &["Run this", "```sh\nmake all\n```", "```sh\ninstall\n```"],
        );
    }

    #[test]
    fn the_next_part_never_starts_with_a_closing_fence() {
        // The window ends just before the closing fence; cutting there would make the
        // closing fence open a new block in the next part.
        let text = "```\nabc def\n```\nafter";
        let parts = split_text(text, 15);
        assert_eq!(parts, ["```\nabc def\n```", "after"]);
        assert_invariants(text, 15, &parts);
    }

    #[test]
    fn a_cut_after_a_closing_fence_adds_nothing() {
        check(
            "```\ncode\n```\n\ntext after",
            14,
            &["```\ncode\n```", "text after"],
        );
    }

    #[test]
    fn an_unclosed_block_is_repaired_at_cuts_but_left_open_at_the_end() {
        check(
            "```js\naaaa bbbb cccc dddd",
            20,
            &["```js\naaaa bbbb\n```", "```js\ncccc dddd"],
        );
    }

    #[test]
    fn a_longer_fence_is_closed_and_reopened_with_as_many_backticks() {
        // The inner ``` is content of the ````md block, not a fence.
        check(
            "````md\n```\nalpha beta gamma delta\n````",
            30,
            &[
                "````md\n```\n````",
                "````md\nalpha beta gamma\n````",
                "````md\ndelta\n````",
            ],
        );
    }

    #[test]
    fn inline_triple_backticks_are_not_a_fence() {
        check("```a``` bb cc dd", 10, &["```a``` bb", "cc dd"]);
    }

    #[test]
    fn a_long_info_string_is_dropped_when_the_fence_lines_would_not_fit() {
        let text = "```a-very-long-info-string\nxx yy zz ww vv uu\n```";
        let parts = split_text(text, 40);
        assert_eq!(
            parts,
            [
                "```a-very-long-info-string\nxx yy zz\n```",
                "```\nww vv uu\n```"
            ]
        );
        assert_invariants(text, 40, &parts);
    }

    #[test]
    fn tiny_limits_still_make_progress() {
        check("ab cd", 0, &["a", "b", "c", "d"]);
        check("```\nab\n```", 1, &["`", "`", "`", "a", "b", "`", "`", "`"]);
        check("x          y", 3, &["x", "y"]);
    }

    #[test]
    fn indentation_longer_than_the_limit_is_dropped_rather_than_sent_alone() {
        check("a\n            bcd", 5, &["a", "bcd"]);
    }

    #[test]
    fn a_five_thousand_character_answer_at_discord_limit_gives_three_parts() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(112);
        let text = text.trim_end();
        assert!(text.chars().count() >= 5_000);

        let parts = split_text(text, 2_000);

        assert_eq!(parts.len(), 3);
        assert_invariants(text, 2_000, &parts);

        // The same with paragraphs of ~1,000 characters.
        let para = "word ".repeat(199) + "end.";
        let text = [para.as_str(); 5].join("\n\n");
        assert!(text.chars().count() >= 4_990);
        let parts = split_text(&text, 2_000);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.ends_with("end.")));
        assert_invariants(&text, 2_000, &parts);
    }

    #[test]
    fn slack_sized_parts_repair_a_long_code_block() {
        let code: String = (0..400)
            .map(|i| format!("    value_{i} = compute({i})\n"))
            .collect();
        let text = format!("Result:\n\n```python\n{code}```\n\nThat is all.");

        let parts = split_text(&text, 3_900);

        assert!(parts.len() >= 3);
        assert_eq!(parts[0], "Result:");
        for part in &parts[1..parts.len() - 1] {
            assert!(part.starts_with("```python\n    value_"), "{part:?}");
            assert!(part.ends_with("\n```"), "{part:?}");
        }
        assert_invariants(&text, 3_900, &parts);
    }

    /// Text built from pieces that stress the splitter: multi-byte characters, long
    /// words, blank lines, indentation and fences of every kind.
    fn markdownish() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => "[a-z]{1,8}",
            2 => Just(" ".to_owned()),
            2 => Just("\n".to_owned()),
            1 => Just("\n\n".to_owned()),
            1 => Just("\n    ".to_owned()),
            1 => Just(" \t \r\n".to_owned()),
            1 => "[éß日本語🦀\u{301}]{1,6}",
            1 => "x{20,120}",
            1 => Just("\n```\n".to_owned()),
            1 => Just("\n```rust\n".to_owned()),
            1 => Just("\n````md\n".to_owned()),
            1 => Just("```".to_owned()),
            1 => Just("`".to_owned()),
            1 => "\n```[a-z+-]{0,40}\n",
            1 => any::<String>(),
        ];
        prop::collection::vec(piece, 0..120).prop_map(|pieces| pieces.concat())
    }

    /// Well-formed Markdown: paragraphs and closed code blocks with short info strings.
    fn well_formed() -> impl Strategy<Value = String> {
        let paragraph = prop::collection::vec("[a-zé日🦀]{1,12}", 1..40).prop_map(|w| w.join(" "));
        let code = (
            "(rust|py|)",
            prop::collection::vec("( {0,4})[a-z(){};=]{1,30}", 1..30),
        )
            .prop_map(|(info, lines)| format!("```{info}\n{}\n```", lines.join("\n")));
        let block = prop_oneof![2 => paragraph, 1 => code];
        prop::collection::vec(block, 1..12).prop_map(|b| b.join("\n\n"))
    }

    fn limit() -> impl Strategy<Value = usize> {
        prop_oneof![3 => 20usize..120, 1 => 120usize..4_000]
    }

    proptest! {
        // No regression files: the interesting cases are kept as table tests above.
        #![proptest_config(ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn every_split_fits_is_non_empty_and_reassembles(text in markdownish(), limit in limit()) {
            let parts = split_text(&text, limit);

            prop_assert_eq!(parts.is_empty(), text.trim().is_empty());
            for part in &parts {
                prop_assert!(part.chars().count() <= limit, "{} > {}: {:?}", part.chars().count(), limit, part);
                prop_assert!(!part.trim().is_empty());
            }
            prop_assert!(reassembles(&text, &parts), "text: {:?}\nparts: {:#?}", text, parts);
        }

        #[test]
        fn arbitrary_unicode_is_split_on_char_boundaries(text in any::<String>(), limit in 1usize..40) {
            let parts = split_text(&text, limit);

            for part in &parts {
                prop_assert!(part.chars().count() <= limit);
                prop_assert!(!part.trim().is_empty());
            }
            prop_assert!(reassembles(&text, &parts));
        }

        #[test]
        fn every_part_of_well_formed_markdown_has_balanced_fences(text in well_formed(), limit in 30usize..400) {
            let parts = split_text(&text, limit);

            for part in &parts {
                let fences = find_fences(part, limit);
                prop_assert!(
                    fences.iter().all(|f| f.close_start.is_some()),
                    "unbalanced part {:?}\nof {:?}", part, parts
                );
            }
            prop_assert!(reassembles(&text, &parts));
        }
    }
}
