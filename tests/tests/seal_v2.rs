//! Sealed values, format version 2 (docs/FORMAT.md §3):
//!
//! - XAES-256-GCM, the AEAD of the AES suite, against the C2SP specification's vectors
//!   (<https://c2sp.org/XAES-256-GCM>): both worked examples with their intermediate values, and the
//!   accumulated randomized test (10,000 iterations from a SHAKE-128 stream), on every backend.
//! - An independent re-implementation of the v2 construction from FORMAT.md with the `hkdf`,
//!   `sha2` and `chacha20poly1305` crates and the XAES hazmat wrapper: it must compute the same
//!   commitment and open what `SealKey` sealed, so the document and the code cannot drift apart.
//! - Version 1 values (the committed vectors in `tests/vectors/sealed_v1.json`) keep opening; that
//!   is `vectors::sealed_value_vectors_open`.

mod common;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use common::*;
use hkdf::Hkdf;
use kluis_core::crypto::hazmat;
use kluis_core::seal::{COMMITMENT_LEN, HEADER_LEN, SALT_LEN, VERSION};
use kluis_core::{Backend, Error, Suite};
use sha2::{Digest, Sha256};
use sha3::Shake128;
use sha3::digest::{ExtendableOutput, Update, XofReader};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

#[test]
fn xaes_specification_vectors() {
    // (key byte, expected Kx, AAD, expected ciphertext || tag); nonce "ABCDEFGHIJKLMNOPQRSTUVWX".
    // The first key has MSB(L) = 0, the second MSB(L) = 1 (both branches of the CMAC doubling).
    let cases: [(u8, &str, &[u8], &str); 2] = [
        (
            0x01,
            "c8612c9ed53fe43e8e005b828a1631a0bbcb6ab2f46514ec4f439fcfd0fa969b",
            b"",
            "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
        ),
        (
            0x03,
            "e9c621d4cdd9b11b00a6427ad7e559aeedd66b3857646677748f8ca796cb3fd8",
            b"c2sp.org/XAES-256-GCM",
            "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
        ),
    ];
    let nonce: [u8; 24] = *b"ABCDEFGHIJKLMNOPQRSTUVWX";
    for (kb, kx_hex, aad, ct_hex) in cases {
        let key = [kb; 32];
        let (kx, nx) = hazmat::xaes_derive(&key, &nonce);
        assert_eq!(hex::encode(kx), kx_hex);
        assert_eq!(hex::encode(nx), "4d4e4f505152535455565758");
        let expected = unhex(ct_hex);
        for &b in backends() {
            let mut buf = b"XAES-256-GCM".to_vec();
            let tag = hazmat::xaes_seal(b, &key, &nonce, aad, &mut buf).unwrap();
            buf.extend_from_slice(&tag);
            assert_eq!(buf, expected, "{b:?}");
            let (ct, tag) = expected.split_at(expected.len() - 16);
            let mut pt = ct.to_vec();
            hazmat::xaes_open(b, &key, &nonce, aad, &mut pt, tag.try_into().unwrap()).unwrap();
            assert_eq!(pt, b"XAES-256-GCM");
            let mut bad = ct.to_vec();
            bad[0] ^= 1;
            assert!(hazmat::xaes_open(b, &key, &nonce, aad, &mut bad, tag.try_into().unwrap()).is_err());
        }
    }
}

/// The specification's accumulated randomized test: key, nonce, plaintext<0..255> and aad<0..255>
/// read from one SHAKE-128 stream, every ciphertext absorbed into a second SHAKE-128.
#[test]
fn xaes_accumulated_10000() {
    for &b in backends() {
        let mut rng = Shake128::default().finalize_xof();
        let mut first = [0u8; 16];
        rng.read(&mut first);
        assert_eq!(hex::encode(first), "7f9c2ba4e88f827d616045507605853e");
        let mut rng = Shake128::default().finalize_xof();
        let mut acc = Shake128::default();
        for _ in 0..10_000 {
            let mut key = [0u8; 32];
            let mut nonce = [0u8; 24];
            let mut len = [0u8; 1];
            rng.read(&mut key);
            rng.read(&mut nonce);
            rng.read(&mut len);
            let mut pt = vec![0u8; usize::from(len[0])];
            rng.read(&mut pt);
            rng.read(&mut len);
            let mut aad = vec![0u8; usize::from(len[0])];
            rng.read(&mut aad);
            let mut buf = pt.clone();
            let tag = hazmat::xaes_seal(b, &key, &nonce, &aad, &mut buf).unwrap();
            acc.update(&buf);
            acc.update(&tag);
            hazmat::xaes_open(b, &key, &nonce, &aad, &mut buf, &tag).unwrap();
            assert_eq!(buf, pt);
        }
        let mut out = [0u8; 32];
        acc.finalize_xof().read(&mut out);
        assert_eq!(
            hex::encode(out),
            "e6b9edf2df6cec60c8cbd864e2211b597fb69a529160cd040d56c0c210081939",
            "{b:?}"
        );
    }
}

fn hkdf32(key: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    Hkdf::<Sha256>::from_prk(key).unwrap().expand(label, &mut out).unwrap();
    out
}

/// Opens a v2 sealed value following docs/FORMAT.md §3 only, with other code than Kluis's.
fn open_v2_independently(key: &[u8; 32], ctx_ad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, &'static str> {
    let (header, rest) = sealed.split_at(HEADER_LEN);
    let (commitment, rest) = rest.split_at(COMMITMENT_LEN);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    assert_eq!(header[0], 0x6b);
    assert_eq!(header[1], 0x02);
    let salt: [u8; 24] = header[8..].try_into().unwrap();
    let kx = hkdf32(key, b"kluis/seal/v2/aead");
    let kc = hkdf32(key, b"kluis/seal/v2/commit");
    let mut h = Sha256::new();
    Digest::update(&mut h, kc);
    Digest::update(&mut h, [0u8; 32]);
    Digest::update(&mut h, header);
    if h.finalize().as_slice() != commitment {
        return Err("commitment");
    }
    let ad = [header, ctx_ad].concat();
    let mut buf = ct.to_vec();
    let tag: [u8; 16] = tag.try_into().unwrap();
    match header[2] {
        0x01 => hazmat::xaes_open(Backend::RustCrypto, &kx, &salt, &ad, &mut buf, &tag).map_err(|_| "tag")?,
        0x02 => XChaCha20Poly1305::new(&kx.into())
            .decrypt_inout_detached(&salt.into(), &ad, buf.as_mut_slice().into(), &tag.into())
            .map_err(|_| "tag")?,
        _ => return Err("suite"),
    }
    Ok(buf)
}

#[test]
fn v2_matches_an_independent_implementation_of_format_md() {
    let c = Ctx::new("acme", "medical", "absence", "diagnosis", "r-1");
    let ctx_ad = c.get().encode().unwrap();
    for &b in backends() {
        for suite in SUITES {
            let k = domain_key(0x21, 5, b);
            for pt in [&b""[..], b"burn-out", &[0xa5; 1000]] {
                let sealed = k.seal(suite, &c.get(), pt).unwrap();
                assert_eq!(sealed[1], VERSION);
                assert_eq!(sealed.len(), HEADER_LEN + COMMITMENT_LEN + pt.len() + 16);
                assert_eq!(&sealed[4..8], &5u32.to_be_bytes());
                assert_eq!(sealed[8..].len(), SALT_LEN + COMMITMENT_LEN + pt.len() + 16);
                let opened = open_v2_independently(&[0x21; 32], &ctx_ad, &sealed).unwrap();
                assert_eq!(opened, pt, "{b:?} {suite:?}");
                // Under another key the independent reader also stops at the commitment.
                assert_eq!(open_v2_independently(&[0x22; 32], &ctx_ad, &sealed), Err("commitment"));
            }
        }
    }
}

#[test]
fn salts_differ_and_a_replayed_salt_still_needs_the_key() {
    let c = Ctx::new("acme", "general", "employee", "hours", "e-1");
    let k = domain_key(7, 1, Backend::preferred());
    let a = k.seal(Suite::default(), &c.get(), b"32").unwrap();
    let b = k.seal(Suite::default(), &c.get(), b"32").unwrap();
    assert_ne!(a[8..32], b[8..32], "salts repeat");
    assert_ne!(a, b);
    // A ciphertext with another value's header (same key, other salt) fails at the commitment.
    let mut spliced = b.clone();
    spliced[..HEADER_LEN].copy_from_slice(&a[..HEADER_LEN]);
    assert!(matches!(k.open(&c.get(), &spliced), Err(Error::Decrypt)));
}
