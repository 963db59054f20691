//! Every parser of hostile input, as one entry point per fuzz target: the bytes as they
//! arrive from a golden VM, a registry, an operator or a pull request, and the store. The
//! `fuzz/` crate (libFuzzer through `cargo fuzz`), the corpus replay and the property
//! tests (`tests/hostile.rs`) call the same functions, so a finding reproduces in the
//! normal suite.
//!
//! A target's contract: it never panics, and while it runs it never holds more than
//! [`Target::bound`] bytes beyond what was allocated before ([`over_bound`]; the harnesses
//! count with a per-thread counting global allocator). Inputs larger than what the edge would ever hand the parser (the
//! probe's output cap, the manifest and blob fetch caps) are cut to that size first, as
//! the edge does.

use crate::cosign::{self, FetchedLayer};
use crate::image::{Digest, PinnedImage, Repository};
use crate::keys::SigningKey;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// One fuzz target.
pub struct Target {
    /// The `fuzz/fuzz_targets/NAME.rs` and corpus directory name.
    pub name: &'static str,
    /// Who writes this input, and which parser reads it.
    pub what: &'static str,
    /// Runs the parsers on `data`.
    pub run: fn(&[u8]),
    /// The most a run may hold allocated, in bytes, for an input of this many bytes.
    pub bound: fn(usize) -> usize,
    /// The largest input the edge hands this parser (longer inputs are cut to it first).
    pub max_input: usize,
}

const MIB: usize = 1 << 20;

/// A bundle file `verify-blob` reads (`jobs/verify_blob.rs`); bundles from a registry are
/// refused above 1 MiB before they are parsed.
const BUNDLE_FILE_BYTES: usize = 4 * MIB;

/// JSON and text parsers: the document, its tree and what is built from it. The worst
/// case is a document of the smallest objects (`{"":0}`, 7 bytes, a B-tree node of about
/// 600 bytes each): about 100 times the input, measured at every target's largest input
/// by `tests/hostile.rs::the_worst_documents_at_each_cut_stay_within_bounds`.
fn linear(len: usize) -> usize {
    128 * len + 4 * MIB
}

/// YAML (workflows): a node per scalar, about 210 times the input at worst.
fn yaml(len: usize) -> usize {
    256 * len + 4 * MIB
}

/// The layer scan holds a constant window whatever the layer's size.
fn constant(_: usize) -> usize {
    16 * MIB
}

/// Manifest validation renders every template for every environment.
fn validation(len: usize) -> usize {
    256 * len + 32 * MIB
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target { name: "probe", what: "a golden VM: the probe's output (`observe::parse`, `parse_answer`)", run: probe, bound: linear, max_input: crate::observe::MAX_PROBE_OUTPUT },
    Target { name: "egress_probe", what: "a golden VM: the egress probe's output (`observe::parse_egress`)", run: egress_probe, bound: linear, max_input: crate::observe::MAX_PROBE_OUTPUT },
    Target { name: "podman_report", what: "a golden VM: the runtime's report from `podman inspect` (`podman::Report::parse`, `soak::Seen`)", run: podman_report, bound: linear, max_input: crate::untrusted::MAX_HOST_TEXT },
    Target { name: "release_json", what: "a golden VM: the live release's `release.json` (`Observation::release`)", run: release_json, bound: linear, max_input: crate::release::MAX_RELEASE_JSON + 1 },
    Target { name: "nft_rules", what: "a golden VM: `nft -j list table` (`egress::from_nft_json`)", run: nft_rules, bound: linear, max_input: crate::observe::MAX_PROBE_OUTPUT },
    Target { name: "repair_listing", what: "a golden VM: a release directory's listing (`repair::parse_listing`)", run: repair_listing, bound: linear, max_input: crate::repair::MAX_LISTING },
    Target { name: "oci_manifest", what: "a registry: image manifests and indexes (`platform::manifest_for`, `cosign::manifest_layers`, `artifact_type_of`)", run: oci_manifest, bound: linear, max_input: crate::registry::MAX_MANIFEST_BYTES },
    Target { name: "referrers", what: "a registry: a referrers index (`registry::listed_in_index`)", run: referrers, bound: linear, max_input: crate::registry::MAX_MANIFEST_BYTES },
    Target { name: "cosign_payload", what: "a registry: a `.sig` layer's simple-signing payload, signed by a trusted key (`cosign::evaluate_signatures`)", run: cosign_payload, bound: linear, max_input: crate::registry::MAX_BLOB_BYTES },
    Target { name: "dsse", what: "a registry: a DSSE envelope and, signed by a trusted key, its in-toto statement (`cosign::evaluate_attestations`)", run: dsse, bound: linear, max_input: crate::registry::MAX_BLOB_BYTES },
    Target { name: "bundle", what: "a registry or a file: a Sigstore bundle (`cosign::evaluate_bundles`, `evaluate_bundle_attestations`, `evaluate_blob_bundle`)", run: bundle, bound: linear, max_input: BUNDLE_FILE_BYTES },
    Target { name: "layer", what: "a registry: an image layer, tar or gzip (`contents::scan_layer`)", run: layer, bound: constant, max_input: crate::registry::MAX_BLOB_BYTES },
    Target { name: "manifests", what: "an operator or a pull request: one file of the manifest set, templates included (`manifest::validate`)", run: manifests, bound: validation, max_input: MIB + 1 },
    Target { name: "plan_file", what: "an operator: a saved plan (`deploy::read_saved`, `plan::compare`)", run: plan_file, bound: linear, max_input: crate::bounded::MAX_PLAN_BYTES as usize },
    Target { name: "approval", what: "an approver: an approval statement, `allowed_signers` and an SSH signature (`approval::Statement::parse`, `parse_allowed_signers`, `sshsig::verify`)", run: approval, bound: linear, max_input: 3 * crate::bounded::MAX_APPROVAL_BYTES as usize },
    Target { name: "workflow", what: "a pull request: a CI workflow (`workflow::check`)", run: workflow, bound: yaml, max_input: crate::bounded::MAX_WORKFLOW_BYTES as usize },
    Target { name: "receipt", what: "the store or a receipts directory: a receipt (`receipt::verify_one`, `verify_chain`)", run: receipt, bound: linear, max_input: crate::bounded::MAX_RECEIPT_BYTES as usize },
];

/// The target named `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

fn cut(data: &[u8], max: usize) -> &[u8] {
    &data[..data.len().min(max)]
}

fn image() -> PinnedImage {
    PinnedImage {
        repository: Repository::new("127.0.0.1:5000/demo/api").expect("a repository"),
        digest: Digest::new("sha256:1111111111111111111111111111111111111111111111111111111111111111")
            .expect("a digest"),
    }
}

/// A trusted key, made once: what it signs reaches the parsers behind the signature check.
fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("a key"))
}

fn probe(data: &[u8]) {
    let data = cut(data, crate::observe::MAX_PROBE_OUTPUT);
    if let Ok(o) = crate::observe::parse(data) {
        let _ = o.release();
        let _ = o.fingerprint();
    }
    let _ = crate::observe::parse_answer(data);
}

fn egress_probe(data: &[u8]) {
    let _ = crate::observe::parse_egress(cut(data, crate::observe::MAX_PROBE_OUTPUT));
}

fn podman_report(data: &[u8]) {
    let line = text(cut(data, crate::untrusted::MAX_HOST_TEXT));
    if let Ok(r) = crate::podman::Report::parse(&line) {
        let _ = r.ready();
        let _ = r.findings("r-0123456789abcdef", image().digest.as_str());
    }
    let _ = crate::soak::Seen::from_report(Some(&crate::untrusted::HostText::new(&line)));
}

fn release_json(data: &[u8]) {
    let o = crate::observe::Observation {
        current: crate::observe::Current::Missing,
        release_json: Some(cut(data, crate::release::MAX_RELEASE_JSON + 1).to_vec()),
        release_json_sha256: None,
        content_hash: None,
        odd_entries: Vec::new(),
        target_hashes: BTreeMap::new(),
        running: None,
    };
    let _ = o.release();
}

fn nft_rules(data: &[u8]) {
    let data = cut(data, crate::observe::MAX_PROBE_OUTPUT);
    if let Ok(Some(live)) = crate::egress::from_nft_json("api", data) {
        let _ = crate::egress::differences(&live, &live);
        let _ = crate::egress::render(&live);
    }
}

fn repair_listing(data: &[u8]) {
    if let Ok(l) = crate::repair::parse_listing(cut(data, crate::repair::MAX_LISTING)) {
        let _ = crate::repair::changes(&BTreeMap::new(), &l);
    }
}

fn oci_manifest(data: &[u8]) {
    let data = cut(data, crate::registry::MAX_MANIFEST_BYTES);
    let _ = crate::platform::is_index(data);
    let platform = crate::platform::Platform::parse("linux/amd64").expect("a platform");
    let _ = crate::platform::manifest_for(data, &platform);
    let _ = cosign::manifest_layers(data);
    let _ = crate::registry::artifact_type_of(data);
}

fn referrers(data: &[u8]) {
    let _ = crate::edges::registry::listed_in_index(cut(data, crate::registry::MAX_MANIFEST_BYTES));
}

fn cosign_payload(data: &[u8]) {
    let data = cut(data, crate::registry::MAX_BLOB_BYTES);
    let k = key();
    let layer = |annotation: String| FetchedLayer {
        media_type: cosign::SIMPLE_SIGNING_MEDIA_TYPE.into(),
        digest: Digest::of(data),
        annotations: BTreeMap::from([(cosign::SIGNATURE_ANNOTATION.to_owned(), annotation)]),
        data: data.to_vec(),
    };
    // Signed by the trusted key: the payload reaches its parser.
    let signed = layer(B64.encode(k.sign(data)));
    // Its annotation as the registry sent it.
    let raw = layer(text(cut(data, 512)));
    let _ = cosign::evaluate_signatures(&image(), &[signed, raw], std::slice::from_ref(k.public()));
}

fn dsse(data: &[u8]) {
    let data = cut(data, crate::registry::MAX_BLOB_BYTES);
    let k = key();
    let layer = |data: Vec<u8>| FetchedLayer {
        media_type: cosign::DSSE_MEDIA_TYPE.into(),
        digest: Digest::of(&data),
        annotations: BTreeMap::new(),
        data,
    };
    // The envelope as the registry sent it, and the statement in an envelope the trusted
    // key signed (its pre-authentication encoding).
    let sig = k.sign(&cosign::pae(cosign::IN_TOTO_PAYLOAD_TYPE, data));
    let envelope = serde_json::json!({
        "payloadType": cosign::IN_TOTO_PAYLOAD_TYPE,
        "payload": B64.encode(data),
        "signatures": [{ "keyid": "", "sig": B64.encode(sig) }],
    });
    let layers = [layer(data.to_vec()), layer(envelope.to_string().into_bytes())];
    let _ = cosign::evaluate_attestations(&image(), &layers, std::slice::from_ref(k.public()));
}

fn bundle(data: &[u8]) {
    let data = cut(data, crate::registry::MAX_BLOB_BYTES);
    let k = key();
    let bundles = [(Digest::of(data), data.to_vec())];
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#;
    let _ = cosign::evaluate_bundles(&image(), manifest, &bundles, std::slice::from_ref(k.public()), None);
    let _ = cosign::evaluate_bundle_attestations(&image(), &bundles, std::slice::from_ref(k.public()), None);
    let _ = cosign::evaluate_blob_bundle(&[7; 32], data, |_, _, _| true);
}

fn layer(data: &[u8]) {
    for gzip in [false, true] {
        let _ = crate::jobs::contents::scan_bytes(data, gzip);
    }
}

/// The example manifest set with one file (chosen by the first byte) replaced by the rest.
fn manifests(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else { return };
    let mut files: BTreeMap<PathBuf, String> =
        crate::manifest::example::FILES.iter().map(|(p, t)| (PathBuf::from(p), (*t).to_owned())).collect();
    let names: Vec<PathBuf> = files.keys().cloned().collect();
    let name = &names[usize::from(pick) % names.len()];
    files.insert(name.clone(), text(cut(rest, MIB)));
    let _ = crate::manifest::validate(Path::new("m"), &files);
}

fn plan_file(data: &[u8]) {
    let Ok(saved) = crate::deploy::read_saved(&text(cut(data, crate::bounded::MAX_PLAN_BYTES as usize))) else {
        return;
    };
    let plan = &saved.plan;
    let _ = plan.id();
    let _ = plan.decoded_files();
    let _ = crate::plan::compare(plan, plan);
    let _ = crate::plan::compare_resumed(plan, plan, &[], &[], 1);
    let _ = crate::plan::check_age(plan, chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default(), 3600);
}

fn approval(data: &[u8]) {
    let data = cut(data, 64 * 1024);
    let _ = crate::approval::Statement::parse(data);
    let text = text(data);
    let signers = crate::approval::parse_allowed_signers(&text).unwrap_or_default();
    let _ = crate::sshsig::verify(&signers, data, &text);
}

fn workflow(data: &[u8]) {
    let _ = crate::workflow::check(&text(cut(data, crate::bounded::MAX_WORKFLOW_BYTES as usize)));
}

struct Anything;

impl crate::receipt::SignatureCheck for Anything {
    fn verify(&self, _msg: &[u8], _signature: &[u8]) -> bool {
        true
    }
}

fn receipt(data: &[u8]) {
    let file = crate::receipt::ReceiptFile {
        name: "000001-apply.json".into(),
        bytes: cut(data, crate::bounded::MAX_RECEIPT_BYTES as usize).to_vec(),
        signature: Some(b"AAAA".to_vec()),
    };
    let _ = crate::receipt::verify_one(&file, &Anything);
    let _ = crate::receipt::verify_chain(std::slice::from_ref(&file), &[], &Anything, None);
}

/// Why a run that held `held` bytes at its peak (above where it started) for an input of
/// `len` bytes is a finding, if it is one. The harnesses measure with `allocation-counter`
/// (a per-thread counting global allocator, linked only into them).
pub fn over_bound(target: &Target, len: usize, held: u64) -> Option<String> {
    let bound = (target.bound)(len) as u64;
    (held > bound).then(|| {
        format!("target `{}` held {held} bytes for an input of {len} bytes; its bound is {bound}", target.name)
    })
}
