-- Schedules (issue 10): one-off times on campaigns, recurring cron schedules, and the key that
-- makes each occurrence of a schedule one campaign at most (a job instance keyed by its
-- parameters, as in Spring Batch).

-- When a SCHEDULED campaign is due (RFC 3339, UTC); NULL for campaigns started by hand.
ALTER TABLE campaigns ADD COLUMN scheduled_at TEXT;
-- The recurring schedule and the occurrence this campaign was created for, if any.
ALTER TABLE campaigns ADD COLUMN schedule_id INTEGER;
ALTER TABLE campaigns ADD COLUMN occurrence_at TEXT;
-- No occurrence is ever created twice, whatever the number of servers (NULLs are distinct).
CREATE UNIQUE INDEX campaigns_occurrence ON campaigns(schedule_id, occurrence_at);
CREATE INDEX campaigns_due ON campaigns(status, scheduled_at);
-- A server about to launch the campaign holds this claim for a few seconds, so that another
-- server that saw the same campaign due a moment earlier does not launch it as well.
ALTER TABLE campaigns ADD COLUMN launch_claim_until TEXT;

CREATE TABLE schedules (
    id                 INTEGER PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    segment_name       TEXT NOT NULL,
    template_name      TEXT NOT NULL,
    gateway            TEXT,                 -- NULL: the first configured gateway
    ad                 INTEGER NOT NULL,
    cron               TEXT NOT NULL,        -- 5 or 6 fields, in policy.timezone
    paused             INTEGER NOT NULL DEFAULT 0,
    created_at         TEXT NOT NULL,
    last_occurrence_at TEXT                  -- the latest occurrence handled (run or skipped)
);
