-- The rendered files of each applied release (a JSON object, path -> base64), kept from
-- the promotion that first applied it: `repair` stages them again, `status` names what
-- changed on a host against them. NULL for releases adopted or applied before.
ALTER TABLE applied_releases ADD COLUMN files TEXT;
