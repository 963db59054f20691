//! What a golden VM says, made safe once at the boundary.
//!
//! The workloads on golden VMs are untrusted, and so is everything their hosts send
//! back: step output, probe fields, error text. [`HostText`] is the only way such text
//! reaches a receipt, a log line or the terminal: it is bounded, stripped of control
//! characters (terminal escape sequences included) and has secret-looking values
//! redacted. It re-sanitizes on deserialization, so a plan file cannot smuggle raw text
//! back in either.

use serde::{Deserialize, Serialize};

/// Host text longer than this is cut, with a marker saying so.
pub const MAX_HOST_TEXT: usize = 2048;

/// Text from a host, bounded and sanitized. Construct it with [`HostText::new`] or
/// [`HostText::from_bytes`]; there is no other way in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct HostText(String);

impl HostText {
    /// Sanitizes `raw`: control characters out (newlines and tabs become spaces), secret
    /// values redacted, at most [`MAX_HOST_TEXT`] bytes (cut at a character boundary).
    pub fn new(raw: &str) -> Self {
        let mut clean = String::with_capacity(raw.len().min(MAX_HOST_TEXT + 16));
        let mut cut = false;
        let mut chars = raw.chars().peekable();
        while let Some(c) = chars.next() {
            if clean.len() >= MAX_HOST_TEXT * 2 {
                cut = true;
                break;
            }
            match c {
                // ESC starts a terminal sequence: drop it and, for CSI/OSC, its body.
                '\u{1b}' => skip_escape(&mut chars),
                '\n' | '\r' | '\t' => {
                    if !clean.ends_with(' ') && !clean.is_empty() {
                        clean.push(' ');
                    }
                }
                c if c.is_control() => {}
                // Bidirectional overrides and zero-width characters disguise text.
                '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}' => {}
                c => clean.push(c),
            }
        }
        let clean = clean.trim();
        let mut text = crate::secrets::redact(clean).into_owned();
        if text.len() > MAX_HOST_TEXT {
            let mut end = MAX_HOST_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            cut = true;
        }
        if cut {
            text.push_str(" [cut]");
        }
        Self(text)
    }

    /// Sanitizes bytes that should be UTF-8 (invalid sequences become U+FFFD).
    pub fn from_bytes(raw: &[u8]) -> Self {
        Self::new(&String::from_utf8_lossy(raw))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Drops the rest of an escape sequence after ESC: `ESC [ ... final`, `ESC ] ... BEL|ST`,
/// or one character.
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.next() {
        Some('[') => {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
        Some(']') | Some('P') | Some('_') | Some('^') => {
            while let Some(c) = chars.next() {
                if c == '\u{7}' {
                    break;
                }
                if c == '\u{1b}' {
                    chars.next_if_eq(&'\\');
                    break;
                }
            }
        }
        _ => {}
    }
}

impl std::fmt::Display for HostText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for HostText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Self::new(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(raw: &str, want: &str) {
        assert_eq!(HostText::new(raw).as_str(), want, "{raw:?}");
    }

    #[test]
    fn control_characters_and_escape_sequences_are_removed() {
        check("ok", "ok");
        check("\u{1b}[31mred\u{1b}[0m", "red");
        check("\u{1b}]0;evil title\u{7}after", "after");
        check("\u{1b}]8;;http://x\u{1b}\\link", "link");
        check("a\nb\r\nc\td", "a b c d");
        check("bell\u{7} back\u{8}space \u{0}nul", "bell backspace nul");
        check("rtl \u{202e}gnp.exe", "rtl gnp.exe");
        check("\u{9b}31m csi", "31m csi");
    }

    #[test]
    fn secrets_are_redacted() {
        check("health: token ghp_0123456789abcdefABCDEF0123 leaked", "health: token [redacted] leaked");
        check("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n", "[redacted private key]");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let t = HostText::new(&"é".repeat(5000));
        assert!(t.as_str().len() <= MAX_HOST_TEXT + " [cut]".len());
        assert!(t.as_str().ends_with(" [cut]"));
        let huge = HostText::new(&"x".repeat(10_000_000));
        assert!(huge.as_str().len() <= MAX_HOST_TEXT + 6);
    }

    #[test]
    fn deserializing_sanitizes_again() {
        let t: HostText = serde_json::from_str("\"\\u001b[2Jghp_0123456789abcdefABCDEF0123\"").unwrap();
        assert_eq!(t.as_str(), "[redacted]");
    }
}
