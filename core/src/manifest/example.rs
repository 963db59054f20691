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

/// Where the example service's `[runtime]` section starts.
pub const RUNTIME_MARKER: &str = "# ---- runtime:";

/// The example service file with the command runtime instead of Podman (the lab's
/// `agent-runtime` shim, or a runtime of the host's own): the `[runtime]` section
/// replaced by the `activate`/`health`/`probe` commands.
pub fn with_command_runtime(service_toml: &str) -> String {
    let head = service_toml.split(RUNTIME_MARKER).next().unwrap_or(service_toml);
    head.replacen(
        "\nsecrets = ",
        "\n# The command runtime: called as `activate... <service> <release-dir>`, `health... <service>`,\n\
         # `probe... <service>` (prints the running digest).\n\
         activate = [\"agent-runtime\", \"activate\"]\nhealth = [\"agent-runtime\", \"health\"]\n\
         probe = [\"agent-runtime\", \"running\"]\n\nsecrets = ",
        1,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn both_runtimes_of_the_example_validate() {
        let files = |api: String| -> std::collections::BTreeMap<std::path::PathBuf, String> {
            super::FILES
                .iter()
                .map(|(p, t)| {
                    (std::path::PathBuf::from(p), if *p == "services/api.toml" { api.clone() } else { (*t).to_owned() })
                })
                .collect()
        };
        let api = super::FILES.iter().find(|(p, _)| *p == "services/api.toml").unwrap().1;
        let podman = crate::manifest::validate(std::path::Path::new("m"), &files(api.to_owned())).unwrap();
        assert_eq!(podman.services.values().next().unwrap().runtime.kind(), "podman");
        let command = crate::manifest::validate(std::path::Path::new("m"), &files(super::with_command_runtime(api)))
            .unwrap_or_else(|d| panic!("{d:#?}"));
        assert_eq!(command.services.values().next().unwrap().runtime.kind(), "command");
    }
}
