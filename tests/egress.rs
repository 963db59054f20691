//! Default-deny egress on golden VMs in their own network namespaces with nftables:
//! enforced at activation, proven from the workload identity, drift-checked, rolled back.
//! Every reachability claim is also checked outside agentctl: by the test servers' own
//! accept counts and by a direct connection attempt as the workload user.

mod common;

use common::*;
use lab::network::Server;
use lab::LabConfig;
use std::path::Path;

/// Pins `value` with what differs per run (bridge addresses, ports, paths, times, hashes)
/// replaced, and runs of spaces folded (column widths follow the addresses).
macro_rules! snap {
    ($name:expr, $value:expr) => {
        let filters = vec![
            (r"10\.\d+\.\d+\.\d+:\d+", "[BRIDGE]:[PORT]"),
            (r"sha256:[0-9a-f]{64}", "sha256:[HASH]"),
            (r"sha256:[0-9a-f]{12}\b", "sha256:[SHORT]"),
            (r"\br-[0-9a-f]{16}\b", "r-[ID]"),
            (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", "[TIME]"),
            (r"/tmp/agentlab-[A-Za-z0-9]+", "[LAB]"),
            (r"[ \t]+", " "),
        ];
        insta::with_settings!({ filters => filters, prepend_module_to_snapshot => false, omit_expression => true }, {
            insta::assert_snapshot!($name, $value);
        })
    };
}

/// staging (stage-1) and prod (prod-1), each VM in its own namespace.
fn egress_lab() -> LabConfig {
    LabConfig { hosts: 2, staging: 1, registry: true, dir: None, egress: true, podman: false }
}

fn edit(path: &Path, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(path, f(text)).unwrap();
}

/// Sets the service's allowlist (and the runtime commands the proof and status use).
fn allow(w: &World, destinations: &[String]) {
    let list = destinations.iter().map(|d| format!("\"{d}\"")).collect::<Vec<_>>().join(", ");
    edit(&w.manifests().join("services/api.toml"), |t| {
        let t: String = t.lines().filter(|l| !l.starts_with("egress")).map(|l| format!("{l}\n")).collect();
        t.replace(
            "\n# Files rendered",
            &format!(
                "egress = [{list}]\negress_connect = [\"agent-runtime\", \"connect\"]\negress_rules = [\"agent-runtime\", \"egress-rules\"]\n\n# Files rendered"
            ),
        )
    });
}

fn enforce(w: &World, env: &str, extra: &str) {
    edit(&w.manifests().join(format!("environments/{env}.toml")), |t| {
        let t = t.split("\n[egress]\n").next().unwrap().to_owned();
        format!("{t}\n[egress]\nenforce = true\n{extra}\n")
    });
}

/// A TCP connection to `server` as `agent-api` from `host`'s namespace, without agentctl.
fn reaches(w: &World, host: &str, server: &Server) -> bool {
    let ns = w.lab.host(host).netns.clone().unwrap();
    let script = format!("exec 3<>/dev/tcp/{}/{}", server.addr.ip(), server.addr.port());
    ns.exec(
        "setpriv",
        &["--reuid=agent-api", "--regid=agent-api", "--clear-groups", "timeout", "3", "bash", "-c", &script],
    )
    .unwrap()
    .status
    .success()
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_is_enforced_proven_drift_checked_and_rolled_back() {
    let w = World::start(egress_lab()).await;
    let bridge = w.lab.info.network.clone().unwrap();
    let allowed = Server::start(&bridge).unwrap();
    let denied = Server::start(&bridge).unwrap();
    allow(&w, &[allowed.destination()]);
    enforce(&w, "staging", &format!("canaries = [\"{}\"]", denied.destination()));
    assert_ok(&w.agentctl(&["check"]));

    // A promotion loads the rules: the allowed server is reachable, the denied one is not.
    let v1 = w.deploy("v1", &["staging"]).await;
    assert!(reaches(&w, "stage-1", &allowed), "allowed destination unreachable");
    assert!(!reaches(&w, "stage-1", &denied), "denied destination reachable");
    let nft = std::fs::read_to_string(
        w.lab.host("stage-1").root().join("api").join(w.current("stage-1").unwrap()).join("egress.nft"),
    )
    .unwrap();
    assert!(nft.contains(&format!("ip daddr {} tcp dport {} accept", allowed.addr.ip(), allowed.addr.port())), "{nft}");

    let out = w.agentctl(&["prove", "egress", "api", "--env", "staging"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("every expectation held"), "{}", stdout(&out));
    snap!("egress_proof_held", shown(&out));
    assert_eq!(denied.accepted(), 0, "the denied server never saw a connection");
    assert!(allowed.accepted() >= 2, "the allowed server saw the test's and the proof's connections");
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));

    // Rules flushed by hand: egress drift, and the proof fails naming the canary.
    let ns = w.lab.host("stage-1").netns.clone().unwrap();
    assert!(ns.exec("nft", &["flush", "ruleset"]).unwrap().status.success());
    assert!(reaches(&w, "stage-1", &denied), "with the rules flushed the canary is reachable");
    let out = w.agentctl(&["status", "--env", "staging"]);
    assert_exit(&out, 3, "");
    assert!(stdout(&out).contains("egress") && stdout(&out).contains("no egress rules are loaded"), "{}", stdout(&out));
    snap!("status_egress_drift", shown(&out));
    let out = w.agentctl(&["prove", "egress", "api", "--env", "staging"]);
    assert_exit(&out, 1, "the egress proof failed");
    snap!("egress_proof_failed", shown(&out));
    assert!(stderr(&out).contains(&format!("{} (canary) is reachable", denied.destination())), "{}", stderr(&out));

    // Removing the destination and promoting makes it unreachable (a new release, new rules).
    allow(&w, &[]);
    assert_ok(&w.promote("staging", &v1, &["--apply"]));
    assert!(!reaches(&w, "stage-1", &allowed), "a removed destination stays reachable");
    assert!(!reaches(&w, "stage-1", &denied));
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));

    // Rolling back restores the previous release's rules.
    assert_ok(&w.agentctl(&["rollback", "api", "--env", "staging", "--apply"]));
    assert!(reaches(&w, "stage-1", &allowed), "the rollback did not restore the rules");
    assert!(!reaches(&w, "stage-1", &denied));

    // A host where the rules cannot be loaded fails activation and goes back.
    let before = w.current("stage-1");
    allow(&w, &[allowed.destination(), denied.destination()]);
    w.runtime("stage-1", "nft-broken", "");
    let out = w.promote("staging", &v1, &["--apply"]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot load the egress rules"), "{}", stderr(&out));
    assert_eq!(w.current("stage-1"), before, "back on the previous release");
    assert!(!reaches(&w, "stage-1", &denied), "the previous rules still hold");
    w.clear_runtime("stage-1", "nft-broken");

    // The proof's receipts verify and the report shows them.
    assert_ok(&w.agentctl(&["receipts", "verify"]));
    let report = w.lab.dir().join("report.html");
    assert_ok(&w.agentctl(&["receipts", "report", "--out", &report.display().to_string()]));
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("egress-proof") && html.contains("canary"), "the report lacks the proof");
}

/// An egress lab whose service may reach one test server, enforced in both environments,
/// with the proof in prod's health gate.
async fn gated_egress_lab() -> (World, Server) {
    let w = World::start(egress_lab()).await;
    let bridge = w.lab.info.network.clone().unwrap();
    let allowed = Server::start(&bridge).unwrap();
    allow(&w, &[allowed.destination()]);
    enforce(&w, "staging", "");
    enforce(&w, "prod", "prove_on_apply = true");
    (w, allowed)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_egress_proof_fails_the_health_gate_and_the_host_goes_back() {
    let (w, allowed) = gated_egress_lab().await;
    let v1 = w.deploy("v1", &["staging", "prod"]).await;
    let on_v1 = w.current("prod-1");
    assert!(allowed.accepted() >= 1, "the gate's proof connected to the allowed server");

    // A canary that is also allowed can never hold: the proof fails after the health check.
    enforce(&w, "prod", &format!("prove_on_apply = true\ncanaries = [\"{}\"]", allowed.destination()));
    allow(&w, &[allowed.destination(), "127.0.0.1:9".to_owned()]);
    let v2 = w.release("v2").await;
    assert_ok(&w.promote("staging", &v2, &["--apply"]));
    let out = w.promote("prod", &v2, &["--apply"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("egress proof failed"), "{}", stderr(&out));
    assert_eq!(w.current("prod-1"), on_v1, "prod-1 went back");
    let last = w.receipts().last().unwrap().clone();
    assert_eq!(last["kind"], "apply");
    assert_ne!(last["outcome"], "succeeded", "{last}");
    let _ = v1;
}

/// Without canaries, the proof's denied destination is an allowed address on a closed
/// port, which refuses whether or not any rule is loaded: the proof must also find the
/// release's rules loaded, or fail. Fails on a proof that only counts refusals.
#[tokio::test(flavor = "multi_thread")]
async fn a_proof_without_canaries_fails_when_no_rules_are_loaded() {
    let (w, _allowed) = gated_egress_lab().await;
    let v1 = w.deploy("v1", &["staging"]).await;
    assert_ok(&w.agentctl(&["prove", "egress", "api", "--env", "staging"]));

    // Every rule flushed: the refusals look the same, the proof does not pass.
    let ns = w.lab.host("stage-1").netns.clone().unwrap();
    assert!(ns.exec("nft", &["flush", "ruleset"]).unwrap().status.success());
    let out = w.agentctl(&["prove", "egress", "api", "--env", "staging"]);
    assert_exit(&out, 1, "the egress proof failed");
    assert!(stderr(&out).contains("no egress rules are loaded"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("is reachable"), "the connections alone looked fine: {}", stderr(&out));

    // A runtime that activates without loading the rules: the apply's proof fails the
    // health gate and the host goes back.
    w.runtime("prod-1", "skip-nft", "");
    let out = w.promote("prod", &v1, &["--apply"]);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("egress proof failed") && stderr(&out).contains("no egress rules are loaded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(w.current("prod-1"), None, "prod-1 had nothing before and has nothing now");
}

#[test]
fn nftables_reads_back_exactly_the_rules_we_render() {
    use controlplane::egress::{self, Rule};
    // nftables itself parses what we render and lists it back: our reader must see the same
    // meaning (a different, independent implementation of the format on each side).
    lab::network::workload_user("api").unwrap();
    let rules: Vec<Rule> = ["10.20.30.40:443", "10.0.0.0/8:5432", "[2001:db8::1]:80", "2001:db8:1::/48:8443"]
        .iter()
        .map(|r| Rule::parse(r).unwrap())
        .collect();
    for loopback in [false, true] {
        let pinned = egress::pin("api", &rules, loopback, &Default::default()).unwrap();
        let ns = format!("agentctl-nft-{}-{loopback}", std::process::id());
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).output().unwrap();
        assert!(ip(&["netns", "add", &ns]).status.success());
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), egress::render(&pinned.ruleset)).unwrap();
        let load = ip(&["netns", "exec", &ns, "nft", "-f", &file.path().display().to_string()]);
        // Loading twice replaces the table atomically (the file deletes it first).
        let again = ip(&["netns", "exec", &ns, "nft", "-f", &file.path().display().to_string()]);
        let listed = ip(&["netns", "exec", &ns, "nft", "-j", "list", "table", "inet", "agentctl_api"]);
        ip(&["netns", "del", &ns]);
        assert!(load.status.success() && again.status.success(), "{}", String::from_utf8_lossy(&load.stderr));
        let back = egress::from_nft_json("api", &listed.stdout).unwrap().expect("a table");
        assert_eq!(back.allow, pinned.ruleset.allow, "loopback {loopback}");
        assert_eq!(back.loopback, loopback);
        assert!(
            egress::differences(&pinned.ruleset, &back).is_empty(),
            "{:?}",
            egress::differences(&pinned.ruleset, &back)
        );
    }
}
