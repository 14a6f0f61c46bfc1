-- The collection tables (one per collection, one row per record; src/layout.rs) that exist in
-- this database, whatever schema a process opens it with: a shred deletes the subject's rows
-- from every one of them.
CREATE TABLE kluis_tables (
    collection TEXT PRIMARY KEY NOT NULL,
    table_name TEXT NOT NULL
);
