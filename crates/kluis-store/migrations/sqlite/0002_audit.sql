-- Kluis audit log (owner: kluis-service), SQLite. Append-only and hash-chained: each entry's hash
-- covers the previous entry's hash (docs/SERVICE.md gives the bytes). Names only, never values.
CREATE TABLE kluis_audit (
    seq          INTEGER PRIMARY KEY NOT NULL,
    at_ms        INTEGER NOT NULL,
    actor        TEXT    NOT NULL,
    roles        TEXT    NOT NULL,
    support_grant TEXT   NOT NULL,
    tenant       TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    collection   TEXT    NOT NULL,
    record       TEXT    NOT NULL,
    fields       TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    break_glass  TEXT    NOT NULL,
    access_point TEXT    NOT NULL,
    purpose      TEXT    NOT NULL,
    on_behalf_of TEXT    NOT NULL,
    hash         BLOB    NOT NULL
);
CREATE INDEX kluis_audit_tenant ON kluis_audit (tenant, seq);
-- The chain head: one row, updated in the same transaction as each append (the write lock).
CREATE TABLE kluis_audit_head (
    id   INTEGER PRIMARY KEY NOT NULL,
    seq  INTEGER NOT NULL,
    hash BLOB    NOT NULL
);
INSERT INTO kluis_audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));
-- Periodic checkpoints (every N entries): (seq, hash of entry seq).
CREATE TABLE kluis_audit_checkpoints (
    seq   INTEGER PRIMARY KEY NOT NULL,
    at_ms INTEGER NOT NULL,
    hash  BLOB    NOT NULL
);
-- The service looks up which tenant owns (collection, id) to deny guessed or copied ids of
-- another tenant (the tenant comes from the row, never from the request).
CREATE INDEX kluis_records_by_id ON kluis_records (collection, id);
