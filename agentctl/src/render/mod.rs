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

    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::to_string_pretty(&self.json).expect("JSON values serialize")
        } else {
            self.text.clone()
        }
    }
}

pub mod apply;
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
