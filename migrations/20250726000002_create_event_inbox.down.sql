DROP TABLE IF EXISTS event_inbox;
