-- Retention of the delivery report log: `munja purge` deletes the reports of finished campaigns
-- (and of refs no message has) received before its cut-off, and deleting a campaign deletes its
-- reports; these indexes let both find them without reading the whole log.
CREATE INDEX delivery_reports_by_message ON delivery_reports(message_id) WHERE message_id IS NOT NULL;
CREATE INDEX delivery_reports_by_received ON delivery_reports(received_at);
