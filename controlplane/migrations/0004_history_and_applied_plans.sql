-- The releases each (environment, service, host) came to run, in order: the way back is
-- chosen from here, never from what a host reports as live.
CREATE TABLE history (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    environment  TEXT NOT NULL,
    service      TEXT NOT NULL,
    host         TEXT NOT NULL,
    release_id   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    plan_id      TEXT NOT NULL,
    at           TEXT NOT NULL
);
CREATE INDEX history_by_target ON history (environment, service, host, seq);

-- Plans are single use: an id applied once (whatever the outcome) is never applied again.
CREATE TABLE applied_plans (
    plan_id     TEXT PRIMARY KEY,
    applied_at  TEXT NOT NULL
);
