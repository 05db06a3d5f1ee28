-- No foreign key checked per message. PostgreSQL checks a foreign key with a trigger per
-- inserted row: the snapshot's messages.campaign_id check took 630 ms of 1,810 ms for
-- 200,000 messages (EXPLAIN ANALYZE), and every chunk's commit checked attempts.message_id
-- once per attempt. Both references are kept by the only writers instead:
-- * messages are inserted only by a campaign's snapshot, in a transaction that holds the
--   campaign's row (FOR UPDATE, the lease), so the campaign exists and stays;
-- * attempts are inserted only by a commit (or a settlement) in the transaction whose UPDATE
--   of the same messages, still claimed by the committing worker, succeeded: those rows are
--   locked, so they exist and stay;
-- * deleting a campaign deletes its reports, attempts, messages, executions and row, in that
--   order, in one transaction, so the cascades were never used.
ALTER TABLE messages DROP CONSTRAINT messages_campaign_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_message_id_fkey;
