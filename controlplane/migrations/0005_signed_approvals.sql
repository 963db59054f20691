-- Approvals carry the statement the approver signed and the SSH signature, re-verified
-- against the environment's approvers at every apply.
ALTER TABLE approvals ADD COLUMN statement TEXT NOT NULL DEFAULT '';
ALTER TABLE approvals ADD COLUMN signature TEXT NOT NULL DEFAULT '';
