//! Auth rules: both password presets rule by rule, Argon2id hashing and rehash, welcome
//! passwords, throttling and idle lock on a controlled clock (no sleeps), TOTP vectors, and
//! redacted `Debug` of every secret type.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{Algorithm, Argon2, Params, Version};
use base64ct::{Base64Unpadded, Encoding};
use kluis_service::Error;
use kluis_service::auth::throttle::{Throttle, ThrottleConfig, Throttled};
use kluis_service::auth::totp::{ReplayGuard, Totp, TotpAlgorithm, TotpRejected, TotpSecret};
use kluis_service::auth::welcome::{WelcomeCredential, WelcomeRejected};
use kluis_service::auth::{
    HashParams, Password, PasswordContext, PasswordHash, PasswordHasher, PasswordHistory, PasswordPolicy,
    Session, SessionLocked, SessionPolicy, Verified, Violation,
};
use kluis_service::clock::{Clock, ManualClock};

const CANARY: &str = "Canary-Lenteregen-9731!";

fn ctx() -> PasswordContext<'static> {
    PasswordContext { user_name: "p.devries@acme.nl", tenant: Some("acme-bv"), extra: &["Kluis HR"] }
}

fn violations(policy: &PasswordPolicy, pw: &str) -> Vec<Violation> {
    match policy.check(&Password::new(pw), &ctx()) {
        Ok(()) => Vec::new(),
        Err(r) => r.0,
    }
}

// ---- NIST SP 800-63B-4 preset ----

#[test]
fn nist_is_the_default() {
    assert_eq!(PasswordPolicy::default(), PasswordPolicy::nist());
}

#[test]
fn nist_minimum_15_characters() {
    let p = PasswordPolicy::nist();
    assert_eq!(violations(&p, "vlinder kompas"), vec![Violation::TooShort { min: 15 }]); // 14
    assert_eq!(violations(&p, "vlinder kompas!"), vec![]); // 15
}

#[test]
fn nist_accepts_long_passwords_and_bounds_them() {
    let p = PasswordPolicy::nist();
    let words =
        ["kompas", "vlinder", "regenjas", "tulp", "molen", "gracht", "fiets", "kaas", "dijk", "polder"];
    let mut long = String::new();
    let mut i = 0;
    while long.chars().count() < 256 {
        long.push_str(words[i % words.len()]);
        long.push(char::from(b'a' + (i % 26) as u8));
        long.push(' ');
        i += 1;
    }
    let s64: String = long.chars().take(64).collect();
    assert_eq!(violations(&p, &s64), vec![]);
    let s256: String = long.chars().take(256).collect();
    assert_eq!(violations(&p, &s256), vec![]);
    let s257: String = long.chars().take(257).collect();
    assert_eq!(violations(&p, &s257), vec![Violation::TooLong { max: 256 }]);
}

#[test]
fn nist_counts_code_points_after_nfkc_normalisation() {
    // Full-width letters normalise to ASCII: the same password from another keyboard.
    let full = Password::new("ｐａｓｓｗｏｒｄ");
    assert_eq!(full.expose_secret(), "password");
    // "é" as one code point or as e + combining accent: NFKC makes them equal.
    assert_eq!(
        Password::new("caf\u{0065}\u{0301}").expose_secret(),
        Password::new("caf\u{00e9}").expose_secret()
    );
    // 15 code points of non-ASCII text count as 15 (not their UTF-8 bytes).
    let p = PasswordPolicy::nist();
    assert_eq!(violations(&p, "ÄÖÜ zeeën ijsbeer"), vec![]);
    assert_eq!(violations(&p, "ÄÖÜ zeeën ijsbe"), vec![]);
    assert_eq!(violations(&p, "ÄÖÜ zeeën ijsb"), vec![Violation::TooShort { min: 15 }]);
    // And hashing sees the normalised form.
    let h = PasswordHasher::owasp();
    let stored = h.hash(&Password::new("ｗａｃｈｔｗｏｏｒｄ-ｚｏｍｅｒ-２０２４")).unwrap();
    assert!(h.verify(&Password::new("wachtwoord-zomer-2024"), &stored).unwrap().is_valid());
}

#[test]
fn nist_has_no_composition_rules() {
    let p = PasswordPolicy::nist();
    assert_eq!(violations(&p, "correct horse battery staple"), vec![]); // lower case and spaces only
    assert_eq!(violations(&p, "ZONNEBLOEMVELDEN"), vec![]); // upper only
}

#[test]
fn common_and_breached_passwords_are_refused() {
    for p in [PasswordPolicy::nist(), PasswordPolicy::vendor()] {
        for pw in [
            "1qaz2wsx3edc4rfv",   // in the list as it is
            "1234qwerasdfzxcv",   // in the list
            "Wachtwoord2024!!",   // Dutch word with digits and symbols around it
            "!!Qwertyuiop123456", // letters part is a listed password
            "passwordpassword",   // repeated
            "SunshinePrincess1!", // two listed passwords joined
            "dragon-master-2024", // two listed passwords, symbols between
        ] {
            assert!(violations(&p, pw).contains(&Violation::Common), "{pw}: {:?}", violations(&p, pw));
        }
    }
    // A strong passphrase is not.
    assert!(!violations(&PasswordPolicy::nist(), "vlinder kompas regenjas").contains(&Violation::Common));
    assert!(kluis_service::auth::password::blocklist_len() > 29_000);
}

#[test]
fn context_words_are_refused() {
    let p = PasswordPolicy::nist();
    assert_eq!(violations(&p, "devries-zomer-fiets"), vec![Violation::ContextWord]); // part of the user name
    assert_eq!(violations(&p, "ACME-BV vlinderkompas"), vec![Violation::ContextWord]); // tenant, any case
    assert_eq!(violations(&p, "mijn kluis regenjas"), vec![Violation::ContextWord]); // a word the app named
    // Short parts of the user name ("nl") are not context words.
    assert_eq!(violations(&p, "nl vlinder kompas"), vec![]);
}

#[test]
fn repetitive_and_sequential_passwords_are_refused() {
    let p = PasswordPolicy::nist();
    for pw in [
        "aaaaaaaaaaaaaaaaaaaa",
        "abababababababababab",
        "abcdefghijklmnopqr",
        "98765432109876543210",
        "xk3!zq7xk3!zq7xk3!zq7",
    ] {
        assert!(violations(&p, pw).contains(&Violation::Repetitive), "{pw}");
    }
}

#[test]
fn control_characters_are_refused() {
    assert!(
        violations(&PasswordPolicy::nist(), "vlinder\u{0007}kompas-regen")
            .contains(&Violation::ControlCharacter)
    );
}

// ---- Vendor preset ----

#[test]
fn vendor_minimum_16_characters() {
    let p = PasswordPolicy::vendor();
    assert_eq!(violations(&p, "Vlinder-Kompas1"), vec![Violation::TooShort { min: 16 }]); // 15
    assert_eq!(violations(&p, "Vlinder-Kompas12"), vec![]); // 16
}

#[test]
fn vendor_three_of_four_classes() {
    let p = PasswordPolicy::vendor();
    // Two classes: refused (accepted by NIST).
    assert_eq!(
        violations(&p, "correct horse battery staple"),
        vec![Violation::TooFewClasses { required: 3, present: 2 }]
    );
    assert_eq!(violations(&PasswordPolicy::nist(), "correct horse battery staple"), vec![]);
    // Each combination of three classes passes.
    for pw in [
        "VlinderKompasRegen7",  // upper lower digit
        "VlinderKompasRegen!",  // upper lower other
        "vlinderkompas!regen7", // lower other digit
        "VLINDERKOMPAS!REGEN7", // upper other digit
    ] {
        assert_eq!(violations(&p, pw), vec![], "{pw}");
    }
}

fn fast_history_policy() -> PasswordPolicy {
    let mut p = PasswordPolicy::vendor();
    p.history = 2;
    p
}

#[test]
fn vendor_refuses_reuse_and_digit_variants_of_the_last_n() {
    let p = fast_history_policy();
    let h = PasswordHasher::owasp();
    let mut hist = PasswordHistory::new();
    let first = "Zomerse Fietstocht 2024!";
    hist.push(&Password::new(first), &h, p.history).unwrap();
    let check = |hist: &PasswordHistory, pw: &str| match p
        .check_with_history(&Password::new(pw), &ctx(), hist, &h)
        .unwrap()
    {
        Ok(()) => Vec::new(),
        Err(r) => r.0,
    };
    assert_eq!(check(&hist, first), vec![Violation::Reused]);
    assert_eq!(check(&hist, "Zomerse Fietstocht 2025!"), vec![Violation::DigitVariantOfPrevious]);
    assert_eq!(check(&hist, "Zomerse Fietstocht 20245!"), vec![Violation::DigitVariantOfPrevious]);
    assert_eq!(check(&hist, "Zomerse Fietstocht !"), vec![Violation::DigitVariantOfPrevious]);
    assert_eq!(check(&hist, "Winterse Fietstocht 2024!"), vec![]);
    // Two more changes push the first out of a history of 2: then it may come back.
    hist.push(&Password::new("Winterse Fietstocht 2024!"), &h, p.history).unwrap();
    assert_eq!(check(&hist, first), vec![Violation::Reused]);
    hist.push(&Password::new("Herfstige Wandeling 77?"), &h, p.history).unwrap();
    assert_eq!(hist.len(), 2);
    assert_eq!(check(&hist, first), vec![]);
    // The NIST preset keeps no history.
    assert_eq!(
        PasswordPolicy::nist()
            .check_with_history(&Password::new("Herfstige Wandeling 77?"), &ctx(), &hist, &h)
            .unwrap(),
        Ok(())
    );
    // Rejections say what, never the password.
    let r = p
        .check_with_history(&Password::new("Herfstige Wandeling 77?"), &ctx(), &hist, &h)
        .unwrap()
        .unwrap_err();
    assert!(!r.to_string().contains("Herfstige"));
    assert!(r.has(&Violation::Reused));
}

// ---- Argon2id ----

#[test]
fn argon2id_round_trip_at_owasp_parameters() {
    let h = PasswordHasher::owasp();
    assert_eq!(h.params(), HashParams { m_kib: 19_456, t: 2, p: 1 });
    let stored = h.hash(&Password::new(CANARY)).unwrap();
    assert!(stored.as_str().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{}", stored.as_str());
    assert!(!stored.as_str().contains(CANARY));
    assert_eq!(h.verify(&Password::new(CANARY), &stored).unwrap(), Verified::Valid { rehash: None });
    assert_eq!(h.verify(&Password::new("Canary-Lenteregen-9732!"), &stored).unwrap(), Verified::Invalid);
    // Fresh salt each time.
    assert_ne!(h.hash(&Password::new(CANARY)).unwrap(), stored);
    // The stored string parses back.
    assert_eq!(PasswordHash::parse(stored.as_str()).unwrap(), stored);
    assert!(h.verify_unknown_user(&Password::new(CANARY)).unwrap() == Verified::Invalid);
}

#[test]
fn parameters_below_owasp_are_refused_for_new_hashes() {
    assert!(PasswordHasher::new(HashParams { m_kib: 19_455, t: 2, p: 1 }).is_err());
    assert!(PasswordHasher::new(HashParams { m_kib: 19_456, t: 1, p: 1 }).is_err());
    assert!(PasswordHasher::new(HashParams { m_kib: 19_456, t: 2, p: 0 }).is_err());
    assert!(PasswordHasher::new(HashParams { m_kib: 4 << 20, t: 2, p: 1 }).is_err());
    assert!(PasswordHasher::new(HashParams { m_kib: 24_576, t: 3, p: 1 }).is_ok());
}

fn phc(m: u32, t: u32, pw: &str, salt: &[u8]) -> String {
    let mut out = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::new(m, t, 1, Some(32)).unwrap())
        .hash_password_into(pw.as_bytes(), salt, &mut out)
        .unwrap();
    format!(
        "$argon2id$v=19$m={m},t={t},p=1${}${}",
        Base64Unpadded::encode_string(salt),
        Base64Unpadded::encode_string(&out)
    )
}

#[test]
fn login_rehashes_when_parameters_rise() {
    // A hash from an older, weaker configuration still verifies and comes back upgraded.
    let old = PasswordHash::parse(&phc(8192, 1, CANARY, b"0123456789abcdef")).unwrap();
    let h = PasswordHasher::owasp();
    let Verified::Valid { rehash: Some(new) } = h.verify(&Password::new(CANARY), &old).unwrap() else {
        panic!("expected a rehash")
    };
    assert_eq!(new.params().unwrap(), HashParams::OWASP);
    assert_eq!(h.verify(&Password::new(CANARY), &new).unwrap(), Verified::Valid { rehash: None });
    // Raised parameters: an OWASP hash is upgraded by a stronger hasher.
    let stronger = PasswordHasher::new(HashParams { m_kib: 24_576, t: 3, p: 1 }).unwrap();
    let Verified::Valid { rehash: Some(newer) } = stronger.verify(&Password::new(CANARY), &new).unwrap()
    else {
        panic!("expected a rehash")
    };
    assert_eq!(newer.params().unwrap(), HashParams { m_kib: 24_576, t: 3, p: 1 });
    // A wrong password against a weak hash is no rehash.
    assert_eq!(h.verify(&Password::new("wrong"), &old).unwrap(), Verified::Invalid);
}

#[test]
fn tampered_and_malformed_hashes() {
    let h = PasswordHasher::owasp();
    let good = h.hash(&Password::new(CANARY)).unwrap();
    let s = good.as_str().to_owned();
    // Flip a character of the hash part: a mismatch, not an error.
    let mut t = s.clone().into_bytes();
    let last = t.len() - 2;
    t[last] = if t[last] == b'A' { b'B' } else { b'A' };
    let tampered = PasswordHash::parse(std::str::from_utf8(&t).unwrap()).unwrap();
    assert_eq!(h.verify(&Password::new(CANARY), &tampered).unwrap(), Verified::Invalid);
    // Lowered parameters in the string: the hash no longer matches.
    let lowered = PasswordHash::parse(&s.replace("m=19456", "m=19455")).unwrap();
    assert_eq!(h.verify(&Password::new(CANARY), &lowered).unwrap(), Verified::Invalid);
    for bad in [
        "",
        "argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2d$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=16$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=4294967295,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA", // 4 TiB: refused before work
        "$argon2id$v=19$m=19456,t=100000,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=2,p=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=2$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=019456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "$argon2id$v=19$m=19456,t=2,p=1$c2Fs$aGFzaGhhc2hoYXNoaGFzaA", // salt too short
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",          // hash too short
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA$extra",
        "$argon2id$v=19$m=19456,t=2,p=1$!!!$aGFzaGhhc2hoYXNoaGFzaA",
    ] {
        assert!(matches!(PasswordHash::parse(bad), Err(Error::MalformedHash(_))), "{bad}");
    }
}

// ---- Welcome passwords ----

#[test]
fn welcome_password_is_random_single_use_short_lived() {
    let clock = ManualClock::at_unix(1_800_000_000);
    let h = PasswordHasher::owasp();
    let ttl = Duration::from_secs(24 * 3600);
    let (pw, mut cred) = WelcomeCredential::issue(&h, clock.now(), ttl).unwrap();
    assert_eq!(pw.char_count(), 20);
    // Strong enough for both presets.
    assert_eq!(PasswordPolicy::vendor().check(&pw, &ctx()), Ok(()));
    let (pw2, _) = WelcomeCredential::issue(&h, clock.now(), ttl).unwrap();
    assert_ne!(pw.expose_secret(), pw2.expose_secret());
    // Wrong: refused, and not used up.
    assert_eq!(cred.redeem(&h, &pw2, clock.now()).unwrap().unwrap_err(), WelcomeRejected::Wrong);
    assert!(!cred.is_used());
    // Right: the user must now choose a password; second use refused.
    clock.advance(Duration::from_secs(3600));
    cred.redeem(&h, &pw, clock.now()).unwrap().unwrap().user_must_choose();
    assert!(cred.is_used());
    assert_eq!(cred.redeem(&h, &pw, clock.now()).unwrap().unwrap_err(), WelcomeRejected::Used);
    // Expired.
    let (pw3, mut cred3) = WelcomeCredential::issue(&h, clock.now(), ttl).unwrap();
    clock.advance(ttl);
    assert_eq!(cred3.redeem(&h, &pw3, clock.now()).unwrap().unwrap_err(), WelcomeRejected::Expired);
    // Lifetimes are bounded.
    assert!(WelcomeCredential::issue(&h, clock.now(), Duration::ZERO).is_err());
    assert!(WelcomeCredential::issue(&h, clock.now(), Duration::from_secs(8 * 86_400)).is_err());
    // A restored credential behaves the same.
    let restored = WelcomeCredential::from_parts(cred.hash().clone(), cred.expires_at(), cred.is_used());
    assert_eq!(restored, cred);
}

// ---- Throttling, controlled clock ----

fn throttle() -> (Throttle, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::at_unix(1_800_000_000));
    (Throttle::new(ThrottleConfig::default(), clock.clone()), clock)
}

#[test]
fn account_lockout_backs_off_and_resets_on_success() {
    let (th, clock) = throttle();
    for _ in 0..5 {
        assert_eq!(th.check("piet", "10.0.0.1"), Ok(()));
        th.record_failure("piet", "10.0.0.1");
    }
    assert_eq!(th.check("piet", "10.0.0.1"), Ok(()), "five free failures");
    th.record_failure("piet", "10.0.0.1");
    assert_eq!(
        th.check("piet", "10.0.0.2"),
        Err(Throttled::Account { retry_after: Duration::from_secs(60) })
    );
    // Another account from the same source is not locked.
    assert_eq!(th.check("jan", "10.0.0.1"), Ok(()));
    clock.advance(Duration::from_secs(59));
    assert_eq!(th.check("piet", "10.0.0.1"), Err(Throttled::Account { retry_after: Duration::from_secs(1) }));
    clock.advance(Duration::from_secs(1));
    assert_eq!(th.check("piet", "10.0.0.1"), Ok(()));
    th.record_failure("piet", "10.0.0.1");
    assert_eq!(
        th.check("piet", "10.0.0.1"),
        Err(Throttled::Account { retry_after: Duration::from_secs(120) })
    );
    clock.advance(Duration::from_secs(120));
    th.record_success("piet", "10.0.0.1");
    assert_eq!(th.failures("piet"), 0);
    th.record_failure("piet", "10.0.0.1");
    assert_eq!(th.check("piet", "10.0.0.1"), Ok(()));
}

#[test]
fn lock_is_capped_and_hard_limit_needs_an_unlock() {
    let (th, clock) = throttle();
    for i in 0..99 {
        th.record_failure("piet", &format!("src-{i}"));
    }
    // Capped at one hour.
    assert_eq!(th.check("piet", "x"), Err(Throttled::Account { retry_after: Duration::from_secs(3600) }));
    clock.advance(Duration::from_secs(3600));
    assert_eq!(th.check("piet", "x"), Ok(()));
    th.record_failure("piet", "x"); // the 100th
    clock.advance(Duration::from_secs(100 * 86_400));
    assert_eq!(th.check("piet", "x"), Err(Throttled::AccountDisabled));
    th.unlock_account("piet");
    assert_eq!(th.check("piet", "x"), Ok(()));
}

#[test]
fn source_is_blocked_after_a_spray() {
    let (th, clock) = throttle();
    for i in 0..50 {
        assert_eq!(th.check(&format!("user{i}"), "203.0.113.9"), Ok(()));
        th.record_failure(&format!("user{i}"), "203.0.113.9");
        clock.advance(Duration::from_secs(1));
    }
    assert_eq!(
        th.check("someone-new", "203.0.113.9"),
        Err(Throttled::Source { retry_after: Duration::from_secs(15 * 60 - 50) })
    );
    assert_eq!(th.check("someone-new", "198.51.100.1"), Ok(()));
    // A success from the source does not clear it.
    th.record_success("user1", "203.0.113.9");
    assert!(th.check("user1", "203.0.113.9").is_err());
    clock.advance(Duration::from_secs(15 * 60));
    assert_eq!(th.check("someone-new", "203.0.113.9"), Ok(()));
}

#[test]
fn throttle_keys_ignore_case_and_ipv6_host_bits() {
    let (th, _clock) = throttle();
    for name in ["Piet", "piet", " PIET ", "pieT", "piet", "Piet"] {
        th.record_failure(name, "10.0.0.1");
    }
    assert_eq!(th.failures("piet"), 6);
    assert!(matches!(th.check("PiEt", "10.0.0.9"), Err(Throttled::Account { .. })));
    // A spray from one IPv6 /64, rotating the host part, is one source.
    for i in 0..50u32 {
        th.record_failure(&format!("user{i}"), &format!("2001:db8:1:2:{i:x}::1"));
    }
    assert!(matches!(th.check("fresh", "2001:db8:1:2:ffff::77"), Err(Throttled::Source { .. })));
    assert_eq!(th.check("fresh", "2001:db8:1:3::1"), Ok(()));
}

#[test]
fn throttle_memory_is_bounded() {
    let clock = Arc::new(ManualClock::at_unix(1_800_000_000));
    let mut cfg = ThrottleConfig::default();
    cfg.max_tracked = 100;
    let th = Throttle::new(cfg, clock.clone());
    for i in 0..1000 {
        th.record_failure(&format!("acct-{i}"), &format!("src-{i}"));
        clock.advance(Duration::from_millis(10));
    }
    // The most recent is tracked; the oldest was let go.
    assert_eq!(th.failures("acct-999"), 1);
    assert_eq!(th.failures("acct-0"), 0);
    assert_eq!(th.failures("acct-899"), 0);
    // Recent failures of the flood are still counted.
    assert_eq!(th.failures("acct-990"), 1);
}

// ---- Session idle lock ----

#[test]
fn session_locks_after_20_idle_minutes() {
    let clock = ManualClock::at_unix(1_800_000_000);
    let policy = SessionPolicy::default();
    assert_eq!(policy.idle_timeout, Duration::from_secs(20 * 60));
    let mut s = Session::start(clock.now());
    clock.advance(Duration::from_secs(19 * 60 + 59));
    assert_eq!(s.touch(&policy, clock.now()), Ok(()));
    clock.advance(Duration::from_secs(19 * 60 + 59));
    assert_eq!(s.touch(&policy, clock.now()), Ok(()), "activity restarts the idle clock");
    clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(s.touch(&policy, clock.now()), Err(SessionLocked::Idle));
    // Stays locked: activity does not unlock it.
    clock.advance(Duration::from_secs(1));
    assert_eq!(s.touch(&policy, clock.now()), Err(SessionLocked::Idle));
    s.unlock(&policy, clock.now()).unwrap();
    assert_eq!(s.touch(&policy, clock.now()), Ok(()));
    // A clock set back does not make an idle session fresh.
    clock.set(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    assert_eq!(s.status(&policy, clock.now()), Ok(()));
}

#[test]
fn idle_timeout_is_configurable_and_absolute_limit_ends_the_session() {
    let clock = ManualClock::at_unix(1_800_000_000);
    let five = SessionPolicy::with_idle_timeout(Duration::from_secs(300));
    let mut s = Session::start(clock.now());
    clock.advance(Duration::from_secs(300));
    assert_eq!(s.touch(&five, clock.now()), Err(SessionLocked::Idle));
    let policy = SessionPolicy::default();
    let mut s = Session::start(clock.now());
    for _ in 0..(12 * 6 - 1) {
        clock.advance(Duration::from_secs(600));
        assert_eq!(s.touch(&policy, clock.now()), Ok(()));
    }
    clock.advance(Duration::from_secs(600));
    assert_eq!(s.touch(&policy, clock.now()), Err(SessionLocked::Expired));
    assert_eq!(s.unlock(&policy, clock.now()), Err(SessionLocked::Expired));
}

// ---- TOTP (RFC 6238 appendix B) ----

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn rfc6238_test_vectors() {
    let sha1 = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
    let sha256 = TotpSecret::from_bytes(b"12345678901234567890123456789012").unwrap();
    let sha512 =
        TotpSecret::from_bytes(b"1234567890123456789012345678901234567890123456789012345678901234").unwrap();
    let vectors: [(u64, &str, &str, &str); 6] = [
        (59, "94287082", "46119246", "90693936"),
        (1_111_111_109, "07081804", "68084774", "25091201"),
        (1_111_111_111, "14050471", "67062674", "99943326"),
        (1_234_567_890, "89005924", "91819424", "93441116"),
        (2_000_000_000, "69279037", "90698825", "38618901"),
        (20_000_000_000, "65353130", "77737706", "47863826"),
    ];
    let t1 = Totp::with_params(sha1, TotpAlgorithm::Sha1, 8, 30, 0).unwrap();
    let t256 = Totp::with_params(sha256, TotpAlgorithm::Sha256, 8, 30, 0).unwrap();
    let t512 = Totp::with_params(sha512, TotpAlgorithm::Sha512, 8, 30, 0).unwrap();
    for (secs, c1, c256, c512) in vectors {
        assert_eq!(t1.code_at(at(secs)), c1, "sha1 {secs}");
        assert_eq!(t256.code_at(at(secs)), c256, "sha256 {secs}");
        assert_eq!(t512.code_at(at(secs)), c512, "sha512 {secs}");
        let mut g = ReplayGuard::new();
        assert_eq!(t1.verify(c1, at(secs), &mut g), Ok(()));
    }
    // RFC 4226 appendix D (HOTP, 6 digits) through the same truncation.
    let hotp = Totp::new(TotpSecret::from_bytes(b"12345678901234567890").unwrap());
    let d =
        ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"];
    for (i, code) in d.iter().enumerate() {
        assert_eq!(hotp.code_for_step(i as u64), *code);
    }
}

#[test]
fn totp_drift_window_and_replay() {
    let secret = TotpSecret::generate().unwrap();
    let totp = Totp::new(secret);
    let now = at(1_800_000_015);
    let step = totp.step_at(now);
    let mut g = ReplayGuard::new();
    // One step either way is accepted; two is not.
    assert_eq!(totp.verify(&totp.code_for_step(step + 2), now, &mut g), Err(TotpRejected::Wrong));
    assert_eq!(totp.verify(&totp.code_for_step(step - 2), now, &mut g), Err(TotpRejected::Wrong));
    assert_eq!(totp.verify(&totp.code_for_step(step - 1), now, &mut g), Ok(()));
    assert_eq!(g.last_step(), Some(step - 1));
    // The same code again: a replay.
    assert_eq!(totp.verify(&totp.code_for_step(step - 1), now, &mut g), Err(TotpRejected::Replayed));
    assert_eq!(totp.verify(&totp.code_for_step(step + 1), now, &mut g), Ok(()));
    // After a later step was used, an earlier (still valid) code is refused too.
    assert_eq!(totp.verify(&totp.code_for_step(step), now, &mut g), Err(TotpRejected::Replayed));
    // A persisted guard keeps refusing.
    let mut restored = ReplayGuard::from_last_step(g.last_step());
    assert_eq!(totp.verify(&totp.code_for_step(step + 1), now, &mut restored), Err(TotpRejected::Replayed));
    // Format.
    for bad in ["", "12345", "1234567", "12a456", "１２３４５６"] {
        assert_eq!(totp.verify(bad, now, &mut ReplayGuard::new()), Err(TotpRejected::Format), "{bad:?}");
    }
    // Parameters are bounded.
    assert!(Totp::with_params(TotpSecret::generate().unwrap(), TotpAlgorithm::Sha1, 5, 30, 1).is_err());
    assert!(Totp::with_params(TotpSecret::generate().unwrap(), TotpAlgorithm::Sha1, 6, 1, 1).is_err());
    assert!(Totp::with_params(TotpSecret::generate().unwrap(), TotpAlgorithm::Sha1, 6, 30, 5).is_err());
    assert!(TotpSecret::from_bytes(b"short").is_err());
}

#[test]
fn totp_secret_base32_and_provisioning_uri() {
    let s = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
    assert_eq!(s.to_base32().as_str(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    let back = TotpSecret::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
    assert_eq!(back.expose_secret(), b"12345678901234567890");
    assert!(TotpSecret::from_base32("GEZDGNBV1!").is_err());
    let r = TotpSecret::generate().unwrap();
    assert_eq!(TotpSecret::from_base32(&r.to_base32()).unwrap().expose_secret(), r.expose_secret());
    let uri = Totp::new(s).provisioning_uri("Kluis HR", "p.devries@acme.nl");
    assert_eq!(
        uri.as_str(),
        "otpauth://totp/Kluis%20HR:p.devries%40acme.nl?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Kluis%20HR&algorithm=SHA1&digits=6&period=30"
    );
}

// ---- Debug never shows secrets ----

#[test]
fn debug_of_secret_types_holds_no_secret() {
    let h = PasswordHasher::owasp();
    let pw = Password::new(CANARY);
    let hash = h.hash(&pw).unwrap();
    let b64_hash = hash.as_str().rsplit('$').next().unwrap().to_owned();
    let mut hist = PasswordHistory::new();
    hist.push(&pw, &h, 3).unwrap();
    let secret = TotpSecret::from_bytes(b"Canary-Totp-Secret-0042").unwrap();
    let b32 = secret.to_base32().to_string();
    let totp = Totp::new(secret.clone());
    let (welcome_pw, cred) =
        WelcomeCredential::issue(&h, SystemTime::now(), Duration::from_secs(60)).unwrap();
    let rejected = PasswordPolicy::nist().check(&Password::new("Canary-short"), &ctx()).unwrap_err();
    let dumps = [
        format!("{pw:?}"),
        format!("{hash:?}"),
        format!("{hist:?}"),
        format!("{secret:?}"),
        format!("{totp:?}"),
        format!("{welcome_pw:?}"),
        format!("{cred:?}"),
        format!("{rejected:?} {rejected}"),
    ];
    for d in &dumps {
        assert!(!d.contains(CANARY), "{d}");
        assert!(!d.contains("Canary"), "{d}");
        assert!(!d.contains(&b64_hash), "{d}");
        assert!(!d.contains(&b32), "{d}");
        assert!(!d.contains(welcome_pw.expose_secret()), "{d}");
        assert!(d.contains("REDACTED") || d.contains("rejected") || d.contains("Rejected"), "{d}");
    }
}

#[test]
fn oversized_passwords_are_refused_without_hashing() {
    let h = PasswordHasher::owasp();
    let huge = Password::new("x".repeat(1 << 20));
    assert!(matches!(h.hash(&huge), Err(Error::Invalid { .. })));
    let stored = h.hash(&Password::new(CANARY)).unwrap();
    assert_eq!(h.verify(&huge, &stored).unwrap(), Verified::Invalid);
    assert!(!PasswordPolicy::nist().check(&huge, &ctx()).unwrap_err().0.is_empty());
}
