//! The deployment control plane's core.
//!
//! Pure modules (no I/O, no clock): `names`, `image`, `diagnostic`, `secrets`,
//! `manifest::{raw, model, validate}`, `remote`, `canonical`, `cosign`, `release`,
//! `tarball`, `observe`, `drift`, `plan`, `steps`, `receipt`, `report`.
//! Effectful edges: `store` (trait + SQLite), `registry`, `ssh` (trait `Remote`), `status`,
//! `receipt_log`, `keys`, `manifest::load`, `init`; `verify`, `sign` and `deploy`
//! orchestrate the pure decisions over those edges. See docs/ARCHITECTURE.md.

pub mod canonical;
pub mod catalog;
pub mod cosign;
pub mod deploy;
pub mod diagnostic;
pub mod drift;
pub mod image;
pub mod init;
pub mod keys;
pub mod manifest;
pub mod names;
pub mod observe;
pub mod plan;
pub mod receipt;
pub mod receipt_log;
pub mod registry;
pub mod release;
pub mod remote;
pub mod report;
pub mod secrets;
pub mod sign;
pub mod ssh;
pub mod status;
pub mod steps;
pub mod store;
pub mod tarball;
pub mod verify;

/// The version recorded in receipts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
