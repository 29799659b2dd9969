ALTER TABLE event_outbox ALTER COLUMN event_data TYPE jsonb USING event_data::jsonb;

COMMENT ON COLUMN event_outbox.event_data IS 'The JSON envelope sent as the Kafka message value.';
