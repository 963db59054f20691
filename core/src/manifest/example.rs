//! The commented example manifest set that `agentctl init` scaffolds; the same files
//! as the repository's `manifests/`, so the example is always one that validates.

/// `(path relative to the manifest directory, content)`.
pub const FILES: &[(&str, &str)] = &[
    ("controlplane.toml", include_str!("../../../manifests/controlplane.toml")),
    ("environments/staging.toml", include_str!("../../../manifests/environments/staging.toml")),
    ("environments/prod.toml", include_str!("../../../manifests/environments/prod.toml")),
    ("services/api.toml", include_str!("../../../manifests/services/api.toml")),
    ("templates/api.env.tera", include_str!("../../../manifests/templates/api.env.tera")),
    ("trust/release.pub", include_str!("../../../manifests/trust/release.pub")),
    ("trust/receipts.pub", include_str!("../../../manifests/trust/receipts.pub")),
    ("trust/prod.allowed_signers", include_str!("../../../manifests/trust/prod.allowed_signers")),
];
