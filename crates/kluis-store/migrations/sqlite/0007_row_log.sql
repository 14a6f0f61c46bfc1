-- The row log (src/row_log.rs): every change Kluis makes to a row of a collection table, in order,
-- with the row tag written (NULL: the row was deleted). Its running hash is kept in the audit head
-- and covered by each audit entry appended after it (docs/SERVICE.md), so `kluis audit verify`
-- finds rows rolled back to an older state or deleted outside Kluis. Ids and tags, never values.
CREATE TABLE kluis_row_log (
    seq        INTEGER PRIMARY KEY NOT NULL,
    tenant     TEXT    NOT NULL,
    collection TEXT    NOT NULL,
    record     TEXT    NOT NULL,
    row_tag    BLOB
);
ALTER TABLE kluis_audit_head ADD COLUMN rows_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE kluis_audit_head ADD COLUMN rows_hash BLOB NOT NULL DEFAULT x'0000000000000000000000000000000000000000000000000000000000000000';
-- The row log position and running hash an entry covers (NULL in entries written before the row log).
ALTER TABLE kluis_audit ADD COLUMN rows_seq INTEGER;
ALTER TABLE kluis_audit ADD COLUMN rows_hash BLOB;
