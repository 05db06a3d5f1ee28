-- A worker's heartbeat in a row of its own (issue 18). A chunk commit locks its worker's row
-- (the fence, then its counters) and a snapshot or a worker's end locks the campaign's row: a
-- heartbeat written to either waited behind them, so a slow commit could cost a live worker
-- its lease. Only the heartbeat writes this row; a rescue reads it (skipping a beat in
-- progress), and the lease's age is that of the latest beat of any worker of the execution
-- that holds it (campaigns.lease_heartbeat_at keeps the execution's start).
CREATE TABLE worker_heartbeats (
    worker_id    BIGINT PRIMARY KEY REFERENCES workers(id) ON DELETE CASCADE,
    heartbeat_at TIMESTAMPTZ NOT NULL   -- database clock
);
INSERT INTO worker_heartbeats (worker_id, heartbeat_at) SELECT id, heartbeat_at FROM workers;
ALTER TABLE workers DROP COLUMN heartbeat_at;
