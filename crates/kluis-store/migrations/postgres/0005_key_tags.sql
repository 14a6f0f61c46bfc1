-- Kluis store 0005, PostgreSQL: the state tag of each domain key row (docs/FORMAT.md §7.5), an
-- HMAC-SHA256 under a key derived from the row's own domain key over the versions and states of
-- its tenant and domain. NULL for destroyed versions, and for rows written before this
-- migration until `kluis keys adopt` tags them (until then their sets are refused).
ALTER TABLE kluis_domain_keys ADD COLUMN tag BYTEA;
