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
