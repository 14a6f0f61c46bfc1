//! # kluis-blob
//!
//! Encrypted documents on a local directory or Azure Blob Storage, streamed in authenticated chunks.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
