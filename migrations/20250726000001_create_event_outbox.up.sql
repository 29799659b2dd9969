-- The transactional outbox. One row per event, written in the same
-- transaction as the business rows that caused it, delivered by the relay.
--
-- Ordering: `seq` is the commit-order key the relay sorts by. Rows of one
-- aggregate always hash to the same `shard`; every shard is owned by exactly
-- one relay instance at a time (event_outbox_lease), so one aggregate is
-- never published by two relays at once.
CREATE TABLE event_outbox (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID        NOT NULL UNIQUE,
    aggregate_type  TEXT        NOT NULL,
    aggregate_id    TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    event_version   INTEGER     NOT NULL DEFAULT 1,
    topic           TEXT        NOT NULL,
    event_key       TEXT        NOT NULL,
    event_data      JSONB       NOT NULL,
    headers         JSONB       NOT NULL DEFAULT '{}'::jsonb,
    state           TEXT        NOT NULL DEFAULT 'pending'
                    CONSTRAINT event_outbox_state_check
                    CHECK (state IN ('pending', 'published', 'dead', 'released')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ,
    retry_count     INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    shard           SMALLINT    NOT NULL
                    GENERATED ALWAYS AS
                    ((hashtextextended(aggregate_type || '/' || aggregate_id, 0) & 63)::smallint) STORED
);

COMMENT ON TABLE event_outbox IS 'Transactional outbox: events committed with business rows, delivered to Kafka by the outbox relay.';
COMMENT ON COLUMN event_outbox.event_data IS 'The JSON envelope sent as the Kafka message value.';
COMMENT ON COLUMN event_outbox.state IS 'pending: to deliver; published: delivered (kept only with a retention period); dead: retries exhausted, kept for operators; released: dead row an operator released so its aggregate continues.';

-- The relay's claim: pending rows in commit order (filtered by owned shard). Partial, so a
-- poll never touches published or dead rows.
CREATE INDEX ix_event_outbox_pending ON event_outbox (seq) WHERE state = 'pending';

-- Rows that hold back later events of their aggregate: failing (retried)
-- rows and dead rows. Small, so the relay's ordering check is cheap.
CREATE INDEX ix_event_outbox_blocking ON event_outbox (aggregate_type, aggregate_id, seq)
    WHERE state = 'dead' OR (state = 'pending' AND retry_count > 0);

-- Retention sweeps of published rows.
CREATE INDEX ix_event_outbox_published ON event_outbox (published_at) WHERE state = 'published';

-- Shard leases: which relay instance may publish which shard, until when.
CREATE TABLE event_outbox_lease (
    shard      SMALLINT    PRIMARY KEY CHECK (shard BETWEEN 0 AND 63),
    owner      UUID,
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity'
);
INSERT INTO event_outbox_lease (shard) SELECT generate_series(0, 63);

-- Live relay instances, for a fair split of the shards.
CREATE TABLE event_outbox_relay (
    instance_id  UUID        PRIMARY KEY,
    hostname     TEXT        NOT NULL DEFAULT '',
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
