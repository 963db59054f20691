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
    let mut tera = tera::Tera::default();
    tera.add_raw_template("report.html", TEMPLATE)?;
    tera.register_filter("code", code_filter);
    tera.render("report.html", &ctx)
}

/// The template's `code` filter (followed by `safe`): the text HTML-escaped, with each
/// Markdown `` `span` `` of our messages rendered as `<code>span</code>`.
fn code_filter(value: &tera::Value, _: &std::collections::HashMap<String, tera::Value>) -> tera::Result<tera::Value> {
    let text = match value {
        tera::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    Ok(tera::Value::String(code_spans(&text)))
}

/// `text` HTML-escaped, backtick spans as `<code>`; an unpaired backtick stays as text.
pub fn code_spans(text: &str) -> String {
    let parts: Vec<&str> = text.split('`').collect();
    let paired = if parts.len() % 2 == 1 { parts.len() } else { parts.len() - 1 };
    let mut out = String::with_capacity(text.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        let escaped = tera::escape_html(part);
        if i >= paired {
            out.push('`');
            out.push_str(&escaped);
        } else if i % 2 == 1 {
            out.push_str("<code>");
            out.push_str(&escaped);
            out.push_str("</code>");
        } else {
            out.push_str(&escaped);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::code_spans;

    #[test]
    fn backticks_become_code_and_everything_is_escaped() {
        assert_eq!(code_spans("run `agentctl repair` <now>"), "run <code>agentctl repair</code> &lt;now&gt;");
        assert_eq!(code_spans("`<script>`"), "<code>&lt;script&gt;</code>");
        assert_eq!(code_spans("a `b` c `d"), "a <code>b</code> c `d");
        assert_eq!(code_spans("plain"), "plain");
    }
}
