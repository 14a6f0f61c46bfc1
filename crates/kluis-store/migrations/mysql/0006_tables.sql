-- The collection tables (one per collection, one row per record; src/layout.rs) that exist in
-- this database, whatever schema a process opens it with: a shred deletes the subject's rows
-- from every one of them.
CREATE TABLE kluis_tables (
    collection VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    table_name VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (collection)
) ENGINE=InnoDB;
