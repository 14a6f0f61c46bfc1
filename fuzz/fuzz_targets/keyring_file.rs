//! The keyring file: `inspect`, `LocalKeyring::from_file_bytes` (with a raw key-file secret, so no
//! Argon2id per input) and `parse_key_file` must never panic on arbitrary bytes. A keyring that
//! opens must agree with `inspect`, re-serialise and re-open to the same versions, and wrap and
//! unwrap a key.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use kluis_core::keyring;
use kluis_core::{KEY_LEN, KeyMaterial, LocalKeyring, RootKeyProvider, Suite};
use kluis_fuzz::fixture;
use libfuzzer_sys::fuzz_target;

/// The local keyring's futures never wait: poll once.
fn ready<T>(fut: impl Future<Output = T>) -> T {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a LocalKeyring future is pending"),
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();

    // 1. Public header.
    let info = keyring::inspect(data);

    // 2. Opening with the key-file secret.
    if let Ok(k) = LocalKeyring::from_file_bytes(data, &f.keyring_secret) {
        let info = match info {
            Ok(i) => i,
            Err(e) => panic!("a keyring opened but inspect rejects it: {e}"),
        };
        assert!(!info.passphrase, "opened a passphrase keyring with a key file");
        assert_eq!(info.generation, k.generation());
        let versions = k.versions();
        assert!(versions.iter().any(|v| v.primary && v.version == k.primary()), "primary not listed");
        assert_eq!(versions.iter().filter(|v| v.primary).count(), 1);

        // Re-serialise and re-open: same versions, generation + 1 (the last generation cannot be
        // written again).
        match (k.to_file_bytes(&f.keyring_secret, Suite::default()), k.generation().checked_add(1)) {
            (Ok((bytes, generation)), Some(next)) => {
                assert_eq!(generation, next);
                match LocalKeyring::from_file_bytes(&bytes, &f.keyring_secret) {
                    Ok(k2) => {
                        assert_eq!(k2.versions(), versions);
                        assert_eq!(k2.primary(), k.primary());
                        assert_eq!(k2.generation(), generation);
                    }
                    Err(e) => panic!("a re-serialised keyring does not open: {e}"),
                }
            }
            (Err(_), None) => {}
            (Ok(_), None) => panic!("serialised a keyring past the last generation"),
            (Err(e), Some(_)) => panic!("an opened keyring does not serialise: {e}"),
        }

        // Wrap and unwrap a key through the provider interface.
        let key = KeyMaterial::from_bytes([0x42; KEY_LEN]);
        let wrapped = match ready(k.wrap(b"fuzz-aad", &key)) {
            Ok(w) => w,
            Err(e) => panic!("wrap failed: {e}"),
        };
        assert_eq!(wrapped.root_version, k.primary());
        match ready(kluis_core::keys::unwrap_one(&k, b"fuzz-aad", &wrapped)) {
            Ok(back) => assert!(back == key, "unwrap returned another key"),
            Err(e) => panic!("unwrap failed: {e}"),
        }
        assert!(ready(kluis_core::keys::unwrap_one(&k, b"other-aad", &wrapped)).is_err());
    }

    // 3. A key file: 32 raw bytes, or 64 hex digits with surrounding white space.
    if let Ok(key) = keyring::parse_key_file(data) {
        let got = key.expose_secret();
        if data.len() == KEY_LEN {
            assert_eq!(got.as_slice(), data);
        } else {
            let text = match std::str::from_utf8(data) {
                Ok(t) => t.trim(),
                Err(e) => panic!("accepted a key file that is not UTF-8: {e}"),
            };
            assert_eq!(text.len(), 2 * KEY_LEN, "accepted a key file of {} characters", text.len());
            // Exactly 64 hex digits, each pair decoding to the returned byte.
            for (i, pair) in text.as_bytes().chunks(2).enumerate() {
                match pair {
                    [hi, lo] => match (hex_val(*hi), hex_val(*lo)) {
                        (Some(h), Some(l)) => assert_eq!(got[i], h << 4 | l, "hex pair {i} decoded wrongly"),
                        _ => panic!("accepted a key file with a non-hex pair {pair:?} at {i}"),
                    },
                    _ => panic!("accepted a key file with an odd number of digits"),
                }
            }
        }
    }
});
