-- Instance reports (src/store/instances.rs): each running application instance that enables them
-- (`Store::with_instance_reports`) writes, at most once a minute while it unlocks keys, the root
-- key versions and keyring generation it holds. A new root key version is activated only when
-- every instance seen recently holds it. Coordination data, no key material and no values.
CREATE TABLE kluis_instances (
    id          VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY NOT NULL,
    label       TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    root_key_id TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    generation  BIGINT,
    versions    TEXT CHARACTER SET ascii COLLATE ascii_bin,
    seen_at     BIGINT NOT NULL
) ENGINE=InnoDB;
