//! Secret values in the manifest set: every string of every TOML file and every template
//! line, refused with file, line and field when it looks like a private key or a token.

use super::*;

impl Validator<'_> {
    pub(super) fn scan_toml_for_secrets(&mut self, path: &Path, text: &str) {
        let Ok(doc) = toml_edit::Document::parse(text) else { return };
        let index = LineIndex::new(text);
        let mut found = Vec::new();
        walk_strings(doc.as_item(), String::new(), &mut |field, value, span| {
            // Host keys are public and high-entropy by nature.
            if field.ends_with("host_key") {
                return;
            }
            if let Some(kind) = find_secret(value) {
                found.push((field, kind, span));
            }
        });
        for (field, kind, span) in found {
            let loc = index.locate(span.map_or(0, |s| s.start));
            self.push(
                path,
                loc,
                &field,
                format!("looks like a secret value: {}", kind.describe()),
                Some(
                    "manifests hold secret *names* only: list the name under `secrets = [...]` of the \
                     service and provide the value on the host"
                        .into(),
                ),
            );
        }
    }

    pub(super) fn scan_text_for_secrets(&mut self, path: &Path, text: &str) {
        for (n, line) in text.lines().enumerate() {
            if let Some(kind) = find_secret(line) {
                self.push(
                    path,
                    (n + 1, 1),
                    "",
                    format!("template contains a secret value: {}", kind.describe()),
                    Some("templates are rendered into release directories; reference the secret by name".into()),
                );
            }
        }
    }
}
