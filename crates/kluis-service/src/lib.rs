//! # kluis-service
//!
//! Access control (tenants, roles, per-domain permissions), audit log, and the auth rules HR apps must meet.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
