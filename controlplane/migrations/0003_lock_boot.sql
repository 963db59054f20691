-- A lock holder's pid means something only within one boot of its machine.
ALTER TABLE locks ADD COLUMN holder_boot TEXT NOT NULL DEFAULT '';
