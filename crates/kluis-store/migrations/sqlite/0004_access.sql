-- Kluis access registry (owner: kluis-service), SQLite: support grants, role assignments and
-- revocations of one tenant, one row each. `body` is the entry as JSON (names, ids, times; never a
-- field value); `mac` is an HMAC-SHA256 over every column under a key derived from the tenant's
-- `access_registry` domain key version `key_version` (docs/SERVICE.md), so a row inserted, edited or moved
-- to another tenant by whoever holds the database does not verify and is refused.
CREATE TABLE kluis_access (
    tenant      TEXT    NOT NULL,
    kind        TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    key_version INTEGER NOT NULL,
    mac         BLOB    NOT NULL,
    PRIMARY KEY (tenant, kind, id)
);
