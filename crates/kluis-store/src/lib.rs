//! # kluis-store
//!
//! Encrypted records on SQLite (the embedded default), PostgreSQL and MariaDB/MySQL through sqlx;
//! wrapped domain and subject keys live in the same database (never the root key).
//!
//! - [`schema`]: collections and fields (type, domain, blind index, size), in code or TOML.
//! - [`Store`]: create, read, update, delete, list with pagination, blind-index search,
//!   transactions, optimistic concurrency, withheld fields, retention, crypto-shredding.
//! - [`engine`]: what differs between SQLite, PostgreSQL and MariaDB, as the few items of the
//!   sealed [`Engine`] trait; every statement is written once, generic over it.
//!
//! Every field value is sealed with the subject key of its (tenant, domain, subject), bound to
//! tenant, domain, collection, field and record id. docs/STORE.md says what a DBA can see and how
//! a shred is made real on each engine.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod app_table;
pub mod audit;
/// The SQL layer under [`Store`]: rows already sealed, never a key or a plaintext value. Public
/// only with the `sql-layer` feature, which this crate's own tests and benches turn on; not part
/// of the API.
#[cfg(feature = "sql-layer")]
#[doc(hidden)]
pub mod backend;
#[cfg(not(feature = "sql-layer"))]
mod backend;
pub mod engine;
mod error;
pub mod layout;
pub mod row_log;
pub mod schema;
mod store;
mod value;

pub use app_table::{AppRow, AppTable, Dialect, OpenedRow, ProtectedColumn, SealedRow, TenantSource};
pub use backend::DocumentRow;
pub use engine::{Engine, EngineKind, MySql, Postgres, Sqlite};
pub use error::{Result, StoreError};
pub use schema::{FieldDef, FieldType, Pseudonym, Schema, field};
pub use store::{
    Access, AdoptReport, BatchLimits, Changes, ColumnsStep, DEFAULT_INSTANCE_WINDOW, EncryptPlan, FieldValue,
    Held, INSTANCE_REPORT_EVERY, InstanceReport, KeyUsage, KeyringRecord, LegalOverride, MigrationReport,
    NewRecord, Op, Page, Record, ReencryptProgress, Scope, ShredReport, Store, Written, check_id,
};
pub use value::Value;
