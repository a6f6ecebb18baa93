-- The W3C trace context an operation was submitted under: every span of its life, on any
-- node, belongs to that trace.
ALTER TABLE oncely_operations ADD COLUMN traceparent TEXT;
