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
    KeyringSecret, LocalKeyring, Passphrase, SealKey, SubjectKeyRecord, Suite, WrappedKey,
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

fn doc_content() -> Vec<u8> {
    (0..DOC_CONTENT_LEN).map(|i| (i * 7 % 256) as u8).collect()
}

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
        let kref =
            KeyRef { kind: kind(s(&t["key_kind"])), version: t["key_version"].as_u64().unwrap() as u32 };
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
    let v = load("documents_v1.json");
    for t in v["vectors"].as_array().unwrap() {
        let key = KeyMaterial::from_slice(&h(&t["wrapping_key"])).unwrap();
        let kref =
            KeyRef { kind: KeyKind::Domain, version: t["wrapping_key_version"].as_u64().unwrap() as u32 };
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        let ctx = DocumentContext { tenant: &tn, domain: &dn, document_id: s(&t["document_id"]) };
        let obj = h(&t["object"]);
        for &b in backends() {
            let k = SealKey::with_backend(key.clone(), kref, b).unwrap();
            let hdr = DocumentHeader::parse(&obj).unwrap();
            let opener = hdr.open(&k, &ctx).unwrap();
            assert_eq!(opener.metadata().file_name, s(&t["file_name"]));
            assert_eq!(opener.metadata().extension, s(&t["extension"]));
            assert_eq!(opener.metadata().content_type, s(&t["content_type"]));
            let mut st = opener.stream();
            let mut out = Vec::new();
            st.push(&obj[hdr.len()..], &mut out).unwrap();
            st.finish(&mut out).unwrap();
            assert_eq!(out, doc_content(), "{}", s(&t["name"]));
        }
    }
}

#[test]
fn keyring_vectors_open() {
    let v = load("keyring_v1.json");
    for t in v["vectors"].as_array().unwrap() {
        let secret = match s(&t["secret_kind"]) {
            "passphrase" => {
                KeyringSecret::Passphrase(Passphrase::new(s(&t["passphrase"]).into()), KdfParams::MINIMUM)
            }
            _ => KeyringSecret::RawKey(KeyMaterial::from_slice(&h(&t["key_file"])).unwrap()),
        };
        let kr = LocalKeyring::from_file_bytes(&h(&t["keyring_file"]), &secret).unwrap();
        assert_eq!(kr.generation(), t["generation"].as_u64().unwrap());
        let wrapped = WrappedKey::from_bytes(&h(&t["wrapped_domain_key"])).unwrap();
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        let aad = domain_key_ad(&tn, &dn, t["domain_key_version"].as_u64().unwrap() as u32).unwrap();
        let dk = futures_block_on(unwrap_one(&kr, &aad, &wrapped)).unwrap();
        assert_eq!(dk.expose_secret().as_slice(), h(&t["domain_key"]).as_slice(), "{}", s(&t["name"]));
    }
}

#[test]
fn subject_key_and_blind_index_vectors() {
    let v = load("keys_v1.json");
    for t in v["subject_keys"].as_array().unwrap() {
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        let set = DomainKeySet::from_keys(
            tn.clone(),
            dn.clone(),
            vec![(1, KeyState::Active, KeyMaterial::from_slice(&h(&t["domain_key"])).unwrap())],
            Suite::default(),
            Backend::preferred(),
        )
        .unwrap();
        let rec = SubjectKeyRecord {
            tenant: tn.clone(),
            domain: dn.clone(),
            subject: s(&t["subject"]).into(),
            version: t["subject_key_version"].as_u64().unwrap() as u32,
            wrapped: h(&t["subject_key_record"]),
        };
        let sk = set.open_subject_key(&rec).unwrap();
        let ctx = Context {
            tenant: &tn,
            domain: &dn,
            collection: s(&t["collection"]),
            field: s(&t["field"]),
            record: s(&t["record"]),
        };
        assert_eq!(sk.open(&ctx, &h(&t["sealed"])).unwrap().expose_secret(), h(&t["plaintext"]));
    }
    for t in v["blind_indexes"].as_array().unwrap() {
        let (tn, dn) = (tenant(s(&t["tenant"])), domain(s(&t["domain"])));
        let len = t["len"].as_u64().unwrap() as usize;
        for &b in backends() {
            let k = SealKey::with_backend(
                KeyMaterial::from_slice(&h(&t["domain_key"])).unwrap(),
                KeyRef { kind: KeyKind::Domain, version: 1 },
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
        let k = SealKey::new(key.clone(), KeyRef { kind: *kk, version: *ver }).unwrap();
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

    // Documents.
    let mut docs = Vec::new();
    for (name, su, pad) in [
        ("aes 4k chunks", Suite::Aes256Gcm, false),
        ("aes padded", Suite::Aes256Gcm, true),
        ("xchacha", Suite::XChaCha20Poly1305, false),
    ] {
        let key = KeyMaterial::from_bytes([0x33; 32]);
        let k = SealKey::new(key.clone(), KeyRef { kind: KeyKind::Domain, version: 2 }).unwrap();
        let (tn, dn) = (tenant("acme"), domain("medical"));
        let ctx = DocumentContext { tenant: &tn, domain: &dn, document_id: "doc-0001" };
        let meta = DocumentMetadata {
            file_name: "diagnose-jan-jansen.pdf".into(),
            extension: "pdf".into(),
            content_type: "application/pdf".into(),
            length: Some(DOC_CONTENT_LEN as u64),
            created_unix: 1_763_900_000,
            uploaded_by: "dr.devries".into(),
        };
        let opts = DocumentOptions { suite: su, chunk_log2: 12, pad, backend: Backend::preferred() };
        let sealer = DocumentSealer::new(&k, &ctx, &meta, opts).unwrap();
        let mut obj = sealer.header().to_vec();
        let mut ss = kluis_core::document::StreamSealer::new(sealer);
        ss.push(&doc_content(), &mut obj).unwrap();
        let mut tail = ss.finish().unwrap();
        while let Some(c) = tail.next_chunk().unwrap() {
            obj.extend_from_slice(&c);
        }
        docs.push(json!({
            "name": name, "wrapping_key": hex::encode(key.expose_secret()), "wrapping_key_version": 2,
            "tenant": "acme", "domain": "medical", "document_id": "doc-0001",
            "file_name": meta.file_name, "extension": meta.extension, "content_type": meta.content_type,
            "content": format!("{DOC_CONTENT_LEN} bytes, byte i = (i * 7) mod 256"),
            "object": hex::encode(&obj),
        }));
    }
    write("documents_v1.json", json!({"format": "kluis document v1", "vectors": docs}));

    // Keyrings.
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
        let (rec, dk) = futures_block_on(new_domain_key(&kr, &tn, &dn, 3)).unwrap();
        krs.push(json!({
            "name": name, "secret_kind": secret_kind, "key_file": hex::encode(key_file),
            "passphrase": "correct horse battery staple", "keyring_file": hex::encode(&bytes), "generation": generation,
            "tenant": "acme", "domain": "medical", "domain_key_version": 3,
            "wrapped_domain_key": hex::encode(rec.wrapped.unwrap().to_bytes().unwrap()),
            "domain_key": hex::encode(dk.expose_secret()),
        }));
    }
    write("keyring_v1.json", json!({"format": "kluis keyring v1", "vectors": krs}));

    // Subject keys and blind indexes.
    let (tn, dn) = (tenant("acme"), domain("medical"));
    let dkey = KeyMaterial::from_bytes([0x44; 32]);
    let set = DomainKeySet::from_keys(
        tn.clone(),
        dn.clone(),
        vec![(1, KeyState::Active, dkey.clone())],
        Suite::default(),
        Backend::preferred(),
    )
    .unwrap();
    let (rec, sk) = set.new_subject_key("emp-jan", 1).unwrap();
    let ctx = Context { tenant: &tn, domain: &dn, collection: "absence", field: "diagnosis", record: "r-1" };
    let sealed = sk.seal(&ctx, b"depressie").unwrap();
    let subject = json!([{ "tenant": "acme", "domain": "medical", "domain_key": hex::encode(dkey.expose_secret()),
        "subject_key_version": 1, "collection": "absence", "field": "diagnosis", "record": "r-1",
        "subject": "emp-jan", "subject_key_record": hex::encode(&rec.wrapped), "sealed": hex::encode(&sealed),
        "plaintext": hex::encode(b"depressie") }]);
    let mut bidx = Vec::new();
    for (field, value, len) in
        [("bsn", "123456782", 16usize), ("last_name", "Jansen", 8), ("email", "jan@example.nl", 32)]
    {
        let k = SealKey::new(dkey.clone(), KeyRef { kind: KeyKind::Domain, version: 1 }).unwrap();
        let i = BlindIndexKey::derive(&k, &tn, &dn, "employee", field, len).unwrap().index(value.as_bytes());
        bidx.push(
            json!({ "tenant": "acme", "domain": "medical", "domain_key": hex::encode(dkey.expose_secret()),
            "collection": "employee", "field": field, "value": value, "len": len, "index": hex::encode(i) }),
        );
    }
    write(
        "keys_v1.json",
        json!({"format": "kluis subject keys and blind indexes v1", "subject_keys": subject, "blind_indexes": bidx}),
    );
}
