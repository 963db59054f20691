//! `agentctl state migrate --to URL`.

use super::context::Context;
use crate::failure::{Code, Failure};
use crate::render::Report;
use crate::Globals;
use controlplane::keys::PublicKey;
use controlplane::migrate::{self, MigrateError};
use controlplane::store::{Location, SqlStore, StoreError};

pub async fn migrate(g: &Globals, to: &str, to_password_env: Option<&str>) -> Result<Report, Failure> {
    let ctx = Context::load(g)?;
    let from = ctx.location()?;
    let dest = Location::parse(to, to_password_env).map_err(|e| {
        Failure::new(Code::Invalid, anyhow::anyhow!("--to: {e}"))
            .hint("e.g. `--to postgres://controlplane@db.internal:5432/controlplane --to-password-env CP_DB_PASSWORD`")
    })?;
    if dest.to_string() == from.to_string() {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("`{dest}` is the manifests' own state store"))
            .hint("name a new, empty database with `--to`"));
    }
    let Some(src) = SqlStore::open_read_only(&from).await? else {
        return Err(Failure::new(Code::Invalid, anyhow::anyhow!("there is no state store at `{from}` to migrate"))
            .hint("check `controlplane.state` in the manifests"));
    };
    let key = PublicKey::load(&ctx.set.resolve(&ctx.set.settings.receipt_public_key))
        .map_err(|e| Failure::new(Code::Invalid, e))?;
    let dst = SqlStore::open(&dest).await?;
    let result = migrate::migrate(&src, &dst, &ctx.set.resolve(&ctx.set.settings.receipts_dir), &key).await;
    src.close().await;
    dst.close().await;
    let m = result.map_err(|e| match e {
        MigrateError::Store(e @ StoreError::NotEmpty(_)) => {
            Failure::new(Code::Refused, e).hint("migrate into a new, empty database")
        }
        MigrateError::Store(e) => e.into(),
        e @ MigrateError::MissingBytes { .. } => Failure::new(Code::Failed, e)
            .hint("restore the receipts directory, then migrate again; nothing was written"),
    })?;

    let rows: Vec<Vec<String>> =
        m.tables.iter().map(|(t, n, c)| vec![(*t).to_owned(), n.to_string(), c.to_string()]).collect();
    let show = |h: &Option<controlplane::store::ReceiptIndexEntry>| {
        h.as_ref().map_or_else(|| "none".to_owned(), |h| format!("{} {}", h.seq, h.sha256))
    };
    let mut text = format!(
        "copied `{from}` into `{dest}`\n{}\nchain head: source {}, destination {}",
        crate::render::table(&["TABLE", "SOURCE", "DESTINATION"], rows),
        show(&m.source_head),
        show(&m.destination_head)
    );
    let json = serde_json::json!({ "from": from.to_string(), "to": dest.to_string(), "migrated": m });
    if !m.ok() {
        for d in &m.differences {
            text.push_str(&format!("\nDIFFERS  {d}"));
        }
        for p in &m.chain.problems {
            text.push_str(&format!("\nBAD  {}: {}", p.receipt, p.problem));
        }
        return Err(Failure::new(Code::Failed, anyhow::anyhow!("the copy in `{dest}` does not match its source"))
            .with_output(text)
            .hint("keep using the source; drop the destination database and migrate again"));
    }
    text.push_str(&format!(
        "\nevery table matches; the copied chain of {} receipt(s) verifies\nnext: set `state = \"{dest}\"` in controlplane.toml",
        m.chain.receipts
    ));
    Ok(Report::new(text, json))
}
