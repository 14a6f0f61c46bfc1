//! # kluis-kms
//!
//! Root key providers in a cloud KMS: Azure Key Vault and AWS KMS, with cached unwraps.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
