//! Writes the seed corpus of every fuzz target into `fuzz/corpus/<target>/` (overwriting files of
//! the same name). Run from anywhere, on stable, without sanitizers:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example make_corpus
//! ```
//!
//! Sealed values, document headers and keyring files are made with the fixed fixture keys of
//! `src/lib.rs`, so they open in the fuzzing process and mutations reach the code behind the
//! authentication checks. Document chunk bytes cannot: every document has a fresh random data key,
//! so `document_stream` gets edit scripts over its own in-process document (see that target) plus
//! raw chunk bytes of the right shapes.

use std::fs;
use std::path::{Path, PathBuf};

use kluis_core::keys::WrappedKey;
use kluis_core::{
    KdfParams, KeyKind, KeyMaterial, KeyRef, KeyVersion, KeyringSecret, LocalKeyring, Passphrase, SealKey,
    Suite,
};
use kluis_fuzz::{DOCUMENT_ID, content, fixture, make_documents, must};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    must(fs::write(&path, bytes));
    println!("{:>7} bytes  {}", bytes.len(), path.display());
}

fn main() {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let dirs = ["sealed_value", "document_header", "document_stream", "keyring_file"].map(|t| {
        let d = root.join(t);
        must(fs::create_dir_all(&d));
        d
    });
    let [sealed_dir, header_dir, stream_dir, keyring_dir] = &dirs;
    let f = fixture();
    let ctx = f.context();

    // --- sealed_value -----------------------------------------------------------------------
    write(sealed_dir, "sealed-aes-empty", &must(f.seal_key.seal(Suite::Aes256Gcm, &ctx, b"")));
    write(sealed_dir, "sealed-aes-burn-out", &must(f.seal_key.seal(Suite::Aes256Gcm, &ctx, b"burn-out")));
    let long = content(200, 1);
    let sealed_long = must(f.seal_key.seal(Suite::XChaCha20Poly1305, &ctx, &long));
    write(sealed_dir, "sealed-xchacha-200", &sealed_long);
    let subject = must(SealKey::new(
        KeyMaterial::from_bytes([8u8; 32]),
        KeyRef::new(KeyKind::Subject, must(KeyVersion::new(2))),
    ));
    write(sealed_dir, "sealed-other-key", &must(subject.seal(Suite::Aes256Gcm, &ctx, b"burn-out")));
    let wrapped = WrappedKey {
        root_key_id: "keyring".to_owned(),
        root_version: KeyVersion::FIRST,
        ciphertext: sealed_long,
    };
    write(sealed_dir, "wrapped-key", &must(wrapped.to_bytes()));
    write(sealed_dir, "plain-burn-out", b"burn-out");

    // --- document_header and document_stream (raw) -------------------------------------------
    // Raw chunk bytes must not start with 0xED (that selects edit mode); redraw until they do not.
    let docs = loop {
        let d = make_documents();
        if d.iter().all(|doc| doc.body.first() != Some(&0xED)) {
            break d;
        }
    };
    for doc in &docs {
        write(header_dir, &format!("header-{}", doc.name), &doc.header);
        write(stream_dir, &format!("raw-{}", doc.name), &doc.body);
    }
    // A header followed by chunk bytes (parse ignores what follows the header).
    let mut with_body = docs[0].header.clone();
    with_body.extend_from_slice(&docs[0].body[..64]);
    write(header_dir, "header-multi-then-chunks", &with_body);
    // Only the fixed prefix: header_len works, parse does not.
    write(header_dir, "prefix-only", &docs[1].header[..kluis_core::document::PREFIX_LEN]);
    // A header for another document id (does not open for the fixture's id).
    let mut other_ctx = f.document_context();
    other_ctx.document_id = "doc-0002";
    assert_ne!(other_ctx.document_id, DOCUMENT_ID);
    let other = must(kluis_core::DocumentSealer::new(
        &f.seal_key,
        &other_ctx,
        &kluis_core::DocumentMetadata::default(),
        kluis_core::DocumentOptions::default(),
    ));
    write(header_dir, "header-other-document", other.header());

    // --- document_stream (edit scripts over the in-process genuine documents) ----------------
    // 0xED, document (0 multi, 1 padded, 2 empty, 3 unsized), then ops: 0 flip(pos16, mask), 1 truncate(len16),
    // 2 swap(i, j), 3 duplicate(i), 4 delete(i), 5 append(n, bytes), 6 splice(doc, i), 7 insert(pos16, b).
    let edits: &[(&str, &[u8])] = &[
        ("edit-genuine-multi", &[0xED, 0]),
        ("edit-genuine-padded", &[0xED, 1]),
        ("edit-genuine-empty", &[0xED, 2]),
        ("edit-flip-multi", &[0xED, 0, 0, 0x10, 0x05, 0x01]),
        ("edit-truncate-multi-2-chunks", &[0xED, 0, 1, 0x20, 0x20]),
        ("edit-swap-multi", &[0xED, 0, 2, 0, 1]),
        ("edit-duplicate-padded", &[0xED, 1, 3, 0]),
        ("edit-delete-multi", &[0xED, 0, 4, 1]),
        ("edit-append-empty", &[0xED, 2, 5, 3, 1, 2, 3]),
        ("edit-splice-multi-from-padded", &[0xED, 0, 6, 1, 0]),
        ("edit-insert-padded", &[0xED, 1, 7, 0, 16, 0xAA]),
        ("edit-genuine-unsized", &[0xED, 3]),
        ("edit-truncate-unsized-1-chunk", &[0xED, 3, 1, 0x10, 0x10]),
        ("edit-duplicate-last-unsized", &[0xED, 3, 3, 1]),
    ];
    for (name, bytes) in edits {
        write(stream_dir, name, bytes);
    }

    // --- keyring_file ---------------------------------------------------------------------------
    let mut k = must(LocalKeyring::generate(1_700_000_000));
    write(
        keyring_dir,
        "keyring-raw-1-version",
        &must(k.to_file_bytes(&f.keyring_secret, Suite::Aes256Gcm)).0,
    );
    must(k.rotate(1_700_000_100));
    must(k.rotate(1_700_000_200));
    must(k.remove_version(KeyVersion::FIRST));
    k.set_generation(41);
    write(
        keyring_dir,
        "keyring-raw-2-versions",
        &must(k.to_file_bytes(&f.keyring_secret, Suite::Aes256Gcm)).0,
    );
    write(
        keyring_dir,
        "keyring-raw-xchacha",
        &must(k.to_file_bytes(&f.keyring_secret, Suite::XChaCha20Poly1305)).0,
    );
    // A passphrase keyring (Argon2id at the minimum parameters, once here; the target never runs
    // Argon2id: its secret is a key file, so this one is rejected after parsing the header).
    let pass = KeyringSecret::Passphrase(Passphrase::new("correct horse".to_owned()), KdfParams::MINIMUM);
    write(keyring_dir, "keyring-passphrase", &must(k.to_file_bytes(&pass, Suite::Aes256Gcm)).0);
    write(keyring_dir, "keyfile-raw", &[9u8; 32]);
    let hex: String = (0..32u8).map(|b| format!("{:02x}", b.wrapping_mul(37))).collect();
    write(keyring_dir, "keyfile-hex", format!("{hex}\n").as_bytes());
    write(keyring_dir, "keyfile-hex-upper-spaces", format!("  {}\r\n", hex.to_uppercase()).as_bytes());
    // Not hex digits: `u8::from_str_radix` alone would accept "+f" as 0x0f.
    write(keyring_dir, "keyfile-plus-signs", "+f".repeat(32).as_bytes());
}
