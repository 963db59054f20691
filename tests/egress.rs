//! Default-deny egress on golden VMs in their own network namespaces with nftables:
//! enforced at activation, proven from the workload identity, drift-checked, rolled back.
//! Every reachability claim is also checked outside agentctl: by the test servers' own
//! accept counts and by a direct connection attempt as the workload user.

#[macro_use]
mod common;

use common::*;
use lab::network::Server;
use lab::LabConfig;
use std::path::Path;

/// Column widths follow the bridge addresses: runs of spaces are folded.
fn folded() -> Vec<(&'static str, &'static str)> {
    vec![(r"[ \t]+", " ")]
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
    snap!("egress_proof_held", shown(&out), folded());
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
    snap!("status_egress_drift", shown(&out), folded());
    let out = w.agentctl(&["prove", "egress", "api", "--env", "staging"]);
    assert_exit(&out, 1, "the egress proof failed");
    snap!("egress_proof_failed", shown(&out), folded());
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

/// `prove`'s rows: `(control, subject) -> (outcome, fix)`.
type Rows = std::collections::BTreeMap<(String, String), (String, String)>;

/// `prove ENV [--workflows DIR]`'s rows, with the whole output.
fn prove(w: &World, env: &str, workflows: Option<&Path>) -> (std::process::Output, Rows) {
    let mut args = vec!["--json", "prove", env];
    let dir;
    if let Some(d) = workflows {
        dir = d.display().to_string();
        args.extend(["--workflows", &dir]);
    }
    let out = w.agentctl(&args);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("prove --json: {e}: {}{}", stdout(&out), stderr(&out)));
    let rows = doc["controls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
            ((s("control"), s("subject")), (s("outcome"), s("fix")))
        })
        .collect();
    (out, rows)
}

/// The rows that fail.
fn failing(rows: &Rows) -> Vec<String> {
    rows.iter().filter(|(_, (o, _))| o == "fails").map(|((c, s), _)| format!("{c} {s}")).collect()
}

/// `agentctl prove ENV` (#24): on a prepared staging (egress enforced and proven, the
/// running release rehearsed, an allowed look-alike in its layers, clean workflows) every
/// control holds, exit 0, with a signed `readiness` receipt that openssl verifies; then each
/// control broken in turn fails its own row, naming its fix, exit 4. A production
/// environment without approvals fails the approvals row.
#[tokio::test(flavor = "multi_thread")]
async fn prove_env_holds_when_prepared_and_each_broken_control_fails_its_row() {
    let (w, _allowed) = gated_egress_lab().await;
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/workflows");
    w.deploy("v1", &["staging"]).await;
    // v2 ships a token a later layer deletes, allowed with a reason.
    let svc = w.manifests().join("services/api.toml");
    edit(&svc, |t| {
        format!("{t}\n[[contents.allow]]\npath = \"/app/fixture.env\"\nreason = \"a revoked test token\"\n")
    });
    let token = b"TOKEN=ghp_0123456789abcdefABCDEF0123456789ab\n";
    let v2 = w
        .lab
        .push_layers(
            "demo/api",
            "v2",
            &[vec![("app/run", b"v2\n")], vec![("app/fixture.env", token)], vec![("app/.wh.fixture.env", b"")]],
            true,
        )
        .await
        .unwrap();
    assert_ok(&w.agentctl(&["sign", &s(&v2), "--key", &w.release_key()]));
    assert_ok(&w.agentctl(&["release", "add", "api", &s(&v2), "--commit", COMMIT]));
    assert_ok(&w.agentctl(&["rehearse", "api", "--env", "staging", "--release", v2.digest.as_str(), "--apply"]));

    let (out, rows) = prove(&w, "staging", Some(&fixtures.join("safe")));
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    let held: Vec<&str> = rows.iter().filter(|(_, (o, _))| o == "holds").map(|((c, _), _)| c.as_str()).collect();
    for control in ["signature", "contents", "egress", "rollback", "secrets", "host-keys", "receipts", "workflows"] {
        assert!(held.contains(&control), "{control} holds: {rows:?}");
    }
    assert_eq!(rows[&("approvals".into(), "env staging".into())].0, "not-applicable", "staging is not production");
    // The readiness receipt: signed, verified by openssl with the receipt public key.
    let last = w.receipts().last().unwrap().clone();
    assert_eq!((last["kind"].as_str(), last["outcome"].as_str()), (Some("readiness"), Some("ready")), "{last}");
    let dir = w.lab.dir().join("receipts");
    let name = format!("{:06}-readiness.json", last["seq"].as_u64().unwrap());
    let sig = std::fs::read_to_string(dir.join(format!("{name}.sig"))).unwrap();
    let der = dir.join("readiness.sig.der");
    use base64::Engine as _;
    std::fs::write(&der, base64::engine::general_purpose::STANDARD.decode(sig.trim()).unwrap()).unwrap();
    let openssl = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-verify"])
        .arg(w.manifests().join("trust/receipts.pub"))
        .arg("-signature")
        .arg(&der)
        .arg(dir.join(&name))
        .output()
        .unwrap();
    std::fs::remove_file(&der).unwrap();
    assert!(String::from_utf8_lossy(&openssl.stdout).contains("Verified OK"), "{}", stderr(&openssl));

    // Each control broken in turn: that row fails with its fix, exit 4.
    let broken = |workflows: Option<&Path>, want: &[&str], fix: &str| {
        let (out, rows) = prove(&w, "staging", workflows);
        assert_eq!(out.status.code(), Some(4), "{}{}", stdout(&out), stderr(&out));
        assert_eq!(failing(&rows), want, "{rows:?}");
        let (control, subject) = want[0].split_once(' ').unwrap();
        let named = &rows[&(control.to_owned(), subject.to_owned())].1;
        assert!(named.contains(fix), "{control}: the fix `{fix}` is named: {named}");
    };
    broken(Some(&fixtures.join("unsafe")), &["workflows env staging"], "agentctl check --ci");

    let trust = w.manifests().join("trust/release.pub");
    let kept = std::fs::read(&trust).unwrap();
    let other = controlplane::keys::SigningKey::generate().unwrap();
    std::fs::write(&trust, other.public().pem()).unwrap();
    broken(None, &["signature api"], "[trust] keys");
    std::fs::write(&trust, &kept).unwrap();

    let allowed = std::fs::read_to_string(&svc).unwrap();
    edit(&svc, |t| t.split("\n[[contents.allow]]").next().unwrap().to_owned());
    broken(None, &["contents api"], "[[contents.allow]]");
    std::fs::write(&svc, allowed).unwrap();

    let receipt = dir.join(&name);
    let bytes = std::fs::read(&receipt).unwrap();
    std::fs::write(&receipt, [&bytes[..], b" "].concat()).unwrap();
    broken(None, &["receipts env staging"], "agentctl receipts verify");
    std::fs::write(&receipt, &bytes).unwrap();

    // A rendered file holding a value (as an older version could have recorded it).
    let db = w.lab.dir().join("state/controlplane.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let kept: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT release_id, files FROM applied_releases WHERE environment = 'staging'")
            .fetch_all(&pool)
            .await
            .unwrap();
    let leaked =
        serde_json::json!({ "config/leak.env": base64::engine::general_purpose::STANDARD.encode(token) }).to_string();
    sqlx::query("UPDATE applied_releases SET files = ? WHERE environment = 'staging'")
        .bind(&leaked)
        .execute(&pool)
        .await
        .unwrap();
    broken(None, &["secrets api"], "name it under `secrets`");
    for (id, files) in &kept {
        sqlx::query("UPDATE applied_releases SET files = ? WHERE environment = 'staging' AND release_id = ?")
            .bind(files)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;

    // A release promoted without a rehearsal.
    let v3 = w.release("v3").await;
    assert_ok(&w.promote("staging", &v3, &["--apply"]));
    broken(None, &["rollback api"], "agentctl rehearse api --env staging");
    assert_ok(&w.agentctl(&["rehearse", "api", "--env", "staging", "--release", v3.digest.as_str(), "--apply"]));
    let (out, _) = prove(&w, "staging", None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Every rule flushed on a host.
    let ns = w.lab.host("stage-1").netns.clone().unwrap();
    assert!(ns.exec("nft", &["flush", "ruleset"]).unwrap().status.success());
    broken(None, &["egress api"], "agentctl status --env staging");

    // A host presenting another key: its row fails (and the egress proof cannot run).
    w.lab.host_key("stage-1", "ed25519").unwrap();
    broken(None, &["egress api", "host-keys env staging"], "agentctl status --env staging");

    // Production: approvals required, from approvers, never the author.
    let (out, rows) = prove(&w, "prod", None);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(failing(&rows), ["approvals env prod"], "{rows:?}");
    edit(&w.manifests().join("environments/prod.toml"), |t| {
        t.replacen("approvals = 0", "approvals = 1\napprovers = \"trust/prod.allowed_signers\"", 1)
    });
    let (out, rows) = prove(&w, "prod", None);
    assert_eq!(out.status.code(), Some(0), "{rows:?}");
}
