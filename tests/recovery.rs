//! When something goes wrong, on the lab's real hosts: the rollback loop, a hand-edited
//! file named and repaired, one name for a release, and an apply that checks what it
//! started. Each test is named after what broke.

mod common;

use common::*;

fn id_of(w: &World, host: &str) -> String {
    w.current(host).unwrap().trim_start_matches("releases/").to_owned()
}

/// v1, v2, then v2 again (to repair drift): the history held v2 twice, `rollback` planned
/// "to" v2 forever and `--apply` wrote a `rollback succeeded` receipt each time while
/// nothing moved. Now the way back is v1, and a rollback to what runs is refused (exit 4)
/// naming the `--to` choices, with a refusal receipt and no success.
#[tokio::test(flavor = "multi_thread")]
async fn the_rollback_loop_after_a_re_promotion() {
    let w = World::start(fleet(1)).await;
    let v1 = w.deploy("v1", &["staging"]).await;
    let r1 = id_of(&w, "stage-1");
    let v2 = w.deploy("v2", &["staging"]).await;
    let r2 = id_of(&w, "stage-1");
    assert_ok(&w.promote("staging", &v2, &["--apply"]));

    let out = w.agentctl(&["rollback", "api", "--env", "staging"]);
    assert_ok(&out);
    assert!(stdout(&out).contains(&format!("roll back `api` in `staging` to release `{r1}`")), "{}", stdout(&out));

    let before = w.receipts().len();
    let out = w.agentctl(&["rollback", "api", "--env", "staging", "--to", &r2, "--apply"]);
    assert_exit(&out, 4, "would change nothing: every host already runs it");
    assert!(stderr(&out).contains(&format!("`--to {r1}` goes back to sha256:")), "{}", stderr(&out));
    let receipts = w.receipts();
    assert_eq!(receipts.len(), before + 1);
    assert_eq!(receipts.last().unwrap()["outcome"], "refused");
    assert!(!receipts[before..].iter().any(|r| r["outcome"] == "succeeded"));

    assert_ok(&w.agentctl(&["rollback", "api", "--env", "staging", "--apply"]));
    assert_eq!(w.live_digest("stage-1").as_deref(), Some(v1.digest.as_str()));
}

/// `echo DEBUG=1 >> current/config/api.env` on one host: `status` said `tampered` with two
/// hashes and no file, every promotion was refused with no hint, and nothing repaired it.
/// Now `status` and the refusal name the file, `repair` (a dry run) names it too, and
/// `repair --apply` stages the recorded release again: in sync, promotable, on the record.
#[tokio::test(flavor = "multi_thread")]
async fn the_hand_edited_file_is_named_and_repaired() {
    let w = World::start(fleet(1)).await;
    w.deploy("v1", &["staging"]).await;
    let r1 = id_of(&w, "stage-1");
    let env_file = w.lab.host("stage-1").root().join("api/current/config/api.env");
    let mut text = std::fs::read_to_string(&env_file).unwrap();
    text.push_str("DEBUG=1\n");
    std::fs::write(&env_file, text).unwrap();

    let out = w.agentctl(&["status", "--env", "staging"]);
    assert_exit(&out, 3, "");
    assert!(stdout(&out).contains("`config/api.env`: content changed"), "{}", stdout(&out));
    assert!(stdout(&out).contains("agentctl repair api --env staging --host stage-1"), "{}", stdout(&out));

    let v2 = w.release("v2").await;
    let before = hosts_only(w.snapshot());
    let out = w.promote("staging", &v2, &["--apply"]);
    assert_exit(&out, 4, "the way back is broken on host `stage-1`");
    assert!(stderr(&out).contains("- `config/api.env`: content changed"), "{}", stderr(&out));
    assert!(stderr(&out).contains("agentctl repair api --env staging --host stage-1"), "{}", stderr(&out));
    assert_same(&before, &hosts_only(w.snapshot()), "the refusal changes no host");

    let out = w.agentctl(&["repair", "api", "--env", "staging", "--host", "stage-1"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("~ `config/api.env`: content changed"), "{}", stdout(&out));
    assert!(stdout(&out).contains("nothing was changed"), "{}", stdout(&out));
    assert_same(&before, &hosts_only(w.snapshot()), "the dry run changes no host");

    let out = w.agentctl(&["repair", "api", "--env", "staging", "--host", "stage-1", "--apply"]);
    assert_ok(&out);
    assert!(stdout(&out).contains("repair succeeded"), "{}", stdout(&out));
    assert!(!std::fs::read_to_string(&env_file).unwrap().contains("DEBUG=1"));
    let set_aside = std::fs::read_dir(w.lab.host("stage-1").root().join("api/releases"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .any(|n| n.starts_with(&format!(".damaged-{r1}-")));
    assert!(set_aside, "the changed directory is kept for a look, not deleted");
    let last = w.receipts().last().unwrap().clone();
    assert_eq!((last["kind"].as_str(), last["outcome"].as_str()), (Some("repair"), Some("succeeded")), "{last}");
    assert!(last.to_string().contains("config/api.env"), "{last}");
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));
    let out = w.agentctl(&["repair", "api", "--env", "staging", "--host", "stage-1"]);
    assert!(stdout(&out).contains("nothing to repair"), "{}", stdout(&out));

    assert_ok(&w.promote("staging", &v2, &["--apply"]));
    assert_ok(&w.agentctl(&["receipts", "verify"]));
    let out = w.agentctl(&["history", "api", "--env", "staging"]);
    assert_ok(&out);
    let text = stdout(&out);
    let kinds: Vec<&str> = text.lines().skip(1).filter_map(|l| l.split_whitespace().nth(3)).collect();
    assert_eq!(kinds, ["kind", "promote", "repair", "promote"], "{text}");
}

/// `rollback --to sha256:…` answered "was never applied"; plans, status and receipts named
/// only `r-…` ids. Every command now takes every name of a release — its id or a prefix,
/// its digest or a prefix, a tag — and `history` lists what each host ran when.
#[tokio::test(flavor = "multi_thread")]
async fn a_digest_given_to_to_and_every_other_name_of_a_release() {
    let w = World::start(fleet(1)).await;
    let v1 = w.deploy("v1", &["staging"]).await;
    let r1 = id_of(&w, "stage-1");
    let v2 = w.deploy("v2", &["staging"]).await;

    // A digest, its prefix, `repo@digest` and the id's prefix, each for the same rollback.
    let short = &v1.digest.as_str()[..19];
    for to in [v1.digest.as_str(), short, &s(&v1), &r1[..8]] {
        let out = w.agentctl(&["rollback", "api", "--env", "staging", "--to", to]);
        assert_ok(&out);
        assert!(stdout(&out).contains(&format!("to release `{r1}`")), "--to {to}: {}", stdout(&out));
    }
    // A tag: resolved now, shown pinned.
    let client = w.lab.registry_client();
    copy_tag(&client, &v2.repository, "latest", &v2.repository, "v2").await;
    let out = w.agentctl(&["promote", "api", "--env", "prod", "--release", "v2"]);
    assert_ok(&out);
    assert!(stderr(&out).contains(&format!("tag `v2` is {}", s(&v2))), "{}", stderr(&out));
    assert!(stdout(&out).contains(v2.digest.as_str()), "{}", stdout(&out));
    // An id from staging names the same image for prod.
    let r2 = id_of(&w, "stage-1");
    assert_ok(&w.agentctl(&["promote", "api", "--env", "prod", "--release", &r2, "--apply"]));
    assert_eq!(w.live_digest("prod-1").as_deref(), Some(v2.digest.as_str()));

    let out = w.agentctl(&["release", "show", "api", &r2[..10]]);
    assert_ok(&out);
    assert!(stdout(&out).contains(&format!("applied to `staging` as {r2}")), "{}", stdout(&out));
    assert!(stdout(&out).contains("applied to `prod` as r-"), "{}", stdout(&out));
    assert_exit(&w.agentctl(&["release", "show", "api", "nosuchtag"]), 2, "no recorded release");

    // status and the receipts list name the release by id, short digest and commit.
    let name = format!("{r2} ({}, commit {})", &v2.digest.as_str()[..19], &COMMIT[..12]);
    assert!(stdout(&w.agentctl(&["status", "--env", "staging"])).contains(&name));
    assert!(stdout(&w.agentctl(&["receipts", "list"])).contains(&name));

    let out = w.agentctl(&["--json", "history", "api", "--env", "staging"]);
    assert_ok(&out);
    let h: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = h["history"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{h}");
    assert_eq!(steps[0]["release"]["digest"], v1.digest.as_str());
    assert_eq!((steps[1]["release_id"].as_str(), steps[1]["current"].as_bool()), (Some(r2.as_str()), Some(true)));
}

/// With the runtime reporting another digest after activation, the apply said "live and
/// healthy" (exit 0) and `status` right after said drifted. Now what runs is read back:
/// the host fails like an unhealthy one and goes back.
#[tokio::test(flavor = "multi_thread")]
async fn an_apply_checks_what_it_started() {
    let w = World::start(fleet(1)).await;
    let v1 = w.deploy("v1", &["staging"]).await;
    let v2 = w.release("v2").await;
    // The shim reports this from its next `running` on: after v2's activation, as a
    // runtime that started something else would.
    let other = format!("sha256:{}", "e".repeat(64));
    let runtime = w.lab.host("stage-1").runtime();
    let hook = runtime.join("api.report");
    let swapped = std::thread::spawn({
        let w_current = w.lab.host("stage-1").root().join("api/current");
        let before = std::fs::read_link(&w_current).unwrap();
        let other = other.clone();
        move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while std::fs::read_link(&w_current).ok().as_ref() == Some(&before) {
                assert!(std::time::Instant::now() < deadline, "never swapped");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::fs::write(&hook, other).unwrap();
        }
    });
    let out = w.promote("staging", &v2, &["--apply"]);
    swapped.join().unwrap();
    w.clear_runtime("stage-1", "report");
    assert_exit(&out, 1, "failed");
    assert!(stdout(&out).contains(&format!("the runtime reports `{other}` running")), "{}", stdout(&out));
    assert_eq!(w.live_digest("stage-1").as_deref(), Some(v1.digest.as_str()), "back on v1");
    assert_ok(&w.agentctl(&["status", "--env", "staging"]));
}

/// The shell commands of a Markdown file: each ```sh block, and each 4-space indented block.
fn shell_blocks(md: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut fenced: Option<String> = None;
    let mut indented = String::new();
    for line in md.lines() {
        match (&mut fenced, line.trim_end()) {
            (None, "```sh") => fenced = Some(String::new()),
            (Some(b), "```") => {
                blocks.push(std::mem::take(b));
                fenced = None;
            }
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) if line.starts_with("    ") => {
                indented.push_str(&line[4..]);
                indented.push('\n');
            }
            (None, _) => {
                if !indented.is_empty() {
                    blocks.push(std::mem::take(&mut indented));
                }
            }
        }
    }
    blocks
}

/// receipts/README.md's commands failed as written (`jq -r` added a newline to the signed
/// statement: "incorrect signature"). Every one of them now runs, unedited, with bash in
/// a project holding an approved prod apply: openssl, cosign 3.1 (Debian's), jq and
/// `ssh-keygen -Y verify` each accept what agentctl signed.
#[tokio::test(flavor = "multi_thread")]
async fn the_receipts_readme_commands_run_as_written() {
    let w = World::start(fleet(1)).await;
    let keys = tempfile::tempdir().unwrap();
    let carol = keys.path().join("carol");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "carol", "-f"])
        .arg(&carol)
        .status()
        .unwrap();
    assert!(made.success());
    let public = std::fs::read_to_string(carol.with_extension("pub")).unwrap();
    let line = format!("carol {}", public.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
    std::fs::write(w.manifests().join("trust/prod.allowed_signers"), format!("{line}\n")).unwrap();
    let prod = w.manifests().join("environments/prod.toml");
    let text = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        text.replacen("approvals = 0", "approvals = 1\napprovers = \"trust/prod.allowed_signers\"", 1),
    )
    .unwrap();
    let v1 = w.deploy("v1", &["staging"]).await;
    let plan = keys.path().join("plan.json");
    let plan = plan.to_str().unwrap();
    assert_ok(&w.promote("prod", &v1, &["--out", plan]));
    assert_ok(&w.agentctl(&["approve", plan, "--key", carol.to_str().unwrap()]));
    assert_ok(&w.agentctl(&["apply", plan]));

    let cosign = lab::cosign::COSIGN_3_1.install().expect("cosign 3.1 (`cargo xtask setup` installs it)");
    let bin = std::path::Path::new(BIN).parent().unwrap().to_path_buf();
    let path = format!("{}:{}:{}", bin.display(), cosign.parent().unwrap().display(), std::env::var("PATH").unwrap());
    let md = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../receipts/README.md"))
        .unwrap();
    let blocks = shell_blocks(&md);
    assert_eq!(blocks.len(), 4, "{blocks:#?}");
    let work = tempfile::tempdir().unwrap();
    for dir in ["manifests", "receipts"] {
        std::os::unix::fs::symlink(w.lab.dir().join(dir), work.path().join(dir)).unwrap();
    }
    for block in &blocks {
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .current_dir(work.path())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{block}\nstdout: {}\nstderr: {}", stdout(&out), stderr(&out));
    }
    // And the approval check is not vacuous: a changed statement fails it.
    let check = blocks.iter().find(|b| b.contains("ssh-keygen -Y verify")).unwrap();
    let broken = check.replace("> statement\n", "> statement\necho tampered >> statement\n");
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &broken])
        .current_dir(work.path())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a changed statement verifies: {}", stderr(&out));
}
