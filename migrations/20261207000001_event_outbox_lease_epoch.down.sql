ALTER TABLE event_outbox_lease DROP COLUMN IF EXISTS epoch;
