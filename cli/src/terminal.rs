//! Text from a repository or a server on the terminal, defused.
//!
//! Host names, tags, item names and error details come from signed
//! manifests, stores and servers that may be hostile; printed raw, an
//! escape sequence in them can rewrite the screen, set the window title, or
//! hide a line. Everything such a string holds that is not printable is
//! shown escaped (`\u{1b}`), as Rust's `escape_debug` does.

use std::borrow::Cow;

/// Unicode controls that reorder text (Trojan Source), escaped too.
const BIDI_CONTROLS: &[char] = &[
    '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];

fn is_unsafe(c: char, keep_newlines: bool) -> bool {
    (c.is_control() && !(keep_newlines && (c == '\n' || c == '\t'))) || BIDI_CONTROLS.contains(&c)
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c, keep_newlines) {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One field of a line: every control character escaped, newlines too.
pub fn safe(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// A whole message that may span lines (an error with a command's stderr
/// tail): newlines and tabs are kept. One-line output uses [`safe`], so a
/// newline in a hostile string cannot forge a line.
pub fn safe_text(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_the_rest_kept() {
        assert_eq!(safe("node4"), "node4");
        assert_eq!(safe("évé 東京"), "évé 東京");
        assert_eq!(safe("a\x1b[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(safe("a\nb\u{202e}c\u{9b}"), "a\\u{a}b\\u{202e}c\\u{9b}");
        assert_eq!(safe_text("line\n\tnext\x07"), "line\n\tnext\\u{7}");
    }
}
