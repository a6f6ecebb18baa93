-- Retention reads ended operations of a domain, oldest first: give it an index (it scanned
-- the table). The created_at index served no query.

CREATE INDEX idx_oncely_operations_ended ON oncely_operations (domain, completed_at, id);
DROP INDEX idx_oncely_operations_created_at ON oncely_operations;

-- The log's foreign key checked and share-locked the operation row for every entry.
-- Retention deletes an operation's log itself, in the same transaction.
ALTER TABLE oncely_wal DROP FOREIGN KEY fk_oncely_wal_operation;
