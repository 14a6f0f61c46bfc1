//! Password hashing with Argon2id at OWASP parameters, stored in the PHC string format.
//!
//! `$argon2id$v=19$m=19456,t=2,p=1$<salt, base64 unpadded>$<hash, base64 unpadded>`
//!
//! New hashes use at least m = 19 MiB, t = 2, p = 1 (OWASP Password Storage Cheat Sheet), a
//! 16-byte random salt and a 32-byte output. Stored hashes with weaker (but sane) parameters
//! still verify, and [`Verified::Valid`] then carries a fresh hash to store: rehash on login.
//! Parameters of a stored hash are bounded before any work is done, so a tampered hash cannot
//! make verification allocate gigabytes. Comparison is constant-time.

use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use base64ct::{Base64Unpadded, Encoding};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::secret::Password;
use crate::error::{Error, Result, random_fill};

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl HashParams {
    /// OWASP's first choice: 19 MiB, 2 passes, 1 lane.
    pub const OWASP: HashParams = HashParams { m_kib: 19 * 1024, t: 2, p: 1 };

    /// Bounds for **stored** hashes (verification): up to 1 GiB, 64 passes, 16 lanes.
    const MAX: HashParams = HashParams { m_kib: 1 << 20, t: 64, p: 16 };

    fn weaker_than(self, other: HashParams) -> bool {
        self.m_kib < other.m_kib || self.t < other.t || self.p != other.p
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self::OWASP
    }
}

const SALT_LEN: usize = 16;
/// Longest password (in bytes, after normalisation) that is hashed at all: 256 characters of up
/// to 4 bytes each, with room for NFKC expansion. Longer input is refused without work, so a
/// megabyte "password" cannot tie up the login path.
pub const MAX_PASSWORD_BYTES: usize = 4096;
const OUT_LEN: usize = 32;

/// A stored password hash (PHC string). Not a secret in the way a key is, but an offline guessing
/// target: `Debug` shows the parameters only.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

struct Parsed {
    params: HashParams,
    salt: Vec<u8>,
    hash: Zeroizing<Vec<u8>>,
}

impl PasswordHash {
    /// Parses and validates a stored PHC string.
    pub fn parse(s: &str) -> Result<Self> {
        parse(s)?;
        Ok(Self(s.to_owned()))
    }

    /// The PHC string, to store.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cost parameters.
    pub fn params(&self) -> Result<HashParams> {
        Ok(parse(&self.0)?.params)
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match parse(&self.0) {
            Ok(p) => write!(
                f,
                "PasswordHash(argon2id m={} t={} p={}, [REDACTED])",
                p.params.m_kib, p.params.t, p.params.p
            ),
            Err(_) => f.write_str("PasswordHash([MALFORMED])"),
        }
    }
}

fn parse(s: &str) -> Result<Parsed> {
    let mut it = s.split('$');
    if it.next() != Some("") {
        return Err(Error::MalformedHash("must start with $"));
    }
    if it.next() != Some("argon2id") {
        return Err(Error::MalformedHash("algorithm must be argon2id"));
    }
    if it.next() != Some("v=19") {
        return Err(Error::MalformedHash("version must be v=19"));
    }
    let params = it.next().ok_or(Error::MalformedHash("parameters missing"))?;
    let salt = it.next().ok_or(Error::MalformedHash("salt missing"))?;
    let hash = it.next().ok_or(Error::MalformedHash("hash missing"))?;
    if it.next().is_some() {
        return Err(Error::MalformedHash("too many fields"));
    }
    let mut m = None;
    let mut t = None;
    let mut p = None;
    for kv in params.split(',') {
        let (k, v) = kv.split_once('=').ok_or(Error::MalformedHash("parameter without ="))?;
        if v.is_empty()
            || v.len() > 10
            || !v.bytes().all(|b| b.is_ascii_digit())
            || (v.len() > 1 && v.starts_with('0'))
        {
            return Err(Error::MalformedHash("parameter value is not a decimal number"));
        }
        let v: u32 = v.parse().map_err(|_| Error::MalformedHash("parameter value out of range"))?;
        let slot = match k {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return Err(Error::MalformedHash("unknown parameter")),
        };
        if slot.replace(v).is_some() {
            return Err(Error::MalformedHash("repeated parameter"));
        }
    }
    let (Some(m_kib), Some(t), Some(p)) = (m, t, p) else {
        return Err(Error::MalformedHash("parameters must be m, t and p"));
    };
    let params = HashParams { m_kib, t, p };
    let max = HashParams::MAX;
    if m_kib > max.m_kib || t > max.t || p > max.p || t == 0 || p == 0 || m_kib < 8 * p {
        return Err(Error::MalformedHash("parameters outside the accepted bounds"));
    }
    let salt = Base64Unpadded::decode_vec(salt).map_err(|_| Error::MalformedHash("salt is not base64"))?;
    let hash = Zeroizing::new(
        Base64Unpadded::decode_vec(hash).map_err(|_| Error::MalformedHash("hash is not base64"))?,
    );
    if !(8..=64).contains(&salt.len()) {
        return Err(Error::MalformedHash("salt must be 8 to 64 bytes"));
    }
    if !(16..=64).contains(&hash.len()) {
        return Err(Error::MalformedHash("hash must be 16 to 64 bytes"));
    }
    Ok(Parsed { params, salt, hash })
}

/// Outcome of a verification.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Verified {
    /// The password matches. If the stored hash used weaker parameters than the hasher's, a
    /// fresh hash of the same password to store in its place.
    Valid {
        /// The hash to store instead, when parameters have risen.
        rehash: Option<PasswordHash>,
    },
    /// The password does not match.
    Invalid,
}

impl Verified {
    /// Did it match?
    pub fn is_valid(&self) -> bool {
        matches!(self, Verified::Valid { .. })
    }
}

/// Hashes and verifies passwords with Argon2id.
#[derive(Clone, Debug)]
pub struct PasswordHasher {
    params: HashParams,
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self { params: HashParams::OWASP }
    }
}

impl PasswordHasher {
    /// OWASP parameters.
    pub fn owasp() -> Self {
        Self::default()
    }

    /// Chosen parameters, refused below OWASP's (m = 19 MiB, t = 2, p = 1) or above the bounds
    /// accepted for stored hashes.
    pub fn new(params: HashParams) -> Result<Self> {
        let o = HashParams::OWASP;
        let max = HashParams::MAX;
        if params.m_kib < o.m_kib || params.t < o.t || params.p < o.p {
            return Err(Error::invalid(
                "argon2id parameters",
                "below the OWASP minimum m=19456 KiB, t=2, p=1",
            ));
        }
        if params.m_kib > max.m_kib || params.t > max.t || params.p > max.p || params.m_kib < 8 * params.p {
            return Err(Error::invalid("argon2id parameters", "outside the accepted bounds"));
        }
        Ok(Self { params })
    }

    /// The parameters new hashes get.
    pub fn params(&self) -> HashParams {
        self.params
    }

    /// Hashes a password with a fresh random salt.
    pub fn hash(&self, pw: &Password) -> Result<PasswordHash> {
        if pw.expose_secret().len() > MAX_PASSWORD_BYTES {
            return Err(Error::invalid("password", format!("longer than {MAX_PASSWORD_BYTES} bytes")));
        }
        let mut salt = [0u8; SALT_LEN];
        random_fill(&mut salt)?;
        let out = derive(self.params, pw.expose_secret().as_bytes(), &salt, OUT_LEN)?;
        Ok(PasswordHash(format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            self.params.m_kib,
            self.params.t,
            self.params.p,
            Base64Unpadded::encode_string(&salt),
            Base64Unpadded::encode_string(&out)
        )))
    }

    /// Verifies a password against a stored hash, in constant time. A malformed stored hash is
    /// an error, not a mismatch.
    pub fn verify(&self, pw: &Password, stored: &PasswordHash) -> Result<Verified> {
        let parsed = parse(&stored.0)?;
        if pw.expose_secret().len() > MAX_PASSWORD_BYTES {
            return Ok(Verified::Invalid);
        }
        let out = derive(parsed.params, pw.expose_secret().as_bytes(), &parsed.salt, parsed.hash.len())?;
        if !bool::from(out.as_slice().ct_eq(parsed.hash.as_slice())) {
            return Ok(Verified::Invalid);
        }
        let rehash = if parsed.params.weaker_than(self.params)
            || parsed.salt.len() < SALT_LEN
            || parsed.hash.len() < OUT_LEN
        {
            Some(self.hash(pw)?)
        } else {
            None
        };
        Ok(Verified::Valid { rehash })
    }

    /// Spends the same time as a verification without a stored hash: call it for an unknown
    /// user so response times do not tell which user names exist.
    pub fn verify_unknown_user(&self, pw: &Password) -> Result<Verified> {
        let salt = [0u8; SALT_LEN];
        let _ = derive(self.params, pw.expose_secret().as_bytes(), &salt, OUT_LEN)?;
        Ok(Verified::Invalid)
    }
}

fn derive(params: HashParams, pw: &[u8], salt: &[u8], out_len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let p = Params::new(params.m_kib, params.t, params.p, Some(out_len))
        .map_err(|e| Error::Hashing(format!("{e:?}").to_lowercase()))?;
    let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
    let mut out = Zeroizing::new(vec![0u8; out_len]);
    a.hash_password_into(pw, salt, &mut out).map_err(|e| Error::Hashing(format!("{e:?}").to_lowercase()))?;
    Ok(out)
}
