//! Markdown (what agents write) → Slack mrkdwn (what `chat.postMessage` renders).
//!
//! | Markdown | mrkdwn |
//! |---|---|
//! | `**bold**`, `__bold__` | `*bold*` |
//! | `*italic*`, `_italic_` | `_italic_` |
//! | `~~strike~~` | `~strike~` |
//! | `[text](https://…)`, `![alt](https://…)`, `<https://…>` | `<https://…\|text>` |
//! | `# Heading` (any level) | `*Heading*` |
//! | `- item`, `* item`, `+ item` | `• item` |
//! | `[text][ref]`, `[text][]`, `![alt][ref]` with a `[ref]: url` line | `<url\|text>`, the definition line removed |
//! | `1. item`, `> quote` | kept (a lazy continuation line of a quote keeps the quote) |
//! | `` `code` ``, fenced blocks | kept (fence info strings dropped: Slack shows them as code) |
//!
//! **Safety invariant:** `&`, `<` and `>` in the agent's text always come out as
//! `&amp;`, `&lt;` and `&gt;` — inside code too, because Slack parses `<…>` there as
//! well — so agent output can never form `<!channel>`, `<!here>`, `<@U…>` or a link of
//! its own. The only `<` this module emits opens a link it built from Markdown, whose
//! URL it checked starts with `http://`, `https://` or `mailto:`. (The one `>` kept raw
//! is a blockquote marker at the start of a line, which cannot combine with an
//! escaped `<`.)
//!
//! Pure and total: any input converts, nothing panics (property-tested). Inline
//! constructs never span lines, which also bounds the work per construct. Line
//! endings are `\n`, `\r\n` or a lone `\r`. Fence lines follow the one grammar in
//! `core::fence`, which splitting and streaming use too.

use std::borrow::Cow;

use crate::core::fence::{strip_indent, Fence};

/// Converts agent Markdown to Slack mrkdwn (see the module docs for the mapping).
pub fn to_mrkdwn(markdown: &str) -> String {
    let markdown = normalize_line_endings(markdown);
    let markdown = resolve_references(&markdown);
    let mut out = String::with_capacity(markdown.len() + markdown.len() / 8);
    let mut fence: Option<Fence> = None;
    // Inside a block quote: a following non-blank line that starts no other block is
    // a lazy continuation and stays in the quote.
    let mut in_quote = false;
    for (n, line) in markdown.split('\n').enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let lazy;
        let line = if fence.is_none() {
            let quoted = strip_indent(line).is_some_and(|l| l.starts_with('>'));
            if quoted {
                in_quote = true;
                line
            } else if line.trim().is_empty() {
                in_quote = false;
                line
            } else if in_quote && !starts_a_block(line) {
                lazy = format!("> {}", line.trim_start());
                &lazy
            } else {
                in_quote = false;
                line
            }
        } else {
            line
        };
        match &fence {
            Some(open) => {
                if open.is_closed_by(line) {
                    out.push_str("```");
                    fence = None;
                } else {
                    escape_into(line, &mut out);
                }
            }
            None => match Fence::opened_by(line) {
                Some((open, _)) => {
                    out.push_str("```");
                    fence = Some(open);
                }
                None => convert_line(line, &mut out),
            },
        }
    }
    // Markdown runs an unclosed fence to the end of the text; Slack only renders a
    // block that is closed.
    if fence.is_some() {
        out.push_str("\n```");
    }
    out
}

/// Agent text for a `markdown_text` field (native streaming): Markdown stays, but
/// `&`, `<` and `>` become entities, so no piece — nor pieces joined — can form
/// `<!channel>`, `<!here>`, `<!subteam^…>`, `<@U…>` or `<#C…>`.
pub fn escape_markdown(text: &str) -> String {
    escape(text)
}

/// Escapes the three characters Slack gives meaning to in message text.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(text, &mut out);
    out
}

fn escape_into(text: &str, out: &mut String) {
    for c in text.chars() {
        escape_char(c, out);
    }
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        c => out.push(c),
    }
}

/// `\r\n` and a lone `\r` become `\n` (borrowed when there is none).
fn normalize_line_endings(text: &str) -> Cow<'_, str> {
    match text.contains('\r') {
        true => Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n")),
        false => Cow::Borrowed(text),
    }
}

/// Whether `line` opens a block of its own (so it cannot continue a quote lazily).
fn starts_a_block(line: &str) -> bool {
    let Some(rest) = strip_indent(line) else {
        return false;
    };
    Fence::opened_by(line).is_some()
        || heading(line).is_some()
        || is_rule(rest)
        || bullet(rest).is_some()
        || numbered(rest).is_some()
}

/// Reference-style links and images: `[ref]: url` definition lines (outside code
/// blocks) are removed, and `[text][ref]`, `[text][]` and `![alt][ref]` become inline
/// links `[text](url)`, which the line converter then renders (or, for a URL `safe_url` refuses,
/// reduces to its text). Labels match case-insensitively; code spans are left alone.
fn resolve_references(text: &str) -> Cow<'_, str> {
    let mut definitions: std::collections::HashMap<String, String> =
        std::collections::HashMap::new();
    let mut kept: Vec<&str> = Vec::new();
    let mut fence: Option<Fence> = None;
    for line in text.split('\n') {
        match &fence {
            Some(open) => {
                if open.is_closed_by(line) {
                    fence = None;
                }
                kept.push(line);
            }
            None => {
                if let Some((open, _)) = Fence::opened_by(line) {
                    fence = Some(open);
                    kept.push(line);
                } else if let Some((label, url)) = definition(line) {
                    definitions.entry(label).or_insert(url);
                } else {
                    kept.push(line);
                }
            }
        }
    }
    if definitions.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut fence: Option<Fence> = None;
    for (n, line) in kept.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        match &fence {
            Some(open) => {
                if open.is_closed_by(line) {
                    fence = None;
                }
                out.push_str(line);
            }
            None => {
                if let Some((open, _)) = Fence::opened_by(line) {
                    fence = Some(open);
                    out.push_str(line);
                } else {
                    replace_references(line, &definitions, &mut out);
                }
            }
        }
    }
    Cow::Owned(out)
}

/// `[label]: url` (optionally `<url>`, optionally followed by a title) → (label, url).
fn definition(line: &str) -> Option<(String, String)> {
    let rest = strip_indent(line)?.strip_prefix('[')?;
    let (label, rest) = rest.split_once("]:")?;
    if label.trim().is_empty() || label.contains(['[', ']']) {
        return None;
    }
    let url = rest.split_whitespace().next()?;
    let url = url
        .strip_prefix('<')
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or(url);
    Some((label.trim().to_lowercase(), url.to_owned()))
}

/// Rewrites the reference links of one line into inline links.
fn replace_references(
    line: &str,
    definitions: &std::collections::HashMap<String, String>,
    out: &mut String,
) {
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '`' {
            let end = skip_code_span(&chars, i);
            out.extend(&chars[i..end.max(i + 1)]);
            i = end.max(i + 1);
            continue;
        }
        if chars[i] == '[' {
            if let Some(text_end) = matching(&chars, i + 1, '[', ']') {
                if chars.get(text_end + 1) == Some(&'[') {
                    if let Some(label_end) = matching(&chars, text_end + 2, '[', ']') {
                        let text: String = chars[i + 1..text_end].iter().collect();
                        let label: String = chars[text_end + 2..label_end].iter().collect();
                        let label = if label.trim().is_empty() {
                            text.trim().to_lowercase()
                        } else {
                            label.trim().to_lowercase()
                        };
                        if let Some(url) = definitions.get(&label) {
                            out.push('[');
                            out.push_str(&text);
                            out.push_str("](");
                            out.push_str(url);
                            out.push(')');
                            i = label_end + 1;
                            continue;
                        }
                    }
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
}

/// One line outside a code block: block-level syntax first, then inline.
fn convert_line(line: &str, out: &mut String) {
    if line.trim().is_empty() {
        return;
    }
    let indent_len = line.len() - line.trim_start_matches([' ', '\t']).len();
    let (indent, rest) = line.split_at(indent_len);

    if let Some(text) = heading(line) {
        if !text.is_empty() {
            out.push('*');
            inline(text, Ctx::BOLD, out);
            out.push('*');
        }
        return;
    }
    if is_rule(rest) {
        out.push_str("──────────");
        return;
    }
    if indent_len <= 3 && rest.starts_with('>') {
        // Slack shows one level of quote: nested markers collapse into it. A raw `>`
        // is Slack's quote marker; it is safe because `<` is never raw.
        let mut quoted = rest;
        while let Some(inner) = quoted.strip_prefix('>') {
            quoted = inner.trim_start_matches([' ', '\t']);
        }
        out.push('>');
        if !quoted.is_empty() && !quoted.starts_with('>') {
            out.push(' ');
            convert_line(quoted, out);
        }
        return;
    }
    if let Some(item) = bullet(rest) {
        out.push_str(indent);
        out.push_str("• ");
        let item = if let Some(t) = item.strip_prefix("[ ] ") {
            out.push_str("☐ ");
            t
        } else if let Some(t) = item
            .strip_prefix("[x] ")
            .or_else(|| item.strip_prefix("[X] "))
        {
            out.push_str("☑ ");
            t
        } else {
            item
        };
        inline(item, Ctx::PLAIN, out);
        return;
    }
    if let Some((number, item)) = numbered(rest) {
        out.push_str(indent);
        out.push_str(number);
        out.push(' ');
        inline(item, Ctx::PLAIN, out);
        return;
    }
    out.push_str(indent);
    inline(rest, Ctx::PLAIN, out);
}

/// `# Title ##` → `Title` (ATX headings, levels 1–6).
fn heading(line: &str) -> Option<&str> {
    let rest = strip_indent(line)?;
    let level = rest.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let text = &rest[level..];
    if !(text.is_empty() || text.starts_with([' ', '\t'])) {
        return None;
    }
    let text = text.trim();
    // An optional closing sequence of `#`s, separated by a space, is not content.
    let without_closing = text.trim_end_matches('#');
    let text = if without_closing.is_empty() || without_closing.ends_with([' ', '\t']) {
        without_closing.trim_end()
    } else {
        text
    };
    Some(text)
}

/// `---`, `***`, `___` (three or more, spaces allowed between).
fn is_rule(rest: &str) -> bool {
    let mut marks = rest.chars().filter(|c| !c.is_whitespace());
    let Some(first @ ('-' | '*' | '_')) = marks.next() else {
        return false;
    };
    let mut count = 1;
    for c in marks {
        if c != first {
            return false;
        }
        count += 1;
    }
    count >= 3
}

/// `- item` → `item` (also `*` and `+`).
fn bullet(rest: &str) -> Option<&str> {
    let mut chars = rest.chars();
    let marker = chars.next()?;
    if !matches!(marker, '-' | '*' | '+') {
        return None;
    }
    let after = &rest[1..];
    after
        .starts_with([' ', '\t'])
        .then(|| after.trim_start_matches([' ', '\t']))
}

/// `12. item` → (`12.`, `item`) (also `12)`).
fn numbered(rest: &str) -> Option<(&str, &str)> {
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let after = &rest[digits..];
    if !after.starts_with(['.', ')']) {
        return None;
    }
    let item = &after[1..];
    item.starts_with([' ', '\t'])
        .then(|| (&rest[..=digits], item.trim_start_matches([' ', '\t'])))
}

/// How far (in characters) an inline construct may reach for its closing marker.
/// Bounds the work on adversarial lines (thousands of unclosed openers) to linear
/// time; real emphasis, links and code spans are far shorter.
const MAX_SPAN: usize = 2_000;

/// How deeply emphasis and links may nest before the rest is taken literally, so a
/// crafted line cannot exhaust the stack.
const MAX_DEPTH: u8 = 16;

/// What the text being converted is already inside of: Slack cannot nest the same
/// marker, so inner bold in a bold heading is just text.
#[derive(Clone, Copy)]
struct Ctx {
    bold: bool,
    italic: bool,
    strike: bool,
    link: bool,
    depth: u8,
}

impl Ctx {
    const PLAIN: Ctx = Ctx {
        bold: false,
        italic: false,
        strike: false,
        link: false,
        depth: 0,
    };
    const BOLD: Ctx = Ctx {
        bold: true,
        ..Ctx::PLAIN
    };
}

/// Converts inline syntax of one line (no line breaks inside).
fn inline(text: &str, ctx: Ctx, out: &mut String) {
    // Most lines of an answer hold no inline syntax and nothing to escape: those are
    // copied as they are, which is what the walk below would write char by char.
    if !text.bytes().any(is_inline_syntax) {
        out.push_str(text);
        return;
    }
    let chars: Vec<char> = text.chars().collect();
    inline_chars(&chars, ctx, out);
}

/// Whether `b` is a char that [`inline_chars`] or [`escape_char`] treat otherwise
/// than by copying (all ASCII, so a byte of a longer char is never one of them).
fn is_inline_syntax(b: u8) -> bool {
    matches!(
        b,
        b'`' | b'\\' | b'*' | b'_' | b'~' | b'[' | b']' | b'!' | b'<' | b'>' | b'&'
    )
}

fn inline_chars(s: &[char], ctx: Ctx, out: &mut String) {
    let nest = ctx.depth < MAX_DEPTH;
    let ctx = Ctx {
        depth: ctx.depth.saturating_add(1),
        ..ctx
    };
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let consumed = match c {
            '`' => code_span(s, i, out),
            '\\' => backslash_escape(s, i, out),
            '*' | '_' if nest => emphasis(s, i, ctx, out),
            '~' if nest => strike(s, i, ctx, out),
            '[' if nest && !ctx.link => link(s, i + 1, ctx, out),
            '!' if nest && !ctx.link && s.get(i + 1) == Some(&'[') => link(s, i + 2, ctx, out),
            '<' if !ctx.link => autolink(s, i, out),
            _ => None,
        };
        match consumed {
            Some(next) => i = next,
            None => {
                escape_char(c, out);
                i += 1;
            }
        }
    }
}

/// Each helper returns the index after what it converted, or `None` (and writes
/// nothing) when the syntax does not apply at `i`.
fn code_span(s: &[char], i: usize, out: &mut String) -> Option<usize> {
    let run = run_len(s, i, '`');
    let end = s.len().min(i + run + MAX_SPAN);
    let mut j = i + run;
    while j < end {
        if s[j] == '`' {
            let close = run_len(s, j, '`');
            if close == run {
                let mut content = &s[i + run..j];
                // CommonMark strips one space on each side when both are there.
                if content.len() >= 2
                    && content[0] == ' '
                    && content[content.len() - 1] == ' '
                    && content.iter().any(|c| *c != ' ')
                {
                    content = &content[1..content.len() - 1];
                }
                out.push('`');
                for c in content {
                    escape_char(*c, out);
                }
                out.push('`');
                return Some(j + close);
            }
            j += close;
        } else {
            j += 1;
        }
    }
    // No closing run: the backticks are literal.
    for _ in 0..run {
        out.push('`');
    }
    Some(i + run)
}

fn backslash_escape(s: &[char], i: usize, out: &mut String) -> Option<usize> {
    let next = *s.get(i + 1)?;
    if !next.is_ascii_punctuation() {
        return None;
    }
    escape_char(next, out);
    Some(i + 2)
}

fn emphasis(s: &[char], i: usize, ctx: Ctx, out: &mut String) -> Option<usize> {
    let c = s[i];
    let run = run_len(s, i, c);
    if c == '_' && i > 0 && s[i - 1].is_alphanumeric() {
        // snake_case words are not emphasis; copy the whole run so the next `_` is
        // not taken as an opener either.
        for _ in 0..run {
            out.push(c);
        }
        return Some(i + run);
    }
    if run >= 3 {
        if let Some(close) = find_closing(s, i + 3, c, 3) {
            let inner = Ctx {
                bold: true,
                italic: true,
                ..ctx
            };
            wrap(ctx.bold, '*', out, |out| {
                wrap(ctx.italic, '_', out, |out| {
                    inline_chars(&s[i + 3..close], inner, out);
                });
            });
            return Some(close + 3);
        }
    }
    if run >= 2 {
        if let Some(close) = find_closing(s, i + 2, c, 2) {
            wrap(ctx.bold, '*', out, |out| {
                inline_chars(&s[i + 2..close], Ctx { bold: true, ..ctx }, out);
            });
            return Some(close + 2);
        }
    }
    if run == 1 {
        if let Some(close) = find_closing(s, i + 1, c, 1) {
            wrap(ctx.italic, '_', out, |out| {
                inline_chars(
                    &s[i + 1..close],
                    Ctx {
                        italic: true,
                        ..ctx
                    },
                    out,
                );
            });
            return Some(close + 1);
        }
    }
    // Not emphasis: the whole run is literal (so `**` is not re-read as two `*`).
    for _ in 0..run {
        out.push(c);
    }
    Some(i + run)
}

fn strike(s: &[char], i: usize, ctx: Ctx, out: &mut String) -> Option<usize> {
    let run = run_len(s, i, '~');
    if run == 2 {
        if let Some(close) = find_closing(s, i + 2, '~', 2) {
            wrap(ctx.strike, '~', out, |out| {
                inline_chars(
                    &s[i + 2..close],
                    Ctx {
                        strike: true,
                        ..ctx
                    },
                    out,
                );
            });
            return Some(close + 2);
        }
    }
    for _ in 0..run {
        out.push('~');
    }
    Some(i + run)
}

/// Writes `marker`, the content, `marker` — or only the content when the marker is
/// already open around it.
fn wrap(already: bool, marker: char, out: &mut String, content: impl FnOnce(&mut String)) {
    if already {
        content(out);
    } else {
        out.push(marker);
        content(out);
        out.push(marker);
    }
}

/// The start of a closing run of exactly `len` × `c` at or after `from`: not preceded
/// by whitespace, with non-empty content before it, and (for `_`) not followed by a
/// letter or digit.
fn find_closing(s: &[char], from: usize, c: char, len: usize) -> Option<usize> {
    // The opener must be followed by something that is not whitespace.
    if s.get(from).is_none_or(|n| n.is_whitespace()) {
        return None;
    }
    let end = s.len().min(from + MAX_SPAN);
    let mut j = from + 1;
    while j < end {
        if s[j] == '`' {
            // Emphasis markers inside a code span do not close anything.
            j = skip_code_span(s, j);
            continue;
        }
        if s[j] != c {
            j += 1;
            continue;
        }
        let run = run_len(s, j, c);
        let closes = run == len
            && !s[j - 1].is_whitespace()
            && !(c == '_' && s.get(j + run).is_some_and(|n| n.is_alphanumeric()));
        if closes {
            return Some(j);
        }
        j += run;
    }
    None
}

/// The index after the code span starting at `i`, or `i + 1` if it is not closed.
fn skip_code_span(s: &[char], i: usize) -> usize {
    let run = run_len(s, i, '`');
    let end = s.len().min(i + run + MAX_SPAN);
    let mut j = i + run;
    while j < end {
        if s[j] == '`' {
            let close = run_len(s, j, '`');
            if close == run {
                return j + close;
            }
            j += close;
        } else {
            j += 1;
        }
    }
    i + run
}

fn run_len(s: &[char], i: usize, c: char) -> usize {
    s[i..].iter().take_while(|x| **x == c).count()
}

/// `[text](url "title")` or `![alt](url)` (the text starting at `text_from`) →
/// `<url|text>`.
/// A link whose URL is not absolute http(s) or mailto keeps only its text.
fn link(s: &[char], text_from: usize, ctx: Ctx, out: &mut String) -> Option<usize> {
    let close_text = matching(s, text_from, '[', ']')?;
    if s.get(close_text + 1) != Some(&'(') {
        return None;
    }
    let close_target = matching(s, close_text + 2, '(', ')')?;
    let target: String = s[close_text + 2..close_target].iter().collect();
    let target = target.trim();
    // An optional title after whitespace is not part of the URL.
    let url = target.split_whitespace().next().unwrap_or("");
    let url = url
        .strip_prefix('<')
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or(url);
    let text = &s[text_from..close_text];
    let inner = Ctx { link: true, ..ctx };
    match safe_url(url) {
        Some(url) => {
            out.push('<');
            out.push_str(&url);
            if text.iter().any(|c| !c.is_whitespace()) {
                out.push('|');
                inline_chars(text, inner, out);
            }
            out.push('>');
        }
        None => inline_chars(text, inner, out),
    }
    Some(close_target + 1)
}

/// The index of the `close` that balances the `open` just before `from`.
fn matching(s: &[char], from: usize, open: char, close: char) -> Option<usize> {
    let mut depth = 0usize;
    let end = s.len().min(from + MAX_SPAN);
    let mut j = from;
    while j < end {
        let c = s[j];
        if c == '\\' {
            j += 2;
            continue;
        }
        if c == open {
            depth += 1;
        } else if c == close {
            if depth == 0 {
                return Some(j);
            }
            depth -= 1;
        }
        j += 1;
    }
    None
}

/// `<https://example.com>` → `<https://example.com>`; anything else is not ours.
fn autolink(s: &[char], i: usize, out: &mut String) -> Option<usize> {
    let end = i + 1 + s[i + 1..].iter().take(MAX_SPAN).position(|c| *c == '>')?;
    let url: String = s[i + 1..end].iter().collect();
    let url = safe_url(&url)?;
    out.push('<');
    out.push_str(&url);
    out.push('>');
    Some(end + 1)
}

/// The URL as it may appear inside `<…>`, or `None` when it must not become a link.
///
/// Only absolute `http`, `https` and `mailto` URLs qualify, so the `<` before them can
/// never start `<!…>`, `<@…>` or `<#…>`. `&` is escaped as Slack expects inside links,
/// `|` (which would end the URL early) is percent-encoded, and a URL with whitespace,
/// `<`, `>` or a control character is refused.
fn safe_url(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let scheme_len = ["http://", "https://", "mailto:"]
        .iter()
        .find(|p| lower.starts_with(*p))?
        .len();
    if url.len() == scheme_len
        || url
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return None;
    }
    let mut out = String::with_capacity(url.len());
    for c in url.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '|' => out.push_str("%7C"),
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(markdown: &str, expected: &str) {
        assert_eq!(to_mrkdwn(markdown), expected, "input: {markdown:?}");
    }

    #[test]
    fn bold() {
        check("**bold**", "*bold*");
        check("__bold__", "*bold*");
        check("a **bold** word", "a *bold* word");
        check("**two** and **three**", "*two* and *three*");
    }

    #[test]
    fn italic() {
        check("*italic*", "_italic_");
        check("_italic_", "_italic_");
        check("an *italic* word", "an _italic_ word");
        check("***both***", "*_both_*");
        check("**bold _and italic_**", "*bold _and italic_*");
    }

    #[test]
    fn emphasis_needs_a_real_opener_and_closer() {
        check("snake_case_name", "snake_case_name");
        check("2 * 3 * 4", "2 * 3 * 4");
        check("** not bold **", "** not bold **");
        check("*unclosed", "*unclosed");
        check("**", "**");
        check("a*b", "a*b");
    }

    #[test]
    fn strikethrough() {
        check("~~gone~~", "~gone~");
        check("~single~ stays", "~single~ stays");
        check("~~unclosed", "~~unclosed");
    }

    #[test]
    fn links() {
        check(
            "[the docs](https://example.com/docs)",
            "<https://example.com/docs|the docs>",
        );
        check(
            "see [**bold** link](http://a.example/x?a=1&b=2)",
            "see <http://a.example/x?a=1&amp;b=2|*bold* link>",
        );
        check(
            "[t](https://example.com \"title\")",
            "<https://example.com|t>",
        );
        check("[](https://example.com)", "<https://example.com>");
        check(
            "![alt](https://example.com/i.png)",
            "<https://example.com/i.png|alt>",
        );
        check("<https://example.com>", "<https://example.com>");
        check(
            "[mail](mailto:a@example.com)",
            "<mailto:a@example.com|mail>",
        );
        check("[pipe](https://e.com/a|b)", "<https://e.com/a%7Cb|pipe>");
        check(
            "[wiki](https://en.wikipedia.org/wiki/Rust_(language))",
            "<https://en.wikipedia.org/wiki/Rust_(language)|wiki>",
        );
    }

    #[test]
    fn links_that_are_not_safe_keep_only_their_text() {
        check("[relative](/path)", "relative");
        check("[js](javascript:alert(1))", "js");
        check("[special](!channel)", "special");
        check("[x](@U123)", "x");
        check("[not a link]", "[not a link]");
        check(
            "[nested [x](https://a.b)](https://c.d)",
            "<https://c.d|nested [x](https://a.b)>",
        );
    }

    #[test]
    fn headings() {
        check("# Title", "*Title*");
        check("### Third level ###", "*Third level*");
        check("## **Bold** heading", "*Bold heading*");
        check("#hashtag", "#hashtag");
        check("####### seven", "####### seven");
        check("#", "");
    }

    #[test]
    fn lists() {
        check("- one\n- two", "• one\n• two");
        check("* star\n+ plus", "• star\n• plus");
        check("  - nested", "  • nested");
        check("1. first\n2) second", "1. first\n2) second");
        check("- **bold** item", "• *bold* item");
        check("- [ ] todo\n- [x] done", "• ☐ todo\n• ☑ done");
        check("-not a list", "-not a list");
    }

    #[test]
    fn reference_links_lazy_quotes_and_line_endings() {
        for (markdown, expected) in [
            (
                "See [the docs][docs].\n\n[docs]: https://example.com/docs",
                "See <https://example.com/docs|the docs>.\n",
            ),
            (
                "[Docs][] and [more][M]\n[docs]: https://a.example\n[m]: <https://b.example> \"T\"",
                "<https://a.example|Docs> and <https://b.example|more>",
            ),
            (
                "![a cat][cat]\n[cat]: https://img.example/cat.png",
                "<https://img.example/cat.png|a cat>",
            ),
            ("[unknown][nope] stays", "[unknown][nope] stays"),
            (
                "`[x][r]` in code\n[r]: https://r.example",
                "`[x][r]` in code",
            ),
            (
                "```\n[r]: https://kept.example\n```",
                "```\n[r]: https://kept.example\n```",
            ),
            (
                "> quoted\nlazy line\n\nafter",
                "> quoted\n> lazy line\n\nafter",
            ),
            ("> quoted\n- a list", "> quoted\n• a list"),
            ("one\rtwo **b**\r\nthree", "one\ntwo *b*\nthree"),
            ("# Title\r- item", "*Title*\n• item"),
        ] {
            check(markdown, expected);
        }
    }

    #[test]
    fn quotes_and_rules() {
        check("> quoted *text*", "> quoted _text_");
        check(">", ">");
        check("---", "──────────");
        check("* * *", "──────────");
    }

    #[test]
    fn code_spans_are_untouched_but_escaped() {
        check("`**not bold**`", "`**not bold**`");
        check("`a < b && c`", "`a &lt; b &amp;&amp; c`");
        check("``code with ` tick``", "`code with ` tick`");
        check("`unclosed", "`unclosed");
        check("*a `*` b*", "_a `*` b_");
    }

    #[test]
    fn fenced_blocks_are_untouched_but_escaped() {
        check(
            "before\n```rust\nlet x = **y** < 3;\n# not a heading\n```\nafter **b**",
            "before\n```\nlet x = **y** &lt; 3;\n# not a heading\n```\nafter *b*",
        );
        check("~~~\n- item\n~~~", "```\n- item\n```");
        check("```\nunclosed <!here>", "```\nunclosed &lt;!here&gt;\n```");
        check("````\n```\n````", "```\n```\n```");
    }

    #[test]
    fn special_characters_are_escaped() {
        check("<!channel> & <b>", "&lt;!channel&gt; &amp; &lt;b&gt;");
        check(
            "<@U123> hi <!here|here>",
            "&lt;@U123&gt; hi &lt;!here|here&gt;",
        );
        check("**<!everyone>**", "*&lt;!everyone&gt;*");
        check("&amp; stays literal", "&amp;amp; stays literal");
        check("<#C123>", "&lt;#C123&gt;");
        check("a > b", "a &gt; b");
        check(r"\*not italic\*", "*not italic*");
        check(r"\<!channel\>", "&lt;!channel&gt;");
    }

    #[test]
    fn plain_text_and_line_breaks_survive() {
        check("", "");
        check("hello\n\nworld\r\n", "hello\n\nworld\n");
        check("    indented code", "    indented code");
        check("ünïcödé 🎉 **fête**", "ünïcödé 🎉 *fête*");
    }

    #[test]
    fn nested_quotes_collapse_to_one_level() {
        check("> > deep **b**", "> deep *b*");
        check(">>> x", "> x");
    }

    #[test]
    fn adversarial_lines_convert_quickly_without_exhausting_the_stack() {
        let started = std::time::Instant::now();
        for line in [
            "**a __b ".repeat(5_000),
            "*_~~[".repeat(5_000),
            "`` ` ``` ".repeat(5_000),
            "[[[[((((".repeat(5_000),
            ">".repeat(100_000),
            "<http://".repeat(5_000),
            format!("{}x{}", "**_".repeat(5_000), "_**".repeat(5_000)),
        ] {
            let out = to_mrkdwn(&line);
            assert!(!out.contains("<!") && !out.contains("<@"));
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
    }

    /// Every `<` in the output opens a link this module built from a checked URL.
    fn only_safe_angles(out: &str) -> bool {
        out.match_indices('<').all(|(i, _)| {
            let rest = &out[i + 1..];
            rest.starts_with("http://")
                || rest.starts_with("https://")
                || rest.starts_with("mailto:")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn a_line_copied_whole_reads_as_the_walk_would_write_it(input in any::<String>()) {
            let mut copied = String::new();
            inline(&input, Ctx::PLAIN, &mut copied);
            let mut walked = String::new();
            inline_chars(&input.chars().collect::<Vec<_>>(), Ctx::PLAIN, &mut walked);
            prop_assert_eq!(copied, walked, "{:?}", input);
        }

        #[test]
        fn never_panics_and_never_forms_a_mention(input in any::<String>()) {
            let out = to_mrkdwn(&input);
            prop_assert!(!out.contains("<!"), "{input:?} → {out:?}");
            prop_assert!(!out.contains("<@"), "{input:?} → {out:?}");
            prop_assert!(!out.contains("<#"), "{input:?} → {out:?}");
            prop_assert!(only_safe_angles(&out), "{input:?} → {out:?}");
        }

        #[test]
        fn markdown_like_input_never_forms_a_mention(
            input in proptest::collection::vec(
                prop_oneof![
                    Just("<".to_string()), Just(">".to_string()), Just("!".to_string()),
                    Just("@".to_string()), Just("&".to_string()), Just("|".to_string()),
                    Just("*".to_string()), Just("_".to_string()), Just("~".to_string()),
                    Just("`".to_string()), Just("[".to_string()), Just("]".to_string()),
                    Just("(".to_string()), Just(")".to_string()), Just("\\".to_string()),
                    Just("\n".to_string()), Just(" ".to_string()), Just("#".to_string()),
                    Just("-".to_string()), Just("1.".to_string()), Just("```".to_string()),
                    Just("http://".to_string()), Just("mailto:".to_string()),
                    Just("channel".to_string()), Just("here".to_string()), Just("U1".to_string()),
                ],
                0..60,
            )
        ) {
            let input = input.concat();
            let out = to_mrkdwn(&input);
            prop_assert!(!out.contains("<!"), "{input:?} → {out:?}");
            prop_assert!(!out.contains("<@"), "{input:?} → {out:?}");
            prop_assert!(only_safe_angles(&out), "{input:?} → {out:?}");
        }
    }
}
