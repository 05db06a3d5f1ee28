-- Workers (issue 8): every `campaign run` process is a worker of the campaign's execution, as
-- Spring Batch records the step executions of a partitioned step. SQLite has one writer, so an
-- execution has exactly one worker here; PostgreSQL runs several (migrations/postgres/0003).
CREATE TABLE workers (
    id           INTEGER PRIMARY KEY,
    campaign_id  INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    execution_id INTEGER NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    status       TEXT NOT NULL,              -- STARTED COMPLETED STOPPED FAILED ABANDONED
    exit_message TEXT,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    process      TEXT,                       -- boot id, pid namespace, start time (lease::Process)
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    ended_at     TEXT,
    read_count   INTEGER NOT NULL DEFAULT 0,
    sent         INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    suppressed   INTEGER NOT NULL DEFAULT 0,
    commits      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX workers_by_execution ON workers(execution_id);
CREATE INDEX workers_by_campaign ON workers(campaign_id, status);
-- The lease holder's process identity, for the dead-process shortcut (see src/lease.rs).
ALTER TABLE campaigns ADD COLUMN lease_process TEXT;
-- The worker that claimed a message (sending) or settled it.
ALTER TABLE messages ADD COLUMN claimed_by INTEGER;
