-- Rollback proof: a release promoted, rolled back and promoted again in an environment,
-- with the receipt that says so.
CREATE TABLE rehearsals (
    environment  TEXT NOT NULL,
    service      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    receipt      TEXT NOT NULL,
    at           TEXT NOT NULL,
    PRIMARY KEY (environment, service, digest)
);
