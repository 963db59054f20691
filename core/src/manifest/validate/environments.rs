//! `environments/NAME.toml`: the gate (`after`, approvals, rehearsal, attestations), the
//! hosts with their pinned keys, egress policy; `[rollout]` is `rollout.rs`.

use super::*;

impl Validator<'_> {
    /// The `.toml` files of `folder` with the name each gives its `what` (an environment, a
    /// service): a file whose name is not a valid one is reported, and left out.
    pub(super) fn named_files<N, E: std::fmt::Display>(
        &mut self,
        folder: &str,
        what: &str,
        name: impl Fn(&str) -> Result<N, E>,
    ) -> Vec<(PathBuf, N)> {
        let mut out = Vec::new();
        let paths: Vec<PathBuf> = self.files.keys().cloned().collect();
        for path in paths {
            let in_folder = path.parent() == Some(Path::new(folder)) && path.extension().is_some_and(|e| e == "toml");
            if !in_folder {
                continue;
            }
            let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            match name(&stem) {
                Ok(n) => out.push((path, n)),
                Err(e) => self.push(
                    &path,
                    (0, 0),
                    "",
                    format!("file name: {e}"),
                    Some(format!("rename the file; the {what} is called after it")),
                ),
            }
        }
        out
    }

    pub(super) fn environments(&mut self) -> Option<Vec<Environment>> {
        let before = self.diags.len();
        let mut envs = Vec::new();
        let mut afters = Vec::new();
        let mut seen_hosts: BTreeMap<(String, u16), (EnvName, HostName)> = BTreeMap::new();
        for (path, name) in self.named_files("environments", "environment", EnvName::new) {
            let Some((file, index)) = self.parse::<raw::EnvironmentFile>(&path) else { continue };
            let at = At { file: &path, index: &index };
            let after = file.after.as_ref().and_then(|a| match EnvName::new(a.get_ref()) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.err(&at, a, "after", e.to_string(), None);
                    None
                }
            });
            if let Some(a) = &file.after {
                afters.push((path.clone(), index.locate(a.span().start), name.clone(), a.get_ref().clone()));
            }
            let approvals = self.ranged(&at, file.approvals.as_ref(), "approvals", 0, 10, 0) as u32;
            let approval_valid_secs = self.ranged(
                &at,
                file.approval_valid_secs.as_ref(),
                "approval_valid_secs",
                60,
                7 * 24 * 3600,
                24 * 3600,
            ) as u64;
            let approvers = match &file.approvers {
                Some(v) => self.approvers(&at, v),
                None => Vec::new(),
            };
            let principals: std::collections::BTreeSet<&String> =
                approvers.iter().flat_map(|a| &a.principals).collect();
            if (principals.len() as u32) < approvals {
                let message = format!(
                    "{approvals} approval(s) required, but {} approver(s) listed in `approvers`",
                    principals.len()
                );
                let hint = Some("list the approvers' SSH public keys in an `allowed_signers` file (`NAME ssh-ed25519 AAAA…`) and name it in `approvers`");
                match (&file.approvers, &file.approvals) {
                    (Some(v), _) => self.err(&at, v, "approvers", message, hint),
                    (None, Some(v)) => self.err(&at, v, "approvals", message, hint),
                    (None, None) => {}
                }
            }
            let mut egress = EgressPolicy::default();
            if let Some(e) = &file.egress {
                let e = e.get_ref();
                egress.enforce = e.enforce;
                egress.prove_on_apply = e.prove_on_apply;
                if e.prove_on_apply && !e.enforce {
                    self.push(
                        &path,
                        (1, 1),
                        "egress.prove_on_apply",
                        "an egress proof on apply needs `enforce = true`".into(),
                        Some("set `enforce = true` in `[egress]`".into()),
                    );
                }
                for (i, c) in e.canaries.iter().enumerate() {
                    match crate::egress::Rule::parse(c.get_ref()) {
                        Ok(r @ crate::egress::Rule { to: crate::egress::Destination::Net(n), .. }) if n.is_host() => {
                            egress.canaries.push(r)
                        }
                        Ok(_) => self.err(
                            &at,
                            c,
                            &format!("egress.canaries[{i}]"),
                            format!("`{}` is not one address", c.get_ref().escape_debug()),
                            Some("a canary is `IP:PORT`: one address to try, e.g. `203.0.113.7:443`"),
                        ),
                        Err(why) => self.err(
                            &at,
                            c,
                            &format!("egress.canaries[{i}]"),
                            format!("`{}` is not a destination: {why}", c.get_ref().escape_debug()),
                            Some("a canary is `IP:PORT`, e.g. `203.0.113.7:443`"),
                        ),
                    }
                }
            }
            let mut hosts: Vec<Host> = Vec::new();
            for (i, h) in file.host.iter().enumerate() {
                let Some(host) = self.host(&at, h.get_ref(), i) else { continue };
                if hosts.iter().any(|x| x.name == host.name) {
                    self.err(
                        &at,
                        &h.get_ref().name,
                        &format!("host[{i}].name"),
                        format!("duplicate host `{}` in environment `{name}`", host.name),
                        Some("host names are unique within an environment"),
                    );
                }
                let endpoint = (host.address.clone(), host.port);
                if let Some((env, other)) = seen_hosts.get(&endpoint) {
                    self.err(
                        &at,
                        &h.get_ref().address,
                        &format!("host[{i}].address"),
                        format!("`{}:{}` is already host `{other}` of environment `{env}`", host.address, host.port),
                        Some("each golden VM belongs to one environment"),
                    );
                } else {
                    seen_hosts.insert(endpoint, (name.clone(), host.name.clone()));
                }
                hosts.push(host);
            }
            if file.host.is_empty() {
                self.push(&path, (1, 1), "host", "no hosts: an environment needs at least one `[[host]]`".into(), None);
            }
            let rollout = self.rollout(&at, &file.rollout, file.host.len());
            envs.push(Environment {
                name,
                after,
                approvals,
                approvers,
                approvers_file: file.approvers.as_ref().map(|v| normalize(Path::new(v.get_ref()))),
                approval_valid_secs,
                author_may_approve: file.author_may_approve,
                require_rehearsal: file.require_rehearsal,
                require_provenance: file.require_provenance,
                require_sbom: file.require_sbom,
                rollout: rollout.unwrap_or(Rollout::plain(BatchSize::Count(1), 30)),
                egress,
                hosts,
            });
        }
        // Files that failed to parse still name an environment: no cascade of "does not exist".
        let known: Vec<String> = self
            .files
            .keys()
            .filter(|p| p.parent() == Some(Path::new("environments")) && p.extension().is_some_and(|e| e == "toml"))
            .map(|p| p.file_stem().unwrap_or_default().to_string_lossy().into_owned())
            .collect();
        for (path, loc, env, after) in afters.iter().cloned() {
            if env.as_str() == after {
                self.push(
                    &path,
                    loc,
                    "after",
                    format!("environment `{env}` comes after itself"),
                    Some("name the environment a release must pass before this one, or remove `after`".into()),
                );
            } else if !known.contains(&after) {
                self.push(
                    &path,
                    loc,
                    "after",
                    format!("environment `{env}` comes after `{after}`, which does not exist"),
                    Some(format!("known environments: {}", known.join(", "))),
                );
            }
        }
        let ordered = order_environments(envs);
        match ordered {
            Ok(envs) if self.diags.len() == before => Some(envs),
            Ok(_) => None,
            Err(_) => {
                // Name each environment on a cycle at its own `after` (a self-reference was
                // reported above; environments merely waiting behind a cycle are not on it).
                let after_of: BTreeMap<&str, &str> =
                    afters.iter().map(|(_, _, env, after)| (env.as_str(), after.as_str())).collect();
                let cycle_from = |start: &str| -> Option<Vec<String>> {
                    let mut path = vec![start.to_owned()];
                    let mut cur = start;
                    for _ in 0..after_of.len() {
                        cur = after_of.get(cur)?;
                        path.push(cur.to_owned());
                        if cur == start {
                            return Some(path);
                        }
                    }
                    None
                };
                for (path, loc, env, after) in &afters {
                    if env.as_str() == after {
                        continue;
                    }
                    if let Some(cycle) = cycle_from(env.as_str()) {
                        self.push(
                            path,
                            *loc,
                            "after",
                            format!("environments form a cycle: {}", cycle.join(" -> ")),
                            Some("one environment must come first (no `after`)".into()),
                        );
                    }
                }
                None
            }
        }
    }

    pub(super) fn host(&mut self, at: &At<'_>, h: &raw::Host, i: usize) -> Option<Host> {
        let f = |s: &str| format!("host[{i}].{s}");
        let before = self.diags.len();
        let name =
            HostName::new(h.name.get_ref()).map_err(|e| self.err(at, &h.name, &f("name"), e.to_string(), None)).ok();
        if !valid_address(h.address.get_ref()) {
            self.err(
                at,
                &h.address,
                &f("address"),
                format!("`{}` is not an IP address or host name", h.address.get_ref().escape_debug()),
                Some("write e.g. `127.0.0.1` or `vm-1.internal`"),
            );
        }
        let port = self.ranged(at, h.port.as_ref(), &f("port"), 1, 65535, 22) as u16;
        let user =
            UserName::new(h.user.get_ref()).map_err(|e| self.err(at, &h.user, &f("user"), e.to_string(), None)).ok();
        let host_key = parse_host_key(h.host_key.get_ref());
        if host_key.is_none() {
            self.err(at, &h.host_key, &f("host_key"), "expected a pinned SSH host public key, `ssh-ed25519 AAAA...`".into(), Some("copy the host's `/etc/ssh/ssh_host_ed25519_key.pub` (algorithm and key, no comment) from a trusted channel"));
        }
        let root = remote_path(h.root.get_ref());
        if root.is_none() {
            self.err(
                at,
                &h.root,
                &f("root"),
                format!("`{}` is not a safe absolute path", h.root.get_ref().escape_debug()),
                Some(
                    "use an absolute path of letters, digits, `.`, `_`, `-` and `/`, with no `..`, e.g. `/srv/agents`",
                ),
            );
        }
        if self.diags.len() != before {
            return None;
        }
        Some(Host {
            name: name?,
            address: h.address.get_ref().clone(),
            port,
            user: user?,
            host_key: host_key?,
            root: root?,
        })
    }
}

/// Environments in promotion order, or the cycle that prevents one.
fn order_environments(mut envs: Vec<Environment>) -> Result<Vec<Environment>, Vec<String>> {
    envs.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out: Vec<Environment> = Vec::new();
    while !envs.is_empty() {
        let ready = envs.iter().position(|e| match &e.after {
            None => true,
            Some(a) => out.iter().any(|o| &o.name == a) || !envs.iter().any(|x| &x.name == a),
        });
        match ready {
            Some(i) => out.push(envs.remove(i)),
            None => return Err(envs.iter().map(|e| e.name.to_string()).collect()),
        }
    }
    Ok(out)
}
