//! The reader rules docs/FORMAT.md states (issue 14, point 5), one test per statement: what a
//! 1-byte sealed value gives, version 0 refused by every reader, the order of the document header
//! checks, the partial chunk of a range read, the key file's white space, which Argon2 parameter
//! error wins, and the keyring magic.

mod common;

use common::*;
use kluis_core::document::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOptions, StreamSealer,
};
use kluis_core::keyring::{KdfParams, inspect, parse_key_file};
use kluis_core::keys::{new_domain_key, validate_versions};
use kluis_core::{
    Backend, DocumentSealer, DomainKeySet, Error, KeyKind, KeyMaterial, KeyRef, KeyVersion, KeyringSecret,
    LocalKeyring, Passphrase, SealKey, SealedHeader, Suite, WrappedKey,
};

fn malformed(r: Result<impl std::fmt::Debug, Error>) -> (&'static str, &'static str) {
    match r {
        Err(Error::Malformed { what, reason }) => (what, reason),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

// ---------------------------------------------------------------- §3.4: short sealed values

#[test]
fn one_byte_sealed_inputs() {
    let c = Ctx::new("acme", "medical", "absence", "diagnosis", "r-1");
    let k = domain_key(1, 1, Backend::preferred());
    // The magic alone: byte 1 is missing, so "too short" (step 2 reads it).
    assert_eq!(malformed(SealedHeader::parse(&[0x6B])), ("sealed value", "too short"));
    assert_eq!(malformed(k.open(&c.get(), &[0x6B])), ("sealed value", "too short"));
    // Any other single byte: bad magic (step 1); an empty input: too short.
    for b in [0x00u8, 0x6A, 0x6C, 0xFF] {
        assert_eq!(malformed(SealedHeader::parse(&[b])), ("sealed value", "bad magic byte"), "{b:#04x}");
    }
    assert_eq!(malformed(SealedHeader::parse(&[])), ("sealed value", "too short"));
    // Two bytes: the version is checked before the length.
    assert!(matches!(SealedHeader::parse(&[0x6B, 0x03]), Err(Error::UnsupportedVersion { version: 3, .. })));
    assert_eq!(malformed(SealedHeader::parse(&[0x6B, 0x02])), ("sealed value", "too short"));
    assert_eq!(malformed(SealedHeader::parse(&[0x6B, 0x01])), ("sealed value", "too short"));
}

// ---------------------------------------------------------------- version 0 (§3.2, §7, §8.1, §9)

/// A header of `len` bytes naming (kind id, key version).
fn header(kind: u8, version: u32, len: usize) -> Vec<u8> {
    let mut h = vec![0x6B, 0x02, 0x01, kind];
    h.extend_from_slice(&version.to_be_bytes());
    h.resize(len, 0);
    h
}

#[test]
fn sealed_values_of_key_version_0_are_refused() {
    for kind in [1u8, 2, 3] {
        assert_eq!(malformed(SealedHeader::parse(&header(kind, 0, 80))), ("sealed value", "key version 0"));
        assert!(SealedHeader::parse(&header(kind, 1, 80)).is_ok());
    }
    // The keyring body's key-encryption key has no versions: it is always 0 (`None`).
    let h = SealedHeader::parse(&header(4, 0, 80)).unwrap();
    assert_eq!(h.key, KeyRef { kind: KeyKind::KeyringKek, version: None });
    // An unknown kind is reported first (step 5 before the version).
    assert_eq!(malformed(SealedHeader::parse(&header(9, 0, 80))), ("sealed value", "unknown key kind"));
    // Length before kind and version: a short value is "too short" whatever it names.
    assert_eq!(malformed(SealedHeader::parse(&header(1, 0, 79))), ("sealed value", "too short"));

    // A real value relabelled to version 0, through every opener.
    let c = Ctx::new("acme", "medical", "absence", "diagnosis", "r-1");
    let set = keyset(&c.tenant, &c.domain, Suite::default(), Backend::preferred());
    let mut v = set.seal(&c.get(), b"burn-out").unwrap();
    v[4..8].copy_from_slice(&[0, 0, 0, 0]);
    assert_eq!(malformed(set.open(&c.get(), &v)), ("sealed value", "key version 0"));
    assert_eq!(malformed(set.key(kv(2)).unwrap().open(&c.get(), &v)), ("sealed value", "key version 0"));

    // No key of a versioned kind can be made without a version, so nothing writes version 0.
    for kind in [KeyKind::Domain, KeyKind::Subject, KeyKind::Root] {
        let r = SealKey::new(key(1), KeyRef { kind, version: None });
        assert!(matches!(r, Err(Error::Invalid { what: "key version", .. })), "{kind:?}");
    }
    SealKey::new(key(1), KeyRef { kind: KeyKind::KeyringKek, version: None }).unwrap();
}

#[test]
fn wrapped_keys_of_root_version_0_are_refused() {
    let w = WrappedKey { root_key_id: "keyring".into(), root_version: kv(1), ciphertext: vec![1, 2, 3] };
    let mut bytes = w.to_bytes().unwrap();
    assert_eq!(WrappedKey::from_bytes(&bytes).unwrap(), w);
    // Layout: version (1) | p16("keyring") (9) | root version (4) | p32(ciphertext).
    bytes[10..14].copy_from_slice(&0u32.to_be_bytes());
    assert_eq!(malformed(WrappedKey::from_bytes(&bytes)), ("wrapped key", "root key version 0"));
    // Invalid UTF-8 in the root key id, short input, trailing bytes, another version (§7.1).
    let good = w.to_bytes().unwrap();
    let mut bad = good.clone();
    bad[3] = 0xFF;
    assert_eq!(malformed(WrappedKey::from_bytes(&bad)), ("wrapped key", "invalid utf-8"));
    assert_eq!(malformed(WrappedKey::from_bytes(&good[..good.len() - 1])), ("wrapped key", "too short"));
    let mut long = good.clone();
    long.push(0);
    assert_eq!(malformed(WrappedKey::from_bytes(&long)), ("wrapped key", "trailing bytes"));
    let mut v2 = good;
    v2[0] = 2;
    assert!(matches!(
        WrappedKey::from_bytes(&v2),
        Err(Error::UnsupportedVersion { what: "wrapped key", version: 2 })
    ));
}

/// Records, keys and wraps hold a `KeyVersion`, which is never 0: the version 0 of a record or a
/// call cannot be written down, and every way to a `KeyVersion` from a number refuses 0.
#[tokio::test]
async fn key_version_0_cannot_be_named() {
    assert!(matches!(KeyVersion::new(0), Err(Error::Invalid { what: "key version", .. })));
    assert!(matches!("0".parse::<KeyVersion>(), Err(Error::Invalid { what: "key version", .. })));
    for stored in [0, -1, i64::from(u32::MAX) + 1, i64::MIN, i64::MAX] {
        assert!(
            matches!(KeyVersion::from_stored(stored), Err(Error::Invalid { what: "stored key version", .. })),
            "{stored}"
        );
    }
    assert_eq!(KeyVersion::from_stored(1).unwrap(), KeyVersion::FIRST);
    assert_eq!(KeyVersion::from_stored(i64::from(u32::MAX)).unwrap().get(), u32::MAX);
    assert!(matches!(kv(u32::MAX).next(), Err(Error::LimitReached(_))));
    assert_eq!(kv(7).next().unwrap(), kv(8));
    // Shown and parsed as the bare number.
    assert_eq!(kv(7).to_string(), "7");
    assert_eq!("7".parse::<KeyVersion>().unwrap(), kv(7));
    assert_eq!(kv(7).to_stored(), 7);

    // Version 1 of a new domain or subject key is what the first version is.
    let root = LocalKeyring::generate(0).unwrap();
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, _) = new_domain_key(&root, &t, &d, KeyVersion::FIRST).await.unwrap();
    assert_eq!(validate_versions(std::slice::from_ref(&rec)).unwrap(), Some(KeyVersion::FIRST));
    DomainKeySet::unwrap(&root, std::slice::from_ref(&rec)).await.unwrap();
    let set = keyset(&t, &d, Suite::default(), Backend::preferred());
    let (good, _) = set.new_subject_key("emp-1", KeyVersion::FIRST).unwrap();
    assert_eq!(set.open_subject_key(&good).unwrap().version(), KeyVersion::FIRST);
}

#[test]
fn document_data_keys_wrapped_by_version_0_are_refused() {
    let b = Backend::preferred();
    let doc = seal_doc(&domain_key(5, 1, b), 100);
    let mut h = doc[..428].to_vec();
    h[44 + 4..44 + 8].copy_from_slice(&[0, 0, 0, 0]);
    assert_eq!(malformed(DocumentHeader::parse(&h)), ("sealed value", "key version 0"));
}

// ---------------------------------------------------------------- §9.2, §9.7: documents

const CS: usize = 1 << 12;

fn seal_doc(k: &SealKey, n: usize) -> Vec<u8> {
    let (t, d) = (tenant("acme"), domain("medical"));
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-1" };
    let meta = DocumentMetadata {
        file_name: "a.pdf".into(),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length: None,
        created_unix: 1,
        uploaded_by: "u".into(),
    };
    let opts = DocumentOptions { suite: Suite::default(), chunk_log2: 12, pad: false, backend: k.backend() };
    let sealer = DocumentSealer::new(k, &ctx, &meta, opts).unwrap();
    let mut obj = sealer.header().to_vec();
    let mut s = StreamSealer::new(sealer);
    s.push(&vec![7u8; n], &mut obj).unwrap();
    let mut tail = s.finish().unwrap();
    while let Some(c) = tail.next_chunk().unwrap() {
        obj.extend_from_slice(&c);
    }
    obj
}

fn doc_malformed(bytes: &[u8]) -> &'static str {
    match malformed(DocumentHeader::parse(bytes)) {
        ("document header", reason) => reason,
        other => panic!("expected a document header error, got {other:?}"),
    }
}

/// Each check of §9.2's table wins over every later one.
#[test]
fn document_header_checks_run_in_the_documented_order() {
    let obj = seal_doc(&domain_key(5, 1, Backend::preferred()), 10);
    let h = obj[..428].to_vec();
    assert_eq!(u16::from_be_bytes([h[40], h[41]]), 112);
    assert_eq!(u16::from_be_bytes([h[42], h[43]]), 272);
    let with = |edits: &[(usize, u8)], len: usize| {
        let mut t = h.clone();
        for &(i, b) in edits {
            t[i] = b;
        }
        t.truncate(len);
        t
    };
    // 1. magic (before the version; fewer than 4 bytes: too short)
    assert_eq!(doc_malformed(&with(&[(0, b'x'), (4, 2)], 44)), "bad magic");
    assert_eq!(doc_malformed(&h[..3]), "too short");
    // 2. version (before any length)
    assert!(matches!(
        DocumentHeader::parse(&with(&[(4, 2)], 5)),
        Err(Error::UnsupportedVersion { what: "document", version: 2 })
    ));
    // 3. the 44-byte prefix, then all H bytes, before the fields are checked
    assert_eq!(doc_malformed(&with(&[(5, 9)], 43)), "too short");
    assert_eq!(doc_malformed(&with(&[(5, 9), (6, 40), (7, 0x80)], 427)), "too short");
    // 4. suite
    assert!(matches!(DocumentHeader::parse(&with(&[(5, 9), (6, 40)], 428)), Err(Error::UnsupportedSuite(9))));
    // 5. chunk size
    assert_eq!(doc_malformed(&with(&[(6, 40), (7, 0x80)], 428)), "chunk size out of range");
    assert_eq!(doc_malformed(&with(&[(6, 11)], 428)), "chunk size out of range");
    // 6. flags
    assert_eq!(doc_malformed(&with(&[(7, 0x80), (42, 0), (43, 15)], 428)), "unknown flags");
    // 7. metadata length (ml = 15 makes H = 44 + 112 + 15; the wrapped key is broken too)
    assert_eq!(doc_malformed(&with(&[(42, 0), (43, 15), (44, 0)], 428)), "metadata too short");
    // 8. the wrapped data key's sealed header (§3.4 steps 1-5, and its key version)
    assert_eq!(malformed(DocumentHeader::parse(&with(&[(44, 0)], 428))), ("sealed value", "bad magic byte"));
    assert!(matches!(
        DocumentHeader::parse(&with(&[(45, 7)], 428)),
        Err(Error::UnsupportedVersion { what: "sealed value", version: 7 })
    ));
    // Bytes after H are not the header's: they are ignored.
    assert!(DocumentHeader::parse(&obj).is_ok());
}

/// §9.7: a range read given part of a chunk.
#[test]
fn a_partial_chunk_in_a_range_read() {
    let k = domain_key(5, 1, Backend::preferred());
    // Chunks 0 and 1 full, chunk 2 (final) 100 bytes.
    let obj = seal_doc(&k, 2 * CS + 100);
    let (t, d) = (tenant("acme"), domain("medical"));
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-1" };
    let opener = DocumentHeader::parse(&obj).unwrap().open(&k, &ctx).unwrap();
    let plan = opener.plan_range(obj.len() as u64, 0, (2 * CS + 100) as u64).unwrap();
    assert_eq!((plan.first_chunk, plan.last_chunk, plan.final_chunk), (0, 2, 2));
    let ct = &obj[plan.object_start as usize..plan.object_end as usize];
    let c16 = CS + 16;
    assert_eq!(opener.open_range(&plan, ct).unwrap().expose_secret().len(), 2 * CS + 100);
    let cut = |n: usize| opener.open_range(&plan, &ct[..n]).map(|p| p.expose_secret().len());
    // A non-final chunk cut short: 16 bytes or more, and fewer.
    assert_eq!(malformed(cut(c16 + 16)), ("document chunk", "short chunk before the final chunk"));
    assert_eq!(malformed(cut(c16 + c16 - 1)), ("document chunk", "short chunk before the final chunk"));
    assert_eq!(malformed(cut(c16 + 15)), ("document chunk", "wrong length"));
    assert_eq!(malformed(cut(c16 + 1)), ("document chunk", "wrong length"));
    // The final chunk cut short: 16 bytes or more is the opaque failure; fewer is malformed.
    assert!(matches!(cut(2 * c16 + 16), Err(Error::Decrypt)));
    assert!(matches!(cut(2 * c16 + 115), Err(Error::Decrypt)));
    assert_eq!(malformed(cut(2 * c16 + 15)), ("document chunk", "wrong length"));
    // Whole chunks missing (a cut at a chunk boundary): truncated.
    assert!(matches!(cut(2 * c16), Err(Error::Truncated)));
    assert!(matches!(cut(c16), Err(Error::Truncated)));
    assert!(matches!(cut(0), Err(Error::Truncated)));
}

// ---------------------------------------------------------------- §8: the keyring

#[test]
fn hex_key_files_allow_ascii_white_space_only() {
    let hex = "0a".repeat(32);
    let want = KeyMaterial::from_bytes([10; 32]);
    for (pre, post) in [("", ""), (" ", "\n"), ("\t", "\r\n"), ("\x0C", " \t \n\n"), ("\r\n", "")] {
        assert_eq!(parse_key_file(format!("{pre}{hex}{post}").as_bytes()).unwrap(), want, "{pre:?} {post:?}");
    }
    assert_eq!(parse_key_file(hex.to_uppercase().as_bytes()).unwrap(), want);
    // Not ASCII white space: vertical tab, no-break space, em space, line separator, BOM.
    for ws in ["\x0B", "\u{A0}", "\u{2003}", "\u{2028}", "\u{FEFF}"] {
        for text in [format!("{ws}{hex}"), format!("{hex}{ws}")] {
            assert!(matches!(parse_key_file(text.as_bytes()), Err(Error::Invalid { .. })), "{ws:?}");
        }
    }
    // White space inside the digits.
    let inner = format!("{} {}", &hex[..32], &hex[32..]);
    assert!(matches!(parse_key_file(inner.as_bytes()), Err(Error::Invalid { .. })));
}

fn raw_keyring_file() -> Vec<u8> {
    let k = LocalKeyring::generate(0).unwrap();
    k.to_file_bytes(&KeyringSecret::RawKey(key(0x5a)), Suite::default()).unwrap().0
}

/// Sets the checksum of an edited keyring file.
fn fix_checksum(f: &mut [u8]) {
    let n = f.len() - 32;
    let sum = ring::digest::digest(&ring::digest::SHA256, &f[..n]);
    f[n..].copy_from_slice(sum.as_ref());
}

#[test]
fn a_weak_argon2_parameter_wins_over_an_absurd_one() {
    let pass = |p: KdfParams| KeyringSecret::Passphrase(Passphrase::new("x".repeat(20)), p);
    let cases = [
        // (m, t, p): one below the minimum, another above the maximum.
        (19 * 1024 - 1, 65, 1),
        (u32::MAX, 1, 1),
        (64 * 1024, 65, 0),
        (0, 0, 0),
    ];
    let k = LocalKeyring::generate(0).unwrap();
    for (m, t, p) in cases {
        let params = KdfParams { m_cost_kib: m, t_cost: t, p_cost: p };
        assert!(matches!(params.check(), Err(Error::WeakKdfParams(_))), "{params:?}");
        assert!(matches!(k.to_file_bytes(&pass(params), Suite::default()), Err(Error::WeakKdfParams(_))));
        // A file whose header says so: refused before Argon2 runs, by `inspect` too.
        let mut f = raw_keyring_file();
        f[18] = 1;
        f[19..23].copy_from_slice(&m.to_be_bytes());
        f[23..27].copy_from_slice(&t.to_be_bytes());
        f[27..31].copy_from_slice(&p.to_be_bytes());
        fix_checksum(&mut f);
        assert!(matches!(inspect(&f), Err(Error::WeakKdfParams(_))), "{params:?}");
        assert!(matches!(LocalKeyring::from_file_bytes(&f, &pass(params)), Err(Error::WeakKdfParams(_))));
    }
    // Only above the maximum: out of range.
    let absurd = KdfParams { m_cost_kib: 64 * 1024, t_cost: 65, p_cost: 1 };
    assert!(matches!(absurd.check(), Err(Error::KeyringCorrupt("key derivation parameters out of range"))));
}

#[test]
fn the_keyring_magic_is_fixed_and_the_u16_carries_the_version() {
    let f = raw_keyring_file();
    assert_eq!(&f[..8], b"KLUISKR\x01");
    assert_eq!(&f[8..10], &[0, 1]);
    let secret = KeyringSecret::RawKey(key(0x5a));
    // A later format: same magic, next u16: reported as an unsupported version of a keyring.
    let mut v2 = f.clone();
    v2[9] = 2;
    fix_checksum(&mut v2);
    assert!(matches!(inspect(&v2), Err(Error::UnsupportedVersion { what: "keyring", version: 2 })));
    assert!(matches!(
        LocalKeyring::from_file_bytes(&v2, &secret),
        Err(Error::UnsupportedVersion { what: "keyring", version: 2 })
    ));
    // The magic's last byte is part of the magic, not a version: changing it is not a keyring.
    let mut m2 = f.clone();
    m2[7] = 2;
    fix_checksum(&mut m2);
    assert!(matches!(inspect(&m2), Err(Error::KeyringCorrupt("not a keyring file"))));
    assert!(matches!(LocalKeyring::from_file_bytes(&m2, &secret), Err(Error::KeyringCorrupt(_))));
}
