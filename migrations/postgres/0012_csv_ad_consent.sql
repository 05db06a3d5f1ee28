-- The ad-consent age for CSV segments (issue 18 item 8). Each member keeps the instant of its
-- `ad_consent_at` cell (NULL: the cell was empty or the file had no such column), and each
-- segment whether its file had the column (NULL: imported before this migration, when the
-- value was only a template variable, so the age of such a segment is unknown until it is
-- imported again). Nothing stored changes.
ALTER TABLE segment_members ADD COLUMN ad_consent_at TIMESTAMPTZ;
ALTER TABLE segments ADD COLUMN ad_consent_column BOOLEAN;
