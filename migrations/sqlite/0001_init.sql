-- munja job repository and outbox, SQLite dialect.
-- Model: a campaign is a Spring Batch job instance; each `campaign run` an execution.
-- Every message is one row moving pending -> sending -> sent | failed | suppressed | cancelled.

CREATE TABLE optouts (
    phone       TEXT PRIMARY KEY,          -- canonical national digits, e.g. 01012345678
    source      TEXT NOT NULL,             -- file name, 'cli', ...
    created_at  TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE segments (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    source       TEXT NOT NULL,
    columns      TEXT NOT NULL,            -- JSON array of variable names
    member_count INTEGER NOT NULL,
    imported_at  TEXT NOT NULL
);

CREATE TABLE segment_members (
    segment_id    INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,        -- row order in the file, first row wins on duplicates
    phone         TEXT NOT NULL,
    vars          TEXT NOT NULL,           -- JSON object of the other columns
    night_consent INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (segment_id, seq),
    UNIQUE (segment_id, phone)
);

CREATE TABLE campaigns (
    id                 INTEGER PRIMARY KEY,
    uid                TEXT NOT NULL UNIQUE, -- random; prefix of every message ref
    name               TEXT NOT NULL,
    segment_name       TEXT NOT NULL,
    template_name      TEXT NOT NULL,
    template_body      TEXT NOT NULL,        -- snapshot of the template at create time
    template_subject   TEXT,
    gateway            TEXT NOT NULL,
    ad                 INTEGER NOT NULL,
    sender_number      TEXT NOT NULL,
    brand              TEXT,
    optout_number      TEXT,
    status             TEXT NOT NULL,        -- CREATED STARTED STOPPED FAILED COMPLETED CANCELLED
    exit_message       TEXT,
    created_at         TEXT NOT NULL,
    snapshot_at        TEXT,                 -- set in the same transaction as the message rows
    total              INTEGER NOT NULL DEFAULT 0,
    stop_requested     INTEGER NOT NULL DEFAULT 0,
    cancel_requested   INTEGER NOT NULL DEFAULT 0,
    lease_execution    INTEGER,              -- fencing token: the execution that holds the run
    lease_host         TEXT,
    lease_pid          INTEGER,
    lease_heartbeat_at TEXT
);

CREATE TABLE executions (
    id           INTEGER PRIMARY KEY,
    campaign_id  INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    status       TEXT NOT NULL,              -- STARTED STOPPED FAILED COMPLETED ABANDONED
    exit_code    TEXT,
    exit_message TEXT,
    started_at   TEXT NOT NULL,
    ended_at     TEXT,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    read_count   INTEGER NOT NULL DEFAULT 0,
    sent         INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    suppressed   INTEGER NOT NULL DEFAULT 0,
    commits      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX executions_campaign ON executions(campaign_id);

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    campaign_id     INTEGER NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    ref             TEXT NOT NULL,           -- idempotency key: '{campaign uid}-{seq}'
    phone           TEXT NOT NULL,
    vars            TEXT NOT NULL,
    night_consent   INTEGER NOT NULL,
    state           TEXT NOT NULL,           -- pending sending sent failed suppressed cancelled
    reason          TEXT,                    -- error or suppression code
    retryable       INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    gateway_id      TEXT,
    type            TEXT,
    bytes           INTEGER,
    last_attempt_at TEXT,
    sent_at         TEXT,
    execution_id    INTEGER,
    UNIQUE (campaign_id, seq)
);
CREATE INDEX messages_by_state ON messages(campaign_id, state, id);
CREATE INDEX messages_by_phone ON messages(phone, sent_at);

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY,
    message_id   INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    campaign_id  INTEGER NOT NULL,
    execution_id INTEGER NOT NULL,
    at           TEXT NOT NULL,
    outcome      TEXT NOT NULL,              -- accepted duplicate rejected throttled transient timeout unauthorized lookup_found lookup_missing
    http_status  INTEGER,
    gateway_id   TEXT,
    error        TEXT,
    latency_ms   INTEGER NOT NULL
);
CREATE INDEX attempts_by_message ON attempts(message_id);
CREATE INDEX attempts_by_campaign ON attempts(campaign_id, id);
