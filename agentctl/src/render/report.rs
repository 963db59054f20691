//! The auditors' HTML report: per environment and service, a timeline of promotions,
//! rollbacks, refusals and approvals with their evidence. Pure: receipts in, HTML out.

use controlplane::receipt::{ChainReport, Receipt};
use serde::Serialize;
use std::collections::BTreeMap;

const TEMPLATE: &str = include_str!("report.html.tera");

#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    receipt: &'a Receipt,
    file: String,
}

#[derive(Serialize)]
struct Group<'a> {
    environment: String,
    service: String,
    receipts: Vec<Row<'a>>,
}

/// Renders the report for `receipts` (verified ones) and the chain check's outcome.
pub fn render(dir: &str, key_id: &str, receipts: &[Receipt], chain: &ChainReport) -> Result<String, tera::Error> {
    let mut groups: BTreeMap<(String, String), Vec<Row<'_>>> = BTreeMap::new();
    for r in receipts {
        let key = (
            r.body.environment.clone().unwrap_or_else(|| "-".into()),
            r.body.service.clone().unwrap_or_else(|| "-".into()),
        );
        groups.entry(key).or_default().push(Row { receipt: r, file: r.file_name() });
    }
    let groups: Vec<Group<'_>> =
        groups.into_iter().map(|((environment, service), receipts)| Group { environment, service, receipts }).collect();
    let mut ctx = tera::Context::new();
    ctx.insert("dir", dir);
    ctx.insert("key_id", key_id);
    ctx.insert("total", &receipts.len());
    ctx.insert("head", chain.head.as_deref().unwrap_or("none"));
    ctx.insert("ok", &chain.ok());
    ctx.insert("problems", &chain.problems);
    ctx.insert("groups", &groups);
    tera::Tera::one_off(TEMPLATE, &ctx, true)
}
