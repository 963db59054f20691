//! Every unknown field of a file, not only the first: serde stops at the first one, so
//! each is blanked out (spaces in its place: every later offset, line and column stays
//! true) and the file parsed again, up to a bound. Each gets a "did you mean" from the
//! fields the format expects there.

use std::ops::Range;
use toml_edit::{Item, TableLike, Value};

/// At most this many unknown fields are reported per file.
pub const MAX_UNKNOWN: usize = 50;

/// `text` with the entry whose key starts at byte `at` blanked out (its key through its
/// value; a table's header through its last entry), or `None` when no entry starts there.
pub fn blank_entry(text: &str, at: usize) -> Option<String> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let range = find(doc.as_table(), at)?;
    let mut bytes = text.as_bytes().to_vec();
    for b in bytes.get_mut(range)? {
        if *b != b'\n' {
            *b = b' ';
        }
    }
    String::from_utf8(bytes).ok()
}

fn find(t: &dyn TableLike, at: usize) -> Option<Range<usize>> {
    for (k, _) in t.iter() {
        let Some((key, item)) = t.get_key_value(k) else { continue };
        if key.span().is_some_and(|s| s.start <= at && at < s.end.max(s.start + 1)) {
            // A table's entry starts at its header's `[`.
            let header = match item {
                Item::Table(tb) => tb.span().map(|s| s.start),
                Item::ArrayOfTables(a) => a.iter().filter_map(|tb| tb.span().map(|s| s.start)).min(),
                _ => None,
            };
            let start = key.span()?.start;
            return extent(header.map_or(start, |h| h.min(start)), item);
        }
        let inner = match item {
            Item::Table(tb) => find(tb, at),
            Item::Value(Value::InlineTable(it)) => find(it, at),
            Item::ArrayOfTables(a) => a.iter().find_map(|tb| find(tb, at)),
            _ => None,
        };
        if inner.is_some() {
            return inner;
        }
    }
    None
}

/// From `start` to the end of `item` (for tables, of their last entry).
fn extent(start: usize, item: &Item) -> Option<Range<usize>> {
    let end = match item {
        Item::Table(tb) => table_end(start, tb),
        Item::ArrayOfTables(a) => a.iter().map(|tb| table_end(start, tb)).max().unwrap_or(start),
        other => other.span().map_or(start, |s| s.end),
    };
    (end > start).then_some(start..end)
}

/// The end of a table's header and of its last entry, whichever comes later.
fn table_end(start: usize, t: &toml_edit::Table) -> usize {
    let mut end = t.span().map_or(start, |s| s.end);
    for (k, _) in t.iter() {
        if let Some(r) = t.get_key_value(k).and_then(|(_, i)| extent(start, i)) {
            end = end.max(r.end);
        }
    }
    end
}

/// The expected field closest to the unknown one in serde's message (`unknown field `x`,
/// expected one of `a`, `b``), if one is close enough to be a typo.
pub fn did_you_mean(message: &str) -> Option<String> {
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    quoted
        .map(|candidate| (strsim::jaro_winkler(unknown, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_blanked_in_place() {
        let text = "a = 1\nimgae = [\n  \"x\",\n]\nb = 2\n";
        let at = text.find("imgae").unwrap();
        let out = blank_entry(text, at).unwrap();
        assert_eq!(out.len(), text.len());
        assert_eq!(out.lines().count(), text.lines().count());
        assert!(!out.contains("imgae") && !out.contains("\"x\"") && out.contains("b = 2"), "{out}");
        let table = "[runtim]\nkind = \"podman\"\n[other]\nx = 1\n";
        let out = blank_entry(table, 1).unwrap();
        assert!(!out.contains("runtim") && !out.contains("podman") && out.contains("[other]"), "{out}");
        assert!(!out.lines().next().unwrap().contains(['[', ']']), "the header goes whole: {out}");
        assert_eq!(blank_entry("a = 1\n", 3), None);
    }

    #[test]
    fn a_typo_gets_the_field_it_meant() {
        let m = "unknown field `imgae`, expected one of `image`, `repository`, `secrets`";
        assert_eq!(did_you_mean(m).as_deref(), Some("image"));
        assert_eq!(did_you_mean("unknown field `zzzz`, expected `image` or `secrets`"), None);
    }
}
