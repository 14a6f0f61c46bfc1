//! # kluis-blob
//!
//! Encrypted documents on a local directory or Azure Blob Storage, streamed in authenticated chunks.
//!
//! - [`DocumentVault`]: put a document from an [`tokio::io::AsyncRead`] (streamed, never whole in
//!   memory), get it to an [`tokio::io::AsyncWrite`] or chunk by chunk ([`DocumentReader`]), get
//!   a byte range (only the chunks holding it are fetched), its decrypted metadata, delete it,
//!   and garbage-collect objects a catalog no longer knows.
//! - [`BlobBackend`]: opaque objects with staged uploads. [`LocalDir`] (default; also on SMB
//!   shares such as Azure Files, and NFS) and, with the `azure` feature, [`azure::AzureBlob`].
//!
//! - [`catalog::Documents`]: the same documents joined with the `kluis-store` catalog: put,
//!   get, list by subject or record, delete, re-encrypt after a key rotation, and garbage
//!   collection against the catalog's object names.
//!
//! The format of a stored object is the document format of `kluis-core` (`docs/FORMAT.md` §9);
//! how documents are named, stored and collected is in `docs/DOCUMENTS.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "azure")]
pub mod azure;
mod backend;
pub mod catalog;
mod error;
mod local;
mod name;
mod vault;

pub use backend::{BlobBackend, GcReport, Upload};
pub use error::{BlobError, Result};
pub use local::{
    DEFAULT_WRITE_BUFFER, LocalCapabilities, LocalDir, LocalUpload, Publish, TRANSIENT_ATTEMPTS,
};
pub use name::{NAME_LEN, ObjectName};
pub use vault::{
    DocumentDescriptor, DocumentKeys, DocumentReader, DocumentVault, MAX_ID_LEN, NewDocument, VaultOptions,
};
