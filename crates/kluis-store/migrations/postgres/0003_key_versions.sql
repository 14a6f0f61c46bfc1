-- Kluis store 0003, PostgreSQL: which key version wraps or sealed what, so a domain key rotation
-- can be followed to the end (re-encryption, usage, retirement). Key references only, no key bytes.
-- wrap_version 0 and key_version NULL are filled in by the store right after this migration
-- (it reads the version from each wrapped key's and each document key reference's header).
ALTER TABLE kluis_subject_keys ADD COLUMN wrap_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE kluis_fields ADD COLUMN key_version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE kluis_documents ADD COLUMN key_version BIGINT;
CREATE INDEX kluis_subject_keys_wrap ON kluis_subject_keys (tenant, domain, wrap_version);
