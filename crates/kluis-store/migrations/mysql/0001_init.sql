-- Kluis store, MariaDB and MySQL. Only ids, names, versions, timestamps, key references and blind indexes are
-- in clear; every field value and every key is sealed or wrapped.
CREATE TABLE kluis_meta (
    name  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin PRIMARY KEY NOT NULL,
    value LONGBLOB NOT NULL
) ENGINE=InnoDB;
CREATE TABLE kluis_domain_keys (
    tenant  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    domain  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    version BIGINT NOT NULL,
    state   VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    wrapped LONGBLOB,
    PRIMARY KEY (tenant, domain, version)
) ENGINE=InnoDB;
CREATE TABLE kluis_subject_keys (
    tenant     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    domain     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    subject    VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    version    BIGINT NOT NULL,
    wrapped    LONGBLOB    NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, domain, subject, version)
) ENGINE=InnoDB;
CREATE INDEX kluis_subject_keys_subject ON kluis_subject_keys (tenant, subject);
CREATE TABLE kluis_records (
    tenant       VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    collection   VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    id           VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    subject      VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    retain_until BIGINT,
    PRIMARY KEY (tenant, collection, id)
) ENGINE=InnoDB;
CREATE INDEX kluis_records_subject ON kluis_records (tenant, subject, collection, id);
CREATE TABLE kluis_fields (
    tenant     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    collection VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    record_id  VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    field      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    domain     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    sealed     LONGBLOB NOT NULL,
    PRIMARY KEY (tenant, collection, record_id, field)
) ENGINE=InnoDB;
CREATE TABLE kluis_blind_index (
    tenant      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    collection  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    record_id   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    field       VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    key_version BIGINT NOT NULL,
    idx         VARBINARY(32)    NOT NULL,
    PRIMARY KEY (tenant, collection, record_id, field)
) ENGINE=InnoDB;
CREATE INDEX kluis_blind_index_lookup ON kluis_blind_index (tenant, collection, field, idx);
CREATE TABLE kluis_legal_overrides (
    seq           BIGINT PRIMARY KEY AUTO_INCREMENT,
    tenant        VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    action        VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    target        TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin    NOT NULL,
    reason        TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin    NOT NULL,
    authorised_by TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin    NOT NULL,
    at            BIGINT NOT NULL
) ENGINE=InnoDB;
CREATE TABLE kluis_documents (
    tenant      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    document_id VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    domain      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    subject     VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    record_id   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin,
    object_name VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    key_ref     VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin    NOT NULL,
    padded_size BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    sealed_meta LONGBLOB    NOT NULL,
    PRIMARY KEY (tenant, document_id)
) ENGINE=InnoDB;
CREATE INDEX kluis_documents_subject ON kluis_documents (tenant, subject);
CREATE INDEX kluis_documents_record ON kluis_documents (tenant, record_id);
