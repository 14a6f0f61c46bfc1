-- Instance reports (src/store/instances.rs): each running application instance that enables them
-- (`Store::with_instance_reports`) writes, at most once a minute while it unlocks keys, the root
-- key versions and keyring generation it holds. A new root key version is activated only when
-- every instance seen recently holds it. Coordination data, no key material and no values.
CREATE TABLE kluis_instances (
    id          TEXT    PRIMARY KEY NOT NULL,
    label       TEXT    NOT NULL,
    root_key_id TEXT    NOT NULL,
    generation  INTEGER,
    versions    TEXT,
    seen_at     INTEGER NOT NULL
);
