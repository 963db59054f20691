//! A problem found in an input file, located precisely enough to fix it without searching.

use serde::Serialize;
use std::fmt;
use std::path::PathBuf;

/// One problem in one file: where it is, which field, what was expected, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is the file as a whole (a missing file).
    pub line: usize,
    /// 1-based; 0 with `line`.
    pub column: usize,
    /// Dotted path of the field (`host[1].address`); empty for the file as a whole.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": field `{}`", self.field)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of one text to 1-based line and column numbers.
#[derive(Debug)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Self { starts }
    }

    /// Line and column (in characters of the line, counted in bytes) of `offset`.
    pub fn locate(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line.saturating_sub(1)];
        (line, offset - start + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns() {
        let idx = LineIndex::new("ab\ncd\n\nx");
        assert_eq!(idx.locate(0), (1, 1));
        assert_eq!(idx.locate(1), (1, 2));
        assert_eq!(idx.locate(3), (2, 1));
        assert_eq!(idx.locate(7), (4, 1));
    }

    #[test]
    fn renders_file_line_field_and_hint() {
        let d = Diagnostic {
            file: "m/a.toml".into(),
            line: 3,
            column: 5,
            field: "host[0].port".into(),
            message: "expected a number".into(),
            hint: Some("write `port = 22`".into()),
        };
        assert_eq!(d.to_string(), "m/a.toml:3:5: field `host[0].port`: expected a number\n  hint: write `port = 22`");
    }
}
