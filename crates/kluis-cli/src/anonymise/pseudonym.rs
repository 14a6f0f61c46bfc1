//! Pseudonyms for an anonymised copy: deterministic under a key made for one copy and never
//! stored, so the same input gives the same pseudonym throughout the copy, and nobody holding
//! the copy (or the production data) can compute the mapping without it.

use hmac::{Hmac, KeyInit, Mac};
use kluis_store::Pseudonym;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{CliError, Result};

const FIRST: [&str; 32] = [
    "Anna", "Bram", "Carla", "Daan", "Eva", "Fleur", "Gijs", "Hanna", "Iris", "Jeroen", "Karin", "Lars",
    "Maaike", "Noah", "Olga", "Pieter", "Quinten", "Rosa", "Sander", "Tess", "Umut", "Vera", "Wouter",
    "Xander", "Yara", "Zoë", "Bas", "Lotte", "Milan", "Nina", "Ruben", "Sanne",
];
const LAST: [&str; 32] = [
    "Aalders",
    "Bakker",
    "de Boer",
    "Claassen",
    "Dekker",
    "van Dijk",
    "Evers",
    "Fransen",
    "de Graaf",
    "Hendriks",
    "Jacobs",
    "Janssen",
    "Kok",
    "de Lange",
    "Meijer",
    "Mulder",
    "Nijhuis",
    "Peters",
    "Postma",
    "Rutten",
    "Schouten",
    "Smeets",
    "Timmermans",
    "Veenstra",
    "Verbeek",
    "Visser",
    "de Wit",
    "Wolters",
    "van Wijk",
    "Zwart",
    "Brouwer",
    "Hoekstra",
];
const STREETS: [&str; 16] = [
    "Dorpsstraat",
    "Kerkstraat",
    "Molenweg",
    "Schoolstraat",
    "Stationsweg",
    "Julianalaan",
    "Beatrixstraat",
    "Eikenlaan",
    "Wilhelminastraat",
    "Parallelweg",
    "Nieuwstraat",
    "Lindelaan",
    "Marktplein",
    "Havenweg",
    "Prinsengracht",
    "Zuiderweg",
];
const CITIES: [&str; 16] = [
    "Amersfoort",
    "Apeldoorn",
    "Breda",
    "Delft",
    "Deventer",
    "Enschede",
    "Gouda",
    "Haarlem",
    "Leeuwarden",
    "Maastricht",
    "Nijmegen",
    "Tilburg",
    "Utrecht",
    "Zwolle",
    "Alkmaar",
    "Groningen",
];
const WORDS: [&str; 32] = [
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
    "et",
    "dolore",
    "magna",
    "aliqua",
    "enim",
    "ad",
    "minim",
    "veniam",
    "quis",
    "nostrud",
    "exercitation",
    "ullamco",
    "laboris",
    "nisi",
    "aliquip",
    "ex",
    "commodo",
];

/// The largest date shift, in days either way.
pub(crate) const MAX_SHIFT_DAYS: i64 = 182;

/// Makes pseudonyms under one key.
pub(crate) struct Pseudonymiser {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser([REDACTED])")
    }
}

impl Pseudonymiser {
    /// A new random key (one per copy).
    pub(crate) fn random() -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(key.as_mut_slice())
            .map_err(|_| CliError::Service("the random number generator failed".into()))?;
        Ok(Self { key })
    }

    /// Under a given key (tests).
    #[cfg(test)]
    pub(crate) fn with_key(key: [u8; 32]) -> Self {
        Self { key: Zeroizing::new(key) }
    }

    /// HMAC-SHA256 under the key of `label` and `parts`, each length-prefixed.
    fn prf(&self, label: &str, parts: &[&str]) -> [u8; 32] {
        let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_slice()) else {
            // A 32-byte key is always accepted by HMAC.
            return [0; 32];
        };
        for p in std::iter::once(label).chain(parts.iter().copied()) {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    /// A subject id of the copy: `s-` and 20 hex digits.
    pub(crate) fn subject(&self, tenant: &str, subject: &str) -> String {
        format!("s-{}", hex::encode(&self.prf("subject", &[tenant, subject])[..10]))
    }

    /// A record id of the copy: `r-` and 20 hex digits (the same for an id wherever it appears:
    /// records and audit entries).
    pub(crate) fn record(&self, tenant: &str, id: &str) -> String {
        format!("r-{}", hex::encode(&self.prf("record", &[tenant, id])[..10]))
    }

    /// A user id of the copy (audit actors).
    pub(crate) fn user(&self, user: &str) -> String {
        format!("user-{}", hex::encode(&self.prf("user", &[user])[..6]))
    }

    /// The days every date of `subject` moves by: from -182 to 182, never 0.
    pub(crate) fn shift_days(&self, tenant: &str, subject: &str) -> i64 {
        let [b0, b1, ..] = self.prf("date-shift", &[tenant, subject]);
        let n = i64::from(u16::from_be_bytes([b0, b1])) % (2 * MAX_SHIFT_DAYS);
        // 0..364 onto -182..-1 and 1..182.
        if n < MAX_SHIFT_DAYS { n - MAX_SHIFT_DAYS } else { n - MAX_SHIFT_DAYS + 1 }
    }

    /// The pseudonym of a text or date value of `kind` (`tenant` and `subject` place a date).
    pub(crate) fn value(&self, kind: Pseudonym, tenant: &str, subject: &str, value: &str) -> Result<String> {
        let b = self.prf(kind.as_str(), &[value]);
        let [b0, b1, b2, b3, b4, b5, b6, b7, ..] = b;
        Ok(match kind {
            Pseudonym::Name => format!("{} {}", pick(&FIRST, b0), pick(&LAST, b1)),
            Pseudonym::Bsn => bsn(&b),
            Pseudonym::Email => format!(
                "{}.{}.{}@test.invalid",
                pick(&FIRST, b0).to_lowercase().replace('ë', "e"),
                pick(&LAST, b1).to_lowercase().replace(' ', ""),
                hex::encode([b2, b3])
            ),
            Pseudonym::Address => {
                let mut letters = [b'A' + b5 % 26, b'A' + b6 % 26];
                // SA, SD and SS are not used in Dutch postcodes.
                if letters == *b"SA" || letters == *b"SD" || letters == *b"SS" {
                    letters = *b"SB";
                }
                format!(
                    "{} {}, {} {}{} {}",
                    pick(&STREETS, b0),
                    1 + u16::from_be_bytes([b1, b2]) % 200,
                    1000 + u16::from_be_bytes([b3, b4]) % 9000,
                    char::from(letters[0]),
                    char::from(letters[1]),
                    pick(&CITIES, b7)
                )
            }
            Pseudonym::Date => shift_date(value, self.shift_days(tenant, subject))?,
            _ => {
                let words = value.split_whitespace().count().clamp(1, 30);
                b.iter().take(words).map(|x| pick(&WORDS, *x)).collect::<Vec<_>>().join(" ")
            }
        })
    }
}

/// The entry of `list` that byte `x` picks.
fn pick<'a>(list: &[&'a str], x: u8) -> &'a str {
    list.iter().cycle().nth(usize::from(x)).copied().unwrap_or_default()
}

/// Nine digits from `b` that pass the eleven-test: 9·d1 + 8·d2 + … + 2·d8 − d9 ≡ 0 (mod 11),
/// first digit not 0.
fn bsn(b: &[u8; 32]) -> String {
    let mut d: Vec<u32> = b.iter().take(8).map(|x| u32::from(*x) % 10).collect();
    if let Some(first) = d.first_mut() {
        *first = 1 + *first % 9;
    }
    loop {
        let sum: u32 = d.iter().zip((2..=9).rev()).map(|(x, w)| x * w).sum();
        if sum % 11 < 10 {
            d.push(sum % 11);
            break;
        }
        // A check digit of 10 does not exist: change the eighth digit and try again.
        if let Some(last) = d.last_mut() {
            *last = (*last + 1) % 10;
        }
    }
    d.iter().filter_map(|x| char::from_digit(*x, 10)).collect()
}

/// Does `s` pass the BSN eleven-test?
#[cfg(test)]
fn eleven_test(s: &str) -> bool {
    let d: Vec<i64> = s.chars().filter_map(|c| c.to_digit(10)).map(i64::from).collect();
    if d.len() != 9 || s.len() != 9 {
        return false;
    }
    let sum: i64 = d.iter().zip([9, 8, 7, 6, 5, 4, 3, 2, -1]).map(|(x, w)| x * w).sum();
    sum % 11 == 0
}

/// `YYYY-MM-DD` moved by `days`.
pub(crate) fn shift_date(date: &str, days: i64) -> Result<String> {
    let bad =
        || CliError::Usage(format!("a date pseudonym needs YYYY-MM-DD, found {} characters", date.len()));
    let mut it = date.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (it.next(), it.next(), it.next()) else { return Err(bad()) };
    let (Ok(y), Ok(m), Ok(d)) = (y.parse::<i64>(), m.parse::<i64>(), d.parse::<i64>()) else {
        return Err(bad());
    };
    let (y, m, d) = civil_from_days(days_from_civil(y, m, d) + days);
    if !(0..=9999).contains(&y) {
        return Err(bad());
    }
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number of [`days_from_civil`].
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn the_same_input_gives_the_same_pseudonym_and_another_key_another() {
        let a = Pseudonymiser::with_key([1; 32]);
        let b = Pseudonymiser::with_key([2; 32]);
        for kind in [Pseudonym::Name, Pseudonym::Bsn, Pseudonym::Email, Pseudonym::Address, Pseudonym::Text] {
            let x = a.value(kind, "acme", "emp-1", "Jan de Vries").unwrap();
            assert_eq!(x, a.value(kind, "acme", "emp-2", "Jan de Vries").unwrap(), "{kind:?}");
            assert_ne!(x, "Jan de Vries");
            let others: Vec<String> =
                (0..8).map(|i| b.value(kind, "acme", "emp-1", &format!("Jan {i}")).unwrap()).collect();
            assert!(others.iter().any(|o| *o != x), "{kind:?}: {others:?}");
        }
        assert_eq!(a.subject("acme", "emp-1"), a.subject("acme", "emp-1"));
        assert_ne!(a.subject("acme", "emp-1"), b.subject("acme", "emp-1"));
        assert_ne!(a.subject("acme", "emp-1"), a.subject("globex", "emp-1"));
        assert!(kluis_store::check_id("subject id", &a.subject("acme", "emp-1")).is_ok());
        assert!(kluis_store::check_id("record id", &a.record("acme", "ar-1")).is_ok());
    }

    #[test]
    fn bsns_pass_the_eleven_test() {
        assert!(eleven_test("111222333"));
        assert!(!eleven_test("111222334"));
        assert!(!eleven_test("11122233"));
        let p = Pseudonymiser::with_key([7; 32]);
        for i in 0..2000 {
            let bsn = p.value(Pseudonym::Bsn, "acme", "emp-1", &format!("{i:09}")).unwrap();
            assert!(eleven_test(&bsn), "{bsn}");
            assert!(!bsn.starts_with('0'), "{bsn}");
        }
    }

    #[test]
    fn dates_of_one_subject_move_together() {
        let p = Pseudonymiser::with_key([3; 32]);
        for subject in ["emp-1", "emp-2", "emp-3", "emp-4"] {
            let start = p.value(Pseudonym::Date, "acme", subject, "2026-02-27").unwrap();
            let end = p.value(Pseudonym::Date, "acme", subject, "2026-03-02").unwrap();
            let days = |s: &str| {
                let v: Vec<i64> = s.split('-').map(|x| x.parse().unwrap()).collect();
                days_from_civil(v[0], v[1], v[2])
            };
            assert_eq!(
                days(&end) - days(&start),
                days("2026-03-02") - days("2026-02-27"),
                "{start} .. {end}"
            );
            let shift = p.shift_days("acme", subject);
            assert!(shift != 0 && shift.abs() <= MAX_SHIFT_DAYS);
            assert_eq!(days(&start) - days("2026-02-27"), shift);
        }
        assert_eq!(shift_date("2024-02-28", 1).unwrap(), "2024-02-29");
        assert_eq!(shift_date("2023-12-31", 1).unwrap(), "2024-01-01");
        assert_eq!(shift_date("2024-03-01", -1).unwrap(), "2024-02-29");
        assert!(shift_date("2024-13", 1).is_err());
    }

    #[test]
    fn addresses_and_emails_are_well_formed() {
        let p = Pseudonymiser::with_key([9; 32]);
        for i in 0..500 {
            let a = p.value(Pseudonym::Address, "acme", "s", &format!("street {i}")).unwrap();
            let postcode = a.split(", ").nth(1).unwrap();
            let (digits, rest) = postcode.split_at(4);
            assert!(digits.parse::<u16>().unwrap() >= 1000, "{a}");
            let letters = &rest[1..3];
            assert!(
                letters.chars().all(|c| c.is_ascii_uppercase()) && !["SA", "SD", "SS"].contains(&letters),
                "{a}"
            );
            let e = p.value(Pseudonym::Email, "acme", "s", &format!("x{i}@example.com")).unwrap();
            assert!(e.ends_with("@test.invalid") && e.is_ascii() && !e.contains(' '), "{e}");
        }
    }
}
