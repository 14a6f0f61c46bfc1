//! The keyring file: wrong passphrase, corruption and truncation each give their own error;
//! weak parameters are refused; the generation increases with every write.

mod common;

use std::sync::OnceLock;

use kluis_core::keyring::{KdfParams, inspect, parse_key_file};
use kluis_core::{Error, KeyMaterial, KeyringSecret, LocalKeyring, Passphrase, Suite};
use kluis_keyring::{KeyringError, KeyringFile};

fn pass(s: &str) -> KeyringSecret {
    KeyringSecret::Passphrase(Passphrase::new(s.to_owned()), KdfParams::MINIMUM)
}

/// One passphrase-sealed keyring file, made once (Argon2id with real parameters).
fn file() -> &'static Vec<u8> {
    static F: OnceLock<Vec<u8>> = OnceLock::new();
    F.get_or_init(|| {
        let mut k = LocalKeyring::generate(1_700_000_000).unwrap();
        k.rotate(1_700_000_100).unwrap();
        k.to_file_bytes(&pass("correct horse battery staple"), Suite::default()).unwrap().0
    })
}

fn raw_secret() -> KeyringSecret {
    KeyringSecret::RawKey(KeyMaterial::from_bytes([0x5a; 32]))
}

#[test]
fn opens_with_the_right_passphrase_only() {
    let k = LocalKeyring::from_file_bytes(file(), &pass("correct horse battery staple")).unwrap();
    assert_eq!(k.versions().len(), 2);
    assert_eq!(k.primary(), common::kv(2));
    assert_eq!(k.generation(), 1);
    assert!(matches!(
        LocalKeyring::from_file_bytes(file(), &pass("correct horse battery stapl")),
        Err(Error::WrongPassphrase)
    ));
    assert!(matches!(LocalKeyring::from_file_bytes(file(), &pass("")), Err(Error::WrongPassphrase)));
    // A key file does not open a passphrase keyring (typed error, not a crash).
    assert!(matches!(LocalKeyring::from_file_bytes(file(), &raw_secret()), Err(Error::Invalid { .. })));
    let info = inspect(file()).unwrap();
    assert!(info.passphrase);
    assert_eq!(info.params, KdfParams::MINIMUM);
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let f = file();
    for n in 1..f.len() {
        let err = LocalKeyring::from_file_bytes(&f[..n], &raw_secret()).unwrap_err();
        assert!(matches!(err, Error::KeyringTruncated), "prefix {n}: {err:?}");
    }
    assert!(matches!(LocalKeyring::from_file_bytes(&[], &raw_secret()), Err(Error::KeyringTruncated)));
}

#[test]
fn every_corrupted_byte_is_reported_as_corrupt() {
    let f = file();
    // The raw secret fails fast on a passphrase file only after the checksum and header checks,
    // so a flipped byte anywhere must be found before any key is derived.
    for i in 0..f.len() {
        let mut c = f.clone();
        c[i] ^= 0x04;
        let err = LocalKeyring::from_file_bytes(&c, &raw_secret()).unwrap_err();
        assert!(
            matches!(
                err,
                Error::KeyringCorrupt(_) | Error::KeyringTruncated | Error::UnsupportedVersion { .. }
            ),
            "byte {i}: {err:?}"
        );
    }
    let mut longer = f.clone();
    longer.push(0);
    assert!(matches!(LocalKeyring::from_file_bytes(&longer, &raw_secret()), Err(Error::KeyringCorrupt(_))));
    assert!(matches!(
        LocalKeyring::from_file_bytes(b"this is not a keyring file at all", &raw_secret()),
        Err(Error::KeyringCorrupt(_))
    ));
}

#[test]
fn corruption_with_a_fixed_checksum_is_still_caught() {
    // An attacker who edits the body and recomputes the SHA-256 gets an authentication failure.
    let f = file();
    let mut c = f.clone();
    let body_byte = kluis_core::keyring::HEADER_LEN + 70;
    c[body_byte] ^= 1;
    let n = c.len() - 32;
    let sum = ring::digest::digest(&ring::digest::SHA256, &c[..n]);
    c[n..].copy_from_slice(sum.as_ref());
    let err = LocalKeyring::from_file_bytes(&c, &pass("correct horse battery staple")).unwrap_err();
    assert!(matches!(err, Error::KeyringCorrupt("authentication failed")), "{err:?}");
    // Editing the generation in the header (to fake a newer keyring) breaks the body's AD.
    let mut g = f.clone();
    g[17] ^= 1;
    let n = g.len() - 32;
    let sum = ring::digest::digest(&ring::digest::SHA256, &g[..n]);
    g[n..].copy_from_slice(sum.as_ref());
    assert!(LocalKeyring::from_file_bytes(&g, &pass("correct horse battery staple")).is_err());
}

#[test]
fn weak_kdf_parameters_are_refused() {
    let k = LocalKeyring::generate(0).unwrap();
    for weak in [
        KdfParams { m_cost_kib: 19 * 1024 - 1, t_cost: 2, p_cost: 1 },
        KdfParams { m_cost_kib: 64 * 1024, t_cost: 1, p_cost: 1 },
        KdfParams { m_cost_kib: 64 * 1024, t_cost: 2, p_cost: 0 },
    ] {
        let s = KeyringSecret::Passphrase(Passphrase::new("x".repeat(20)), weak);
        assert!(matches!(k.to_file_bytes(&s, Suite::default()), Err(Error::WeakKdfParams(_))), "{weak:?}");
    }
    // A file whose header claims weak parameters (checksum recomputed) is refused before Argon2.
    let mut f = file().clone();
    f[19..23].copy_from_slice(&1024u32.to_be_bytes());
    let n = f.len() - 32;
    let sum = ring::digest::digest(&ring::digest::SHA256, &f[..n]);
    f[n..].copy_from_slice(sum.as_ref());
    assert!(matches!(LocalKeyring::from_file_bytes(&f, &pass("whatever")), Err(Error::WeakKdfParams(_))));
    // Absurd parameters (a memory bomb) are refused too.
    let mut f = file().clone();
    f[19..23].copy_from_slice(&u32::MAX.to_be_bytes());
    let n = f.len() - 32;
    let sum = ring::digest::digest(&ring::digest::SHA256, &f[..n]);
    f[n..].copy_from_slice(sum.as_ref());
    assert!(matches!(LocalKeyring::from_file_bytes(&f, &pass("whatever")), Err(Error::KeyringCorrupt(_))));
}

#[test]
fn raw_key_files() {
    let k = LocalKeyring::generate(0).unwrap();
    let (bytes, generation) = k.to_file_bytes(&raw_secret(), Suite::XChaCha20Poly1305).unwrap();
    assert_eq!(generation, 1);
    let back = LocalKeyring::from_file_bytes(&bytes, &raw_secret()).unwrap();
    assert_eq!(back.versions(), k.versions());
    let wrong = KeyringSecret::RawKey(KeyMaterial::from_bytes([0x5b; 32]));
    assert!(matches!(LocalKeyring::from_file_bytes(&bytes, &wrong), Err(Error::WrongPassphrase)));
    assert!(!inspect(&bytes).unwrap().passphrase);
    // Key file parsing: raw bytes or hex.
    assert_eq!(parse_key_file(&[7u8; 32]).unwrap(), KeyMaterial::from_bytes([7; 32]));
    let hex = format!("{}\n", "0a".repeat(32));
    assert_eq!(parse_key_file(hex.as_bytes()).unwrap(), KeyMaterial::from_bytes([10; 32]));
    for bad in [&b"short"[..], &[0u8; 33][..], "zz".repeat(32).as_bytes()] {
        assert!(matches!(parse_key_file(bad), Err(Error::Invalid { .. })));
    }
}

#[test]
fn generation_increases_with_every_write_and_rollback_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.kr");
    let mut kf = KeyringFile::create(&path, raw_secret()).unwrap();
    assert_eq!(kf.keyring().generation(), 1);
    let old_copy = std::fs::read(&path).unwrap();
    kf.rotate().unwrap();
    kf.rotate().unwrap();
    assert_eq!(kf.keyring().generation(), 3);
    assert_eq!(KeyringFile::inspect(&path).unwrap().generation, 3);
    // The database recorded generation 3; an old keyring (generation 1) is restored.
    std::fs::write(&path, &old_copy).unwrap();
    let restored = KeyringFile::open(&path, raw_secret()).unwrap();
    let err = kluis_core::keys::check_generation(restored.keyring().generation(), 3).unwrap_err();
    assert!(matches!(err, Error::KeyringRollback { keyring: 1, database: 3 }));
    assert!(err.to_string().contains("rollback"));
}

#[test]
fn passphrase_change_and_wrong_secret_through_the_file_layer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring.kr");
    let mut kf = KeyringFile::create(&path, pass("first passphrase, long enough")).unwrap();
    kf.change_secret(pass("second passphrase, long enough")).unwrap();
    assert!(matches!(
        KeyringFile::open(&path, pass("first passphrase, long enough")),
        Err(KeyringError::Key(Error::WrongPassphrase))
    ));
    KeyringFile::open(&path, pass("second passphrase, long enough")).unwrap();
    std::fs::write(&path, b"garbage").unwrap();
    assert!(matches!(KeyringFile::open(&path, pass("x")), Err(KeyringError::Key(Error::KeyringCorrupt(_)))));
}
