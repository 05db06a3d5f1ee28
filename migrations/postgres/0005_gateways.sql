-- Several gateways per campaign (campaigns.gateway holds their names, comma-separated, in
-- failover order; gateway_split shares traffic by weight instead), and which gateway every
-- message and every attempt went to.
ALTER TABLE campaigns ADD COLUMN gateway_split BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE messages ADD COLUMN gateway TEXT;
ALTER TABLE attempts ADD COLUMN gateway TEXT;
