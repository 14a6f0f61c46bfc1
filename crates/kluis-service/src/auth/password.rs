//! Password values and the password policy (NIST SP 800-63B-4 preset and the vendor preset).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::OnceLock;

use zeroize::Zeroizing;

use super::hash::{PasswordHash, PasswordHasher};
pub use super::secret::Password;
use crate::error::Result;

/// One broken rule. Messages are lower-case and never quote the password.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// Fewer characters than the minimum.
    TooShort {
        /// The minimum.
        min: usize,
    },
    /// More characters than the maximum.
    TooLong {
        /// The maximum.
        max: usize,
    },
    /// Fewer character classes (upper, lower, digit, other) than required.
    TooFewClasses {
        /// Classes required.
        required: u8,
        /// Classes present.
        present: u8,
    },
    /// A common or breached password, or built from one (repeated, or with only digits and
    /// symbols around it, or two of them joined).
    Common,
    /// Contains a context word: the user name, the tenant, or a word the application named.
    ContextWord,
    /// Too few distinct characters, a repeated block, or a run like `abcdef` / `987654`.
    Repetitive,
    /// The same as one of the last passwords.
    Reused,
    /// Differs from one of the last passwords only in its digits.
    DigitVariantOfPrevious,
    /// Contains control characters.
    ControlCharacter,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { min } => write!(f, "the password must have at least {min} characters"),
            Self::TooLong { max } => write!(f, "the password must have at most {max} characters"),
            Self::TooFewClasses { required, present } => write!(
                f,
                "the password must contain {required} of: upper-case letters, lower-case letters, digits, other characters (it has {present})"
            ),
            Self::Common => f.write_str("the password is common or known from breaches, or built from one"),
            Self::ContextWord => f.write_str(
                "the password contains the user name, the organisation or another word of this service",
            ),
            Self::Repetitive => f.write_str("the password is repetitive or sequential"),
            Self::Reused => f.write_str("the password was used before"),
            Self::DigitVariantOfPrevious => {
                f.write_str("the password differs from an earlier one only in its digits")
            }
            Self::ControlCharacter => f.write_str("the password contains control characters"),
        }
    }
}

/// Every broken rule of one password (never empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("password rejected: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct Rejected(pub Vec<Violation>);

impl Rejected {
    /// Is this rule among the broken ones?
    pub fn has(&self, v: &Violation) -> bool {
        self.0.contains(v)
    }
}

/// Words of the context a password must not contain.
#[derive(Clone, Copy, Debug, Default)]
pub struct PasswordContext<'a> {
    /// The user's login name or e-mail address (split into words at non-alphanumerics).
    pub user_name: &'a str,
    /// The tenant (organisation) id or name.
    pub tenant: Option<&'a str>,
    /// Other words: the service's name, the user's full name.
    pub extra: &'a [&'a str],
}

/// Which rules apply. Start from [`PasswordPolicy::nist`] (the default) or
/// [`PasswordPolicy::vendor`], then adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PasswordPolicy {
    /// Minimum length in code points.
    pub min_chars: usize,
    /// Maximum length in code points (at least 64).
    pub max_chars: usize,
    /// Character classes required (0: no composition rule, as NIST requires).
    pub min_classes: u8,
    /// How many earlier passwords may not be reused (0: no history check).
    pub history: usize,
    /// Also refuse a password that differs from an earlier one only in its digits.
    pub reject_digit_variants: bool,
    /// Shortest context word that is looked for (shorter user-name parts are ignored).
    pub min_context_word: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self::nist()
    }
}

/// Built-in list: the 30,000 most common passwords (see `data/README.md` for origin and licence).
static COMMON_EN: &str = include_str!("../../data/common-passwords.txt");
/// Built-in list: Dutch words common in passwords.
static COMMON_NL: &str = include_str!("../../data/common-passwords-nl.txt");

fn blocklist() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_EN.lines().chain(COMMON_NL.lines()).map(str::trim).filter(|l| l.len() >= 3).collect()
    })
}

/// Number of entries in the shipped common-password list.
pub fn blocklist_len() -> usize {
    blocklist().len()
}

impl PasswordPolicy {
    /// NIST SP 800-63B-4 for passwords used as a single factor: at least 15 characters, up to
    /// 256 accepted, no composition rules, checked against common/breached passwords, context
    /// words and repetitive patterns. No reuse history (NIST asks for none).
    pub fn nist() -> Self {
        Self {
            min_chars: 15,
            max_chars: 256,
            min_classes: 0,
            history: 0,
            reject_digit_variants: false,
            min_context_word: 4,
        }
    }

    /// The stricter rule vendors publish: at least 16 characters and 3 of the 4 classes, no
    /// reuse of the last 10 passwords nor of one that differs only in its digits, plus every
    /// check of the NIST preset.
    pub fn vendor() -> Self {
        Self {
            min_chars: 16,
            max_chars: 256,
            min_classes: 3,
            history: 10,
            reject_digit_variants: true,
            min_context_word: 4,
        }
    }

    /// Checks the rules that need no history. Returns every broken rule.
    pub fn check(&self, pw: &Password, ctx: &PasswordContext<'_>) -> Result<(), Rejected> {
        let mut out = Vec::new();
        let text = pw.expose_secret();
        let n = pw.char_count();
        if text.chars().any(char::is_control) {
            out.push(Violation::ControlCharacter);
        }
        if n < self.min_chars {
            out.push(Violation::TooShort { min: self.min_chars });
        }
        if n > self.max_chars {
            out.push(Violation::TooLong { max: self.max_chars });
        }
        if self.min_classes > 0 {
            let present = classes(text);
            if present < self.min_classes {
                out.push(Violation::TooFewClasses { required: self.min_classes, present });
            }
        }
        // Pattern checks only on passwords of sane length (the maximum bounds the work).
        if n <= self.max_chars {
            let lower = Zeroizing::new(text.to_lowercase());
            if is_common(&lower) {
                out.push(Violation::Common);
            }
            if contains_context(&lower, ctx, self.min_context_word) {
                out.push(Violation::ContextWord);
            }
            if is_repetitive(&lower) {
                out.push(Violation::Repetitive);
            }
        }
        if out.is_empty() { Ok(()) } else { Err(Rejected(out)) }
    }

    /// [`PasswordPolicy::check`], then the history rules against `history` (Argon2id
    /// verifications, one per remembered password).
    pub fn check_with_history(
        &self,
        pw: &Password,
        ctx: &PasswordContext<'_>,
        history: &PasswordHistory,
        hasher: &PasswordHasher,
    ) -> Result<Result<(), Rejected>> {
        let mut out = match self.check(pw, ctx) {
            Ok(()) => Vec::new(),
            Err(Rejected(v)) => v,
        };
        if self.history > 0
            && let Some(v) = history.reuse(pw, self.history, self.reject_digit_variants, hasher)?
        {
            out.push(v);
        }
        Ok(if out.is_empty() { Ok(()) } else { Err(Rejected(out)) })
    }
}

/// Upper, lower, digit, other: how many are present.
fn classes(s: &str) -> u8 {
    let (mut u, mut l, mut d, mut o) = (false, false, false, false);
    for c in s.chars() {
        if c.is_uppercase() {
            u = true;
        } else if c.is_lowercase() {
            l = true;
        } else if c.is_numeric() {
            d = true;
        } else {
            o = true;
        }
    }
    u8::from(u) + u8::from(l) + u8::from(d) + u8::from(o)
}

fn is_common(lower: &str) -> bool {
    let list = blocklist();
    if list.contains(lower) {
        return true;
    }
    // Letters only: "Wachtwoord2024!!" -> "wachtwoord".
    let letters: Zeroizing<String> = Zeroizing::new(lower.chars().filter(|c| c.is_alphabetic()).collect());
    if letters.is_empty() {
        // Digits and symbols only: common if it is a run or a listed number.
        return false;
    }
    if list.contains(letters.as_str()) {
        return true;
    }
    // Without leading and trailing digits/symbols: "!!qwertyuiop123456" -> "qwertyuiop".
    let core = lower.trim_matches(|c: char| !c.is_alphabetic());
    if list.contains(core) {
        return true;
    }
    // A listed word repeated, or two listed words joined: "sunshineprincess".
    for (i, _) in letters.char_indices().skip(1) {
        let (a, b) = (letters.get(..i).unwrap_or(""), letters.get(i..).unwrap_or(""));
        if list.contains(a) && list.contains(b) {
            return true;
        }
    }
    false
}

fn context_words<'a>(ctx: &'a PasswordContext<'a>) -> impl Iterator<Item = &'a str> {
    let whole = std::iter::once(ctx.user_name).chain(ctx.tenant).chain(ctx.extra.iter().copied());
    let parts = std::iter::once(ctx.user_name)
        .chain(ctx.tenant)
        .chain(ctx.extra.iter().copied())
        .flat_map(|w| w.split(|c: char| !c.is_alphanumeric()));
    whole.chain(parts)
}

fn contains_context(lower: &str, ctx: &PasswordContext<'_>, min: usize) -> bool {
    context_words(ctx).any(|w| {
        let w = w.trim().to_lowercase();
        w.chars().count() >= min.max(1) && lower.contains(&w)
    })
}

fn is_repetitive(lower: &str) -> bool {
    let chars: Vec<char> = lower.chars().collect();
    let n = chars.len();
    if n == 0 {
        return false;
    }
    let distinct: HashSet<char> = chars.iter().copied().collect();
    if distinct.len() < 5 {
        return true;
    }
    // A block repeated: "abcabcabcabcabc", "passwordpassword".
    for unit in 1..=n / 2 {
        if n.is_multiple_of(unit) && chars.chunks(unit).all(|c| chars.get(..unit) == Some(c)) {
            return true;
        }
    }
    // Runs: most neighbours one apart (or equal), as in "abcdefghijklmnop" or "9876543210".
    let steps = chars.windows(2).filter(|w| match w {
        [a, b] => (*a as i64 - *b as i64).abs() <= 1,
        _ => false,
    });
    let close = steps.count();
    n > 1 && close * 5 >= (n - 1) * 4
}

/// The remembered hashes of a user's last passwords, newest first. Each entry is two Argon2id
/// hashes: of the password, and of the password without its digits (for the vendor rule "not an
/// earlier password with only a digit changed").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasswordHistory {
    entries: VecDeque<HistoryEntry>,
}

/// One remembered password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Hash of the password.
    pub full: PasswordHash,
    /// Hash of the password with its digits removed.
    pub skeleton: PasswordHash,
}

impl PasswordHistory {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a persisted history (newest first).
    pub fn from_entries(entries: Vec<HistoryEntry>) -> Self {
        Self { entries: entries.into() }
    }

    /// The entries, newest first (to persist).
    pub fn entries(&self) -> impl Iterator<Item = &HistoryEntry> {
        self.entries.iter()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Remembers a password that was just set, keeping at most `keep` entries.
    pub fn push(&mut self, pw: &Password, hasher: &PasswordHasher, keep: usize) -> Result<()> {
        let full = hasher.hash(pw)?;
        let skeleton = hasher.hash(&pw.digit_skeleton())?;
        self.entries.push_front(HistoryEntry { full, skeleton });
        self.entries.truncate(keep);
        Ok(())
    }

    fn reuse(
        &self,
        pw: &Password,
        n: usize,
        digits: bool,
        hasher: &PasswordHasher,
    ) -> Result<Option<Violation>> {
        let skeleton = pw.digit_skeleton();
        // One Argon2id verification per entry: equal passwords have equal skeletons, so the
        // skeleton decides, and the full hash only tells which message to give.
        for e in self.entries.iter().take(n) {
            if digits {
                if hasher.verify(&skeleton, &e.skeleton)?.is_valid() {
                    let same = hasher.verify(pw, &e.full)?.is_valid();
                    return Ok(Some(if same {
                        Violation::Reused
                    } else {
                        Violation::DigitVariantOfPrevious
                    }));
                }
            } else if hasher.verify(pw, &e.full)?.is_valid() {
                return Ok(Some(Violation::Reused));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_loaded() {
        assert!(blocklist_len() > 29_000);
        assert!(blocklist().contains("password"));
        assert!(blocklist().contains("wachtwoord"));
    }

    #[test]
    fn repetition_helpers() {
        assert!(is_repetitive("aaaaaaaaaaaaaaaa"));
        assert!(is_repetitive("abcdefghijklmnop"));
        assert!(is_repetitive("xk3!xk3!xk3!xk3!"));
        assert!(!is_repetitive("correct horse battery staple"));
    }
}
