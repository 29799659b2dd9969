-- The lease epoch: a fencing token. It goes up by one each time a shard's
-- lease is taken (a new owner, or the same owner after its lease lapsed),
-- never on renewal. The relay's claims and marks carry the epochs it holds
-- and touch only rows of shards whose lease still has that owner and epoch,
-- so an instance that was paused or stalled past its lease's expiry can
-- neither claim nor mark rows of a shard another instance has taken.
ALTER TABLE event_outbox_lease ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;

COMMENT ON COLUMN event_outbox_lease.epoch IS 'Fencing token: incremented each time the lease is taken; the relay''s claims and marks require the epoch they were issued under.';
