//! # kluis-store
//!
//! Encrypted records on SQLite, PostgreSQL and MariaDB through sqlx; wrapped keys in the same database.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
