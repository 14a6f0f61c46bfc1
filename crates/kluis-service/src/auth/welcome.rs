//! Welcome passwords: random, single-use, short-lived, and they must be changed at first login.

use std::fmt;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::hash::{PasswordHash, PasswordHasher};
use super::secret::Password;
use crate::error::{Error, Result, random_fill};

const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const DIGIT: &[u8] = b"23456789";
const OTHER: &[u8] = b"-_.!?#%+=";
/// Length of a welcome password: 20 characters from 66 (about 120 bits), all four classes.
pub const WELCOME_LEN: usize = 20;
/// Default lifetime of a welcome password.
pub const DEFAULT_WELCOME_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a welcome password was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WelcomeRejected {
    /// Wrong password.
    #[error("the welcome password is wrong")]
    Wrong,
    /// Used already.
    #[error("the welcome password was used already")]
    Used,
    /// Past its lifetime.
    #[error("the welcome password has expired")]
    Expired,
}

/// The stored side of a welcome password: its hash, its end, and whether it was used. Persist
/// all three.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WelcomeCredential {
    hash: PasswordHash,
    expires_at: SystemTime,
    used: bool,
}

/// Proof that a welcome password was just redeemed. The only thing to do with it is to set the
/// user's own password ([`PasswordChangeRequired::user_must_choose`]): the application does not
/// start a normal session with a welcome password.
#[derive(Debug)]
#[must_use = "the user must now choose their own password"]
pub struct PasswordChangeRequired {
    _private: (),
}

impl PasswordChangeRequired {
    /// Marker for the application's flow; consumes the token.
    pub fn user_must_choose(self) {}
}

impl WelcomeCredential {
    /// Generates a welcome password valid for `ttl` from `now`. The password goes to the user
    /// once (by a channel the application chooses); only its hash is kept.
    pub fn issue(
        hasher: &PasswordHasher,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(Password, WelcomeCredential)> {
        if ttl.is_zero() || ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(Error::invalid(
                "welcome password lifetime",
                "must be more than zero and at most 7 days",
            ));
        }
        let pw = generate()?;
        let hash = hasher.hash(&pw)?;
        Ok((pw, WelcomeCredential { hash, expires_at: now + ttl, used: false }))
    }

    /// Restores a persisted credential.
    pub fn from_parts(hash: PasswordHash, expires_at: SystemTime, used: bool) -> Self {
        Self { hash, expires_at, used }
    }

    /// The hash (to persist).
    pub fn hash(&self) -> &PasswordHash {
        &self.hash
    }
    /// The end of its lifetime.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }
    /// Used already?
    pub fn is_used(&self) -> bool {
        self.used
    }

    /// Redeems the welcome password: correct, unused and unexpired. Marks it used (persist that
    /// before going on). A wrong attempt does not use it up (throttle those).
    pub fn redeem(
        &mut self,
        hasher: &PasswordHasher,
        candidate: &Password,
        now: SystemTime,
    ) -> Result<Result<PasswordChangeRequired, WelcomeRejected>> {
        if self.used {
            return Ok(Err(WelcomeRejected::Used));
        }
        if now >= self.expires_at {
            return Ok(Err(WelcomeRejected::Expired));
        }
        if !hasher.verify(candidate, &self.hash)?.is_valid() {
            return Ok(Err(WelcomeRejected::Wrong));
        }
        self.used = true;
        Ok(Ok(PasswordChangeRequired { _private: () }))
    }
}

fn generate() -> Result<Password> {
    let alphabet: Vec<u8> = [UPPER, LOWER, DIGIT, OTHER].concat();
    let n = alphabet.len();
    // Rejection sampling: bytes at or above the largest multiple of n are redrawn (no bias).
    let limit = 256 - (256 % n);
    for _ in 0..64 {
        let mut s = Zeroizing::new(String::with_capacity(WELCOME_LEN));
        let mut buf = Zeroizing::new([0u8; 64]);
        while s.len() < WELCOME_LEN {
            random_fill(buf.as_mut())?;
            for b in buf.iter() {
                if usize::from(*b) < limit
                    && s.len() < WELCOME_LEN
                    && let Some(c) = alphabet.get(usize::from(*b) % n)
                {
                    s.push(char::from(*c));
                }
            }
        }
        let has = |set: &[u8]| s.bytes().any(|b| set.contains(&b));
        if has(UPPER) && has(LOWER) && has(DIGIT) && has(OTHER) {
            return Ok(Password::new(s.to_string()));
        }
    }
    Err(Error::Rng)
}

impl fmt::Display for PasswordChangeRequired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the user must choose a new password now")
    }
}
