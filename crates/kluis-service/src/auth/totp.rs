//! TOTP second factor (RFC 6238 on HOTP, RFC 4226), with a drift window and refusal of a code
//! that was already used.

use std::fmt;
use std::time::SystemTime;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::clock::unix_secs;
use crate::error::{Error, Result, random_fill};

/// The HMAC hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TotpAlgorithm {
    /// HMAC-SHA1 (what authenticator apps support everywhere; the RFC's default).
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA512.
    Sha512,
}

impl TotpAlgorithm {
    fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
            Self::Sha512 => "SHA512",
        }
    }
}

/// A TOTP shared secret. Zeroized on drop; `Debug` redacted.
#[derive(Clone)]
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl TotpSecret {
    /// 20 random bytes (160 bits, RFC 4226's recommendation).
    pub fn generate() -> Result<Self> {
        let mut v = Zeroizing::new(vec![0u8; 20]);
        random_fill(&mut v)?;
        Ok(Self(v))
    }

    /// Wraps bytes (at least 16).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 16 || bytes.len() > 128 {
            return Err(Error::invalid("totp secret", "must be 16 to 128 bytes"));
        }
        Ok(Self(Zeroizing::new(bytes.to_vec())))
    }

    /// Parses base32 (RFC 4648, upper or lower case, padding and spaces ignored).
    pub fn from_base32(s: &str) -> Result<Self> {
        let mut out = Zeroizing::new(Vec::with_capacity(s.len() * 5 / 8));
        let (mut acc, mut bits) = (0u32, 0u32);
        for c in s.chars().filter(|c| !c.is_whitespace() && *c != '=') {
            let v = match c.to_ascii_uppercase() {
                u @ 'A'..='Z' => u32::from(u) - u32::from('A'),
                d @ '2'..='7' => u32::from(d) - u32::from('2') + 26,
                _ => return Err(Error::invalid("totp secret", "not base32")),
            };
            acc = (acc << 5) | v;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out.push(((acc >> bits) & 0xff) as u8);
            }
            acc &= (1 << bits) - 1;
        }
        Self::from_bytes(&out)
    }

    /// Base32 without padding, for the provisioning URI or manual entry.
    pub fn to_base32(&self) -> Zeroizing<String> {
        const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut out = Zeroizing::new(String::with_capacity(self.0.len() * 8 / 5 + 1));
        let (mut acc, mut bits) = (0u32, 0u32);
        for b in self.0.iter() {
            acc = (acc << 8) | u32::from(*b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                if let Some(c) = A.get(((acc >> bits) & 31) as usize) {
                    out.push(char::from(*c));
                }
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0
            && let Some(c) = A.get(((acc << (5 - bits)) & 31) as usize)
        {
            out.push(char::from(*c));
        }
        out
    }

    /// The raw bytes.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret([REDACTED])")
    }
}

/// Why a code was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TotpRejected {
    /// Not a code of this length, or not digits.
    #[error("the code has the wrong format")]
    Format,
    /// No time step in the window gives this code.
    #[error("the code is wrong or too old")]
    Wrong,
    /// The code (or an earlier one) was already used: a replay.
    #[error("the code was already used")]
    Replayed,
}

/// The last accepted time step of one user: persist it, so a code is accepted at most once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayGuard {
    last_step: Option<u64>,
}

impl ReplayGuard {
    /// A user who has used no code yet.
    pub fn new() -> Self {
        Self::default()
    }
    /// Restores a persisted guard.
    pub fn from_last_step(last_step: Option<u64>) -> Self {
        Self { last_step }
    }
    /// The last accepted step.
    pub fn last_step(&self) -> Option<u64> {
        self.last_step
    }
}

/// A TOTP generator and verifier.
#[derive(Clone, Debug)]
pub struct Totp {
    secret: TotpSecret,
    algorithm: TotpAlgorithm,
    digits: u32,
    step: u64,
    skew: u64,
}

impl Totp {
    /// SHA-1, 6 digits, 30-second steps, one step of drift either way: what authenticator apps
    /// expect.
    pub fn new(secret: TotpSecret) -> Self {
        Self { secret, algorithm: TotpAlgorithm::Sha1, digits: 6, step: 30, skew: 1 }
    }

    /// Chosen parameters: 6 to 8 digits, a step of 15 to 300 seconds, drift of 0 to 2 steps.
    pub fn with_params(
        secret: TotpSecret,
        algorithm: TotpAlgorithm,
        digits: u32,
        step: u64,
        skew: u64,
    ) -> Result<Self> {
        if !(6..=8).contains(&digits) {
            return Err(Error::invalid("totp digits", "must be 6 to 8"));
        }
        if !(15..=300).contains(&step) {
            return Err(Error::invalid("totp step", "must be 15 to 300 seconds"));
        }
        if skew > 2 {
            return Err(Error::invalid("totp drift window", "must be 0 to 2 steps"));
        }
        Ok(Self { secret, algorithm, digits, step, skew })
    }

    /// The step number at a time.
    pub fn step_at(&self, t: SystemTime) -> u64 {
        unix_secs(t) / self.step
    }

    /// The code at a time.
    pub fn code_at(&self, t: SystemTime) -> String {
        self.code_for_step(self.step_at(t))
    }

    /// The code for a step (HOTP with the step as counter).
    pub fn code_for_step(&self, step: u64) -> String {
        let mac = self.hmac(&step.to_be_bytes());
        let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
        let b = |i: usize| u32::from(mac.get(offset + i).copied().unwrap_or(0));
        let bin = ((b(0) & 0x7f) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
        let modulo = 10u32.pow(self.digits);
        format!("{:0width$}", bin % modulo, width = self.digits as usize)
    }

    fn hmac(&self, msg: &[u8]) -> Zeroizing<Vec<u8>> {
        fn run<M: Mac + KeyInit>(key: &[u8], msg: &[u8]) -> Zeroizing<Vec<u8>> {
            match <M as KeyInit>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(msg);
                    Zeroizing::new(m.finalize().into_bytes().to_vec())
                }
                // HMAC takes keys of any length; unreachable, and an empty MAC matches no code.
                Err(_) => Zeroizing::new(Vec::new()),
            }
        }
        let key = self.secret.expose_secret();
        match self.algorithm {
            TotpAlgorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, msg),
            TotpAlgorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, msg),
            TotpAlgorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, msg),
        }
    }

    /// Verifies a code at `now` within the drift window. A code whose step is not after the
    /// guard's last accepted step is refused as a replay; an accepted code advances the guard
    /// (persist it). Every step of the window is computed and compared in constant time.
    pub fn verify(&self, code: &str, now: SystemTime, guard: &mut ReplayGuard) -> Result<(), TotpRejected> {
        let code = code.trim();
        if code.len() != self.digits as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TotpRejected::Format);
        }
        let current = self.step_at(now);
        let mut matched: Option<u64> = None;
        for step in current.saturating_sub(self.skew)..=current.saturating_add(self.skew) {
            let candidate = self.code_for_step(step);
            if bool::from(candidate.as_bytes().ct_eq(code.as_bytes())) && matched.is_none() {
                matched = Some(step);
            }
        }
        let Some(step) = matched else { return Err(TotpRejected::Wrong) };
        if guard.last_step.is_some_and(|last| step <= last) {
            return Err(TotpRejected::Replayed);
        }
        guard.last_step = Some(step);
        Ok(())
    }

    /// The `otpauth://` URI for enrolment (shown as a QR code). Holds the secret: show it once,
    /// never log it.
    pub fn provisioning_uri(&self, issuer: &str, account: &str) -> Zeroizing<String> {
        let issuer = pct(issuer);
        Zeroizing::new(format!(
            "otpauth://totp/{issuer}:{}?secret={}&issuer={issuer}&algorithm={}&digits={}&period={}",
            pct(account),
            self.secret.to_base32().as_str(),
            self.algorithm.name(),
            self.digits,
            self.step
        ))
    }
}

fn pct(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
