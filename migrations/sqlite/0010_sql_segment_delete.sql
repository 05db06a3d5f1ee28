-- `munja segment delete NAME` on an SQL segment: its versions leave every list, and stay for
-- the campaigns created from them (their records name the query they ran).
ALTER TABLE sql_segments ADD COLUMN deleted_at TEXT;
