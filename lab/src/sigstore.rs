//! A private Sigstore for tests: a Fulcio-style certificate authority, a Rekor-style log,
//! the `trusted_root.json` that names them, and keyless bundles made with them as cosign 3
//! makes them for an image: a v0.3 bundle whose DSSE envelope carries cosign's image
//! signature statement, signed by a short-lived leaf certificate that names an OIDC issuer
//! and a subject, with an SCT from the lab's certificate-transparency log embedded as
//! Fulcio does; a `dsse` 0.0.1 log entry with an inclusion proof, a signed checkpoint and
//! a signed entry timestamp (SET). Nothing public is contacted.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData as _, SanType, SigningKey as _, PKCS_ECDSA_P256_SHA256,
};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;

/// Where `cargo xtask setup` installs sigstore-python's command line (its own venv).
pub const PYTHON_CLI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/sigstore-python/bin/sigstore");
/// The sigstore-python release the tests compare with.
pub const PYTHON_VERSION: &str = "4.5.1";

/// Fulcio's OIDC issuer extensions: v1 (the raw string) and v2 (a DER UTF8String).
const OID_ISSUER_V1: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 1];
const OID_ISSUER_V2: &[u64] = &[1, 3, 6, 1, 4, 1, 57264, 1, 8];
/// RFC 6962's embedded SCT list.
const OID_SCT_LIST: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

/// Who signs, and when: what a CI's OIDC token and Fulcio would put in the certificate.
#[derive(Debug, Clone)]
pub struct Signer {
    pub issuer: String,
    /// A URI (`https://…`) or an email address.
    pub subject: String,
    /// The certificate's validity.
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// When the log says it integrated the entry (the proven signing time).
    pub integrated_time: OffsetDateTime,
    /// Whether the certificate carries the CT log's SCT (Fulcio always embeds one).
    pub with_sct: bool,
}

impl Signer {
    /// A CI identity with a ten-minute certificate issued a minute ago, logged now.
    pub fn ci(issuer: &str, subject: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            issuer: issuer.into(),
            subject: subject.into(),
            not_before: now - time::Duration::minutes(1),
            not_after: now + time::Duration::minutes(9),
            integrated_time: now - time::Duration::seconds(5),
            with_sct: true,
        }
    }
}

/// What a bundle signs.
enum Content<'a> {
    /// An in-toto statement, in a DSSE envelope.
    Statement(&'a [u8]),
    /// The artifact's bytes, as a message signature.
    Message(&'a [u8]),
}

/// A certificate authority and a transparency log.
pub struct TestSigstore {
    ca_key: KeyPair,
    ca_params: CertificateParams,
    ca_der: Vec<u8>,
    log_key: KeyPair,
    ct_key: KeyPair,
}

impl std::fmt::Debug for TestSigstore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestSigstore")
    }
}

fn key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key")
}

fn ca(name: &str, key: &KeyPair) -> (CertificateParams, Vec<u8>) {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "agentctl-lab");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = OffsetDateTime::now_utc() - time::Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(365);
    let der = params.self_signed(key).expect("CA certificate").der().to_vec();
    (params, der)
}

/// DER length prefix.
fn der_len(n: usize) -> Vec<u8> {
    match n {
        0..=127 => vec![n as u8],
        128..=255 => vec![0x81, n as u8],
        _ => vec![0x82, (n >> 8) as u8, n as u8],
    }
}

/// The TBSCertificate of a DER certificate (the first element of its outer SEQUENCE).
fn tbs_of(cert: &[u8]) -> &[u8] {
    // Tag and length of a DER element at `at`: (header length, content length).
    let header = |at: usize| -> (usize, usize) {
        let first = cert[at + 1] as usize;
        if first < 0x80 {
            (2, first)
        } else {
            let n = first & 0x7f;
            (2 + n, cert[at + 2..at + 2 + n].iter().fold(0, |acc, b| (acc << 8) | *b as usize))
        }
    };
    let (outer, _) = header(0);
    let (h, len) = header(outer);
    &cert[outer..outer + h + len]
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).expect("a time")
}

impl TestSigstore {
    pub fn new(name: &str) -> Self {
        let ca_key = key();
        let (ca_params, ca_der) = ca(name, &ca_key);
        Self { ca_key, ca_params, ca_der, log_key: key(), ct_key: key() }
    }

    /// Another certificate authority in front of the same log.
    pub fn other_ca(&self, name: &str) -> Self {
        let ca_key = key();
        let (ca_params, ca_der) = ca(name, &ca_key);
        let log_key = KeyPair::try_from(self.log_key.serialize_der().as_slice()).expect("the log key");
        let ct_key = KeyPair::try_from(self.ct_key.serialize_der().as_slice()).expect("the CT log key");
        Self { ca_key, ca_params, ca_der, log_key, ct_key }
    }

    /// The log's id: SHA-256 of its public key (SubjectPublicKeyInfo, DER).
    fn log_id(&self) -> [u8; 32] {
        Sha256::digest(self.log_key.subject_public_key_info()).into()
    }

    fn ct_log_id(&self) -> [u8; 32] {
        Sha256::digest(self.ct_key.subject_public_key_info()).into()
    }

    /// An RFC 6962 SCT (v1, precertificate entry) over `tbs`, the leaf's TBSCertificate
    /// without the SCT extension, issued by the CA; serialized as it is embedded.
    fn sct(&self, tbs: &[u8], when: OffsetDateTime) -> Vec<u8> {
        let timestamp = (when.unix_timestamp_nanos() / 1_000_000) as u64;
        let issuer_key_hash = Sha256::digest(self.ca_key.subject_public_key_info());
        let mut signed = vec![0u8, 0u8]; // v1, certificate_timestamp
        signed.extend(timestamp.to_be_bytes());
        signed.extend([0u8, 1u8]); // precert_entry
        signed.extend(issuer_key_hash);
        signed.extend(&(tbs.len() as u32).to_be_bytes()[1..]);
        signed.extend(tbs);
        signed.extend([0u8, 0u8]); // no extensions
        let sig = self.ct_key.sign(&signed).expect("SCT signature");
        let mut sct = vec![0u8]; // v1
        sct.extend(self.ct_log_id());
        sct.extend(timestamp.to_be_bytes());
        sct.extend([0u8, 0u8]);
        sct.extend([4u8, 3u8]); // SHA-256, ECDSA
        sct.extend((sig.len() as u16).to_be_bytes());
        sct.extend(sig);
        sct
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        let b64 = B64.encode(&self.ca_der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
        format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
    }

    /// `trusted_root.json` naming this CA, this log and this CT log (no TSAs), valid from a
    /// day ago.
    pub fn trusted_root(&self) -> String {
        let start = rfc3339(OffsetDateTime::now_utc() - time::Duration::days(1));
        serde_json::to_string_pretty(&serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [{
                "baseUrl": "https://rekor.lab.invalid",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(self.log_key.subject_public_key_info()),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": { "start": start },
                },
                "logId": { "keyId": B64.encode(self.log_id()) },
            }],
            "certificateAuthorities": [{
                "subject": { "organization": "agentctl-lab", "commonName": "lab fulcio" },
                "uri": "https://fulcio.lab.invalid",
                "certChain": { "certificates": [{ "rawBytes": B64.encode(&self.ca_der) }] },
                "validFor": { "start": start },
            }],
            "ctlogs": [{
                "baseUrl": "https://ctfe.lab.invalid",
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": B64.encode(self.ct_key.subject_public_key_info()),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": { "start": start },
                },
                "logId": { "keyId": B64.encode(self.ct_log_id()) },
            }],
            "timestampAuthorities": [],
        }))
        .expect("JSON")
    }

    /// A keyless bundle (JSON) signing image `repository@sha256:<digest_hex>` as `who`.
    pub fn sign_image(&self, repository: &str, digest_hex: &str, who: &Signer) -> Vec<u8> {
        let statement = serde_json::json!({
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [{ "name": repository, "digest": { "sha256": digest_hex } }],
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
            "predicate": {},
        });
        self.sign_statement(&serde_json::to_vec(&statement).expect("JSON"), who)
    }

    /// A keyless bundle (JSON) of a DSSE envelope over the in-toto `statement`.
    pub fn sign_statement(&self, statement: &[u8], who: &Signer) -> Vec<u8> {
        self.sign_content(Content::Statement(statement), who)
    }

    /// A keyless bundle (JSON) with a message signature over `artifact`'s bytes (for an
    /// image: its manifest), as `cosign sign-blob --bundle` and GitHub's attestations of
    /// plain artifacts make.
    pub fn sign_message(&self, artifact: &[u8], who: &Signer) -> Vec<u8> {
        self.sign_content(Content::Message(artifact), who)
    }

    fn sign_content(&self, content: Content<'_>, who: &Signer) -> Vec<u8> {
        const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
        // The leaf: an ephemeral key, the identity in the SAN, the issuer in Fulcio's extensions.
        let leaf_key = key();
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.not_before = who.not_before;
        params.not_after = who.not_after;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.use_authority_key_identifier_extension = true;
        let san = if who.subject.contains("://") {
            SanType::URI(who.subject.clone().try_into().expect("an IA5 subject"))
        } else {
            SanType::Rfc822Name(who.subject.clone().try_into().expect("an IA5 subject"))
        };
        params.subject_alt_names = vec![san];
        let mut v2 = vec![0x0c];
        v2.extend(der_len(who.issuer.len()));
        v2.extend(who.issuer.as_bytes());
        params.custom_extensions = vec![
            CustomExtension::from_oid_content(OID_ISSUER_V1, who.issuer.as_bytes().to_vec()),
            CustomExtension::from_oid_content(OID_ISSUER_V2, v2),
        ];
        let serial: [u8; 16] = Sha256::digest(leaf_key.subject_public_key_info())[..16].try_into().expect("16 bytes");
        params.serial_number = Some(serial.to_vec().into());
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        // The SCT signs the certificate as it is without the SCT extension (the
        // "precertificate"); the certificate then carries it.
        let pre = params.signed_by(&leaf_key, &issuer).expect("precertificate");
        if who.with_sct {
            let sct = self.sct(tbs_of(pre.der()), who.not_before);
            let mut list = ((sct.len() + 2) as u16).to_be_bytes().to_vec();
            list.extend((sct.len() as u16).to_be_bytes());
            list.extend(&sct);
            let mut octets = vec![0x04];
            octets.extend(der_len(list.len()));
            octets.extend(list);
            params.custom_extensions.push(CustomExtension::from_oid_content(OID_SCT_LIST, octets));
        }
        let leaf = params.signed_by(&leaf_key, &issuer).expect("leaf certificate");
        let leaf_der = leaf.der().to_vec();

        // The content, and the log entry as Rekor records its kind: DSSE over the
        // pre-authentication encoding (`dsse` 0.0.1), or a signature over the artifact's
        // bytes (`hashedrekord` 0.0.1).
        let (content_key, content, body) = match content {
            Content::Statement(statement) => {
                let mut pae =
                    format!("DSSEv1 {} {} {} ", PAYLOAD_TYPE.len(), PAYLOAD_TYPE, statement.len()).into_bytes();
                pae.extend_from_slice(statement);
                let sig = leaf_key.sign(&pae).expect("signature");
                let envelope = serde_json::json!({
                    "payload": B64.encode(statement),
                    "payloadType": PAYLOAD_TYPE,
                    "signatures": [{ "sig": B64.encode(&sig), "keyid": "" }],
                });
                let envelope_hash = hex::encode(Sha256::digest(serde_json::to_vec(&envelope).expect("JSON")));
                let body = serde_json::json!({
                    "apiVersion": "0.0.1",
                    "kind": "dsse",
                    "spec": {
                        "envelopeHash": { "algorithm": "sha256", "value": envelope_hash },
                        "payloadHash": { "algorithm": "sha256", "value": hex::encode(Sha256::digest(statement)) },
                        "signatures": [{ "signature": B64.encode(&sig), "verifier": B64.encode(leaf.pem()) }],
                    },
                });
                ("dsseEnvelope", envelope, body)
            }
            Content::Message(artifact) => {
                let sig = leaf_key.sign(artifact).expect("signature");
                let digest = Sha256::digest(artifact);
                let message = serde_json::json!({
                    "messageDigest": { "algorithm": "SHA2_256", "digest": B64.encode(digest) },
                    "signature": B64.encode(&sig),
                });
                let body = serde_json::json!({
                    "apiVersion": "0.0.1",
                    "kind": "hashedrekord",
                    "spec": {
                        "data": { "hash": { "algorithm": "sha256", "value": hex::encode(digest) } },
                        "signature": { "content": B64.encode(&sig), "publicKey": { "content": B64.encode(leaf.pem()) } },
                    },
                });
                ("messageSignature", message, body)
            }
        };
        let kind = body["kind"].as_str().expect("a kind").to_owned();
        let body = serde_json::to_vec(&body).expect("JSON");
        let integrated = who.integrated_time.unix_timestamp();
        let log_id = self.log_id();
        // SET: the log's signature over the canonical JSON of the entry.
        let set_payload = format!(
            r#"{{"body":"{}","integratedTime":{integrated},"logID":"{}","logIndex":0}}"#,
            B64.encode(&body),
            hex::encode(log_id)
        );
        let set = self.log_key.sign(set_payload.as_bytes()).expect("SET");
        // A tree of one leaf: the root is the leaf hash; the checkpoint signs it.
        let mut leaf_input = vec![0u8];
        leaf_input.extend_from_slice(&body);
        let root: [u8; 32] = Sha256::digest(&leaf_input).into();
        let note = format!("rekor.lab.invalid - 1\n1\n{}\n", B64.encode(root));
        let mut note_sig = log_id[..4].to_vec();
        note_sig.extend(self.log_key.sign(note.as_bytes()).expect("checkpoint"));
        let checkpoint = format!("{note}\n\u{2014} rekor.lab.invalid {}\n", B64.encode(note_sig));

        serde_json::to_vec_pretty(&serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {
                "certificate": { "rawBytes": B64.encode(&leaf_der) },
                "tlogEntries": [{
                    "logIndex": "0",
                    "logId": { "keyId": B64.encode(log_id) },
                    "kindVersion": { "kind": kind, "version": "0.0.1" },
                    "integratedTime": integrated.to_string(),
                    "inclusionPromise": { "signedEntryTimestamp": B64.encode(&set) },
                    "inclusionProof": {
                        "logIndex": "0",
                        "rootHash": B64.encode(root),
                        "treeSize": "1",
                        "hashes": [],
                        "checkpoint": { "envelope": checkpoint },
                    },
                    "canonicalizedBody": B64.encode(&body),
                }],
            },
            content_key: content,
        }))
        .expect("JSON")
    }
}

impl TestSigstore {
    /// sigstore-python's client trust configuration for this instance: the trusted root
    /// and a signing configuration naming the lab's (unreachable) services.
    pub fn client_trust_config(&self) -> String {
        let start = rfc3339(OffsetDateTime::now_utc() - time::Duration::days(1));
        let service = |url: &str| serde_json::json!({ "url": url, "majorApiVersion": 1, "validFor": { "start": start }, "operator": "agentctl-lab" });
        let root: serde_json::Value = serde_json::from_str(&self.trusted_root()).expect("JSON");
        serde_json::to_string_pretty(&serde_json::json!({
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": root,
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [service("https://fulcio.lab.invalid")],
                "oidcUrls": [],
                "rekorTlogUrls": [service("https://rekor.lab.invalid")],
                "tsaUrls": [],
                "rekorTlogConfig": { "selector": "ANY" },
                "tsaConfig": { "selector": "ANY" },
            },
        }))
        .expect("JSON")
    }
}
