-- The Reaper's entries by time, for the overview's "rescued lately": a partial index over
-- a rare kind, so the overview never reads the whole log and no other write pays for it.
CREATE INDEX idx_oncely_wal_reaped ON oncely_wal (recorded_at) WHERE kind = 'REAPED';
