-- The consumer inbox. A consumer records every event it handles here, in
-- the same transaction as the handler's own writes (and any follow-up
-- events it adds to the outbox). A redelivered event finds its row and is
-- skipped, so its effect happens once even though Kafka delivers at least
-- once.
CREATE TABLE event_inbox (
    consumer        TEXT        NOT NULL,
    event_id        UUID        NOT NULL,
    event_type      TEXT        NOT NULL,
    topic           TEXT,
    kafka_partition INTEGER,
    kafka_offset    BIGINT,
    processed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

COMMENT ON TABLE event_inbox IS 'Consumer inbox: one row per (consumer, event) handled, committed with the handler''s effects; duplicates are skipped.';
COMMENT ON COLUMN event_inbox.consumer IS 'The consumer that handled the event (by default its Kafka consumer group id).';

-- Retention sweeps (Inbox::purge_older_than).
CREATE INDEX ix_event_inbox_processed_at ON event_inbox (processed_at);
