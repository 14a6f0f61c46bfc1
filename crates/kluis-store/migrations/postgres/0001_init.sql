-- Kluis store, PostgreSQL. Only ids, names, versions, timestamps, key references and blind indexes are
-- in clear; every field value and every key is sealed or wrapped.
CREATE TABLE kluis_meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BYTEA NOT NULL
);
CREATE TABLE kluis_domain_keys (
    tenant  TEXT    NOT NULL,
    domain  TEXT    NOT NULL,
    version BIGINT NOT NULL,
    state   TEXT    NOT NULL,
    wrapped BYTEA,
    PRIMARY KEY (tenant, domain, version)
);
CREATE TABLE kluis_subject_keys (
    tenant     TEXT    NOT NULL,
    domain     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    version    BIGINT NOT NULL,
    wrapped    BYTEA    NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, domain, subject, version)
);
CREATE INDEX kluis_subject_keys_subject ON kluis_subject_keys (tenant, subject);
CREATE TABLE kluis_records (
    tenant       TEXT    NOT NULL,
    collection   TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    version      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    retain_until BIGINT,
    PRIMARY KEY (tenant, collection, id)
);
CREATE INDEX kluis_records_subject ON kluis_records (tenant, subject, collection, id);
CREATE TABLE kluis_fields (
    tenant     TEXT NOT NULL,
    collection TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    field      TEXT NOT NULL,
    domain     TEXT NOT NULL,
    sealed     BYTEA NOT NULL,
    PRIMARY KEY (tenant, collection, record_id, field)
);
CREATE TABLE kluis_blind_index (
    tenant      TEXT    NOT NULL,
    collection  TEXT    NOT NULL,
    record_id   TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    key_version BIGINT NOT NULL,
    idx         BYTEA    NOT NULL,
    PRIMARY KEY (tenant, collection, record_id, field)
);
CREATE INDEX kluis_blind_index_lookup ON kluis_blind_index (tenant, collection, field, idx);
CREATE TABLE kluis_legal_overrides (
    seq           BIGSERIAL PRIMARY KEY,
    tenant        TEXT    NOT NULL,
    action        TEXT    NOT NULL,
    target        TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    authorised_by TEXT    NOT NULL,
    at            BIGINT NOT NULL
);
CREATE TABLE kluis_documents (
    tenant      TEXT    NOT NULL,
    document_id TEXT    NOT NULL,
    domain      TEXT    NOT NULL,
    subject     TEXT    NOT NULL,
    record_id   TEXT,
    object_name TEXT    NOT NULL,
    key_ref     TEXT    NOT NULL,
    padded_size BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    sealed_meta BYTEA    NOT NULL,
    PRIMARY KEY (tenant, document_id)
);
CREATE INDEX kluis_documents_subject ON kluis_documents (tenant, subject);
CREATE INDEX kluis_documents_record ON kluis_documents (tenant, record_id);
