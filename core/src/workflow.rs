//! CI hygiene of GitHub Actions workflows (`check --ci`), read as YAML with source
//! positions (`marked-yaml`), so block, flow and quoted forms read alike and every finding
//! has its line and column. Rules, with zizmor's identifier where it has the same rule:
//!
//! - `template-injection`: an expression an outside contributor controls (a
//!   `github.event.*` field they write — titles, bodies, branch names, commit messages —
//!   `github.head_ref`, or `inputs.*`; any casing, dotted or bracketed, split over lines)
//!   inside a `run:` script or an `actions/github-script` `script:`, where the runner
//!   pastes it into the code before the shell or node parses it;
//! - `undeclared-write`: a write permission (`write-all`, or `SCOPE: write` in block, flow
//!   or quoted form) without a `# needs: REASON` comment on its line;
//! - `default-permissions`: no `permissions:` at the top and a job without its own — the
//!   token gets the repository's default, which may write;
//! - `untrusted-checkout`: a `pull_request_target` or `workflow_run` workflow that checks
//!   out the untrusted head (its ref or SHA), and so runs the contributor's code with the
//!   base repository's token and secrets;
//! - `unpinned-uses`: `uses:` not pinned to a full commit SHA (a tag or branch moves);
//! - `artipacked`: `actions/checkout` without `persist-credentials: false` (the token stays
//!   in `.git/config` for every later step, and any artifact of the work tree).
//!
//! Every text taken from a workflow reaches findings only as [`HostText`] (bounded,
//! control characters and escape sequences stripped).

use crate::untrusted::HostText;
use marked_yaml::types::MarkedScalarNode;
use marked_yaml::Node;
use serde::Serialize;

/// One problem in one workflow file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub rule: &'static str,
    pub message: HostText,
    /// How to fix it.
    pub fix: &'static str,
}

/// Every rule `check` implements, with its fix.
pub const RULES: &[(&str, &str)] = &[
    ("template-injection", "pass the value through `env:` and quote the variable in the script (`\"$TITLE\"`)"),
    ("undeclared-write", "make it `read`, or state the need with `# needs: REASON` on the line"),
    ("default-permissions", "add `permissions: {contents: read}` at the top (and widen per job where needed)"),
    ("untrusted-checkout", "check out the base (the default), or split the workflow: an unprivileged `pull_request` job builds, a privileged one only consumes its artifact"),
    ("unpinned-uses", "pin the action to a full commit SHA (`owner/repo@<40 hex>  # vX.Y`)"),
    ("artipacked", "add `with: {persist-credentials: false}` to the checkout step"),
    ("unparsable-workflow", "fix the YAML (GitHub would refuse the workflow too)"),
];

fn fix(rule: &str) -> &'static str {
    RULES.iter().find(|(r, _)| *r == rule).map(|(_, f)| *f).unwrap_or("")
}

/// Event fields an outside contributor writes (GitHub Security Lab's list), as lower-case
/// dotted paths; `*` is one segment (an array index or a key).
const UNTRUSTED: &[&str] = &[
    "github.head_ref",
    "github.event.issue.title",
    "github.event.issue.body",
    "github.event.pull_request.title",
    "github.event.pull_request.body",
    "github.event.pull_request.head.ref",
    "github.event.pull_request.head.label",
    "github.event.pull_request.head.repo.default_branch",
    "github.event.comment.body",
    "github.event.review.body",
    "github.event.review_comment.body",
    "github.event.pages.*.page_name",
    "github.event.commits.*.message",
    "github.event.commits.*.author.email",
    "github.event.commits.*.author.name",
    "github.event.head_commit.message",
    "github.event.head_commit.author.email",
    "github.event.head_commit.author.name",
    "github.event.discussion.title",
    "github.event.discussion.body",
    "github.event.workflow_run.head_branch",
    "github.event.workflow_run.head_commit.message",
    "github.event.workflow_run.head_commit.author.email",
    "github.event.workflow_run.head_commit.author.name",
    "github.event.workflow_run.pull_requests.*.head.ref",
    "inputs.*",
];

fn segment_matches(pattern: &str, seg: &str) -> bool {
    pattern == "*" || seg == "*" || pattern == seg
}

/// Whether the context `path` (lower case, `*` for an index) reads attacker text: it is a
/// listed field, inside one, or an object that contains one (`toJSON(github.event)`).
fn untrusted(path: &[String]) -> bool {
    UNTRUSTED.iter().any(|p| {
        let pat: Vec<&str> = p.split('.').collect();
        let n = pat.len().min(path.len());
        pat[..n].iter().zip(&path[..n]).all(|(a, b)| segment_matches(a, b))
            && (path.len() < pat.len() || n == pat.len())
    })
}

/// The `${{ … }}` expressions of `text` (what GitHub evaluates: the parsed value), each
/// body with its byte offset in `text`. A body ends at the first `}}` outside a quoted
/// string literal (`'…'`, `''` inside one); one left open runs to the end.
fn expressions(text: &str) -> Vec<(usize, &str)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(open) = text[i..].find("${{") {
        let body = i + open + 3;
        let mut j = body;
        let mut quoted = false;
        let end = loop {
            match b.get(j) {
                None => break b.len(),
                Some(b'\'') => quoted = !quoted,
                Some(b'}') if !quoted && b.get(j + 1) == Some(&b'}') => break j,
                _ => {}
            }
            j += 1;
        };
        out.push((body, &text[body..end]));
        i = (end + 2).min(text.len());
    }
    out
}

/// The context references (`github.…`, `inputs.…`) in one expression's body, each with its
/// byte offset and length in `expr`: segments lower-cased, `['x']` read as `.x`, an index as
/// `*`. Quoted string literals are not references. Works on bytes (ASCII syntax), so any
/// other text in the expression is passed over whole.
fn references(expr: &str) -> Vec<(usize, usize, Vec<String>)> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    let starts_with =
        |at: usize, word: &str| b.get(at..at + word.len()).is_some_and(|s| s.eq_ignore_ascii_case(word.as_bytes()));
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\'' {
            // A string literal: skip to its end (`''` is a quote inside it).
            i += 1;
            while i < b.len() {
                if b[i] == b'\'' && b.get(i + 1) == Some(&b'\'') {
                    i += 2;
                } else if b[i] == b'\'' {
                    break;
                } else {
                    i += 1;
                }
            }
            i += 1;
            continue;
        }
        let at_word = i == 0 || !(ident(b[i - 1]) || b[i - 1] == b'.');
        let root = ["github", "inputs"]
            .into_iter()
            .find(|r| at_word && starts_with(i, r) && !b.get(i + r.len()).is_some_and(|c| ident(*c)));
        let Some(root) = root else {
            i += 1;
            continue;
        };
        let start = i;
        let mut segs = vec![root.to_owned()];
        i += root.len();
        loop {
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            match b.get(j) {
                Some(b'.') => {
                    j += 1;
                    while j < b.len() && b[j].is_ascii_whitespace() {
                        j += 1;
                    }
                    let s = j;
                    while j < b.len() && (ident(b[j]) || b[j] == b'*') {
                        j += 1;
                    }
                    if s == j {
                        break;
                    }
                    segs.push(expr[s..j].to_ascii_lowercase());
                    i = j;
                }
                Some(b'[') => {
                    let Some(close) = b[j..].iter().position(|&c| c == b']') else { break };
                    let inner = expr[j + 1..j + close].trim();
                    let quoted = inner.len() >= 2
                        && (inner.starts_with('\'') && inner.ends_with('\'')
                            || inner.starts_with('"') && inner.ends_with('"'));
                    segs.push(if quoted {
                        inner[1..inner.len() - 1].replace("''", "'").to_ascii_lowercase()
                    } else {
                        "*".into()
                    });
                    i = j + close + 1;
                }
                _ => break,
            }
        }
        out.push((start, i - start, segs));
    }
    out
}

/// Where each offset of a text is: line and column, 1-based, with YAML's line breaks
/// (`\r\n`, `\r` or `\n`, as the parser counts them).
struct Lines<'a> {
    text: &'a str,
    /// Byte offset of each line's start.
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let b = text.as_bytes();
        let mut starts = vec![0];
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'\r' if b.get(i + 1) == Some(&b'\n') => {
                    starts.push(i + 2);
                    i += 2;
                    continue;
                }
                b'\r' | b'\n' => starts.push(i + 1),
                _ => {}
            }
            i += 1;
        }
        Self { text, starts }
    }

    /// (line, column) of byte offset `at` (a character boundary).
    fn position(&self, at: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= at).max(1);
        let column = self.text.get(self.starts[line - 1]..at).map_or(0, |t| t.chars().count()) + 1;
        (line, column)
    }

    /// The text of 1-based line `n` without its line break (empty past the end).
    fn line(&self, n: usize) -> &'a str {
        let Some(&start) = n.checked_sub(1).and_then(|i| self.starts.get(i)) else { return "" };
        let end = self.starts.get(n).copied().unwrap_or(self.text.len());
        self.text.get(start..end).unwrap_or("").trim_end_matches(['\r', '\n'])
    }

    /// The byte offset of 1-based `line` and `column` (characters), clamped to the text.
    fn offset(&self, line: usize, column: usize) -> usize {
        let Some(&start) = line.checked_sub(1).and_then(|i| self.starts.get(i)) else { return self.text.len() };
        start + self.line(line).char_indices().nth(column.saturating_sub(1)).map_or(0, |(i, _)| i)
    }
}

fn map<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    node.as_mapping()?.get_node(key)
}

fn scalar<'n>(node: &'n Node, key: &str) -> Option<&'n MarkedScalarNode> {
    map(node, key)?.as_scalar()
}

fn start(span: &marked_yaml::Span) -> (usize, usize) {
    span.start().map_or((1, 1), |m| (m.line(), m.column()))
}

struct Checker<'a> {
    lines: Lines<'a>,
    findings: Vec<Finding>,
}

impl Checker<'_> {
    fn push(&mut self, (line, column): (usize, usize), rule: &'static str, message: String) {
        self.findings.push(Finding { line, column, rule, message: HostText::new(&message), fix: fix(rule) });
    }

    /// Untrusted references inside the `${{ … }}` expressions of the scalar `value`. Found in the parsed value (what GitHub evaluates: escapes and folding already
    /// undone); placed by finding the reference as written after the scalar's start, else
    /// at the scalar's start.
    fn injections(&mut self, value: &MarkedScalarNode, place: &str) {
        let (vl, vc) = start(value.span());
        // Its source and what follows (flow style may continue on shallower lines): the
        // first occurrence after the scalar's start is the one written in it.
        let range = self.lines.offset(vl, vc)..self.lines.text.len();
        let source = self.lines.text.get(range.clone()).unwrap_or("");
        let mut searched = 0;
        let text = value.as_str();
        for (body_at, body) in expressions(text) {
            for (at, len, path) in references(body) {
                if !untrusted(&path) {
                    continue;
                }
                let written = &text[body_at + at..body_at + at + len];
                let pos = match source.get(searched..).and_then(|s| s.find(written)) {
                    Some(found) => {
                        searched += found + written.len();
                        self.lines.position(range.start + searched - written.len())
                    }
                    None => (vl, vc),
                };
                let shown = path.join(".");
                self.push(
                    pos,
                    "template-injection",
                    format!("`{shown}` is pasted into {place}: whoever writes it can run code here"),
                );
            }
        }
    }

    /// Write permissions without a stated need, in `permissions` (scalar or mapping).
    fn permissions(&mut self, node: &Node) {
        let stated = |c: &Self, line: usize| c.lines.line(line).contains("# needs:");
        match node {
            Node::Scalar(s) if s.as_str().trim() == "write-all" => {
                let pos = start(s.span());
                if !stated(self, pos.0) {
                    self.push(pos, "undeclared-write", "`write-all` without a stated need".into());
                }
            }
            Node::Mapping(m) => {
                for (scope, level) in m.iter() {
                    let Some(level) = level.as_scalar() else { continue };
                    if level.as_str().trim() == "write" {
                        let pos = start(level.span());
                        if !stated(self, pos.0) {
                            self.push(
                                pos,
                                "undeclared-write",
                                format!("`{}: write` without a stated need", scope.as_str()),
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn steps(&mut self, job: &Node, head_checkout_matters: bool) {
        let Some(steps) = map(job, "steps").and_then(Node::as_sequence) else { return };
        for step in steps.iter() {
            if step.as_mapping().is_none() {
                continue;
            }
            if let Some(v) = scalar(step, "run") {
                self.injections(v, "a `run:` script");
            }
            let Some(uses) = scalar(step, "uses") else { continue };
            let action = uses.as_str().trim();
            let pos = start(uses.span());
            if !pinned(action) {
                self.push(pos, "unpinned-uses", format!("`{action}` is not pinned to a commit SHA"));
            }
            let name = action.split('@').next().unwrap_or("").to_ascii_lowercase();
            let with = map(step, "with");
            if name == "actions/github-script" {
                if let Some(v) = with.and_then(|w| scalar(w, "script")) {
                    self.injections(v, "an `actions/github-script` script");
                }
            }
            if name == "actions/checkout" {
                let persist =
                    with.and_then(|w| scalar(w, "persist-credentials")).map(|s| s.as_str().trim().to_ascii_lowercase());
                if persist.as_deref() != Some("false") {
                    self.push(
                        pos,
                        "artipacked",
                        "`actions/checkout` keeps the token in `.git/config` (`persist-credentials` is not `false`)"
                            .into(),
                    );
                }
                if head_checkout_matters {
                    if let Some(r) = with.and_then(|w| scalar(w, "ref")) {
                        let text = r.as_str().to_ascii_lowercase().replace(' ', "");
                        let head = [
                            "github.event.pull_request.head",
                            "github.head_ref",
                            "github.event.workflow_run.head",
                            "refs/pull/",
                        ]
                        .iter()
                        .any(|h| text.contains(h));
                        if head {
                            self.push(
                                start(r.span()),
                                "untrusted-checkout",
                                "the untrusted head is checked out in a workflow that runs with the base repository's token and secrets".into(),
                            );
                        }
                    }
                }
            }
        }
    }
}

/// `owner/repo@<40 hex>`, a local action (`./…`) or `docker://…@sha256:…`.
fn pinned(uses: &str) -> bool {
    if uses.starts_with("./") {
        return true;
    }
    if let Some(image) = uses.strip_prefix("docker://") {
        return image.contains("@sha256:");
    }
    uses.rsplit_once('@').is_some_and(|(_, r)| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The events a workflow runs on (`on:` as a scalar, a list or a mapping).
fn triggers(root: &Node) -> Vec<String> {
    match map(root, "on") {
        Some(Node::Scalar(s)) => vec![s.as_str().to_owned()],
        Some(Node::Sequence(q)) => q.iter().filter_map(|n| n.as_scalar().map(|s| s.as_str().to_owned())).collect(),
        Some(Node::Mapping(m)) => m.keys().map(|k| k.as_str().to_owned()).collect(),
        None => Vec::new(),
    }
}

/// Checks one workflow's text.
pub fn check(text: &str) -> Vec<Finding> {
    let mut c = Checker { lines: Lines::new(text), findings: Vec::new() };
    let root = match marked_yaml::parse_yaml(0, text) {
        Ok(root) => root,
        Err(e) => {
            let pos = match &e {
                marked_yaml::LoadError::TopLevelMustBeMapping(m)
                | marked_yaml::LoadError::UnexpectedAnchor(m)
                | marked_yaml::LoadError::MappingKeyMustBeScalar(m)
                | marked_yaml::LoadError::UnexpectedTag(m)
                | marked_yaml::LoadError::ScanError(m, _) => (m.line().max(1), m.column().max(1)),
                _ => (1, 1),
            };
            c.push(pos, "unparsable-workflow", format!("not a workflow agentctl can read: {e}"));
            return c.findings;
        }
    };
    let privileged = triggers(&root).iter().any(|t| t == "pull_request_target" || t == "workflow_run");
    let top = map(&root, "permissions");
    if let Some(p) = top {
        c.permissions(p);
    }
    let jobs = map(&root, "jobs").and_then(Node::as_mapping);
    let mut unscoped = false;
    for (_, job) in jobs.into_iter().flat_map(|j| j.iter()) {
        match map(job, "permissions") {
            Some(p) => c.permissions(p),
            None => unscoped = true,
        }
        c.steps(job, privileged);
    }
    if top.is_none() && (unscoped || jobs.is_none()) {
        c.push(
            (1, 1),
            "default-permissions",
            "no `permissions:` at the top and a job without its own: the token gets the repository's default, which may write".into(),
        );
    }
    c.findings.sort_by_key(|f| (f.line, f.column));
    c.findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(text: &str) -> Vec<(usize, &'static str)> {
        check(text).into_iter().map(|f| (f.line, f.rule)).collect()
    }

    const HEAD: &str = "on: push\npermissions: {contents: read}\njobs:\n  b:\n    runs-on: x\n    steps:\n";

    #[test]
    fn untrusted_expressions_in_every_form() {
        let cases = [
            "      - run: echo \"${{ github.event.issue.title }}\"\n",
            "      - run: echo \"${{ GITHUB.EVENT.ISSUE.TITLE }}\"\n",
            "      - run: echo \"${{ github.event['pull_request']['title'] }}\"\n",
            "      - run: echo \"${{ github.event[\"issue\"].body }}\"\n",
            "      - run: echo ${{ github.event.commits[0].message }}\n",
            "      - run: echo '${{ toJSON(github.event) }}'\n",
            "      - run: echo ${{ inputs.target }}\n",
            "      - run: echo ${{github.head_ref}}\n",
        ];
        for step in cases {
            let found = rules(&format!("{HEAD}{step}"));
            assert_eq!(found, [(7, "template-injection")], "{step}");
        }
        // Split over lines inside a block scalar: the line of the reference.
        let split = format!("{HEAD}      - run: |\n          echo \"${{{{\n            github.head_ref }}}}\"\n");
        assert_eq!(rules(&split), [(9, "template-injection")]);
        let f = &check(&split)[0];
        assert_eq!(f.column, 13);
        // github-script.
        let script = format!("{HEAD}      - uses: actions/github-script@60a0d83039c74a4aee543508d2ffcb1c3799cdea\n        with:\n          script: |\n            core.info(`${{{{ github.event.comment.body }}}}`)\n");
        assert_eq!(rules(&script), [(10, "template-injection")]);
    }

    /// What GitHub evaluates is the parsed value: escapes, doubled quotes, flow style over
    /// shallower lines and `}}` inside a literal do not hide a reference; non-ASCII text and
    /// lone-CR line breaks are read without a panic and lines are counted as YAML counts them.
    #[test]
    fn forms_a_source_scan_would_miss_and_hostile_text() {
        let cases: &[(&str, usize)] = &[
            ("      - run: \"echo \\x24{{ github.event.issue.title }}\"\n", 7),
            ("      - run: \"echo \\u0024{{ github.event.issue.title }}\"\n", 7),
            ("      - run: 'echo ${{ github.event[''issue''].title }}'\n", 7),
            ("      - run: echo \"${{ format('}}', github.event.issue.title) }}\"\n", 7),
            ("      - run: echo \"${{ github.event.issue.title == 'fix ✓ é' }}\"\n", 7),
        ];
        for (step, line) in cases {
            assert_eq!(rules(&format!("{HEAD}{step}")), [(*line, "template-injection")], "{step}");
        }
        let flow = "on: push\npermissions: {contents: read}\njobs:\n  b:\n    runs-on: x\n    steps: [{run: \"echo\n      ${{ github.event.issue.title }}\"}]\n";
        assert_eq!(rules(flow), [(7, "template-injection")]);
        let cr = "on: push\rpermissions: {contents: read}\rjobs:\r  b:\r    runs-on: x\r    steps:\r      - run: echo ${{ github.head_ref }}\r";
        assert_eq!(rules(cr), [(7, "template-injection")]);
        let crlf = format!("{HEAD}      - run: echo ${{{{ github.head_ref }}}}\n").replace('\n', "\r\n");
        assert_eq!(rules(&crlf), [(7, "template-injection")]);
        assert_eq!(check(&crlf)[0].column, 23);
        // Not references: a quoted literal, a comment after a plain scalar, non-ASCII text.
        for step in [
            "      - run: echo \"${{ github.repository_owner == 'github' }}\"\n",
            "      - run: echo hi # ${{ github.head_ref }}\n",
            "      - run: echo \"${{ 'ünïcode ✓' }}\"\n",
        ] {
            assert_eq!(rules(&format!("{HEAD}{step}")), [], "{step}");
        }
    }

    #[test]
    fn look_alikes_are_not_findings() {
        let cases = [
            "      - run: echo \"${{ github.event.pull_request.number }}\"\n",
            "      - run: echo \"${{ github.sha }} ${{ github.event.issue.id }}\"\n",
            "      - run: echo \"$TITLE\"\n        env:\n          TITLE: ${{ github.event.issue.title }}\n",
            "      - run: echo \"github.event.issue.title is not an expression\"\n",
            "      - run: echo \"${{ github.repository_owner }}\"\n",
            "      - uses: ./.github/actions/local\n        with:\n          title: ${{ github.event.issue.title }}\n",
        ];
        for step in cases {
            assert_eq!(rules(&format!("{HEAD}{step}")), [], "{step}");
        }
    }

    #[test]
    fn write_permissions_in_block_flow_and_quoted_form() {
        assert_eq!(rules("on: push\npermissions:\n  contents: write\njobs: {}\n"), [(3, "undeclared-write")]);
        assert_eq!(rules("on: push\npermissions: {contents: write}\njobs: {}\n"), [(2, "undeclared-write")]);
        assert_eq!(rules("on: push\npermissions:\n  contents: \"write\"\njobs: {}\n"), [(3, "undeclared-write")]);
        assert_eq!(rules("on: push\npermissions: write-all\njobs: {}\n"), [(2, "undeclared-write")]);
        assert_eq!(rules("on: push\npermissions:\n  contents: write  # needs: push tags\njobs: {}\n"), []);
        assert_eq!(rules("on: push\npermissions: read-all\njobs: {}\n"), []);
        assert_eq!(rules("on: push\njobs:\n  a:\n    runs-on: x\n    steps: []\n"), [(1, "default-permissions")]);
        assert_eq!(rules("on: push\njobs:\n  a:\n    permissions: {}\n    runs-on: x\n    steps: []\n"), []);
    }

    #[test]
    fn pinning_checkout_credentials_and_untrusted_checkouts() {
        let sha = "8e5e7e5ab8b370d6c329ec480221332ada57f0ab";
        let step = |uses: &str, with: &str| format!("{HEAD}      - uses: {uses}\n{with}");
        assert_eq!(rules(&step("someone/action@v1", "")), [(7, "unpinned-uses")]);
        assert_eq!(rules(&step(&format!("someone/action@{sha}"), "")), []);
        assert_eq!(rules(&step("docker://alpine:3", "")), [(7, "unpinned-uses")]);
        assert_eq!(rules(&step(&format!("actions/checkout@{sha}"), "")), [(7, "artipacked")]);
        let quiet = "        with:\n          persist-credentials: false\n";
        assert_eq!(rules(&step(&format!("actions/checkout@{sha}"), quiet)), []);
        let head = "        with:\n          persist-credentials: false\n          ref: ${{ github.event.pull_request.head.sha }}\n";
        let prt = step(&format!("actions/checkout@{sha}"), head).replacen("on: push", "on: pull_request_target", 1);
        assert_eq!(rules(&prt), [(10, "untrusted-checkout")]);
        assert_eq!(rules(&prt.replacen("pull_request_target", "pull_request", 1)), []);
    }

    #[test]
    fn what_a_workflow_says_is_sanitized_and_bad_yaml_is_a_finding() {
        let evil = format!("{HEAD}      - uses: \"evil/\\e[31mred\\e[0m@v1\"\n");
        let f = check(&evil);
        assert_eq!(f.len(), 1);
        assert!(!f[0].message.to_string().contains('\u{1b}'), "{:?}", f[0].message);
        assert_eq!(rules("on: [push\n"), [(2, "unparsable-workflow")]);
    }
}
