//! Known-answer vectors: ciphertexts made by this version and committed in tests/vectors/.
//! Every future version must keep opening them (docs/FORMAT.md, "Compatibility promise").
//!
//! Regenerate only when adding new vectors, never to "fix" a failing one:
//! `KLUIS_WRITE_VECTORS=1 cargo test -p kluis-tests --test vectors -- --ignored generate`
//! (existing files are not overwritten).

mod common;

use std::path::PathBuf;

use common::*;
use kluis_core::document::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOptions, DocumentSealer,
};
use kluis_core::keys::{domain_key_ad, new_domain_key, unwrap_one};
use kluis_core::{
    Backend, BlindIndexKey, Context, DomainKeySet, Error, KdfParams, KeyKind, KeyMaterial, KeyRef, KeyState,
    KeyringSecret, LocalKeyring, Passphrase, SealKey, SealedHeader, SubjectKeyRecord, Suite, WrappedKey,
};
use serde_json::{Value, json};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn load(name: &str) -> Value {
    let p = dir().join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap()
}

fn suite(name: &str) -> Suite {
    match name {
        "aes-256-gcm" => Suite::Aes256Gcm,
        "xchacha20-poly1305" => Suite::XChaCha20Poly1305,
        other => panic!("unknown suite {other}"),
    }
}

fn suite_name(s: Suite) -> &'static str {
    match s {
        Suite::Aes256Gcm => "aes-256-gcm",
        _ => "xchacha20-poly1305",
    }
}

fn kind(name: &str) -> KeyKind {
    match name {
        "domain" => KeyKind::Domain,
        "subject" => KeyKind::Subject,
        other => panic!("unknown key kind {other}"),
    }
}

const DOC_CONTENT_LEN: usize = 10_000;

/// The content of a document vector of `n` bytes: byte i = (i * 7) mod 256.
fn doc_content_of(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 256) as u8).collect()
}

/// The sealed-value format version of the sealed value starting at `at` in `bytes`.
fn sealed_version_at(bytes: &[u8], at: usize) -> u8 {
    kluis_core::SealedHeader::parse(&bytes[at..]).unwrap().format_version
}

/// The vector files of each structure, with the sealed-value version of the keys they wrap:
/// `*_v1.json` were written while sealed values v1 were written, `*_sealed_v2.json` since.
const DOCUMENT_FILES: [(&str, u8); 2] = [("documents_v1.json", 1), ("documents_sealed_v2.json", 2)];
const KEYRING_FILES: [(&str, u8); 2] = [("keyring_v1.json", 1), ("keyring_sealed_v2.json", 2)];
const KEYS_FILES: [(&str, u8); 2] = [("keys_v1.json", 1), ("keys_sealed_v2.json", 2)];

#[test]
fn sealed_value_vectors_open() {
    // v1 was written until format v2 replaced it; both must open for ever.
    for (file, format_version) in [("sealed_v1.json", 1u8), ("sealed_v2.json", 2)] {
        sealed_value_vectors_open_in(file, format_version);
    }
}

fn sealed_value_vectors_open_in(file: &str, format_version: u8) {
    let v = load(file);
    let vectors = v["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 6);
    for t in vectors {
        let key = KeyMaterial::from_slice(&h(&t["key"])).unwrap();
        let kref = KeyRef::new(kind(s(&t["key_kind"])), kv(t["key_version"].as_u64().unwrap() as u32));
        let c =
            Ctx::new(s(&t["tenant"]), s(&t["domain"]), s(&t["collection"]), s(&t["field"]), s(&t["record"]));
        let sealed = h(&t["sealed"]);
        for &b in backends() {
            let k = SealKey::with_backend(key.clone(), kref, b).unwrap();
            let pt = k.open(&c.get(), &sealed).unwrap_or_else(|e| panic!("{}: {e}", s(&t["name"])));
            assert_eq!(pt.expose_secret(), h(&t["plaintext"]), "{}", s(&t["name"]));
            // The committed bytes still fail when moved or altered.
            let other =
                Ctx::new(s(&t["tenant"]), s(&t["domain"]), s(&t["collection"]), s(&t["field"]), "moved");
            assert!(matches!(k.open(&other.get(), &sealed), Err(Error::Decrypt)));
        }
        let header = kluis_core::SealedHeader::parse(&sealed).unwrap();
        assert_eq!(header.suite, suite(s(&t["suite"])));
        assert_eq!(header.format_version, format_version, "{file}: {}", s(&t["name"]));
    }
}

#[test]
fn document_vectors_open() {
    for (file, sealed_version) in DOCUMENT_FILES {
        document_vectors_open_in(file, sealed_version);
    }
}

fn document_vectors_open_in(file: &str, sealed_version: u8) {
    let v = load(file);
    let vectors = v["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 3, "{file}");
    for t in vectors {
        let name = format!("{file}: {}", s(&t["name"]));
        let key = KeyMaterial::from_slice(&h(&t["wrapping_key"])).unwrap();
        let kref = KeyRef::new(
            kind(s(&t["wrapping_key_kind"])),
            kv(t["wrapping_key_version"].as_u64().unwrap() as u32),
        );
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        let ctx = DocumentContext { tenant: &tn, domain: &dn, document_id: s(&t["document_id"]) };
        let obj = h(&t["object"]);
        let content = doc_content_of(t["content_len"].as_u64().unwrap() as usize);
        let hdr = DocumentHeader::parse(&obj).unwrap();
        assert_eq!(hdr.wrapping_key(), kref, "{name}");
        assert_eq!(sealed_version_at(&obj, 44), sealed_version, "{name}: the wrapped data key");
        for &b in backends() {
            let k = SealKey::with_backend(key.clone(), kref, b).unwrap();
            let opener = hdr.open(&k, &ctx).unwrap();
            let m = opener.metadata();
            assert_eq!(m.file_name, s(&t["file_name"]), "{name}");
            assert_eq!(m.extension, s(&t["extension"]), "{name}");
            assert_eq!(m.content_type, s(&t["content_type"]), "{name}");
            assert_eq!(m.created_unix, t["created"].as_i64().unwrap(), "{name}");
            assert_eq!(m.uploaded_by, s(&t["uploaded_by"]), "{name}");
            assert_eq!(m.length, t["length"].as_u64(), "{name}");
            assert_eq!(opener.layout(obj.len() as u64).unwrap().content_len, content.len() as u64, "{name}");
            let mut st = opener.stream();
            let mut out = Vec::new();
            st.push(&obj[hdr.len()..], &mut out).unwrap();
            st.finish(&mut out).unwrap();
            assert_eq!(out, content, "{name}");
        }
        // Under another document id the data key does not open.
        let moved = DocumentContext { document_id: "moved", ..ctx };
        let k = SealKey::new(key, kref).unwrap();
        assert!(matches!(hdr.open(&k, &moved), Err(Error::Decrypt)), "{name}");
    }
}

#[test]
fn keyring_vectors_open() {
    for (file, sealed_version) in KEYRING_FILES {
        keyring_vectors_open_in(file, sealed_version);
    }
}

fn keyring_vectors_open_in(file: &str, sealed_version: u8) {
    let v = load(file);
    let vectors = v["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 2, "{file}");
    for t in vectors {
        let secret = match s(&t["secret_kind"]) {
            "passphrase" => {
                KeyringSecret::Passphrase(Passphrase::new(s(&t["passphrase"]).into()), KdfParams::MINIMUM)
            }
            _ => KeyringSecret::RawKey(KeyMaterial::from_slice(&h(&t["key_file"])).unwrap()),
        };
        let file_bytes = h(&t["keyring_file"]);
        // The body is a sealed value after the 51-byte keyring header.
        assert_eq!(sealed_version_at(&file_bytes, 51), sealed_version, "{file}: keyring body");
        let kr = LocalKeyring::from_file_bytes(&file_bytes, &secret).unwrap();
        assert_eq!(kr.generation(), t["generation"].as_u64().unwrap());
        let wrapped = WrappedKey::from_bytes(&h(&t["wrapped_domain_key"])).unwrap();
        assert_eq!(sealed_version_at(&wrapped.ciphertext, 0), sealed_version, "{file}: domain key wrap");
        assert_eq!(wrapped.root_version, kr.primary(), "{file}");
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        let aad = domain_key_ad(&tn, &dn, kv(t["domain_key_version"].as_u64().unwrap() as u32)).unwrap();
        let dk = futures_block_on(unwrap_one(&kr, &aad, &wrapped)).unwrap();
        assert_eq!(dk.expose_secret().as_slice(), h(&t["domain_key"]).as_slice(), "{}", s(&t["name"]));
    }
}

#[test]
fn subject_key_and_blind_index_vectors() {
    for (file, sealed_version) in KEYS_FILES {
        subject_key_and_blind_index_vectors_in(file, sealed_version);
    }
}

fn subject_key_and_blind_index_vectors_in(file: &str, sealed_version: u8) {
    let v = load(file);
    for t in v["subject_keys"].as_array().unwrap() {
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        // keys_v1.json was written with domain key version 1 and does not name it.
        let dk_version = kv(t.get("domain_key_version").map_or(1, |v| v.as_u64().unwrap() as u32));
        let set = DomainKeySet::from_keys(
            tn.clone(),
            dn.clone(),
            vec![(dk_version, KeyState::Active, KeyMaterial::from_slice(&h(&t["domain_key"])).unwrap())],
            Suite::default(),
            Backend::preferred(),
        )
        .unwrap();
        let record = h(&t["subject_key_record"]);
        let sealed = h(&t["sealed"]);
        assert_eq!(sealed_version_at(&record, 0), sealed_version, "{file}: subject key record");
        assert_eq!(sealed_version_at(&sealed, 0), sealed_version, "{file}: value under the subject key");
        let rec = SubjectKeyRecord {
            tenant: tn.clone(),
            domain: dn.clone(),
            subject: s(&t["subject"]).into(),
            version: kv(t["subject_key_version"].as_u64().unwrap() as u32),
            wrapped: record,
        };
        assert_eq!(DomainKeySet::subject_key_wrapping_version(&rec).unwrap(), dk_version, "{file}");
        let sk = set.open_subject_key(&rec).unwrap();
        // The record is bound to its subject and version.
        let moved = SubjectKeyRecord { subject: "someone-else".into(), ..rec.clone() };
        assert!(matches!(set.open_subject_key(&moved), Err(Error::Decrypt)), "{file}");
        let other = SubjectKeyRecord { version: rec.version.next().unwrap(), ..rec.clone() };
        assert!(matches!(set.open_subject_key(&other), Err(Error::Decrypt)), "{file}");
        let ctx = Context {
            tenant: &tn,
            domain: &dn,
            collection: s(&t["collection"]),
            field: s(&t["field"]),
            record: s(&t["record"]),
        };
        assert_eq!(sk.open(&ctx, &sealed).unwrap().expose_secret(), h(&t["plaintext"]));
        assert_eq!(SealedHeader::parse(&sealed).unwrap().key.version, Some(rec.version), "{file}");
    }
    for t in v["blind_indexes"].as_array().unwrap() {
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        let len = t["len"].as_u64().unwrap() as usize;
        for &b in backends() {
            let k = SealKey::with_backend(
                KeyMaterial::from_slice(&h(&t["domain_key"])).unwrap(),
                KeyRef::new(KeyKind::Domain, kv(1)),
                b,
            )
            .unwrap();
            let bik = BlindIndexKey::derive(&k, &tn, &dn, s(&t["collection"]), s(&t["field"]), len).unwrap();
            assert_eq!(bik.index(s(&t["value"]).as_bytes()), h(&t["index"]));
        }
    }
}

fn futures_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}

/// Writes the vector files (only files that do not exist yet).
#[test]
#[ignore = "generator; run with KLUIS_WRITE_VECTORS=1 and --ignored"]
fn generate() {
    if std::env::var("KLUIS_WRITE_VECTORS").is_err() {
        return;
    }
    std::fs::create_dir_all(dir()).unwrap();
    let write = |name: &str, v: Value| {
        let p = dir().join(name);
        if p.exists() {
            eprintln!("{} exists, not overwritten", p.display());
            return;
        }
        std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    };

    // Sealed values.
    type Case<'a> = (&'a str, Suite, KeyKind, u32, [&'a str; 5], &'a [u8]);
    let cases: [Case<'_>; 7] = [
        (
            "aes empty",
            Suite::Aes256Gcm,
            KeyKind::Domain,
            1,
            ["acme", "medical", "absence", "diagnosis", "r-1"],
            b"",
        ),
        (
            "aes diagnosis",
            Suite::Aes256Gcm,
            KeyKind::Domain,
            1,
            ["acme", "medical", "absence", "diagnosis", "r-1"],
            b"burn-out",
        ),
        (
            "aes notes v7",
            Suite::Aes256Gcm,
            KeyKind::Domain,
            7,
            ["acme", "medical", "absence", "doctor_notes", "0191f3a2-7c1e-7000-8000-000000000001"],
            "Werkhervatting 50% per 1 december; controle over zes weken.".as_bytes(),
        ),
        (
            "aes general",
            Suite::Aes256Gcm,
            KeyKind::Domain,
            2,
            ["tenant.nl-01", "general", "contract", "hours", "e-42"],
            b"32",
        ),
        (
            "aes subject key",
            Suite::Aes256Gcm,
            KeyKind::Subject,
            1,
            ["acme", "medical", "absence", "diagnosis", "r-9"],
            b"hernia",
        ),
        (
            "xchacha diagnosis",
            Suite::XChaCha20Poly1305,
            KeyKind::Domain,
            1,
            ["acme", "medical", "absence", "diagnosis", "r-1"],
            b"burn-out",
        ),
        (
            "xchacha 1 KiB",
            Suite::XChaCha20Poly1305,
            KeyKind::Domain,
            3,
            ["acme", "custom_domain", "c", "f", "r"],
            &[0x5a; 1024],
        ),
    ];
    let mut out = Vec::new();
    for (i, (name, su, kk, ver, [t, d, c, f, r], pt)) in cases.iter().enumerate() {
        let key = KeyMaterial::from_bytes([0x10 + i as u8; 32]);
        let k = SealKey::new(key.clone(), KeyRef::new(*kk, kv(*ver))).unwrap();
        let cx = Ctx::new(t, d, c, f, r);
        let sealed = k.seal(*su, &cx.get(), pt).unwrap();
        out.push(json!({
            "name": name, "suite": suite_name(*su), "key": hex::encode(key.expose_secret()),
            "key_kind": if *kk == KeyKind::Domain { "domain" } else { "subject" }, "key_version": ver,
            "tenant": t, "domain": d, "collection": c, "field": f, "record": r,
            "plaintext": hex::encode(pt), "sealed": hex::encode(&sealed),
        }));
    }
    // sealed_v1.json was written by the generator of format v1; this one writes v2.
    write("sealed_v2.json", json!({"format": "kluis sealed value v2", "vectors": out}));

    // The files below hold the structures that wrap a key, as they are written now (their keys
    // sealed as sealed values v2). documents_v1.json, keyring_v1.json and keys_v1.json were
    // written by the generator of sealed values v1 and are kept as they are.

    // Documents: wrapped by a domain or a subject key, padded or not, and empty.
    type DocCase<'a> = (&'a str, Suite, bool, KeyKind, u32, usize, Option<u64>);
    let doc_cases: [DocCase<'_>; 6] = [
        ("aes 4k chunks", Suite::Aes256Gcm, false, KeyKind::Domain, 2, DOC_CONTENT_LEN, Some(10_000)),
        ("aes padded", Suite::Aes256Gcm, true, KeyKind::Domain, 2, DOC_CONTENT_LEN, Some(10_000)),
        ("xchacha", Suite::XChaCha20Poly1305, false, KeyKind::Domain, 2, DOC_CONTENT_LEN, Some(10_000)),
        ("aes subject key", Suite::Aes256Gcm, false, KeyKind::Subject, 3, DOC_CONTENT_LEN, None),
        ("empty", Suite::Aes256Gcm, false, KeyKind::Domain, 2, 0, Some(0)),
        ("empty, length unknown", Suite::XChaCha20Poly1305, false, KeyKind::Subject, 1, 0, None),
    ];
    let mut docs = Vec::new();
    for (name, su, pad, kk, ver, content_len, length) in doc_cases {
        let key = KeyMaterial::from_bytes([0x33; 32]);
        let k = SealKey::new(key.clone(), KeyRef::new(kk, kv(ver))).unwrap();
        let (tn, dn) = (tenant("acme"), domain("medical"));
        let ctx = DocumentContext { tenant: &tn, domain: &dn, document_id: "doc-0001" };
        let meta = DocumentMetadata {
            file_name: "diagnose-jan-jansen.pdf".into(),
            extension: "pdf".into(),
            content_type: "application/pdf".into(),
            length,
            created_unix: 1_763_900_000,
            uploaded_by: "dr.devries".into(),
        };
        let opts = DocumentOptions { suite: su, chunk_log2: 12, pad, backend: Backend::preferred() };
        let sealer = DocumentSealer::new(&k, &ctx, &meta, opts).unwrap();
        let mut obj = sealer.header().to_vec();
        let mut ss = kluis_core::document::StreamSealer::new(sealer);
        ss.push(&doc_content_of(content_len), &mut obj).unwrap();
        let mut tail = ss.finish().unwrap();
        while let Some(c) = tail.next_chunk().unwrap() {
            obj.extend_from_slice(&c);
        }
        docs.push(json!({
            "name": name, "wrapping_key": hex::encode(key.expose_secret()),
            "wrapping_key_kind": if kk == KeyKind::Domain { "domain" } else { "subject" },
            "wrapping_key_version": ver,
            "tenant": "acme", "domain": "medical", "document_id": "doc-0001",
            "file_name": meta.file_name, "extension": meta.extension, "content_type": meta.content_type,
            "created": meta.created_unix, "uploaded_by": meta.uploaded_by, "length": length,
            "content_len": content_len, "content": format!("{content_len} bytes, byte i = (i * 7) mod 256"),
            "object": hex::encode(&obj),
        }));
    }
    write(
        "documents_sealed_v2.json",
        json!({"format": "kluis document v1, data key a sealed value v2", "vectors": docs}),
    );

    // Keyrings, and a domain key wrapped by them.
    let mut krs = Vec::new();
    for (name, secret_kind) in [("raw key file", "raw"), ("passphrase, OWASP minimum", "passphrase")] {
        let mut kr = LocalKeyring::generate(1_763_900_000).unwrap();
        kr.rotate(1_763_900_100).unwrap();
        let key_file = [0x77u8; 32];
        let secret = if secret_kind == "raw" {
            KeyringSecret::RawKey(KeyMaterial::from_bytes(key_file))
        } else {
            KeyringSecret::Passphrase(
                Passphrase::new("correct horse battery staple".into()),
                KdfParams::MINIMUM,
            )
        };
        let (bytes, generation) = kr.to_file_bytes(&secret, Suite::default()).unwrap();
        kr.set_generation(generation);
        let (tn, dn) = (tenant("acme"), domain("medical"));
        let (rec, dk) = futures_block_on(new_domain_key(&kr, &tn, &dn, kv(3))).unwrap();
        krs.push(json!({
            "name": name, "secret_kind": secret_kind, "key_file": hex::encode(key_file),
            "passphrase": "correct horse battery staple", "keyring_file": hex::encode(&bytes), "generation": generation,
            "tenant": "acme", "domain": "medical", "domain_key_version": 3,
            "wrapped_domain_key": hex::encode(rec.wrapped.unwrap().to_bytes().unwrap()),
            "domain_key": hex::encode(dk.expose_secret()),
        }));
    }
    write(
        "keyring_sealed_v2.json",
        json!({"format": "kluis keyring v1 and wrapped key v1, bodies sealed values v2", "vectors": krs}),
    );

    // Subject keys (under domain key versions 1 and 2) and blind indexes.
    let (tn, dn) = (tenant("acme"), domain("medical"));
    let dkey = KeyMaterial::from_bytes([0x44; 32]);
    let mut subject = Vec::new();
    for (dk_version, sk_version, subject_id, record, plaintext) in
        [(1u32, 1u32, "emp-jan", "r-1", "depressie"), (2, 3, "emp-piet", "r-2", "hernia")]
    {
        let set = DomainKeySet::from_keys(
            tn.clone(),
            dn.clone(),
            vec![(kv(dk_version), KeyState::Active, dkey.clone())],
            Suite::default(),
            Backend::preferred(),
        )
        .unwrap();
        let (rec, sk) = set.new_subject_key(subject_id, kv(sk_version)).unwrap();
        let ctx = Context { tenant: &tn, domain: &dn, collection: "absence", field: "diagnosis", record };
        let sealed = sk.seal(&ctx, plaintext.as_bytes()).unwrap();
        subject.push(
            json!({ "tenant": "acme", "domain": "medical", "domain_key": hex::encode(dkey.expose_secret()),
            "domain_key_version": dk_version, "subject_key_version": sk_version, "collection": "absence",
            "field": "diagnosis", "record": record, "subject": subject_id,
            "subject_key_record": hex::encode(&rec.wrapped), "sealed": hex::encode(&sealed),
            "plaintext": hex::encode(plaintext) }),
        );
    }
    let mut bidx = Vec::new();
    for (field, value, len) in
        [("bsn", "123456782", 16usize), ("last_name", "Jansen", 8), ("email", "jan@example.nl", 32)]
    {
        let k = SealKey::new(dkey.clone(), KeyRef::new(KeyKind::Domain, kv(1))).unwrap();
        let i = BlindIndexKey::derive(&k, &tn, &dn, "employee", field, len).unwrap().index(value.as_bytes());
        bidx.push(
            json!({ "tenant": "acme", "domain": "medical", "domain_key": hex::encode(dkey.expose_secret()),
            "collection": "employee", "field": field, "value": value, "len": len, "index": hex::encode(i) }),
        );
    }
    write(
        "keys_sealed_v2.json",
        json!({"format": "kluis subject keys (sealed values v2) and blind indexes v1", "subject_keys": subject, "blind_indexes": bidx}),
    );
}
