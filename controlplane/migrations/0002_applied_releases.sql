-- Every release applied to an (environment, service): what a rollback goes back to.
CREATE TABLE applied_releases (
    environment    TEXT NOT NULL,
    service        TEXT NOT NULL,
    release_id     TEXT NOT NULL,
    image          TEXT NOT NULL,
    digest         TEXT NOT NULL,
    source_commit  TEXT NOT NULL,
    content_hash   TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    provenance     TEXT,
    sbom           TEXT,
    applied_at     TEXT NOT NULL,
    PRIMARY KEY (environment, service, release_id)
);
