-- Opt-outs added while a campaign runs are looked up by time, every second.
CREATE INDEX optouts_by_created ON optouts(created_at);
-- The segment import a campaign was checked against at create time; a run refuses a newer one.
ALTER TABLE campaigns ADD COLUMN segment_imported_at TEXT;
