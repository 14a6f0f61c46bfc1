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

pub mod hash;
pub mod password;
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
