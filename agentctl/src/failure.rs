//! How a command fails: an exit code from DESIGN.md, the error chain, and a hint.

use std::fmt;
use std::process::ExitCode;

/// The exit codes of the CLI contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Failed = 1,
    Invalid = 2,
    Drift = 3,
    Refused = 4,
    /// A rollout halted: its failure budget was spent.
    Halted = 5,
    /// Stopped by a second interrupt (128 + SIGINT, as shells report it).
    Aborted = 130,
}

/// A failed command: what to print and how to exit.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub error: anyhow::Error,
    pub hint: Option<String>,
    /// Lines that explain the error (each host or field concerned), shown under it.
    pub details: Vec<String>,
    /// Printed on stdout before the error (for `--json`, the document).
    pub output: Option<String>,
    /// Under `--json`, the document to print instead of the error document.
    pub json: Option<serde_json::Value>,
}

impl Failure {
    pub fn new(code: Code, error: impl Into<anyhow::Error>) -> Self {
        Self { code, error: error.into(), hint: None, details: Vec::new(), output: None, json: None }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_output(mut self, output: String) -> Self {
        self.output = Some(output);
        self
    }

    /// The error as one JSON document, for `--json` (stdout stays machine-readable on
    /// failure too).
    pub fn to_json(&self) -> serde_json::Value {
        let kind = match self.code {
            Code::Failed => "failed",
            Code::Invalid => "invalid-input",
            Code::Drift => "drift",
            Code::Refused => "refused",
            Code::Halted => "halted",
            Code::Aborted => "aborted",
        };
        serde_json::json!({
            "error": {
                "kind": kind,
                "message": self.error.to_string(),
                "causes": self.error.chain().skip(1).map(ToString::to_string).collect::<Vec<_>>(),
                "details": self.details,
                "hint": self.hint,
                "exit_code": self.code as u8,
            }
        })
    }

    pub fn with_json(mut self, json: serde_json::Value) -> Self {
        self.json = Some(json);
        self
    }

    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code as u8)
    }
}

/// `error:` / `Caused by:` / `hint:` layout.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.error)?;
        for cause in self.error.chain().skip(1) {
            write!(f, "\n  Caused by: {cause}")?;
        }
        for d in &self.details {
            write!(f, "\n  - {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

/// Anything unexpected is an operation failure (exit 1).
impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::new(Code::Failed, e)
    }
}
