use super::*;

/// The repository's example manifest set, in memory.
pub(crate) fn example() -> BTreeMap<PathBuf, String> {
    super::super::example::FILES.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_owned())).collect()
}

/// Replaces `from` by `to` in `file` of the example and returns the diagnostics.
fn diags(file: &str, from: &str, to: &str) -> Vec<Diagnostic> {
    let mut files = example();
    let text = files.get_mut(Path::new(file)).unwrap_or_else(|| panic!("no {file}"));
    assert!(text.contains(from), "{file} has no {from:?}");
    *text = text.replacen(from, to, 1);
    validate(Path::new("m"), &files).err().unwrap_or_default()
}

/// Expects exactly one diagnostic at `line` naming `field` with `message` in it.
fn check(file: &str, from: &str, to: &str, line: usize, field: &str, message: &str) {
    let d = diags(file, from, to);
    assert_eq!(d.len(), 1, "{file}: {from:?} -> {to:?}: {d:#?}");
    let d = &d[0];
    assert_eq!(d.file, Path::new("m").join(file));
    assert_eq!((d.line, d.field.as_str()), (line, field), "{d}");
    assert!(d.message.contains(message), "{d}");
}

#[test]
fn example_is_valid() {
    let set = validate(Path::new("m"), &example()).unwrap_or_else(|d| panic!("{d:#?}"));
    let names: Vec<_> = set.environments.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(names, ["staging", "prod"]);
    assert_eq!(set.environments.iter().map(|e| e.hosts.len()).sum::<usize>(), 3);
    let api = &set.services[&ServiceName::new("api").unwrap()];
    assert_eq!(api.repository.as_str(), "127.0.0.1:5000/demo/api");
    assert_eq!(api.templates[0].target, "config/api.env");
    assert_eq!(set.environments[1].rollout.batch, BatchSize::Percent(50));
}

#[test]
fn field_errors_name_line_and_field() {
    let cp = "controlplane.toml";
    let prod = "environments/prod.toml";
    let svc = "services/api.toml";
    check(cp, "state = \"sqlite:", "state = \"mysql:", 6, "controlplane.state", "is not a state URL");
    check(
        cp,
        "receipt_key = \"../state/receipt.key\"",
        "receipt_key = \"receipt.key\"",
        11,
        "controlplane.receipt_key",
        "inside the manifest directory",
    );
    check(cp, "keys = [\"trust/release.pub\"]", "keys = [\"trust/nope.pub\"]", 28, "trust.keys[0]", "does not exist");
    check(cp, "keys = [\"trust/release.pub\"]", "keys = []", 28, "trust.keys", "no trusted keys");
    check(cp, "concurrency = 16", "concurrency = 0", 36, "ssh.concurrency", "out of range");
    check(
        cp,
        "concurrency = 16\n",
        "concurrency = 16\nkey_exchange = [\"curve25519-sha256; x\"]\n",
        37,
        "ssh.key_exchange[0]",
        "key-exchange",
    );
    check(
        cp,
        "identity = \"../state/ssh/id_ed25519\"",
        "identity = \"id\"",
        35,
        "ssh.identity",
        "inside the manifest directory",
    );
    check(prod, "after = \"staging\"", "after = \"stage\"", 2, "after", "does not exist");
    check(prod, "batch = \"50%\"", "batch = \"150%\"", 12, "rollout.batch", "percentage");
    check(prod, "name = \"prod-2\"", "name = \"prod-1\"", 24, "host[1].name", "duplicate host");
    check(prod, "port = 2203", "port = 2202", 25, "host[1].address", "is already host `prod-1`");
    check("environments/staging.toml", "port = 2201", "port = 2202", 12, "host[0].address", "is already host `prod-1`");
    check(prod, "name = \"prod-2\"", "name = \"prod;2\"", 24, "host[1].name", "not a valid name");
    check(prod, "user = \"deploy\"", "user = \"-oProxyCommand=x\"", 19, "host[0].user", "not a valid login");
    check(prod, "root = \"/srv/agents\"", "root = \"/srv/../etc\"", 21, "host[0].root", "safe absolute path");
    check(
        prod,
        "host_key = \"ssh-ed25519 ",
        "host_key = \"ssh-rsa ",
        20,
        "host[0].host_key",
        "pinned SSH host public key",
    );
    check(
        svc,
        "image = \"127.0.0.1:5000/demo/api\"",
        "image = \"127.0.0.1:5000/demo/api:latest\"",
        5,
        "image",
        "not pinned",
    );
    check(svc, "secrets = [\"API_TOKEN\"]", "secrets = [\"api token\"]", 8, "secrets[0]", "secret name");
    check(svc, "egress = [\"api.example.com:443\"]", "egress = [\"api.example.com\"]", 10, "egress[0]", "egress rule");
    let d = diags(svc, "target = \"config/api.env\"", "target = \"../../etc/passwd\"");
    assert!(
        d.iter().any(|d| (d.line, d.field.as_str()) == (15, "template[0].target") && d.message.contains("safe path")),
        "{d:#?}"
    );
    check(
        svc,
        "source = \"templates/api.env.tera\"",
        "source = \"templates/none.tera\"",
        14,
        "template[0].source",
        "does not exist",
    );
}

#[test]
fn parse_errors_name_line_and_field() {
    let svc = "services/api.toml";
    check(svc, "egress = [", "egres = [", 10, "egres", "unknown field `egres`");
    check(svc, "retain = 3", "retian = 3", 33, "retian", "unknown field `retian`");
    check(svc, "memory = \"256m\"", "memory = 256", 27, "memory", "invalid type");
    check(svc, "image = \"127.0.0.1:5000/demo/api\"", "image = \"127.0.0.1:5000/demo/api", 5, "image", "");
    check("environments/prod.toml", "port = 2202", "port = \"2202\"", 18, "port", "invalid type");
    check(
        "environments/staging.toml",
        "require_sbom = false",
        "require_sbom = false\nrequire_sbom = true",
        5,
        "require_sbom",
        "duplicate key",
    );
}

/// The Podman runtime's fields: each wrong value named at its line, and the sandbox
/// relaxations visible on the model.
#[test]
fn podman_runtime_fields_name_line_and_field() {
    let svc = "services/api.toml";
    check(svc, "kind = \"podman\"", "kind = \"docker\"", 22, "runtime.kind", "unknown runtime");
    check(svc, "memory = \"256m\"", "memory = \"lots\"", 27, "runtime.memory", "not a memory size");
    check(svc, "cpus = 0.5", "cpus = -1.0", 28, "runtime.cpus", "not a number of CPUs");
    check(svc, "overlap = false", "overlap = true", 32, "runtime.overlap", "port health check needs `overlap = false`");
    check(svc, "http = \"/healthz\"", "http = \"healthz\"", 39, "runtime.health.http", "not a request path");
    check(svc, "http = \"/healthz\"", "tcp = true\nhttp = \"/healthz\"", 38, "runtime.health", "exactly one");
    check(
        svc,
        "env_file = \"config/api.env\"",
        "env_file = \"config/other.env\"",
        25,
        "runtime.env_file",
        "no template renders",
    );
    check(svc, "mount = \"/etc/agent\"", "mount = \"etc\"", 26, "runtime.mount", "not an absolute path");
    check(
        svc,
        "# auth_file = \"/etc/agentctl/auth.json\"",
        "auth_file = \"x:y\"",
        24,
        "runtime.auth_file",
        "not an absolute path",
    );
    check(
        svc,
        "# capabilities = [\"NET_BIND_SERVICE\"]",
        "capabilities = [\"SYS_ADMIN\"]",
        36,
        "runtime.capabilities[0]",
        "not a capability",
    );
    check(svc, "secrets = [", "activate = [\"x\"]\nsecrets = [", 8, "activate", "command-runtime field");
    let relaxed = {
        let mut files = example();
        let text = files.get_mut(Path::new(svc)).unwrap();
        *text = text
            .replace("# writable_root = true", "writable_root = true")
            .replace("# capabilities = [\"NET_BIND_SERVICE\"]", "capabilities = [\"cap_net_bind_service\"]");
        validate(Path::new("m"), &files).unwrap_or_else(|d| panic!("{d:#?}"))
    };
    let p = relaxed.services.values().next().unwrap().podman().unwrap().clone();
    assert_eq!(p.relaxations(), ["writable root filesystem", "capabilities NET_BIND_SERVICE"]);
    let strict = validate(Path::new("m"), &example()).unwrap();
    let p = strict.services.values().next().unwrap().podman().unwrap().clone();
    assert!(p.relaxations().is_empty());
    assert_eq!((p.memory.as_str(), p.cpus.as_str(), p.pids, p.retain, p.overlap), ("256m", "0.5", 128, 3, false));
}

#[test]
fn secret_values_are_refused() {
    let svc = "services/api.toml";
    let d =
        diags(svc, "secrets = [\"API_TOKEN\"]", "secrets = [\"API_TOKEN\", \"ghp_abcdefghijklmnopqrstuvwxyz0123\"]");
    assert!(d.iter().any(|d| d.field == "secrets[1]" && d.message.contains("`ghp_`") && d.line == 8), "{d:#?}");
    let d = diags("templates/api.env.tera", "SERVICE=", "TOKEN=sk-live-abcdefghijklmnopqrstuv\nSERVICE=");
    assert!(d.iter().any(|d| d.line == 2 && d.message.contains("secret")), "{d:#?}");
    let d = diags("controlplane.toml", "operator_env = \"USER\"", "operator_env = \"USER\"\n# x\n");
    assert!(d.is_empty());
}

#[test]
fn every_problem_of_a_run_is_reported() {
    let mut files = example();
    for (file, from, to) in [
        ("environments/prod.toml", "batch = \"50%\"", "batch = 0"),
        ("environments/prod.toml", "user = \"deploy\"", "user = \"x y\""),
        ("services/api.toml", "egress = [\"api.example.com:443\"]", "egress = [\"nope\"]"),
    ] {
        let t = files.get_mut(Path::new(file)).unwrap();
        *t = t.replacen(from, to, 1);
    }
    let d = validate(Path::new("m"), &files).unwrap_err();
    assert_eq!(d.len(), 3, "{d:#?}");
}

#[test]
fn missing_controlplane_file_and_cycles() {
    let mut files = example();
    files.remove(Path::new("controlplane.toml"));
    let d = validate(Path::new("m"), &files).unwrap_err();
    assert!(d[0].message.contains("missing"), "{d:#?}");

    // Regression: a cycle was reported at `environments` with no file or line.
    let d = diags("environments/staging.toml", "approvals = 0", "after = \"prod\"\napprovals = 0");
    assert_eq!(d.len(), 2, "one per environment on the cycle: {d:#?}");
    for (file, cycle) in [("staging", "staging -> prod -> staging"), ("prod", "prod -> staging -> prod")] {
        let x = d.iter().find(|x| x.file == Path::new("m/environments").join(format!("{file}.toml"))).unwrap();
        assert!(x.line > 0 && x.field == "after" && x.message.contains(cycle), "{x}");
    }
}

/// Regression: an environment naming itself in `after` got no file:line, and the error
/// named every environment behind it as a cycle.
#[test]
fn an_environment_after_itself_is_named_at_its_line() {
    check("environments/prod.toml", "after = \"staging\"", "after = \"prod\"", 2, "after", "`prod` comes after itself");
}

#[test]
fn batch_sizes() {
    assert_eq!(BatchSize::Percent(34).per_batch(3), 2);
    assert_eq!(BatchSize::Percent(1).per_batch(3), 1);
    assert_eq!(BatchSize::Percent(100).per_batch(50), 50);
    assert_eq!(BatchSize::Count(2).per_batch(5), 2);
    assert_eq!(BatchSize::Count(0).per_batch(5), 1);
}

/// Regression: `{{ get_env(name="X") }}` (tera's built-in) rendered an operator's secret
/// into host release files, `plan.json` and `--json` output, and `check` passed.
#[test]
fn templates_cannot_read_the_environment_the_clock_or_undefined_variables() {
    let cases = [
        ("EGRESS_ALLOW=", "TOKEN={{ get_env(name=\"HOME\") }}\nEGRESS_ALLOW=", 8, "`get_env()` is not available"),
        ("EGRESS_ALLOW=", "AT={{ now() }}\nEGRESS_ALLOW=", 8, "`now()` is not available"),
        ("EGRESS_ALLOW=", "R={{ get_random(end=9) }}\nEGRESS_ALLOW=", 8, "`get_random()` is not available"),
        // Regression: an undefined variable passed `check` and failed at apply with no location.
        ("ENVIRONMENT={{ environment.name }}", "ENVIRONMENT={{ environment.nmae }}", 5, "environment.nmae"),
        ("SOURCE_COMMIT=", "{% include \"other\" %}\nSOURCE_COMMIT=", 4, "other"),
    ];
    for (from, to, line, message) in cases {
        let d = diags("templates/api.env.tera", from, to);
        assert_eq!(d.len(), 1, "{to}: {d:#?}");
        assert_eq!(d[0].file, Path::new("m/templates/api.env.tera"), "{to}");
        assert_eq!(d[0].line, line, "{to}: {}", d[0]);
        assert!(d[0].message.contains(message), "{to}: {}", d[0]);
    }
}

/// A template that assembles a token-like value (no literal the text scan could see) is
/// refused before anything is planned.
#[test]
fn a_template_rendering_a_secret_value_is_refused() {
    let d = diags(
        "templates/api.env.tera",
        "EGRESS_ALLOW=",
        "KEY={{ \"ghp_\" ~ \"0123456789abcdef\" ~ \"ABCDEF0123\" }}\nEGRESS_ALLOW=",
    );
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].message.contains("renders a token with the well-known prefix `ghp_`"), "{}", d[0]);
    assert_eq!(d[0].line, 8, "the rendered line");
}

#[test]
fn keyless_trust_is_validated_with_file_line_and_field() {
    let cp = "controlplane.toml";
    let builders = "builders = [\"https://github.com/actions/runner\"]";
    let with = |identity: &str, root: Option<&str>| {
        let root = root.map(|r| format!("\ntrusted_root = \"{r}\"")).unwrap_or_default();
        diags(cp, builders, &format!("{builders}{root}\n[[trust.identity]]\n{identity}"))
    };
    let has = |d: &[Diagnostic], line: usize, field: &str, needle: &str| {
        assert!(
            d.iter().any(|d| d.line == line && d.field == field && d.message.contains(needle)),
            "expected {field} at line {line} with `{needle}` in {d:#?}"
        );
    };
    let issuer = "issuer = \"https://token.actions.githubusercontent.com\"";
    // A regular expression that does not compile, named at its own line.
    let d = with(&format!("{issuer}\nsubject_regexp = \"(unclosed\""), Some("trust/release.pub"));
    has(&d, 34, "trust.identity[0].subject_regexp", "not a regular expression");
    // A file that is not a trusted root.
    has(&d, 31, "trust.trusted_root", "is not a Sigstore trusted root");
    // Identities without a trusted root.
    let d = with(&format!("{issuer}\nsubject = \"https://x\""), None);
    assert_eq!(d.len(), 1, "{d:#?}");
    has(&d, 28, "trust.trusted_root", "no `trusted_root`");
    // Both subject and subject_regexp; a trusted root that does not exist.
    let d = with(&format!("{issuer}\nsubject = \"a\"\nsubject_regexp = \"b\""), Some("trust/missing.json"));
    assert!(d.iter().any(|d| d.field == "trust.identity[0]" && d.message.contains("exactly one")), "{d:#?}");
    has(&d, 31, "trust.trusted_root", "does not exist");
}

/// Every table of every manifest file refuses a field it does not know, naming it: a
/// misspelt safety setting is an error, never a silent default (14 tables).
#[test]
fn every_table_refuses_unknown_fields() {
    let cp = "controlplane.toml";
    let env = "environments/prod.toml";
    let svc = "services/api.toml";
    let bogus = "bogus_field = 1\n";
    // (file, text to find, text to put in its place); a table the example lacks is added.
    let cases: Vec<(&str, String, String)> = vec![
        (cp, "[controlplane]\n".into(), format!("{bogus}[controlplane]\n")),
        (cp, "[controlplane]\n".into(), format!("[controlplane]\n{bogus}")),
        (cp, "[[registry]]\n".into(), format!("[[registry]]\n{bogus}")),
        (cp, "[trust]\n".into(), format!("[trust]\n{bogus}")),
        (
            cp,
            "[ssh]\n".into(),
            format!("[[trust.identity]]\nissuer = \"https://x\"\nsubject = \"s\"\n{bogus}\n[ssh]\n"),
        ),
        (cp, "[ssh]\n".into(), format!("[ssh]\n{bogus}")),
        (env, "[rollout]\n".into(), format!("{bogus}[rollout]\n")),
        (env, "[rollout]\n".into(), format!("[egress]\n{bogus}\n[rollout]\n")),
        (env, "[rollout]\n".into(), format!("[rollout]\n{bogus}")),
        (env, "[[host]]\n".into(), format!("[[host]]\n{bogus}")),
        (svc, "[[template]]\n".into(), format!("{bogus}[[template]]\n")),
        (svc, "[[template]]\n".into(), format!("[[template]]\n{bogus}")),
        (svc, "[runtime]\n".into(), format!("[runtime]\n{bogus}")),
        (svc, "[runtime.health]\n".into(), format!("[runtime.health]\n{bogus}")),
        (svc, "[runtime]\n".into(), format!("[contents]\n{bogus}\n[runtime]\n")),
        (
            svc,
            "[runtime]\n".into(),
            format!("[[contents.allow]]\npath = \"/etc/x\"\nreason = \"r\"\n{bogus}\n[runtime]\n"),
        ),
    ];
    assert_eq!(cases.len(), 16);
    for (file, from, to) in cases {
        let d = diags(file, &from, &to);
        assert!(
            d.iter().any(|d| d.message.contains("unknown field `bogus_field`") && d.field.ends_with("bogus_field")),
            "{file}: {to:?} was not refused by name: {d:#?}"
        );
    }
}

/// `[[contents.allow]]`: an absolute path in the image and a reason, or a diagnostic
/// naming the entry's field.
#[test]
fn contents_allow_needs_an_absolute_path_and_a_reason() {
    let svc = "services/api.toml";
    let entry = |path: &str, reason: &str| {
        format!("[[contents.allow]]\npath = \"{path}\"\nreason = \"{reason}\"\n\n[runtime]\n")
    };
    let d = diags(svc, "[runtime]\n", &entry("etc/x", "why"));
    assert!(
        d.iter().any(|d| d.field == "contents.allow[0].path" && d.message.contains("not an absolute path")),
        "{d:#?}"
    );
    let d = diags(svc, "[runtime]\n", &entry("/etc/../x", "why"));
    assert!(d.iter().any(|d| d.field == "contents.allow[0].path"), "{d:#?}");
    let d = diags(svc, "[runtime]\n", &entry("/etc/x", " "));
    assert!(d.iter().any(|d| d.field == "contents.allow[0].reason" && d.message.contains("needs a reason")), "{d:#?}");
    let mut files = example();
    let text = files.get_mut(Path::new(svc)).unwrap();
    *text = text.replacen("[runtime]\n", &entry("/usr/share/doc/", "upstream docs"), 1);
    let set = validate(Path::new("m"), &files).unwrap_or_else(|d| panic!("{d:#?}"));
    let api = set.services.values().next().unwrap();
    assert_eq!(api.contents_allow[0].path, "/usr/share/doc/");
    assert_eq!(api.contents_allow[0].reason, "upstream docs");
}
