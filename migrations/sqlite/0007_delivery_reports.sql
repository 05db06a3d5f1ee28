-- Delivery reports: a message's delivery state, separate from its send state, and the log of
-- every report received (push or poll), including those for refs no message has.
-- A report is applied regardless of the message's send state (even while it is still `sending`
-- or `in_doubt`): the send's own commit never touches these columns, so no report is lost.
ALTER TABLE messages ADD COLUMN delivery TEXT;        -- NULL (none yet), delivered, undelivered: final
ALTER TABLE messages ADD COLUMN delivery_code TEXT;   -- the carrier's result code
ALTER TABLE messages ADD COLUMN delivered_at TEXT;    -- when the carrier says it happened
-- A report finds its message by the ref's parts '{campaign uid}-{seq}' (campaigns.uid and
-- messages(campaign_id, seq) are unique indexes): no index on ref, nothing more to write per message.
CREATE INDEX messages_by_delivery ON messages(campaign_id, delivery, id) WHERE delivery IS NOT NULL;

CREATE TABLE delivery_reports (
    id          INTEGER PRIMARY KEY,
    gateway     TEXT NOT NULL,                 -- gateway name in munja.toml
    ref         TEXT NOT NULL,                 -- the message ref the report names
    message_id  INTEGER,                       -- NULL: no message has this ref
    status      TEXT NOT NULL,                 -- delivered undelivered intermediate
    code        TEXT,
    reported_at TEXT NOT NULL,                 -- the report's own time
    received_at TEXT NOT NULL,
    effect      TEXT NOT NULL                  -- applied duplicate ignored intermediate unknown
);
CREATE INDEX delivery_reports_by_ref ON delivery_reports(ref);
CREATE INDEX delivery_reports_by_effect ON delivery_reports(effect, gateway);
