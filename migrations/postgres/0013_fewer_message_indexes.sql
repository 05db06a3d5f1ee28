-- Fewer indexes on messages: a claim and a commit each rewrite a message's row, and since
-- its state changes neither can be a HOT update, so each writes an entry in every index of
-- the table. Three of those indexes did work another one does:
-- * messages_claimed (claimed_by, where sending): a dead worker's claims are found through
--   messages_by_state (campaign, 'sending'), a few chunks per worker;
-- * messages_by_phone (phone, sent_at) and the unique messages_campaign_phone (campaign,
--   phone) become one unique (phone, campaign): the frequency cap finds a number's messages
--   by phone, and a snapshot still merges a number given twice.
DROP INDEX messages_claimed;
CREATE UNIQUE INDEX messages_phone_campaign ON messages(phone, campaign_id);
DROP INDEX messages_campaign_phone;
DROP INDEX messages_by_phone;
