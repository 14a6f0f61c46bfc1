//! Field values and their byte encoding (what is sealed).

use std::fmt;

use zeroize::Zeroize;

use crate::schema::FieldType;

/// A plaintext field value. Its `Debug` never prints the value; it is zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Value {
    /// Text.
    Text(String),
    /// Integer.
    Integer(i64),
    /// Decimal (also percentage), written `-?digits[.digits]`.
    Decimal(String),
    /// Date `YYYY-MM-DD`.
    Date(String),
    /// Bool.
    Bool(bool),
    /// Bytes.
    Bytes(Vec<u8>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value::{}([REDACTED])", self.kind())
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        match self {
            Self::Text(s) | Self::Decimal(s) | Self::Date(s) => s.zeroize(),
            Self::Bytes(b) => b.zeroize(),
            Self::Integer(i) => i.zeroize(),
            Self::Bool(b) => b.zeroize(),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Self::Integer(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

const TAG_TEXT: u8 = 1;
const TAG_INTEGER: u8 = 2;
const TAG_DECIMAL: u8 = 3;
const TAG_DATE: u8 = 4;
const TAG_BOOL: u8 = 5;
const TAG_BYTES: u8 = 6;

impl Value {
    /// The kind's name (for errors; never the value).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text(_) => "text",
            Self::Integer(_) => "integer",
            Self::Decimal(_) => "decimal",
            Self::Date(_) => "date",
            Self::Bool(_) => "bool",
            Self::Bytes(_) => "bytes",
        }
    }

    /// Text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The decimal's text, if this is a decimal.
    pub fn as_decimal(&self) -> Option<&str> {
        match self {
            Self::Decimal(s) => Some(s),
            _ => None,
        }
    }

    /// The date's text, if this is a date.
    pub fn as_date(&self) -> Option<&str> {
        match self {
            Self::Date(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Self::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The bytes, if this is bytes.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Self::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Checks the value against a field type; `Err` says why (never echoing the value).
    pub(crate) fn check(&self, ty: FieldType) -> Result<(), String> {
        match (ty, self) {
            (FieldType::Text, Self::Text(_))
            | (FieldType::Integer, Self::Integer(_))
            | (FieldType::Bool, Self::Bool(_))
            | (FieldType::Bytes, Self::Bytes(_)) => Ok(()),
            (FieldType::Decimal, Self::Decimal(s)) => {
                if valid_decimal(s) {
                    Ok(())
                } else {
                    Err("a malformed decimal".into())
                }
            }
            (FieldType::Percentage, Self::Decimal(s)) => {
                if valid_decimal(s) && percentage_in_range(s) {
                    Ok(())
                } else {
                    Err("a decimal that is not a percentage from 0 to 100".into())
                }
            }
            (FieldType::Date, Self::Date(s)) => {
                if valid_date(s) {
                    Ok(())
                } else {
                    Err("an invalid date (expected YYYY-MM-DD)".into())
                }
            }
            _ => Err(self.kind().to_owned()),
        }
    }

    /// The canonical encoding: a type tag, then the payload (what is sealed into a cell, and
    /// what a blind index is computed over).
    pub fn encode(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(self.encoded_len()));
        self.encode_into(&mut out);
        out
    }

    /// Length of [`Self::encode`]'s output.
    pub(crate) fn encoded_len(&self) -> usize {
        1 + self.payload_len()
    }

    /// Appends the encoding to `out`. Callers holding plaintext reserve [`Self::encoded_len`]
    /// first, so `out` is never reallocated (and its old buffer left unwiped).
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Self::Text(s) => {
                out.push(TAG_TEXT);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Integer(i) => {
                out.push(TAG_INTEGER);
                out.extend_from_slice(&i.to_be_bytes());
            }
            Self::Decimal(s) => {
                out.push(TAG_DECIMAL);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Date(s) => {
                out.push(TAG_DATE);
                out.extend_from_slice(s.as_bytes());
            }
            Self::Bool(b) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*b));
            }
            Self::Bytes(b) => {
                out.push(TAG_BYTES);
                out.extend_from_slice(b);
            }
        }
    }

    /// Size of the value's payload in bytes (what `max_bytes` limits).
    pub(crate) fn payload_len(&self) -> usize {
        match self {
            Self::Text(s) | Self::Decimal(s) | Self::Date(s) => s.len(),
            Self::Integer(_) => 8,
            Self::Bool(_) => 1,
            Self::Bytes(b) => b.len(),
        }
    }

    /// Parses [`Value::encode`] output.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let (tag, rest) = b.split_first()?;
        let text = || std::str::from_utf8(rest).ok().map(str::to_owned);
        Some(match *tag {
            TAG_TEXT => Self::Text(text()?),
            TAG_INTEGER => Self::Integer(i64::from_be_bytes(rest.try_into().ok()?)),
            TAG_DECIMAL => Self::Decimal(text()?),
            TAG_DATE => Self::Date(text()?),
            TAG_BOOL => match rest {
                [0] => Self::Bool(false),
                [1] => Self::Bool(true),
                _ => return None,
            },
            TAG_BYTES => Self::Bytes(rest.to_vec()),
            _ => return None,
        })
    }
}

fn valid_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |p: &str| !p.is_empty() && p.len() <= 38 && p.bytes().all(|c| c.is_ascii_digit());
    all_digits(int) && frac.is_none_or(all_digits)
}

fn percentage_in_range(s: &str) -> bool {
    if s.starts_with('-') {
        return s.trim_start_matches(['-', '0', '.']).is_empty();
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int = int.trim_start_matches('0');
    match int.len() {
        0..=2 => true,
        3 => int == "100" && frac.bytes().all(|c| c == b'0'),
        _ => false,
    }
}

fn valid_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let p = s.get(r)?;
        if p.bytes().all(|c| c.is_ascii_digit()) { p.parse().ok() } else { None }
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1 && (1..=days).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_decimals() {
        assert!(valid_date("2024-02-29"));
        assert!(!valid_date("2023-02-29"));
        assert!(!valid_date("2023-13-01"));
        assert!(!valid_date("2023-1-01"));
        assert!(valid_decimal("-12.50"));
        assert!(!valid_decimal("1e5"));
        assert!(!valid_decimal("1."));
        assert!(Value::Decimal("100.00".into()).check(FieldType::Percentage).is_ok());
        assert!(Value::Decimal("100.01".into()).check(FieldType::Percentage).is_err());
        assert!(Value::Decimal("-1".into()).check(FieldType::Percentage).is_err());
        assert!(Value::Decimal("55.5".into()).check(FieldType::Percentage).is_ok());
    }

    #[test]
    fn encoding_round_trips() {
        for v in [
            Value::Text("zqv-canary".into()),
            Value::Integer(-5),
            Value::Decimal("1.5".into()),
            Value::Date("2024-01-31".into()),
            Value::Bool(true),
            Value::Bytes(vec![0, 1, 2]),
        ] {
            assert_eq!(Value::decode(&v.encode()), Some(v.clone()));
            assert!(!format!("{v:?}").contains("zqv"));
        }
    }
}
