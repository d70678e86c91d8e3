//! Text from webhooks and registries shown to people (log lines, CLI output, error bodies):
//! control characters escaped, so that a newline cannot forge a log line and an ANSI sequence
//! cannot repaint a terminal.

use std::borrow::Cow;
use std::fmt;

/// `text` with every control character (C0, DEL, C1) and bidirectional override written as
/// `\u{…}` (`\n`, `\r`, `\t` as themselves escaped); borrowed when there is nothing to escape.
pub fn escape_control(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    // U+202A..U+202E and U+2066..U+2069 reorder what follows them on screen.
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Displays a string escaped (for `tracing` fields: `reason = %Escaped(&text)`).
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_control(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_ansi_and_bidi_overrides_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape_control("succeeded, 1.4.2 ✓"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("ok\nINFO forged line \u{1b}[2J\u{9b}\u{202e}txt"),
            "ok\\nINFO forged line \\u{1b}[2J\\u{9b}\\u{202e}txt"
        );
        assert_eq!(Escaped("a\r\tb\u{7f}").to_string(), "a\\r\\tb\\u{7f}");
    }
}
