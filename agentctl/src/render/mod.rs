//! What a command prints on stdout: text for people, or one JSON document.

/// A command's result, in both forms.
#[derive(Debug)]
pub struct Report {
    pub text: String,
    pub json: serde_json::Value,
}

impl Report {
    pub fn new(text: String, json: serde_json::Value) -> Self {
        Self { text, json }
    }

    /// Text only; the JSON form wraps it.
    pub fn text(text: String) -> Self {
        let json = serde_json::json!({ "output": text });
        Self { text, json }
    }

    /// A command that streamed its output as it ran (`watch`'s JSON lines): nothing more
    /// is printed at the end, in either form.
    pub fn streamed() -> Self {
        Self { text: String::new(), json: serde_json::Value::Null }
    }

    /// Whether there is nothing to print (a streamed command).
    pub fn is_streamed(&self) -> bool {
        self.text.is_empty() && self.json.is_null()
    }

    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::to_string_pretty(&self.json).expect("JSON values serialize")
        } else {
            self.text.clone()
        }
    }
}

pub mod apply;
pub mod history;
pub mod plan;
pub mod report;
pub mod status;

/// A table with the project's layout: no borders, header row, columns padded.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for r in rows {
        t.add_row(r);
    }
    t.column_iter_mut().for_each(|c| {
        c.set_padding((0, 2));
    });
    t.lines().map(|l| l.trim_end().to_owned()).collect::<Vec<_>>().join("\n")
}

/// `s` as one shell word for a command the operator may paste: as is when it holds only
/// safe characters, else single-quoted (control characters shown as `?`).
pub fn quote(s: &str) -> String {
    let clean: String = s.chars().map(|c| if c.is_control() { '?' } else { c }).collect();
    if !clean.is_empty() && clean.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:@=+,~".contains(c)) {
        clean
    } else {
        format!("'{}'", clean.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_path_is_one_shell_word() {
        assert_eq!(super::quote("plans/p.json"), "plans/p.json");
        assert_eq!(super::quote("my plan's.json"), r"'my plan'\''s.json'");
        assert_eq!(super::quote("a\nb"), "'a?b'");
    }
}
