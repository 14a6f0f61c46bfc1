//! # kluis-service
//!
//! The thin layer an HR application calls instead of the store: it decides who may do what, and
//! offers the authentication rules that Dutch HR apps are held to.
//!
//! - [`authz`]: principals (a user, at most one tenant, roles, an optional support grant),
//!   actions on data domains, built-in HR roles, custom roles from a TOML policy file, a
//!   deny-by-default decision that never fails, an [`authz::AccessProof`] that only an allow
//!   decision carries, break-glass access with a stated reason, support access grants that lapse
//!   after 31 days unused, and an access-review listing.
//! - [`auth`]: password policy (NIST SP 800-63B-4 preset and the stricter vendor preset), Argon2id
//!   password hashing with rehash on login, single-use welcome passwords, brute-force throttling
//!   per account and per source, session idle lock, and TOTP (RFC 6238) with replay refusal.
//! - [`clock`]: a wall clock that tests control.
//! - [`Service`]: the facade over `kluis_store::Store` (check, load only the allowed domain keys,
//!   call the store, audit; fail closed) and [`audit`]: the hash-chained audit log's
//!   verification, checkpoints and JSON-lines export. See `docs/SERVICE.md`.
//!
//! ```
//! use kluis_core::{DomainName, TenantId};
//! use kluis_service::authz::{Action, Authorizer, Principal, Request, RoleName, Target, UserId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let authz = Authorizer::builtin();
//! let acme = TenantId::new("acme")?;
//! let doctor = Principal::new(UserId::new("dr.jansen")?, Some(acme.clone()), [RoleName::new("company_doctor")?]);
//! let clerk = Principal::new(UserId::new("p.devries")?, Some(acme.clone()), [RoleName::new("hr_manager")?]);
//! let medical = [DomainName::medical()];
//! let target = Target::record("absence", "r-17", Some("emp-42"));
//! let decision = authz.check(&doctor, &Request::new(&acme, Action::Read, &medical, target.clone()));
//! let proof = decision.into_proof()?;
//! assert!(proof.covers(&acme, &DomainName::medical(), "absence", "r-17"));
//! let denied = authz.check(&clerk, &Request::new(&acme, Action::Read, &medical, target));
//! assert!(!denied.is_allowed());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod authz;
pub mod erasure;
mod error;
pub mod package;
mod service;

pub use error::{Error, Result};
/// The wall clock of [`kluis_authz`], which tests control.
pub use kluis_authz::clock;
pub use service::{AdminActor, AdminEvent, RequestContext, Service, ServiceConfig};
pub use service::{DOCUMENTS, NOT_ALLOWED, ServiceDocuments};
