-- Retention reads ended operations of a domain, oldest first: give it an index (it scanned
-- the table). The created_at index served no query.

CREATE INDEX idx_oncely_operations_ended ON oncely_operations (domain, completed_at, id);
DROP INDEX idx_oncely_operations_created_at ON oncely_operations;
