//! The deployment control plane: the effectful edges and the jobs, over the pure core.
//!
//! - `controlplane_core` (re-exported here under the same module names): manifests,
//!   plans, the rollout state machine, drift, receipts and formats; no I/O.
//! - `edges/`: the only modules that touch the outside world, each behind a small type
//!   or trait: `ssh` (openssh, trait `Remote`), `registry` (oci-client), `store` (sqlx,
//!   trait `Store`), `receipt_log` (the receipts directory), `keys` (key files and
//!   ECDSA), `manifest` (reading the manifest directory), `workflow_files` (CI workflows
//!   from disk), `hygiene` (the guard that
//!   cleans up ssh processes and temp dirs, however agentctl ends).
//! - `jobs/`: walk a plan or a request through the edges: `deploy` (plan, apply,
//!   rollback), `status`, `catalog` (release add), `contents` (layer scans), `readiness`
//!   (`prove ENV`), `verify`, `sign`, `init`.
//! - `cosign`: cosign's formats (simple signing, DSSE/in-toto), pure but built on
//!   sigstore's types, which is why it is not in the core crate.
//!
//! See docs/ARCHITECTURE.md.

pub mod cosign;
pub mod edges;
#[doc(hidden)]
pub mod fuzzing;
pub mod jobs;
pub mod keyless;

pub use controlplane_core::{
    adopt, approval, canonical, contents, diagnostic, drift, egress, history, ids, image, lock, names, observe, plan,
    platform, podman, receipt, records, release, remote, repair, rollout, secrets, soak, steps, tarball, untrusted,
    watch, workflow, VERSION,
};
pub use edges::{bounded, held, hygiene, keys, metrics, receipt_log, registry, ssh, sshsig, store, vm, workflow_files};
pub use jobs::contents as content_scan;
pub use jobs::egress as egress_proof;
pub use jobs::history as release_history;
pub use jobs::repair as host_repair;
pub use jobs::{adoption, catalog, deploy, init, migrate, readiness, sign, status, verify, verify_blob};

/// The manifest set: the core's format and validation, and `load` from a directory.
pub mod manifest {
    pub use crate::edges::manifest_files::*;
}
