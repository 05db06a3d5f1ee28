-- The shared rate limit: one token bucket per gateway name, used by every run of every campaign
-- on this database. Runs take small slices of it (Store::take_tokens), so that together they
-- never send faster than the gateway's rate_per_sec (plus its burst).
CREATE TABLE gateway_buckets (
    gateway     TEXT PRIMARY KEY,
    tokens      REAL NOT NULL,  -- tokens left at refilled_at, at most the gateway's burst
    refilled_at REAL NOT NULL   -- unix seconds with milliseconds, by the database clock
);
