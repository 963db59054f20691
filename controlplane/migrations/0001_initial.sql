-- Releases CI registered: verified once at `release add`, re-verified before every use.
CREATE TABLE releases (
    service        TEXT NOT NULL,
    digest         TEXT NOT NULL,
    repository     TEXT NOT NULL,
    source_commit  TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    provenance     TEXT,
    sbom           TEXT,
    evidence       TEXT NOT NULL,
    added_at       TEXT NOT NULL,
    added_by       TEXT NOT NULL,
    PRIMARY KEY (service, digest)
);

-- What the control plane believes is live on each host, and the way back.
CREATE TABLE deployments (
    environment      TEXT NOT NULL,
    service          TEXT NOT NULL,
    host             TEXT NOT NULL,
    release_id       TEXT NOT NULL,
    digest           TEXT NOT NULL,
    source_commit    TEXT NOT NULL,
    content_hash     TEXT NOT NULL,
    rollback_target  TEXT,
    plan_id          TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (environment, service, host)
);

-- Index of receipts/ and the chain head, so a removed tail is noticed.
CREATE TABLE receipts (
    seq         INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    file        TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    plan_id     TEXT,
    environment TEXT,
    service     TEXT,
    created_at  TEXT NOT NULL
);

-- One apply at a time per (environment, service).
CREATE TABLE locks (
    environment  TEXT NOT NULL,
    service      TEXT NOT NULL,
    holder_user  TEXT NOT NULL,
    holder_host  TEXT NOT NULL,
    holder_pid   INTEGER NOT NULL,
    plan_id      TEXT NOT NULL,
    since        TEXT NOT NULL,
    PRIMARY KEY (environment, service)
);

CREATE TABLE approvals (
    plan_id      TEXT NOT NULL,
    approver     TEXT NOT NULL,
    approved_at  TEXT NOT NULL,
    PRIMARY KEY (plan_id, approver)
);
