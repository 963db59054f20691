//! `controlplane.toml`: the state URL, receipts and their key, registries, the trust policy
//! (keys and keyless identities), SSH settings; and the approvers' `allowed_signers`.

use super::*;

impl Validator<'_> {
    pub(super) fn control_plane(&mut self) -> Option<(Settings, Vec<RegistrySettings>, TrustPolicy, SshSettings)> {
        let path = Path::new(CONTROLPLANE_FILE);
        if !self.files.contains_key(path) {
            self.push(
                path,
                (0, 0),
                "",
                "missing: every manifest set has a `controlplane.toml`".into(),
                Some("run `agentctl init` to scaffold one, or point `--manifests` at the right directory".into()),
            );
            return None;
        }
        let (file, index) = self.parse::<raw::ControlPlaneFile>(path)?;
        let at = At { file: path, index: &index };
        let before = self.diags.len();

        let s = file.controlplane.get_ref();
        let state_password_env =
            self.env_var_name(&at, s.state_password_env.as_ref(), "controlplane.state_password_env");
        let state = self.state_url(&at, &s.state, state_password_env);
        let lock_lease_secs = match &s.lock_lease_secs {
            None => DEFAULT_LOCK_LEASE_SECS,
            Some(v) if (3..=3600).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.err(
                    &at,
                    v,
                    "controlplane.lock_lease_secs",
                    format!("{} is not between 3 and 3600", v.get_ref()),
                    Some("the holder renews its lease every third of it; the default is 60"),
                );
                DEFAULT_LOCK_LEASE_SECS
            }
        };
        let receipt_key = PathBuf::from(s.receipt_key.get_ref());
        if stays_inside(&receipt_key) {
            self.err(
                &at,
                &s.receipt_key,
                "controlplane.receipt_key",
                "the receipt-signing private key would sit inside the manifest directory, which is committed".into(),
                Some("keep it outside, e.g. `../state/receipt.key`"),
            );
        }
        let receipt_key_password_env =
            self.env_var_name(&at, s.receipt_key_password_env.as_ref(), "controlplane.receipt_key_password_env");
        let operator_env = self
            .env_var_name(&at, s.operator_env.as_ref(), "controlplane.operator_env")
            .unwrap_or_else(|| "USER".into());
        let receipt_public_key = PathBuf::from(s.receipt_public_key.get_ref());
        self.public_key(&at, &s.receipt_public_key, "controlplane.receipt_public_key");
        let plan_max_age_secs = match &s.plan_max_age_secs {
            None => DEFAULT_PLAN_MAX_AGE_SECS,
            Some(v) if (1..=7 * 24 * 3600).contains(v.get_ref()) => *v.get_ref(),
            Some(v) => {
                self.err(
                    &at,
                    v,
                    "controlplane.plan_max_age_secs",
                    format!("{} is not between 1 and 604800 (one week)", v.get_ref()),
                    Some("plans are meant to be applied soon after review; the default is 3600"),
                );
                DEFAULT_PLAN_MAX_AGE_SECS
            }
        };
        let settings = Settings {
            plan_max_age_secs,
            lock_lease_secs,
            state: state.unwrap_or(StateUrl::Sqlite(PathBuf::new())),
            receipts_dir: PathBuf::from(s.receipts.get_ref()),
            receipt_key,
            receipt_key_password_env,
            receipt_public_key,
            operator_env,
        };

        let mut registries: Vec<RegistrySettings> = Vec::new();
        for (i, r) in file.registry.iter().enumerate() {
            let r = r.get_ref();
            let field = format!("registry[{i}]");
            let host = r.host.get_ref();
            if !valid_registry_host(host) {
                self.err(
                    &at,
                    &r.host,
                    &format!("{field}.host"),
                    format!("`{host}` is not a registry host: expected `host[:port]`"),
                    Some("write e.g. `127.0.0.1:5000` or `ghcr.io`"),
                );
            } else if registries.iter().any(|x| &x.host == host) {
                self.err(
                    &at,
                    &r.host,
                    &format!("{field}.host"),
                    format!("registry `{host}` is listed twice"),
                    Some("merge the two `[[registry]]` entries"),
                );
            }
            registries.push(RegistrySettings {
                host: host.clone(),
                insecure: r.insecure,
                username_env: self.env_var_name(&at, r.username_env.as_ref(), &format!("{field}.username_env")),
                password_env: self.env_var_name(&at, r.password_env.as_ref(), &format!("{field}.password_env")),
            });
        }

        let t = file.trust.get_ref();
        if t.keys.get_ref().is_empty() && t.identity.is_empty() {
            self.err(
                &at,
                &t.keys,
                "trust.keys",
                "no trusted keys and no keyless identities: nothing could ever be promoted".into(),
                Some("list the cosign public key(s) CI signs with, e.g. `keys = [\"trust/release.pub\"]`, or a `trusted_root` and `[[trust.identity]]` entries"),
            );
        }
        let mut keys = Vec::new();
        for (i, k) in t.keys.get_ref().iter().enumerate() {
            if let Some(pem) = self.public_key(&at, k, &format!("trust.keys[{i}]")) {
                keys.push(TrustedKey { path: PathBuf::from(k.get_ref()), pem });
            }
        }
        let mut builders = Vec::new();
        for (i, b) in t.builders.iter().enumerate() {
            if b.get_ref().trim().is_empty() {
                self.err(
                    &at,
                    b,
                    &format!("trust.builders[{i}]"),
                    "empty builder id".into(),
                    Some("write the builder id provenance names, e.g. `https://github.com/actions/runner`"),
                );
            }
            builders.push(b.get_ref().clone());
        }

        let keyless = self.keyless(&at, t);

        let ssh = file.ssh.get_ref();
        let identity = PathBuf::from(ssh.identity.get_ref());
        if stays_inside(&identity) {
            self.err(
                &at,
                &ssh.identity,
                "ssh.identity",
                "the SSH private key would sit inside the manifest directory, which is committed".into(),
                Some("keep it outside, e.g. `../state/ssh/id_ed25519`"),
            );
        }
        let concurrency = self.ranged(&at, ssh.concurrency.as_ref(), "ssh.concurrency", 1, 256, 16);
        let connect_timeout_secs =
            self.ranged(&at, ssh.connect_timeout_secs.as_ref(), "ssh.connect_timeout_secs", 1, 120, 10);
        let key_exchange = ssh.key_exchange.as_ref().map(|list| {
            for (i, a) in list.get_ref().iter().enumerate() {
                let ok = !a.get_ref().is_empty()
                    && a.get_ref().bytes().all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b));
                if !ok {
                    self.err(
                        &at,
                        a,
                        &format!("ssh.key_exchange[{i}]"),
                        format!("`{}` is not an SSH key-exchange algorithm name", a.get_ref().escape_debug()),
                        Some("e.g. `sntrup761x25519-sha512@openssh.com` or `curve25519-sha256` (see `ssh -Q kex`)"),
                    );
                }
            }
            list.get_ref().iter().map(|a| a.get_ref().clone()).collect::<Vec<_>>()
        });

        (self.diags.len() == before).then_some({
            (
                settings,
                registries,
                TrustPolicy { keys, builders, keyless },
                SshSettings {
                    identity,
                    concurrency: concurrency as usize,
                    connect_timeout_secs: connect_timeout_secs as u64,
                    key_exchange,
                },
            )
        })
    }

    pub(super) fn state_url(&mut self, at: &At<'_>, v: &S<String>, password_env: Option<String>) -> Option<StateUrl> {
        let url = v.get_ref();
        if let Some(path) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if !path.is_empty() {
                return Some(StateUrl::Sqlite(PathBuf::from(path)));
            }
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let problem = match url::Url::parse(url) {
                Err(e) => Some((
                    format!("`{url}` is not a URL: {e}"),
                    "e.g. `postgres://controlplane@db.internal:5432/controlplane?sslmode=verify-full`",
                )),
                Ok(u) if u.password().is_some() => Some((
                    "the state URL carries a password, and manifests are committed".to_owned(),
                    "remove it from the URL and name the variable that holds it in `state_password_env`",
                )),
                Ok(u) if u.host_str().is_none_or(str::is_empty) => Some((
                    "the state URL names no host".to_owned(),
                    "e.g. `postgres://controlplane@127.0.0.1:5432/controlplane`",
                )),
                Ok(u) if u.path().trim_start_matches('/').is_empty() => Some((
                    "the state URL names no database".to_owned(),
                    "add the database after the host, e.g. `…:5432/controlplane`",
                )),
                Ok(_) => None,
            };
            return match problem {
                Some((message, hint)) => {
                    self.err(at, v, "controlplane.state", message, Some(hint));
                    None
                }
                None => Some(StateUrl::Postgres { url: url.clone(), password_env }),
            };
        }
        self.err(
            at,
            v,
            "controlplane.state",
            format!("`{url}` is not a state URL"),
            Some("write `sqlite:PATH` (relative to the manifest directory), e.g. `sqlite:../state/controlplane.db`, or `postgres://USER@HOST:PORT/DATABASE`"),
        );
        None
    }

    pub(super) fn env_var_name(&mut self, at: &At<'_>, v: Option<&S<String>>, field: &str) -> Option<String> {
        let v = v?;
        match SecretName::new(v.get_ref()) {
            Ok(_) => Some(v.get_ref().clone()),
            Err(_) => {
                self.err(
                    at,
                    v,
                    field,
                    format!("`{}` is not an environment variable name", v.get_ref()),
                    Some("name the variable that holds the value, e.g. `REGISTRY_PASSWORD`; never the value itself"),
                );
                None
            }
        }
    }

    /// A PEM public key file inside the manifest directory.
    /// The keyless part of the trust policy: a trusted root and at least one identity,
    /// or neither.
    pub(super) fn keyless(&mut self, at: &At<'_>, t: &raw::Trust) -> Option<KeylessPolicy> {
        let mut identities = Vec::new();
        for (i, id) in t.identity.iter().enumerate() {
            let field = |f: &str| format!("trust.identity[{i}].{f}");
            let raw = id.get_ref();
            let issuer = raw.issuer.get_ref().trim().to_owned();
            if issuer.is_empty() {
                self.err(
                    at,
                    &raw.issuer,
                    &field("issuer"),
                    "empty OIDC issuer".into(),
                    Some("e.g. `https://token.actions.githubusercontent.com`"),
                );
            }
            let subject = match (&raw.subject, &raw.subject_regexp) {
                (Some(s), None) if !s.get_ref().is_empty() => Some(SubjectMatch::Exact(s.get_ref().clone())),
                (None, Some(r)) => match SubjectMatch::anchored(r.get_ref()) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        let first = e.to_string().lines().last().unwrap_or("").trim().to_owned();
                        self.err(at, r, &field("subject_regexp"), format!("not a regular expression: {first}"), Some("e.g. `https://github.com/acme/api/\\.github/workflows/.*`; it must match the whole subject"));
                        None
                    }
                },
                _ => {
                    self.err(at, id, &format!("trust.identity[{i}]"), "an identity needs exactly one of `subject` and `subject_regexp`".into(), Some("e.g. `subject = \"https://github.com/acme/api/.github/workflows/release.yml@refs/heads/main\"`"));
                    None
                }
            };
            if let Some(subject) = subject {
                identities.push(AllowedIdentity { issuer, subject });
            }
        }
        let root = match &t.trusted_root {
            None if identities.is_empty() => return None,
            None => {
                self.err(at, &t.keys, "trust.trusted_root", "keyless identities are listed but no `trusted_root`".into(), Some("name the Sigstore trusted root, e.g. `trusted_root = \"trust/trusted_root.json\"` (`cosign trusted-root create` or `gh attestation trusted-root` writes one)"));
                return None;
            }
            Some(r) => r,
        };
        if identities.is_empty() {
            self.err(
                at,
                root,
                "trust.identity",
                "a trusted root but no `[[trust.identity]]`: no keyless signer would be allowed".into(),
                Some("add `[[trust.identity]]` with `issuer` and `subject` (or `subject_regexp`)"),
            );
        }
        let rel = normalize(Path::new(root.get_ref()));
        let json = match self.files.get(&rel) {
            Some(text) => text.clone(),
            None => {
                self.err(
                    at,
                    root,
                    "trust.trusted_root",
                    format!("`{}` does not exist in the manifest directory", rel.display()),
                    Some("keep it in the manifests, e.g. `trust/trusted_root.json`"),
                );
                return None;
            }
        };
        let media = serde_json::from_str::<serde_json::Value>(&json)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_owned));
        if !media.as_deref().is_some_and(|m| m.starts_with("application/vnd.dev.sigstore.trustedroot")) {
            self.err(
                at,
                root,
                "trust.trusted_root",
                format!("`{}` is not a Sigstore trusted root (`trusted_root.json`)", rel.display()),
                Some(
                    "expected JSON with `\"mediaType\": \"application/vnd.dev.sigstore.trustedroot+json;version=0.1\"`",
                ),
            );
            return None;
        }
        Some(KeylessPolicy { trusted_root: rel, trusted_root_json: json, identities })
    }

    pub(super) fn public_key(&mut self, at: &At<'_>, v: &S<String>, field: &str) -> Option<String> {
        let rel = Path::new(v.get_ref());
        match self.files.get(&normalize(rel)) {
            Some(pem) if pem.contains("-----BEGIN PUBLIC KEY-----") => Some(pem.clone()),
            Some(_) => {
                self.err(at, v, field, format!("`{}` is not a PEM public key", rel.display()), Some("expected a `-----BEGIN PUBLIC KEY-----` file as `cosign generate-key-pair` or `agentctl keys generate` writes"));
                None
            }
            None => {
                self.err(
                    at,
                    v,
                    field,
                    format!("`{}` does not exist in the manifest directory", rel.display()),
                    Some("public keys live inside the manifest directory, e.g. `trust/release.pub`"),
                );
                None
            }
        }
    }

    /// Reads an `allowed_signers` file of approvers; its problems are reported at its lines.
    pub(super) fn approvers(&mut self, at: &At<'_>, v: &S<String>) -> Vec<crate::approval::AllowedSigner> {
        let rel = normalize(Path::new(v.get_ref()));
        let Some(text) = self.files.get(&rel) else {
            self.err(
                at,
                v,
                "approvers",
                format!("`{}` does not exist in the manifest directory", rel.display()),
                Some("keep the approvers' `allowed_signers` file in the manifests, e.g. `trust/prod.allowed_signers`"),
            );
            return Vec::new();
        };
        match crate::approval::parse_allowed_signers(text) {
            Ok(list) => list,
            Err((line, message)) => {
                self.push(
                    &rel,
                    (line, 1),
                    "",
                    format!("not an allowed_signers line: {message}"),
                    Some("write `NAME ssh-ed25519 AAAA… [comment]`, as `ssh-keygen -Y verify` reads it".into()),
                );
                Vec::new()
            }
        }
    }
}
