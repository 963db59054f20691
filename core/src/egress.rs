//! Default-deny egress: a service's allowlist, pinned to addresses, rendered as an
//! nftables ruleset for the service's workload identity, and the same ruleset read back
//! from what a host's nftables reports (`nft -j list table`), so that drift is a
//! comparison of meanings, not of text.
//!
//! The workload identity is a per-service user, `agent-<service>`, on the host: the rules
//! apply to the packets its processes send (`meta skuid`). Everything else on the host
//! (sshd, the runtime) is untouched. Allowed: established replies, loopback when the
//! service says so, and each (address or network, TCP port) of the allowlist; everything
//! else the workload sends is rejected (fast failure for the workload, no silent hang).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// The nftables table a service's rules live in.
pub fn table(service: &str) -> String {
    format!("agentctl_{}", service.replace('-', "_"))
}

/// The workload identity of a service on a host.
pub fn workload_user(service: &str) -> String {
    format!("agent-{service}")
}

/// Where an allowlist entry points before resolution.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Destination {
    /// A DNS name, resolved when the release is rendered (plan and apply).
    Name(String),
    /// An address or a network.
    Net(Net),
}

/// An address with a prefix length (`/32` or `/128` for one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Net {
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, prefix: if addr.is_ipv4() { 32 } else { 128 } }
    }

    pub fn is_host(&self) -> bool {
        self.prefix == if self.addr.is_ipv4() { 32 } else { 128 }
    }

    /// Parses `ADDR` or `ADDR/LEN`; the address must be the network's first (no host bits).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`/{p}` is not a prefix length (0–{max})"))?,
        };
        let net = Self { addr, prefix };
        if net.network() != addr {
            return Err(format!("`{s}` has host bits set; the network is `{}/{prefix}`", net.network()));
        }
        Ok(net)
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One allowlist entry: `HOST:PORT`, `IP:PORT`, `[IPv6]:PORT` or `CIDR:PORT` (TCP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub to: Destination,
    pub port: u16,
}

impl Rule {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = match s.strip_prefix('[') {
            Some(rest) => {
                let (h, p) = rest.split_once("]:").ok_or("write an IPv6 destination as `[ADDR]:PORT`")?;
                (h, p)
            }
            None => s.rsplit_once(':').ok_or("expected `HOST:PORT`, `IP:PORT` or `CIDR:PORT`")?,
        };
        let port =
            port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("`{port}` is not a port (1–65535)"))?;
        let looks_numeric = host.contains('/')
            || host.parse::<IpAddr>().is_ok()
            || host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        let to = if looks_numeric {
            Destination::Net(Net::parse(host)?)
        } else if valid_name(host) {
            Destination::Name(host.to_owned())
        } else {
            return Err(format!("`{host}` is neither an address, a network nor a DNS name"));
        };
        Ok(Self { to, port })
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.to {
            Destination::Name(n) => write!(f, "{n}:{}", self.port),
            Destination::Net(n) if n.addr.is_ipv6() && n.is_host() => write!(f, "[{n}]:{}", self.port),
            Destination::Net(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The meaning of a service's egress rules on a host: what `egress.json` in the release
/// says, and what the host's nftables is read back as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub service: String,
    /// The workload user the rules apply to.
    pub user: String,
    pub loopback: bool,
    /// (network, TCP port) pairs the workload may connect to.
    pub allow: BTreeSet<(Net, u16)>,
}

/// `egress.json` in a release: the ruleset and how each name was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pinned {
    pub ruleset: Ruleset,
    /// The allowlist as the manifests wrote it.
    pub rules: Vec<String>,
    /// Each name and the addresses it resolved to when the release was rendered.
    pub resolved: BTreeMap<String, Vec<IpAddr>>,
}

/// Pins `rules` to addresses with `resolved` (each name's addresses).
pub fn pin(
    service: &str,
    rules: &[Rule],
    loopback: bool,
    resolved: &BTreeMap<String, Vec<IpAddr>>,
) -> Result<Pinned, String> {
    let mut allow = BTreeSet::new();
    for r in rules {
        match &r.to {
            Destination::Net(n) => {
                allow.insert((*n, r.port));
            }
            Destination::Name(name) => {
                let addrs =
                    resolved.get(name).filter(|a| !a.is_empty()).ok_or_else(|| format!("`{name}` did not resolve"))?;
                allow.extend(addrs.iter().map(|a| (Net::host(*a), r.port)));
            }
        }
    }
    Ok(Pinned {
        ruleset: Ruleset { service: service.to_owned(), user: workload_user(service), loopback, allow },
        rules: rules.iter().map(ToString::to_string).collect(),
        resolved: resolved.clone(),
    })
}

/// The nftables file that replaces the service's table atomically (`nft -f`).
pub fn render(r: &Ruleset) -> String {
    let t = table(&r.service);
    let mut out = format!(
        "# agentctl: default-deny egress for `{s}`, workload user `{u}`.\n\
         # Loaded atomically by the runtime at activation (`nft -f`); replaces the table.\n\
         table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n\
         \tchain output {{\n\t\ttype filter hook output priority filter; policy accept;\n\
         \t\tmeta skuid \"{u}\" jump workload\n\t}}\n\tchain workload {{\n\
         \t\tct state established,related accept\n",
        s = r.service,
        u = r.user
    );
    if r.loopback {
        out.push_str("\t\toifname \"lo\" accept\n");
    }
    for (net, port) in &r.allow {
        let family = if net.addr.is_ipv4() { "ip" } else { "ip6" };
        out.push_str(&format!("\t\t{family} daddr {net} tcp dport {port} accept\n"));
    }
    out.push_str("\t\treject\n\t}\n}\n");
    out
}

/// Reads the service's table back from `nft -j list table inet TABLE` output. `Ok(None)`:
/// no table (empty output). Anything that is not a rule this module writes makes the
/// table not ours: an error naming it (so a hand-added rule is drift, never ignored).
pub fn from_nft_json(service: &str, bytes: &[u8]) -> Result<Option<Ruleset>, String> {
    const MAX: usize = 256 * 1024;
    if bytes.len() > MAX {
        return Err(format!("the nftables listing is over {MAX} bytes"));
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("the nftables listing is not JSON: {e}"))?;
    let items = v.get("nftables").and_then(|n| n.as_array()).ok_or("the nftables listing has no `nftables` array")?;
    let want = table(service);
    let mut user = None;
    let mut loopback = false;
    let mut allow = BTreeSet::new();
    let mut established = false;
    let mut rejects = false;
    let mut chains = BTreeSet::new();
    for item in items {
        if let Some(c) = item.get("chain") {
            chains.insert(c.get("name").and_then(|n| n.as_str()).unwrap_or("").to_owned());
            continue;
        }
        let Some(rule) = item.get("rule") else { continue };
        if rule.get("table").and_then(|t| t.as_str()) != Some(want.as_str()) {
            continue;
        }
        let chain = rule.get("chain").and_then(|c| c.as_str()).unwrap_or("");
        let expr = rule.get("expr").and_then(|e| e.as_array()).ok_or("a rule without expressions")?;
        let shown = || serde_json::to_string(expr).unwrap_or_default().chars().take(160).collect::<String>();
        if rejects {
            return Err(format!("a rule after the final reject: {}", shown()));
        }
        match (chain, expr.as_slice()) {
            ("output", [m, j])
                if j.get("jump").and_then(|j| j.get("target")).and_then(|t| t.as_str()) == Some("workload") =>
            {
                let right =
                    matching(m, "meta", "skuid").ok_or_else(|| format!("unexpected rule in `output`: {}", shown()))?;
                user = Some(match right {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            }
            ("workload", [m, a]) if is_accept(a) && matching(m, "ct", "state").is_some() => established = true,
            ("workload", [m, a])
                if is_accept(a) && matching(m, "meta", "oifname").and_then(|r| r.as_str()) == Some("lo") =>
            {
                loopback = true;
            }
            ("workload", [d, p, a]) if is_accept(a) => {
                let daddr = matching(d, "ip", "daddr").or_else(|| matching(d, "ip6", "daddr"));
                let dport = matching(p, "tcp", "dport").and_then(|r| r.as_u64()).and_then(|p| u16::try_from(p).ok());
                match (daddr.and_then(net_of), dport) {
                    (Some(net), Some(port)) => {
                        allow.insert((net, port));
                    }
                    _ => return Err(format!("unexpected rule in `workload`: {}", shown())),
                }
            }
            ("workload", [r]) if r.get("reject").is_some() => rejects = true,
            _ => return Err(format!("unexpected rule in `{chain}`: {}", shown())),
        }
    }
    if !chains.contains("output") || !chains.contains("workload") {
        return Ok(None).and_then(|_: Option<Ruleset>| {
            if chains.is_empty() {
                Ok(None)
            } else {
                Err("the table lacks its `output` or `workload` chain".to_owned())
            }
        });
    }
    let user = user.ok_or("no rule sends the workload's packets to its chain")?;
    if !rejects {
        return Err("the workload chain does not end in a reject: everything is allowed".into());
    }
    if !established {
        return Err("the workload chain does not accept established replies".into());
    }
    Ok(Some(Ruleset { service: service.to_owned(), user, loopback, allow }))
}

/// `{"match": {"left": {KIND: {"key"|"field": FIELD, ...}}, "right": R}}` → `R`.
fn matching<'a>(m: &'a serde_json::Value, kind: &str, field: &str) -> Option<&'a serde_json::Value> {
    let m = m.get("match")?;
    if m.get("op").and_then(|o| o.as_str()).is_some_and(|o| o != "==" && o != "in") {
        return None;
    }
    let left = m.get("left")?;
    let (k, f) = match kind {
        "meta" => ("meta", "key"),
        "ct" => ("ct", "key"),
        proto => {
            ("payload", if left.get("payload")?.get("protocol")?.as_str()? == proto { "field" } else { return None })
        }
    };
    (left.get(k)?.get(f)?.as_str()? == field).then(|| m.get("right")).flatten()
}

fn is_accept(v: &serde_json::Value) -> bool {
    v.get("accept").is_some()
}

/// `"10.0.0.1"` or `{"prefix": {"addr": "10.0.0.0", "len": 8}}`.
fn net_of(v: &serde_json::Value) -> Option<Net> {
    if let Some(s) = v.as_str() {
        return s.parse().ok().map(Net::host);
    }
    let p = v.get("prefix")?;
    let addr: IpAddr = p.get("addr")?.as_str()?.parse().ok()?;
    let len = u8::try_from(p.get("len")?.as_u64()?).ok()?;
    Net::parse(&format!("{addr}/{len}")).ok()
}

/// One connection a proof tries, and what must happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expectation {
    pub addr: IpAddr,
    pub port: u16,
    /// `true`: must connect; `false`: must not.
    pub allowed: bool,
    /// Why this destination is tried.
    pub why: String,
}

/// What `prove egress` tries: every allowed single address (a network is not probed: no
/// one address stands for it), every canary, and always one destination outside the
/// allowlist: an allowed address on a port it is not allowed on (reachable if the rules
/// were missing), or TEST-NET-1 when nothing is allowed.
pub fn expectations(r: &Ruleset, canaries: &[Rule]) -> Vec<Expectation> {
    let mut out: Vec<Expectation> = r
        .allow
        .iter()
        .filter(|(n, _)| n.is_host())
        .map(|(n, p)| Expectation { addr: n.addr, port: *p, allowed: true, why: "allowed".into() })
        .collect();
    for c in canaries {
        if let Destination::Net(n) = &c.to {
            out.push(Expectation { addr: n.addr, port: c.port, allowed: false, why: "canary".into() });
        }
    }
    let outside = r.allow.iter().find(|(n, _)| n.is_host()).and_then(|(n, _)| {
        (1..=u16::MAX)
            .map(|d| d.wrapping_add(*r.allow.iter().map(|(_, p)| p).max().unwrap_or(&0)))
            .find(|p| *p > 0 && !r.allow.contains(&(*n, *p)))
            .map(|p| (n.addr, p))
    });
    let (addr, port) = outside.unwrap_or((IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)), 443));
    out.push(Expectation { addr, port, allowed: false, why: "outside the allowlist".into() });
    out
}

/// What a ruleset read back from a host lacks or adds compared with the release's.
pub fn differences(expected: &Ruleset, live: &Ruleset) -> Vec<String> {
    let mut out = Vec::new();
    if expected.user != live.user && live.user.parse::<u32>().is_err() {
        out.push(format!("rules apply to user `{}`, not `{}`", live.user, expected.user));
    }
    if expected.loopback != live.loopback {
        out.push(format!("loopback {} on the host", if live.loopback { "allowed" } else { "denied" }));
    }
    for (n, p) in expected.allow.difference(&live.allow) {
        out.push(format!("{} missing", Rule { to: Destination::Net(*n), port: *p }));
    }
    for (n, p) in live.allow.difference(&expected.allow) {
        out.push(format!("{} allowed on the host only", Rule { to: Destination::Net(*n), port: *p }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_back() {
        for s in ["api.example.com:443", "10.0.0.1:5432", "10.0.0.0/8:80", "[::1]:8080", "2001:db8::/32:443"] {
            assert_eq!(Rule::parse(s).unwrap().to_string(), s, "{s}");
        }
        for (s, why) in [
            ("api.example.com", "HOST:PORT"),
            ("10.0.0.1:0", "not a port"),
            ("10.0.0.1:70000", "not a port"),
            ("10.0.0.1/33:80", "prefix length"),
            ("10.0.0.1/8:80", "host bits"),
            ("300.1.1.1:80", "not an IP"),
            ("bad_name!:80", "neither"),
            ("[::1:80", "[ADDR]:PORT"),
        ] {
            let e = Rule::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn names_are_pinned_to_what_they_resolved_to() {
        let rules = [Rule::parse("db.internal:5432").unwrap(), Rule::parse("10.1.0.0/16:443").unwrap()];
        let resolved = BTreeMap::from([(
            "db.internal".to_owned(),
            vec!["10.9.9.9".parse().unwrap(), "10.9.9.8".parse().unwrap()],
        )]);
        let p = pin("api", &rules, true, &resolved).unwrap();
        assert_eq!(p.ruleset.allow.len(), 3);
        assert_eq!(p.ruleset.user, "agent-api");
        assert!(pin("api", &rules, true, &BTreeMap::new()).unwrap_err().contains("did not resolve"));
        let text = render(&p.ruleset);
        assert!(text.contains("ip daddr 10.9.9.9 tcp dport 5432 accept"), "{text}");
        assert!(text.contains("ip daddr 10.1.0.0/16 tcp dport 443 accept"), "{text}");
        assert!(text.contains("meta skuid \"agent-api\" jump workload"), "{text}");
        assert!(text.trim_end().ends_with("reject\n\t}\n}"), "{text}");
    }

    #[test]
    fn a_listing_with_anything_else_is_not_believed() {
        let rule = |chain: &str, expr: &str| {
            format!(
                r#"{{"rule":{{"family":"inet","table":"agentctl_api","chain":"{chain}","handle":1,"expr":{expr}}}}}"#
            )
        };
        let chain = |n: &str| format!(r#"{{"chain":{{"family":"inet","table":"agentctl_api","name":"{n}"}}}}"#);
        let base = [
            chain("output"),
            chain("workload"),
            rule(
                "output",
                r#"[{"match":{"op":"==","left":{"meta":{"key":"skuid"}},"right":998}},{"jump":{"target":"workload"}}]"#,
            ),
            rule(
                "workload",
                r#"[{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]"#,
            ),
            rule(
                "workload",
                r#"[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"10.0.0.1"}},{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":80}},{"accept":null}]"#,
            ),
        ];
        let doc = |extra: &[String]| {
            let all: Vec<String> = base.iter().cloned().chain(extra.iter().cloned()).collect();
            format!(r#"{{"nftables":[{{"metainfo":{{}}}},{}]}}"#, all.join(","))
        };
        let reject = rule("workload", r#"[{"reject":null}]"#);
        let ok = from_nft_json("api", doc(std::slice::from_ref(&reject)).as_bytes()).unwrap().unwrap();
        assert_eq!(ok.allow, BTreeSet::from([(Net::parse("10.0.0.1").unwrap(), 80)]));
        assert_eq!(ok.user, "998");
        assert!(from_nft_json("api", doc(&[]).as_bytes()).unwrap_err().contains("does not end in a reject"));
        let sneaky = rule("workload", r#"[{"accept":null}]"#);
        assert!(from_nft_json("api", doc(&[sneaky, reject.clone()]).as_bytes())
            .unwrap_err()
            .contains("unexpected rule"));
        let after = rule(
            "workload",
            r#"[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"10.6.6.6"}},{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":80}},{"accept":null}]"#,
        );
        assert!(from_nft_json("api", doc(&[reject, after]).as_bytes()).unwrap_err().contains("after the final reject"));
        assert_eq!(from_nft_json("api", b"").unwrap(), None);
        assert!(from_nft_json("api", b"{not json").is_err());
    }
}
