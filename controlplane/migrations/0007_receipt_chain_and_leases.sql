-- The receipt chain lives in the store: each receipt's exact bytes and signature, so that
-- several control planes share one chain (a receipts directory is an export of it).
ALTER TABLE receipts ADD COLUMN body BLOB;
ALTER TABLE receipts ADD COLUMN signature TEXT;
-- A lock is a lease its holder renews while the apply runs; an expired lease is taken over.
-- '' marks a lock taken before leases existed (it never expires).
ALTER TABLE locks ADD COLUMN expires_at TEXT NOT NULL DEFAULT '';
