-- Kluis audit log (owner: kluis-service), MariaDB and MySQL. Append-only and hash-chained: each
-- entry's hash covers the previous entry's hash (docs/SERVICE.md gives the bytes). Names only,
-- never values. Text columns are utf8mb4_bin so they read back byte for byte.
CREATE TABLE kluis_audit (
    seq           BIGINT PRIMARY KEY NOT NULL,
    at_ms         BIGINT NOT NULL,
    actor         TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    roles         TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    support_grant TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    tenant        VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    subject       TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    collection    TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    record        MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    fields        MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    action        TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    outcome       TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    reason        TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    break_glass   TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    access_point  TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    purpose       TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    on_behalf_of  TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    hash          VARBINARY(32) NOT NULL,
    KEY kluis_audit_tenant (tenant, seq)
) ENGINE=InnoDB;
CREATE TABLE kluis_audit_head (
    id   INTEGER PRIMARY KEY NOT NULL,
    seq  BIGINT NOT NULL,
    hash VARBINARY(32) NOT NULL
) ENGINE=InnoDB;
INSERT INTO kluis_audit_head (id, seq, hash) VALUES (1, 0, UNHEX(REPEAT('00', 32)));
CREATE TABLE kluis_audit_checkpoints (
    seq   BIGINT PRIMARY KEY NOT NULL,
    at_ms BIGINT NOT NULL,
    hash  VARBINARY(32) NOT NULL
) ENGINE=InnoDB;
-- The service looks up which tenant owns (collection, id) to deny guessed or copied ids of
-- another tenant (the tenant comes from the row, never from the request).
CREATE INDEX kluis_records_by_id ON kluis_records (collection, id);
