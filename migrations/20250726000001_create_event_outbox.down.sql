DROP TABLE IF EXISTS event_outbox_relay;
DROP TABLE IF EXISTS event_outbox_lease;
DROP TABLE IF EXISTS event_outbox;
