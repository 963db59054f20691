//! The effectful edges: everything that talks to the outside world.

pub mod bounded;
pub mod held;
pub mod hygiene;
pub mod keys;
pub mod manifest_files;
pub mod metrics;
pub mod receipt_log;
pub mod registry;
pub mod ssh;
pub mod sshsig;
pub mod store;
pub mod vm;
pub mod workflow_files;
