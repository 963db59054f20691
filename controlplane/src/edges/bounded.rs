//! Files an operator or a pull request hands over (plans, approvals, workflows), read with
//! a bound: a file over it is an error naming the bound, and is never read whole.

use std::io::Read as _;
use std::path::Path;

/// A saved plan (rendered files included, base64): 16 MiB.
pub const MAX_PLAN_BYTES: u64 = 16 << 20;
/// An approval file, statement or signature: 64 KiB.
pub const MAX_APPROVAL_BYTES: u64 = 64 << 10;
/// A CI workflow: 1 MiB, as a manifest file.
pub const MAX_WORKFLOW_BYTES: u64 = 1 << 20;
/// A receipt file (or its signature) in a receipts directory: 1 MiB (a receipt of a
/// thousand hosts is a few hundred KiB).
pub const MAX_RECEIPT_BYTES: u64 = 1 << 20;

/// Reads `path` as UTF-8 text of at most `max` bytes.
///
/// # Errors
/// The file cannot be read, is not UTF-8, or is over `max` bytes
/// (`ErrorKind::FileTooLarge`).
pub fn read_to_string(path: &Path, max: u64) -> std::io::Result<String> {
    String::from_utf8(read(path, max)?).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Reads `path` whole, at most `max` bytes.
///
/// # Errors
/// The file cannot be read, or is over `max` bytes (`ErrorKind::FileTooLarge`).
pub fn read(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("the file is over {max} bytes, more than any agentctl writes or reads"),
        ));
    }
    Ok(bytes)
}
