//! `services/NAME.toml`: the image repository, templates, secrets by name, egress, the
//! layer scan's allowances; `[runtime]` is `runtime.rs`.

use super::*;

impl Validator<'_> {
    pub(super) fn services(&mut self) -> Option<BTreeMap<ServiceName, Service>> {
        let before = self.diags.len();
        let mut out = BTreeMap::new();
        for (path, name) in self.named_files("services", "service", ServiceName::new) {
            let Some((file, index)) = self.parse::<raw::ServiceFile>(&path) else { continue };
            let at = At { file: &path, index: &index };
            if let Some(svc) = self.service(&at, name.clone(), &file) {
                out.insert(name, svc);
            }
        }
        (self.diags.len() == before).then_some(out)
    }

    pub(super) fn service(&mut self, at: &At<'_>, name: ServiceName, f: &raw::ServiceFile) -> Option<Service> {
        let repository = match Repository::new(f.image.get_ref()) {
            Ok(r) => Some(r),
            Err(e @ ImageError::RepositoryWithVersion(_)) => {
                self.err(at, &f.image, "image", format!("{e}: image references here are not pinned; a tag is mutable"), Some("write the repository alone (`127.0.0.1:5000/demo/api`); a release pins the digest: `agentctl release add SERVICE REPO@sha256:...`"));
                None
            }
            Err(e) => {
                self.err(at, &f.image, "image", e.to_string(), None);
                None
            }
        };
        let mut templates: Vec<Template> = Vec::new();
        for (i, t) in f.template.iter().enumerate() {
            let t = t.get_ref();
            let source = normalize(Path::new(t.source.get_ref()));
            let text = self.files.get(&source).cloned();
            match &text {
                None => self.err(
                    at,
                    &t.source,
                    &format!("template[{i}].source"),
                    format!("template `{}` does not exist in the manifest directory", t.source.get_ref()),
                    Some("templates live under `templates/` in the manifest directory"),
                ),
                Some(text) => {
                    if let Err(e) = tera::Tera::default().add_raw_template("t", text) {
                        let cause = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default();
                        self.err(
                            at,
                            &t.source,
                            &format!("template[{i}].source"),
                            format!("template `{}` does not parse: {}", t.source.get_ref(), cause.replace('\n', " ")),
                            None,
                        );
                    }
                }
            }
            let target = t.target.get_ref();
            let target_ok = relative_path_ok(target)
                && !["release.json", "egress.nft", "egress.json", "runtime.json"].contains(&target.as_str());
            if !target_ok {
                self.err(at, &t.target, &format!("template[{i}].target"), format!("`{}` is not a safe path inside the release directory", target.escape_debug()), Some("use a relative path without `..` (and not `release.json`, which the control plane writes), e.g. `config/app.env`"));
            } else if templates.iter().any(|x| x.target == *target) {
                self.err(
                    at,
                    &t.target,
                    &format!("template[{i}].target"),
                    format!("two templates render to `{target}`"),
                    None,
                );
            }
            templates.push(Template { source, text: text.unwrap_or_default(), target: target.clone() });
        }
        let mut secrets = Vec::new();
        for (i, s) in f.secrets.iter().enumerate() {
            match SecretName::new(s.get_ref()) {
                Ok(n) => secrets.push(n),
                Err(e) => self.err(at, s, &format!("secrets[{i}]"), e.to_string(), None),
            }
        }
        let mut egress_rules = Vec::new();
        for (i, e) in f.egress.iter().enumerate() {
            match crate::egress::Rule::parse(e.get_ref()) {
                Ok(r) => egress_rules.push(r),
                Err(why) => self.err(
                    at,
                    e,
                    &format!("egress[{i}]"),
                    format!("`{}` is not an egress rule: {why}", e.get_ref().escape_debug()),
                    Some("write `host:port`, `ip:port` or `cidr:port` (TCP), e.g. `api.example.com:443`, `10.0.0.0/8:5432`"),
                ),
            }
        }
        let contents_allow = self.contents_allow(at, f);
        let runtime = self.runtime(at, f, &templates);
        let platform = match f.runtime.as_ref().and_then(|r| r.get_ref().platform.as_ref()) {
            None => crate::platform::Platform::default(),
            Some(v) => crate::platform::Platform::parse(v.get_ref()).unwrap_or_else(|e| {
                self.err(
                    at,
                    v,
                    "runtime.platform",
                    e.to_string(),
                    Some("e.g. `platform = \"linux/arm64\"`; the default is `linux/amd64`"),
                );
                crate::platform::Platform::default()
            }),
        };
        Some(Service {
            name,
            repository: repository?,
            runtime: runtime?,
            platform,
            templates,
            secrets,
            egress: f.egress.iter().map(|e| e.get_ref().clone()).collect(),
            egress_rules,
            egress_loopback: f.egress_loopback,
            contents_allow,
        })
    }

    /// `[[contents.allow]]`: absolute paths in the image (a trailing `/` for a directory),
    /// no `..`, each with a reason.
    pub(super) fn contents_allow(&mut self, at: &At<'_>, f: &raw::ServiceFile) -> Vec<crate::contents::Allowed> {
        let mut out = Vec::new();
        let Some(contents) = &f.contents else { return out };
        for (i, a) in contents.get_ref().allow.iter().enumerate() {
            let a = a.get_ref();
            let path = a.path.get_ref();
            let path_ok = path.starts_with('/')
                && path.len() > 1
                && !path.split('/').any(|c| c == ".." || c == ".")
                && !path.chars().any(char::is_control);
            if !path_ok {
                self.err(
                    at,
                    &a.path,
                    &format!("contents.allow[{i}].path"),
                    format!("`{}` is not an absolute path in the image", path.escape_debug()),
                    Some("write the file's path as the image has it, e.g. `/usr/share/doc/example/test-key.pem`, or a directory ending in `/`"),
                );
                continue;
            }
            let reason = a.reason.get_ref().trim();
            if reason.is_empty() {
                self.err(
                    at,
                    &a.reason,
                    &format!("contents.allow[{i}].reason"),
                    "an allowed path needs a reason".into(),
                    Some(
                        "say why the value is not a secret, e.g. `reason = \"a test key the upstream package ships\"`",
                    ),
                );
                continue;
            }
            out.push(crate::contents::Allowed { path: path.clone(), reason: reason.to_owned() });
        }
        out
    }

    pub(super) fn argv(&mut self, at: &At<'_>, v: &S<Vec<S<String>>>, field: &str) -> Option<Vec<String>> {
        if v.get_ref().is_empty() {
            self.err(at, v, field, "empty command".into(), Some("write the program and its arguments as a list, e.g. `[\"/usr/local/bin/agent-runtime\", \"activate\"]`"));
            return None;
        }
        let mut out = Vec::new();
        for (i, a) in v.get_ref().iter().enumerate() {
            let arg = a.get_ref();
            if arg.is_empty() || arg.contains('\0') || arg.contains('\n') || arg.len() > 1024 {
                self.err(
                    at,
                    a,
                    &format!("{field}[{i}]"),
                    "arguments must be non-empty single lines under 1024 bytes".into(),
                    None,
                );
                return None;
            }
            out.push(arg.clone());
        }
        Some(out)
    }
}
