//! Names that end up in associated data: tenants, domains, and the context of a sealed value.
//!
//! Names are validated when constructed so that every encoding of them is canonical.

use std::fmt;
use std::num::NonZeroU32;

use crate::error::{Error, Result};
use crate::wire::put_bytes16;

fn check_name(what: &'static str, s: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if s.len() > max {
        return Err(Error::invalid(what, format!("longer than {max} bytes")));
    }
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        return Err(Error::invalid(what, format!("character {c:?} is not allowed")));
    }
    Ok(())
}

/// A tenant id: 1 to 128 bytes of ASCII letters, digits, `.`, `_` and `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validates and wraps a tenant id.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check_name("tenant id", &s, 128, |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))?;
        Ok(Self(s))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A data domain: 1 to 64 bytes of lower-case ASCII letters, digits, `_` and `-`.
/// [`DomainName::general`] (non-medical) and [`DomainName::medical`] are built in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// The built-in non-medical domain.
    pub const GENERAL: &'static str = "general";
    /// The built-in medical domain.
    pub const MEDICAL: &'static str = "medical";

    /// Validates and wraps a domain name.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check_name("domain name", &s, 64, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
        })?;
        Ok(Self(s))
    }

    /// `general`.
    pub fn general() -> Self {
        Self(Self::GENERAL.to_owned())
    }

    /// `medical`.
    pub fn medical() -> Self {
        Self(Self::MEDICAL.to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key version: of a domain key, a subject key or a root key. Versions start at 1, so 0 is
/// not a `KeyVersion` (where "no version" means something, the type is `Option<KeyVersion>`).
/// Its `Display` is the bare number.
///
/// In a database a version is an `i64` column: [`KeyVersion::from_stored`] and
/// [`KeyVersion::to_stored`] are the conversions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyVersion(NonZeroU32);

impl KeyVersion {
    /// Version 1, the first of every key.
    pub const FIRST: Self = Self(NonZeroU32::MIN);

    /// The version `v`. 0 is refused (`Error::Invalid { "key version", .. }`): versions start at 1.
    pub fn new(v: u32) -> Result<Self> {
        NonZeroU32::new(v).map(Self).ok_or_else(|| Error::invalid("key version", "versions start at 1"))
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// The version after this one; `Error::LimitReached("key versions exhausted")` after
    /// `u32::MAX`.
    pub fn next(self) -> Result<Self> {
        self.0.checked_add(1).map(Self).ok_or(Error::LimitReached("key versions exhausted"))
    }

    /// The version stored in a database column. 0, a negative number or one above `u32::MAX` is
    /// refused (`Error::Invalid { "stored key version", .. }`), never clamped.
    pub fn from_stored(v: i64) -> Result<Self> {
        u32::try_from(v)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Self)
            .ok_or_else(|| Error::invalid("stored key version", format!("{v} is not in 1..={}", u32::MAX)))
    }

    /// The version as stored in a database column.
    pub fn to_stored(self) -> i64 {
        i64::from(self.get())
    }

    /// The four bytes of the version, big-endian, as formats encode it.
    pub const fn to_be_bytes(self) -> [u8; 4] {
        self.get().to_be_bytes()
    }
}

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for KeyVersion {
    type Err = Error;

    /// Parses a decimal version from 1 (as `Display` prints it).
    fn from_str(s: &str) -> Result<Self> {
        let v =
            s.parse::<u32>().map_err(|_| Error::invalid("key version", format!("{s:?} is not a number")))?;
        Self::new(v)
    }
}

/// Where a sealed value lives. Every part is bound into the ciphertext's associated data, so a
/// value copied to another tenant, domain, collection, field or record does not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Context<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The data domain (selects the key).
    pub domain: &'a DomainName,
    /// Table or collection name.
    pub collection: &'a str,
    /// Field (column) name.
    pub field: &'a str,
    /// Record id.
    pub record: &'a str,
}

/// Label that starts the encoding of a [`Context`].
pub(crate) const CONTEXT_LABEL: &[u8] = b"kluis/ctx/v1";

impl Context<'_> {
    /// The canonical encoding used as associated data: the label, then each part as a u16
    /// big-endian length followed by its UTF-8 bytes, in the order tenant, domain, collection,
    /// field, record. Length prefixes make it unambiguous.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(CONTEXT_LABEL);
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Length of [`Context::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        CONTEXT_LABEL.len()
            + 10
            + self.tenant.0.len()
            + self.domain.0.len()
            + self.collection.len()
            + self.field.len()
            + self.record.len()
    }

    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        put_bytes16(out, "tenant id", self.tenant.0.as_bytes())?;
        put_bytes16(out, "domain name", self.domain.0.as_bytes())?;
        put_bytes16(out, "collection name", self.collection.as_bytes())?;
        put_bytes16(out, "field name", self.field.as_bytes())?;
        put_bytes16(out, "record id", self.record.as_bytes())?;
        Ok(())
    }
}

/// Encodes labelled associated data: `label || (u16 len || part)*`.
pub(crate) fn labelled_ad(label: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(label.len() + parts.iter().map(|p| p.len() + 2).sum::<usize>());
    out.extend_from_slice(label);
    for p in parts {
        put_bytes16(&mut out, "associated data part", p)?;
    }
    Ok(out)
}
