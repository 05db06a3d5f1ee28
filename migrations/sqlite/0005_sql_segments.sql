-- SQL segments: a segment that is a query on the company's own database (a `[sources.NAME]`),
-- read when a campaign snapshots it. Every `segment define` adds a version; old versions stay,
-- so a campaign can always say which exact query text it used.
CREATE TABLE sql_segments (
    id           INTEGER PRIMARY KEY,
    name         TEXT NOT NULL,
    version      INTEGER NOT NULL,
    source       TEXT NOT NULL,          -- the [sources.NAME] it reads (never a URL)
    query        TEXT NOT NULL,          -- exactly as defined
    phone_column TEXT NOT NULL,
    defined_at   TEXT NOT NULL,
    UNIQUE (name, version)
);

-- The SQL segment version a campaign was created from, and when its snapshot read it.
CREATE TABLE campaign_sql_segments (
    campaign_id    INTEGER PRIMARY KEY REFERENCES campaigns(id) ON DELETE CASCADE,
    sql_segment_id INTEGER NOT NULL REFERENCES sql_segments(id),
    as_of          TEXT,                 -- the :as_of value of the snapshot
    rows_read      INTEGER               -- source rows the snapshot read
);

-- A snapshot streamed from a query merges duplicate numbers as it inserts them.
CREATE UNIQUE INDEX messages_campaign_phone ON messages(campaign_id, phone);
