//! Approvals that prove who approved: a statement (plan id, environment, service, release
//! digest, when signed, when it expires) signed as an SSH signature (`sshsig`, namespace
//! [`NAMESPACE`]) by a key listed in the environment's `allowed_signers` file — the form
//! git and `ssh-keygen -Y` use, so an auditor checks a receipt's approvals with
//! `ssh-keygen -Y verify`.
//!
//! This module is the pure part: the statement's bytes, reading `allowed_signers`, and
//! deciding which verified approvals count. The signature check itself is the edge's
//! (`controlplane::edges::sshsig`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `sshsig` namespace of approvals: a signature made for anything else never counts.
pub const NAMESPACE: &str = "agentctl-approval";

/// What an approver signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub plan_id: String,
    pub environment: String,
    pub service: String,
    pub release_digest: String,
    /// RFC 3339, UTC.
    pub signed_at: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

impl Statement {
    /// The statement approving a plan at `now`, valid for `valid_secs`.
    pub fn approving(
        plan_id: &str,
        environment: &str,
        service: &str,
        release_digest: &str,
        now: DateTime<Utc>,
        valid_secs: u64,
    ) -> Self {
        let secs = i64::try_from(valid_secs).unwrap_or(i64::MAX);
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        Self {
            plan_id: plan_id.to_owned(),
            environment: environment.to_owned(),
            service: service.to_owned(),
            release_digest: release_digest.to_owned(),
            signed_at: at(now),
            expires_at: at(now + chrono::Duration::seconds(secs)),
        }
    }

    /// The exact bytes that are signed: canonical JSON and a newline (so the file an
    /// auditor writes from a receipt and feeds to `ssh-keygen -Y verify` is a text file).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = crate::canonical::to_canonical(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    /// Reads signed bytes back, strictly.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let s: Self = serde_json::from_slice(bytes).map_err(|e| format!("not an approval statement: {e}"))?;
        if s.to_bytes() != bytes {
            return Err("the statement is not in its canonical form".into());
        }
        Ok(s)
    }
}

/// One line of an `allowed_signers` file: who, and their public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedSigner {
    pub principals: Vec<String>,
    /// `namespaces="…"` option, if any: the key signs only for those.
    pub namespaces: Option<Vec<String>>,
    /// `key-type base64` as in an OpenSSH public key.
    pub key: String,
}

/// Splits `opt1,opt2="a,b"` at the commas outside quotes (as `ssh-keygen` reads options).
fn split_options(text: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

/// Parses an `allowed_signers` file (`principals [options] keytype base64 [comment]`);
/// errors carry the 1-based line.
pub fn parse_allowed_signers(text: &str) -> Result<Vec<AllowedSigner>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let principals: Vec<String> = words.next().unwrap_or_default().split(',').map(str::to_owned).collect();
        let mut next = words.next().ok_or((i + 1, "no key after the principals".to_owned()))?;
        let mut namespaces = None;
        if !next.starts_with("ssh-") && !next.starts_with("ecdsa-") && !next.starts_with("sk-") {
            // Options: only `namespaces="a,b"` changes what we accept; others are refused so
            // that nothing is silently ignored.
            for opt in split_options(next) {
                match opt.strip_prefix("namespaces=") {
                    Some(v) => namespaces = Some(v.trim_matches('"').split(',').map(str::to_owned).collect::<Vec<_>>()),
                    None => return Err((i + 1, format!("option `{opt}` is not supported here"))),
                }
            }
            next = words.next().ok_or((i + 1, "no key after the options".to_owned()))?;
        }
        let data = words.next().ok_or((i + 1, "the key has no data".to_owned()))?;
        if principals.iter().any(|p| p.is_empty() || p.contains('*') || p.contains('?')) {
            return Err((i + 1, "principals must be plain names (no patterns)".into()));
        }
        out.push(AllowedSigner { principals, namespaces, key: format!("{next} {data}") });
    }
    Ok(out)
}

/// An approval whose signature verified, with the principal its key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub approver: String,
    pub statement: Statement,
}

/// What an approval must match.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub plan_id: &'a str,
    pub environment: &'a str,
    pub service: &'a str,
    pub release_digest: &'a str,
    /// Who made the plan.
    pub author: &'a str,
    pub author_may_approve: bool,
    /// Longest life an approval may have.
    pub max_validity_secs: u64,
    pub now: DateTime<Utc>,
}

/// Why one approval does not count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotCounted {
    pub approver: String,
    pub reason: String,
}

/// The distinct approvers whose approvals count, and why each other one does not.
pub fn count(approvals: &[Verified], want: &Expected<'_>) -> (Vec<String>, Vec<NotCounted>) {
    let mut counted: Vec<String> = Vec::new();
    let mut refused = Vec::new();
    for a in approvals {
        let s = &a.statement;
        let no = |reason: String| NotCounted { approver: a.approver.clone(), reason };
        let time = |t: &str| DateTime::parse_from_rfc3339(t).map(|t| t.with_timezone(&Utc)).ok();
        let reason = if s.plan_id != want.plan_id
            || s.environment != want.environment
            || s.service != want.service
            || s.release_digest != want.release_digest
        {
            Some(format!(
                "it approves plan `{}` ({} / {} / {}), not this one",
                s.plan_id, s.service, s.environment, s.release_digest
            ))
        } else {
            match (time(&s.signed_at), time(&s.expires_at)) {
                (Some(signed), Some(expires)) => {
                    let life = expires.signed_duration_since(signed).num_seconds();
                    if expires < want.now {
                        Some(format!("it expired at {}", s.expires_at))
                    } else if signed > want.now + chrono::Duration::seconds(60) {
                        Some(format!("it claims to be signed in the future ({})", s.signed_at))
                    } else if life > i64::try_from(want.max_validity_secs).unwrap_or(i64::MAX) {
                        Some(format!(
                            "it is valid for {life} s, longer than the {} s the environment allows",
                            want.max_validity_secs
                        ))
                    } else if !want.author_may_approve && a.approver == want.author {
                        Some(format!("`{}` made the plan and may not approve it (separation of duties)", a.approver))
                    } else if counted.contains(&a.approver) {
                        Some("counted once: the same approver signed more than once".into())
                    } else {
                        None
                    }
                }
                _ => Some("its times are not RFC 3339".into()),
            }
        };
        match reason {
            Some(r) => refused.push(no(r)),
            None => counted.push(a.approver.clone()),
        }
    }
    (counted, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(plan: &str, signed: &str, expires: &str) -> Statement {
        Statement {
            plan_id: plan.into(),
            environment: "prod".into(),
            service: "api".into(),
            release_digest: "sha256:d".into(),
            signed_at: signed.into(),
            expires_at: expires.into(),
        }
    }

    fn want(now: &str) -> Expected<'static> {
        Expected {
            plan_id: "sha256:p",
            environment: "prod",
            service: "api",
            release_digest: "sha256:d",
            author: "alice",
            author_may_approve: false,
            max_validity_secs: 3600,
            now: DateTime::parse_from_rfc3339(now).unwrap().with_timezone(&Utc),
        }
    }

    #[test]
    fn only_distinct_current_approvals_of_this_plan_by_others_count() {
        let ok = |who: &str| Verified {
            approver: who.into(),
            statement: statement("sha256:p", "2026-11-24T10:00:00Z", "2026-11-24T11:00:00Z"),
        };
        let cases = [
            (ok("bob"), None),
            (ok("bob"), Some("counted once")),
            (ok("alice"), Some("separation of duties")),
            (
                Verified {
                    statement: statement("sha256:other", "2026-11-24T10:00:00Z", "2026-11-24T11:00:00Z"),
                    ..ok("carol")
                },
                Some("not this one"),
            ),
            (
                Verified {
                    statement: statement("sha256:p", "2026-11-24T09:00:00Z", "2026-11-24T10:00:00Z"),
                    ..ok("dave")
                },
                Some("expired"),
            ),
            (
                Verified {
                    statement: statement("sha256:p", "2026-11-24T10:00:00Z", "2026-11-25T10:00:00Z"),
                    ..ok("erin")
                },
                Some("longer than"),
            ),
            (ok("frank"), None),
        ];
        let approvals: Vec<Verified> = cases.iter().map(|(a, _)| a.clone()).collect();
        let (counted, refused) = count(&approvals, &want("2026-11-24T10:30:00Z"));
        assert_eq!(counted, ["bob", "frank"]);
        let reasons: Vec<&str> = refused.iter().map(|r| r.reason.as_str()).collect();
        for (_, want) in cases.iter().filter(|(_, w)| w.is_some()) {
            assert!(reasons.iter().any(|r| r.contains(want.unwrap())), "{want:?} in {reasons:?}");
        }
    }

    #[test]
    fn allowed_signers_are_read_strictly() {
        let text = "# approvers\nalice ssh-ed25519 AAAAC3Nza alice@laptop\nbob,robert namespaces=\"agentctl-approval\" ssh-ed25519 AAAAB\n";
        let s = parse_allowed_signers(text).unwrap();
        assert_eq!(s[0].principals, ["alice"]);
        assert_eq!(s[1].namespaces.as_deref(), Some(&["agentctl-approval".to_owned()][..]));
        // Several namespaces, as ssh-keygen writes them: one quoted, comma-separated list.
        let several = parse_allowed_signers("carol namespaces=\"git,agentctl-approval\" ssh-ed25519 AAAAB\n").unwrap();
        assert_eq!(several[0].namespaces.as_deref(), Some(&["git".to_owned(), "agentctl-approval".to_owned()][..]));
        assert!(parse_allowed_signers("carol namespaces=\"git\",cert-authority ssh-ed25519 AAAAB\n").is_err());
        assert_eq!(s[1].key, "ssh-ed25519 AAAAB");
        assert_eq!(parse_allowed_signers("carol cert-authority ssh-ed25519 AAAA").unwrap_err().0, 1);
        assert!(parse_allowed_signers("*@corp ssh-ed25519 AAAA").is_err());
        let st = statement("sha256:p", "a", "b");
        assert_eq!(Statement::parse(&st.to_bytes()).unwrap(), st);
        assert!(Statement::parse(b"{\"plan_id\":1}").is_err());
    }
}
