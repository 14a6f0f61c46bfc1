//! Opaque object names.

use std::fmt;

use crate::error::{BlobError, Result};

/// Length of an object name: 128 random bits as lower-case hex.
pub const NAME_LEN: usize = 32;

/// An object name: exactly 32 lower-case hex digits (128 random bits), nothing else.
///
/// Names carry no meaning (no tenant, subject, file name or type) and, being only hex digits,
/// cannot hold a path separator, `..`, a drive letter or a URL metacharacter.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

impl ObjectName {
    /// A fresh random name.
    pub fn random() -> Result<Self> {
        let mut b = [0u8; NAME_LEN / 2];
        getrandom::fill(&mut b).map_err(|_| BlobError::Core(kluis_core::Error::Rng))?;
        Ok(Self(hex::encode(b)))
    }

    /// Validates a stored name.
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() == NAME_LEN && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(BlobError::Invalid { what: "object name", reason: "must be 32 lower-case hex digits" })
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first two digits (the local backend's fan-out directory).
    pub(crate) fn fan_out(&self) -> &str {
        self.0.get(..2).unwrap_or("00")
    }
}

impl fmt::Debug for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectName({})", self.0)
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ObjectName {
    type Err = BlobError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hex_only() {
        let n = ObjectName::random().unwrap();
        assert_eq!(ObjectName::parse(n.as_str()).unwrap(), n);
        for bad in [
            "",
            "../../../../etc/passwd",
            "0123456789abcdef0123456789abcde/",
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef/../456789abcdef",
            "0123456789abcdef0123456789abcd\0f",
            "..\\\\3456789abcdef0123456789abcdef",
        ] {
            assert!(ObjectName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
