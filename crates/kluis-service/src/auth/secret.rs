//! The password value: normalised, zeroized, never printed.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

/// A password, Unicode-normalised (NFKC) when constructed, zeroized on drop. `Debug` is
/// redacted; there is no `Display`; the text is reachable only through
/// [`Password::expose_secret`].
pub struct Password(Zeroizing<String>);

impl Password {
    /// Takes a password as typed and normalises it to NFKC (SP 800-63B-4 §3.1.1.2), so the same
    /// password typed on two keyboards hashes the same. The input string is zeroized.
    pub fn new(typed: impl Into<String>) -> Self {
        let typed = Zeroizing::new(typed.into());
        let mut s = Zeroizing::new(String::with_capacity(typed.len()));
        s.extend(typed.nfkc());
        Self(s)
    }

    /// The normalised text.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Length in Unicode code points (how SP 800-63B-4 counts).
    pub fn char_count(&self) -> usize {
        self.0.chars().count()
    }

    /// The password with every digit removed: two passwords that differ only in their digits
    /// have the same skeleton.
    pub(crate) fn digit_skeleton(&self) -> Password {
        let mut s = Zeroizing::new(String::with_capacity(self.0.len()));
        s.extend(self.0.chars().filter(|c| !c.is_numeric()));
        Password(s)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}
