-- Kluis access registry (owner: kluis-service), MariaDB and MySQL: support grants, role
-- assignments and revocations of one tenant, one row each. `body` is the entry as JSON (names,
-- ids, times; never a field value); `mac` is an HMAC-SHA256 over every column under a key derived
-- from the tenant's `access_registry` domain key version `key_version` (docs/SERVICE.md), so a row
-- inserted, edited or moved to another tenant by whoever holds the database does not verify and is
-- refused. Text columns are utf8mb4_bin so they read back byte for byte.
CREATE TABLE kluis_access (
    tenant      VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    kind        VARCHAR(16) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    id          VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    body        MEDIUMTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    key_version BIGINT NOT NULL,
    mac         VARBINARY(64) NOT NULL,
    PRIMARY KEY (tenant, kind, id)
) ENGINE=InnoDB;
