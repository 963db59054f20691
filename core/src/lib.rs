//! The pure core of the deployment control plane.
//!
//! Everything here is synchronous and does no I/O: no tokio, sqlx, openssh or registry
//! client appears in this crate's `Cargo.toml`, so the compiler keeps it that way. Time
//! comes in as a value. The `controlplane` crate holds the effectful edges (ssh,
//! registry, store, files) and the jobs that walk a plan through them.
//!
//! - inputs: `names`, `image`, `platform` (which manifest of an image index runs), `diagnostic`, `secrets`, `contents` (secret values in an image's layers), `manifest::{raw, model, validate}`,
//!   `untrusted` (what a host says, bounded and sanitized), `workflow` (CI workflow hygiene);
//! - formats: `ids` (release id, content hash, plan id), `canonical`, `remote`, `release`, `tarball`, `receipt`, `records`;
//! - decisions: `observe` (parse a probe), `adopt` (may a live, unrecorded release become the way back), `drift`, `plan` (build, re-derive, compare),
//!   `history` (the way back, from what was recorded), `rollout` (the apply state machine), `lock` (is a holder alive), `watch` (drift events, jitter, webhook signatures), `steps` (remote steps as data).
//!
//! Nor can it reach the world through `std`: `core/clippy.toml` disallows files,
//! processes, sockets, the clock and the environment, which only the tests may use.

// The tests run the scripts the core renders, and write fixtures: I/O is theirs only.
#![cfg_attr(test, allow(clippy::disallowed_methods, clippy::disallowed_types))]

pub mod adopt;
pub mod approval;
pub mod canonical;
pub mod contents;
pub mod diagnostic;
pub mod drift;
pub mod egress;
pub mod history;
pub mod ids;
pub mod image;
pub mod lock;
pub mod manifest;
pub mod names;
pub mod observe;
pub mod plan;
pub mod platform;
pub mod podman;
pub mod receipt;
pub mod records;
pub mod release;
pub mod remote;
pub mod repair;
pub mod rollout;
pub mod secrets;
pub mod soak;
pub mod steps;
pub mod tarball;
pub mod untrusted;
pub mod watch;
pub mod workflow;

/// The version recorded in receipts.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
