//! Authentication rules host applications must meet (see `../shared/REQUIREMENTS.md`): the
//! application authenticates its users itself, with these parts.
//!
//! - [`password`]: [`Password`] (NFKC-normalised, zeroized), [`PasswordPolicy`] with the NIST
//!   SP 800-63B-4 preset (default) and the vendor preset, and [`PasswordHistory`].
//! - [`hash`]: Argon2id at OWASP parameters, rehash on login when they rise.
//! - [`welcome`]: random, single-use, short-lived welcome passwords that must be changed.
//! - [`throttle`]: brute-force throttling per account and per source.
//! - [`session`]: idle lock after 20 minutes.
//! - [`totp`]: RFC 6238 second factor with replay refusal.
//!
//! A login, end to end (the application stores the hash, the TOTP guard and the session):
//!
//! ```
//! use std::sync::Arc;
//! use kluis_service::auth::*;
//! use kluis_service::clock::{Clock, ManualClock};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let clock = Arc::new(ManualClock::at_unix(1_800_000_000));
//! let hasher = PasswordHasher::owasp();
//! let policy = PasswordPolicy::nist();
//! let ctx = PasswordContext { user_name: "p.devries@acme.nl", tenant: Some("acme"), extra: &[] };
//!
//! // Enrolment: the user's own password, checked, then hashed.
//! let chosen = Password::new("vlinder kompas regenjas");
//! policy.check(&chosen, &ctx)?;
//! let mut stored = hasher.hash(&chosen)?;
//! let totp = Totp::new(TotpSecret::generate()?);
//! let mut guard = ReplayGuard::new();
//!
//! // Login: throttle, verify (rehash if needed), second factor, session.
//! let throttle = Throttle::new(ThrottleConfig::default(), clock.clone());
//! throttle.check("p.devries@acme.nl", "192.0.2.7")?;
//! match hasher.verify(&Password::new("vlinder kompas regenjas"), &stored)? {
//!     Verified::Valid { rehash } => {
//!         if let Some(new) = rehash {
//!             stored = new; // persist it
//!         }
//!         throttle.record_success("p.devries@acme.nl", "192.0.2.7");
//!     }
//!     Verified::Invalid => {
//!         throttle.record_failure("p.devries@acme.nl", "192.0.2.7");
//!         return Ok(());
//!     }
//! }
//! let code = totp.code_at(clock.now()); // typed by the user
//! totp.verify(&code, clock.now(), &mut guard)?;
//! let mut session = Session::start(clock.now());
//! let idle = SessionPolicy::default();
//! clock.advance(std::time::Duration::from_secs(21 * 60));
//! assert_eq!(session.touch(&idle, clock.now()), Err(SessionLocked::Idle));
//! # let _ = stored;
//! # Ok(()) }
//! ```

pub mod hash;
pub mod password;
mod secret;
pub mod session;
pub mod throttle;
pub mod totp;
pub mod welcome;

pub use hash::{HashParams, PasswordHash, PasswordHasher, Verified};
pub use password::{Password, PasswordContext, PasswordHistory, PasswordPolicy, Rejected, Violation};
pub use session::{Session, SessionLocked, SessionPolicy};
pub use throttle::{Throttle, ThrottleConfig, Throttled};
pub use totp::{ReplayGuard, Totp, TotpAlgorithm, TotpRejected, TotpSecret};
pub use welcome::{PasswordChangeRequired, WelcomeCredential, WelcomeRejected};
