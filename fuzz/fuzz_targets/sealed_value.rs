//! Sealed values: header parsing and opening of arbitrary bytes must never panic; sealing the input
//! and opening it again must give it back; a sealed value must not open in another context or
//! after any single-byte change.
#![no_main]

use kluis_core::keys::WrappedKey;
use kluis_core::{SealedHeader, Suite};
use kluis_fuzz::fixture;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let ctx = f.context();

    // 1. Untrusted bytes as a sealed value.
    let parsed = SealedHeader::parse(data);
    if let Ok(h) = parsed {
        assert!(data.len() >= kluis_core::seal::OVERHEAD, "parsed a sealed value shorter than its overhead");
        assert_eq!(data.first(), Some(&kluis_core::seal::MAGIC));
        let _ = h.suite.id();
    }
    if let Ok(pt) = f.seal_key.open(&ctx, data) {
        // Only a value sealed under exactly this key and context can open.
        assert!(parsed.is_ok(), "opened a value whose header does not parse");
        assert_eq!(data.len(), pt.len() + kluis_core::seal::OVERHEAD);
        assert!(f.seal_key.open(&f.other_context(), data).is_err(), "opened in another context");
    }
    // The same bytes as a serialised wrapped key (the other sealed-value container).
    if let Ok(w) = WrappedKey::from_bytes(data) {
        let again = match w.to_bytes() {
            Ok(b) => b,
            Err(e) => panic!("a parsed wrapped key does not serialise: {e}"),
        };
        assert_eq!(again, data, "wrapped key does not round-trip");
    }

    // 2. Round trip: the input as a plaintext, under both suites.
    for suite in [Suite::Aes256Gcm, Suite::XChaCha20Poly1305] {
        let sealed = match f.seal_key.seal(suite, &ctx, data) {
            Ok(s) => s,
            Err(e) => panic!("sealing {} bytes failed: {e}", data.len()),
        };
        assert_eq!(sealed.len(), data.len() + kluis_core::seal::OVERHEAD);
        match SealedHeader::parse(&sealed) {
            Ok(h) => {
                assert_eq!(h.suite, suite);
                assert_eq!(h.key, f.seal_key.key_ref());
            }
            Err(e) => panic!("header of a fresh sealed value does not parse: {e}"),
        }
        match f.seal_key.open(&ctx, &sealed) {
            Ok(pt) => assert_eq!(pt.expose_secret(), data, "round trip changed the value"),
            Err(e) => panic!("a fresh sealed value does not open: {e}"),
        }
        assert!(f.seal_key.open(&f.other_context(), &sealed).is_err(), "opened in another context");

        // Any single-byte change (position and mask taken from the input) must be rejected.
        let pos = data.iter().fold(data.len(), |a, &b| a.wrapping_mul(31).wrapping_add(usize::from(b)))
            % sealed.len();
        let mask = data.first().copied().filter(|&m| m != 0).unwrap_or(0x80);
        let mut tampered = sealed.clone();
        if let Some(b) = tampered.get_mut(pos) {
            *b ^= mask;
        }
        assert!(f.seal_key.open(&ctx, &tampered).is_err(), "opened after flipping byte {pos}");
        // Truncated by one byte, or extended by one: rejected as well.
        assert!(f.seal_key.open(&ctx, &sealed[..sealed.len() - 1]).is_err(), "opened truncated");
        let mut longer = sealed;
        longer.push(0);
        assert!(f.seal_key.open(&ctx, &longer).is_err(), "opened with a trailing byte");
    }
});
