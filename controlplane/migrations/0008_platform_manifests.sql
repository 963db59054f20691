-- A release pinned by an image index's digest runs as the index's manifest for the
-- service's platform: its digest, chosen when the release was recorded (NULL for an image
-- manifest, which runs as it is).
ALTER TABLE releases ADD COLUMN platform_digest TEXT;
-- The same for what was applied (rollbacks go back to it, receipts name it).
ALTER TABLE applied_releases ADD COLUMN platform_digest TEXT;
