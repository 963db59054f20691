//! `agentctl receipts list | show | verify | report`.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::keys::PublicKey;
use controlplane::receipt::{self, ChainReport, Receipt, StoreHead};
use controlplane::receipt_log::ReceiptLog;
use controlplane::store::Store as _;
use std::path::{Path, PathBuf};

/// Where the receipts are, the key to check them with, and the store's head if any.
struct Sources {
    log: ReceiptLog,
    /// The receipt keys a signature may verify with (more than one across a rotation).
    key: Option<Vec<PublicKey>>,
    head: Option<StoreHead>,
    store_note: &'static str,
    /// The chain read from the state store instead of the directory (`verify --store`).
    from_store: Option<Vec<receipt::ReceiptFile>>,
    /// What was read, for messages: a directory or the store's location.
    origin: String,
}

/// Loads each `--key`, or the manifests' `receipt_public_key` when none is given.
pub fn load_keys(keys: &[PathBuf], ctx: Option<&Context>) -> Result<Vec<PublicKey>, Failure> {
    let paths: Vec<PathBuf> = match (keys, ctx) {
        ([], Some(c)) => vec![c.set.resolve(&c.set.settings.receipt_public_key)],
        ([], None) => unreachable!("a context is loaded when no --key is given"),
        (keys, _) => keys.to_vec(),
    };
    paths.iter().map(|k| PublicKey::load(k).map_err(|e| Failure::new(Code::Invalid, e))).collect()
}

async fn sources(g: &Globals, dir: Option<&Path>, keys: &[PathBuf], need_key: bool) -> Result<Sources, Failure> {
    // Manifests are optional for auditors who have only the receipts and the key.
    let ctx = if dir.is_some() && !keys.is_empty() { Context::load(g).ok() } else { Some(Context::load(g)?) };
    let dir: PathBuf = match (dir, &ctx) {
        (Some(d), _) => d.to_path_buf(),
        (None, Some(c)) => c.set.resolve(&c.set.settings.receipts_dir),
        (None, None) => unreachable!("a context is loaded when --dir is absent"),
    };
    let key = if need_key { Some(load_keys(keys, ctx.as_ref())?) } else { None };
    let mut head = None;
    let mut store_note = "state store not available: a removed tail of the chain cannot be detected";
    if let Some(c) = &ctx {
        let same_dir =
            std::path::absolute(&dir).ok() == std::path::absolute(c.set.resolve(&c.set.settings.receipts_dir)).ok();
        if same_dir {
            if let Some(store) = c.read_store().await? {
                head = store.receipt_head().await?.map(|e| StoreHead { seq: e.seq as u64, sha256: e.sha256 });
                store_note = "chain head compared with the state store";
                if head.is_none() {
                    head = Some(StoreHead { seq: 0, sha256: String::new() });
                }
            }
        }
    }
    let origin = format!("`{}`", dir.display());
    Ok(Sources { log: ReceiptLog::new(dir), key, head, store_note, from_store: None, origin })
}

/// The chain as the manifests' state store holds it.
async fn store_sources(g: &Globals, keys: &[PathBuf]) -> Result<Sources, Failure> {
    let ctx = Context::load(g)?;
    let key = load_keys(keys, Some(&ctx))?;
    let Some(store) = ctx.read_store().await? else {
        return Err(Failure::new(
            Code::Invalid,
            anyhow::anyhow!("there is no state store at `{}` yet", ctx.location()?),
        )
        .hint("check `controlplane.state` in the manifests"));
    };
    let stored = store.stored_receipts(0).await?;
    let head = stored.last().map(|r| StoreHead { seq: r.index.seq as u64, sha256: r.index.sha256.clone() });
    let files = stored.into_iter().map(receipt::ReceiptFile::from).collect();
    let dir = ctx.set.resolve(&ctx.set.settings.receipts_dir);
    Ok(Sources {
        log: ReceiptLog::new(dir),
        key: Some(key),
        head: head.or(Some(StoreHead { seq: 0, sha256: String::new() })),
        store_note: "read from the state store",
        from_store: Some(files),
        origin: format!("the state store `{}`", store.location()),
    })
}

fn check(src: &Sources) -> Result<ChainReport, Failure> {
    let (files, orphans) = match &src.from_store {
        Some(files) => (files.clone(), Vec::new()),
        None => src.log.read()?,
    };
    let key = src.key.as_ref().expect("verify loads a key");
    Ok(receipt::verify_chain(&files, &orphans, key, src.head.as_ref()))
}

pub async fn verify(g: &Globals, dir: Option<&Path>, store: bool, keys: &[PathBuf]) -> Result<Report, Failure> {
    let src = if store { store_sources(g, keys).await? } else { sources(g, dir, keys, true).await? };
    let report = check(&src)?;
    let mut text = String::new();
    for p in &report.problems {
        text.push_str(&format!("BAD  {}: {}\n", p.receipt, p.problem));
    }
    for i in &report.incomplete {
        text.push_str(&format!("note {i}: signature of an append that did not complete (crash?); ignored\n"));
    }
    let json =
        serde_json::json!({ "ok": report.ok(), "report": report, "store": src.store_note, "origin": src.origin });
    if report.ok() {
        text.push_str(&format!(
            "ok: {} receipt(s) in {} verify; chain head {} ({})",
            report.receipts,
            src.origin,
            report.head.as_deref().unwrap_or("none"),
            src.store_note
        ));
        Ok(Report::new(text, json))
    } else {
        let out = if g.json { serde_json::to_string_pretty(&json)? } else { text.trim_end().to_owned() };
        Err(Failure::new(
            Code::Failed,
            anyhow::anyhow!("{} problem(s) in the receipt chain in {}", report.problems.len(), src.origin),
        )
        .with_output(out)
        .hint("the receipts named above were edited, removed, reordered or forged; keep the directory as evidence"))
    }
}

/// A receipt's release by its one name: the id the hosts moved to, the short digest and
/// the commit (`-` for receipts about no release).
fn release_name(body: &controlplane::receipt::ReceiptBody) -> String {
    let Some(facts) = &body.release else { return "-".into() };
    let id =
        body.hosts.iter().find(|h| matches!(h.outcome.as_str(), "changed" | "unchanged")).and_then(|h| h.after.clone());
    match id {
        Some(id) => format!("{id} ({})", facts.short()),
        None => facts.short(),
    }
}

pub async fn list(g: &Globals, dir: Option<&Path>) -> Result<Report, Failure> {
    let src = sources(g, dir, &[], false).await?;
    let (files, _) = src.log.read()?;
    let mut rows = Vec::new();
    let mut table = Vec::new();
    let mut unreadable = String::new();
    for f in &files {
        match serde_json::from_slice::<Receipt>(&f.bytes) {
            Ok(r) => {
                table.push(vec![
                    r.seq.to_string(),
                    r.body.kind.as_str().to_owned(),
                    r.body.outcome.clone(),
                    r.body.time.clone(),
                    format!(
                        "{}/{}",
                        r.body.environment.as_deref().unwrap_or("-"),
                        r.body.service.as_deref().unwrap_or("-")
                    ),
                    release_name(&r.body),
                    r.body.operator.clone(),
                ]);
                rows.push(serde_json::to_value(&r)?);
            }
            Err(e) => unreadable.push_str(&format!("\n{}  unreadable: {e}", f.name)),
        }
    }
    let text = format!(
        "{} receipt(s) in `{}`\n{}{unreadable}",
        files.len(),
        src.log.dir().display(),
        crate::render::table(&["SEQ", "KIND", "OUTCOME", "TIME", "TARGET", "RELEASE", "BY"], table)
    );
    Ok(Report::new(text, serde_json::Value::Array(rows)))
}

pub async fn show(g: &Globals, id: &str, dir: Option<&Path>) -> Result<Report, Failure> {
    let src = sources(g, dir, &[], false).await?;
    let (files, _) = src.log.read()?;
    let wanted = id.parse::<u64>().ok();
    let file = files.iter().find(|f| {
        f.name == id || f.name.trim_end_matches(".json") == id || wanted.is_some() && receipt::seq_of(&f.name) == wanted
    });
    let Some(file) = file else {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("no receipt `{id}` in `{}`", src.log.dir().display()))
            .hint("`agentctl receipts list` shows the sequence numbers"));
    };
    let value: serde_json::Value = serde_json::from_slice(&file.bytes)?;
    Ok(Report::new(serde_json::to_string_pretty(&value)?, value))
}

pub async fn report(g: &Globals, out: &Path, dir: Option<&Path>, keys: &[PathBuf]) -> Result<Report, Failure> {
    let src = sources(g, dir, keys, true).await?;
    let chain = check(&src)?;
    let good = &chain.verified;
    let key_id = src.key.iter().flatten().map(|k| k.key_id.as_str()).collect::<Vec<_>>().join(", ");
    let html = crate::render::report::render(&src.log.dir().display().to_string(), &key_id, good, &chain)?;
    std::fs::write(out, html).map_err(|e| {
        Failure::new(Code::Failed, anyhow::Error::new(e).context(format!("cannot write `{}`", out.display())))
    })?;
    let text = format!(
        "wrote `{}`: {} receipt(s), chain {}",
        out.display(),
        good.len(),
        if chain.ok() { "verifies" } else { "does NOT verify" }
    );
    Ok(Report::new(text, serde_json::json!({ "out": out, "receipts": good.len(), "ok": chain.ok() })))
}

/// `receipts export --dir DIR`: the store's chain as files an auditor verifies offline.
pub async fn export(g: &Globals, dir: &Path) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let Some(store) = ctx.read_store().await? else {
        return Err(Failure::new(
            Code::Invalid,
            anyhow::anyhow!("there is no state store at `{}` yet", ctx.location()?),
        )
        .hint("check `controlplane.state` in the manifests"));
    };
    let out = ReceiptLog::new(dir).export(&store).await?;
    let json = serde_json::to_value(&out)?;
    let head = out.head.as_ref().map_or_else(|| "none".to_owned(), |(seq, h)| format!("{seq} ({h})"));
    let mut text = format!(
        "exported the chain of `{}` into `{}`: {} written, {} already there; head {head}",
        store.location(),
        dir.display(),
        out.written,
        out.unchanged
    );
    for f in &out.without_bytes {
        text.push_str(&format!("\nnote {f}: indexed by an older version without its bytes; not exported"));
    }
    if !out.conflicts.is_empty() {
        let list = out.conflicts.iter().map(|c| format!("DIFFERS  {c}")).collect::<Vec<_>>().join("\n");
        return Err(Failure::new(
            Code::Failed,
            anyhow::anyhow!(
                "{} file(s) in `{}` differ from the state store's chain",
                out.conflicts.len(),
                dir.display()
            ),
        )
        .with_output(format!("{text}\n{list}"))
        .hint("keep both as evidence; export into an empty directory and compare with `receipts verify --dir`"));
    }
    text.push_str(&format!("\nverify offline: agentctl receipts verify --dir {} --key RECEIPTS.pub", dir.display()));
    Ok(Report::new(text, json))
}
