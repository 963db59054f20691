//! Finds secret *values* where only secret *names* belong.
//!
//! Manifests are committed and templates are rendered into release directories, so a
//! value that looks like a credential in either is refused by `agentctl check`.

/// What kind of secret a string looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    PrivateKeyBlock,
    KnownToken(&'static str),
    HighEntropy,
}

impl SecretKind {
    pub fn describe(self) -> String {
        match self {
            Self::PrivateKeyBlock => "a private key block".into(),
            Self::KnownToken(p) => format!("a token with the well-known prefix `{p}`"),
            Self::HighEntropy => "a long high-entropy string (a password or token?)".into(),
        }
    }
}

/// Prefixes that credential issuers put on their tokens.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "sk-",
    "AKIA",
    "ASIA",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "AIza",
    "npm_",
    "pypi-",
];

/// Returns the first secret-looking thing in `text`, if any.
pub fn find_secret(text: &str) -> Option<SecretKind> {
    if text.contains("PRIVATE KEY-----") {
        return Some(SecretKind::PrivateKeyBlock);
    }
    // `/` separates path components, which are not one token.
    text.split(|c: char| !(c.is_ascii_alphanumeric() || "+_-".contains(c))).find_map(classify_token)
}

/// `text` with every secret-looking token replaced by `[redacted]`, and everything from a
/// private key block's header on replaced by `[redacted private key]`.
pub fn redact(text: &str) -> std::borrow::Cow<'_, str> {
    if find_secret(text).is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    let (head, key_block) = match text.find("-----BEGIN") {
        Some(i) if text[i..].contains("PRIVATE KEY-----") => (&text[..i], true),
        _ => (text, false),
    };
    let mut out = String::with_capacity(head.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if classify_token(token).is_some() {
            out.push_str("[redacted]");
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in head.chars() {
        if c.is_ascii_alphanumeric() || "+_-".contains(c) {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    if key_block {
        out.push_str("[redacted private key]");
    }
    std::borrow::Cow::Owned(out)
}

/// `token` (one run of `[A-Za-z0-9+_-]`) as a token with an issuer's well-known prefix
/// and a key-sized tail, if it is one.
pub fn known_token(token: &str) -> Option<SecretKind> {
    TOKEN_PREFIXES.iter().find_map(|prefix| {
        let rest = token.strip_prefix(prefix)?;
        // `sk-` alone or `sk-1` is a word, not a key: require a key-sized tail.
        (rest.len() >= 16 && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)))
            .then_some(SecretKind::KnownToken(prefix))
    })
}

fn classify_token(token: &str) -> Option<SecretKind> {
    if let Some(known) = known_token(token) {
        return Some(known);
    }
    let has = |f: fn(&u8) -> bool| token.as_bytes().iter().any(f);
    let mixed = has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && has(u8::is_ascii_digit);
    (token.len() >= 24 && mixed && shannon_entropy(token) >= 4.0).then_some(SecretKind::HighEntropy)
}

/// Bits per character of `s`.
fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_secrets() {
        let cases: &[(&str, Option<SecretKind>)] = &[
            ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc", Some(SecretKind::PrivateKeyBlock)),
            ("token ghp_0123456789abcdefABCDEF0123", Some(SecretKind::KnownToken("ghp_"))),
            ("sk-proj-abcdefghijklmnop1234", Some(SecretKind::KnownToken("sk-"))),
            ("AKIAIOSFODNN7EXAMPLE", Some(SecretKind::KnownToken("AKIA"))),
            ("x=Zm9vYmFyYmF6cXV4cXV1eDEyMzQ1Njc4OTBBQkNERUY", Some(SecretKind::HighEntropy)),
        ];
        for (text, want) in cases {
            assert_eq!(find_secret(text), *want, "{text}");
        }
    }

    #[test]
    fn redacts_only_the_secret_tokens() {
        let cases = [
            ("token=ghp_0123456789abcdefABCDEF0123 ok", "token=[redacted] ok"),
            ("plain text stays", "plain text stays"),
            ("a -----BEGIN OPENSSH PRIVATE KEY-----\nabc\n", "a [redacted private key]"),
            ("key AKIAIOSFODNN7EXAMPLE, digest sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
             "key [redacted], digest sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
        ];
        for (text, want) in cases {
            assert_eq!(redact(text), want, "{text}");
        }
    }

    #[test]
    fn ignores_ordinary_text() {
        for text in [
            "api.example.com:443",
            "sk-1",
            "risk-averse",
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            "/srv/agents/runtime-root",
            "API_TOKEN",
            "/tmp/agentlab-N20hnR/hosts/prod-1/root",
            "the quick brown fox jumps over the lazy dog",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert_eq!(find_secret(text), None, "{text}");
        }
    }
}
