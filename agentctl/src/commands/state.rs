//! `agentctl state migrate --to URL`.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::keys::PublicKey;
use controlplane::receipt::{self, ReceiptFile, StoreHead};
use controlplane::store::{Location, SqlStore, Store as _, StoreError};

pub async fn migrate(g: &Globals, to: &str, to_password_env: Option<&str>) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let from = ctx.location()?;
    let dest = Location::parse(to, to_password_env).map_err(|e| {
        Failure::new(Code::Invalid, anyhow::anyhow!("--to: {e}"))
            .hint("e.g. `--to postgres://controlplane@db.internal:5432/controlplane --to-password-env CP_DB_PASSWORD`")
    })?;
    if dest.to_string() == from.to_string() {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("`{dest}` is the manifests' own state store")));
    }
    let Some(src) = SqlStore::open_read_only(&from).await? else {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("there is no state store at `{from}` to migrate")));
    };
    let mut dump = src.dump().await?;
    // Receipts indexed by an older version keep their bytes only in the receipts
    // directory: carry them over, each checked against the hash the store indexed.
    let dir = ctx.set.resolve(&ctx.set.settings.receipts_dir);
    for r in dump.receipts.iter_mut().filter(|r| r.bytes.is_empty()) {
        let path = dir.join(&r.index.file);
        let bytes = std::fs::read(&path).ok().filter(|b| receipt::hash(b) == r.index.sha256).ok_or_else(|| {
            Failure::new(
                Code::Failed,
                anyhow::anyhow!(
                    "receipt {} is indexed without bytes and `{}` is missing or differs",
                    r.index.seq,
                    path.display()
                ),
            )
            .hint("restore the receipts directory, then migrate again; nothing was written")
        })?;
        r.signature = std::fs::read_to_string(dir.join(format!("{}.sig", r.index.file))).unwrap_or_default();
        r.bytes = bytes;
    }
    let dst = SqlStore::open(&dest).await?;
    dst.load(&dump).await.map_err(|e| match e {
        StoreError::NotEmpty(_) => Failure::new(Code::Refused, e).hint("migrate into a new, empty database"),
        e => e.into(),
    })?;

    // Compare table by table, then verify the copied chain with the receipts key.
    let copied = dst.dump().await?;
    let differences = copied.differences(&dump);
    let key = PublicKey::load(&ctx.set.resolve(&ctx.set.settings.receipt_public_key))
        .map_err(|e| Failure::new(Code::Invalid, e))?;
    let files: Vec<ReceiptFile> = copied
        .receipts
        .iter()
        .map(|r| ReceiptFile {
            name: r.index.file.clone(),
            bytes: r.bytes.clone(),
            signature: Some(r.signature.clone().into_bytes()),
        })
        .collect();
    let src_head = src.receipt_head().await?;
    let head = src_head.as_ref().map(|h| StoreHead { seq: h.seq as u64, sha256: h.sha256.clone() });
    let chain =
        receipt::verify_chain(&files, &[], &key, head.as_ref().or(Some(&StoreHead { seq: 0, sha256: String::new() })));
    let dst_head = dst.receipt_head().await?;
    src.close().await;
    dst.close().await;

    let mut text = format!("copied `{from}` into `{dest}`\n");
    let mut rows = Vec::new();
    for ((table, n), (_, m)) in dump.counts().into_iter().zip(copied.counts()) {
        rows.push(vec![table.to_owned(), n.to_string(), m.to_string()]);
    }
    text.push_str(&crate::render::table(&["TABLE", "SOURCE", "DESTINATION"], rows));
    let show = |h: &Option<controlplane::store::ReceiptIndexEntry>| {
        h.as_ref().map_or_else(|| "none".to_owned(), |h| format!("{} {}", h.seq, h.sha256))
    };
    text.push_str(&format!("\nchain head: source {}, destination {}", show(&src_head), show(&dst_head)));
    let json = serde_json::json!({
        "from": from.to_string(), "to": dest.to_string(),
        "tables": copied.counts().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "differences": differences, "chain": chain,
    });
    let heads_match = src_head.as_ref().map(|h| (h.seq, &h.sha256)) == dst_head.as_ref().map(|h| (h.seq, &h.sha256));
    if !differences.is_empty() || !chain.ok() || !heads_match {
        let mut out = text;
        for d in &differences {
            out.push_str(&format!("\nDIFFERS  {d}"));
        }
        for p in &chain.problems {
            out.push_str(&format!("\nBAD  {}: {}", p.receipt, p.problem));
        }
        return Err(Failure::new(Code::Failed, anyhow::anyhow!("the copy in `{dest}` does not match its source"))
            .with_output(out)
            .hint("keep using the source; drop the destination database and migrate again"));
    }
    text.push_str(&format!(
        "\nevery table matches; the copied chain of {} receipt(s) verifies\nnext: set `state = \"{dest}\"` in controlplane.toml",
        chain.receipts
    ));
    Ok(Report::new(text, json))
}
