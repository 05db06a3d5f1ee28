-- The ad-consent age for CSV segments (issue 18 item 8). Each member keeps the instant of its
-- `ad_consent_at` cell (UTC, the RFC 3339 text of every time column; NULL: the cell was empty
-- or the file had no such column), and each segment whether its file had the column (1/0;
-- NULL: imported before this migration, when the value was only a template variable, so the
-- age of such a segment is unknown until it is imported again). Nothing stored changes.
ALTER TABLE segment_members ADD COLUMN ad_consent_at TEXT;
ALTER TABLE segments ADD COLUMN ad_consent_column INTEGER;
