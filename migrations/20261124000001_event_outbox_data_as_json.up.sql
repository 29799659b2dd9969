-- The envelope is stored as `json`, not `jsonb`: the relay sends it to Kafka
-- as text, and `jsonb` had to be turned back into text on every claim. That
-- conversion was most of the claim's cost (docs/benchmarks.md: about 3 µs of
-- Postgres CPU per 1 KiB event). `json` keeps the exact text the publisher
-- serialized (key order included) and still rejects invalid JSON on insert;
-- the `->`/`->>` operators work on it as before.
--
-- This rewrites the table under an exclusive lock: run it while the outbox is
-- small (it normally is: delivered rows are deleted).
ALTER TABLE event_outbox ALTER COLUMN event_data TYPE json USING event_data::json;

COMMENT ON COLUMN event_outbox.event_data IS 'The JSON envelope sent as the Kafka message value, exactly as serialized by the publisher.';
