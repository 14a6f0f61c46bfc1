//! Domain key state tags (docs/FORMAT.md §7.5): the committed vectors in
//! `tests/vectors/key_set_tags_v1.json` are what this version computes, and an independent
//! implementation written from FORMAT.md alone (RustCrypto `hkdf`/`hmac`) computes the same bytes.
//!
//! Regenerate only to add vectors: `KLUIS_WRITE_VECTORS=1 cargo test -p kluis-tests --test
//! key_set_tags -- --ignored generate` (an existing file is not overwritten).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;

use hmac::{KeyInit, Mac};
use kluis_core::{
    Backend, DomainKeyRecord, DomainKeySet, DomainName, KeyMaterial, KeyState, KeyVersion, Suite, TenantId,
    WrappedKey,
};
use serde_json::{Value, json};

const FILE: &str = "key_set_tags_v1.json";

fn kv(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

fn path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors").join(FILE)
}

fn state_name(s: KeyState) -> &'static str {
    s.as_str()
}

/// Versions of one set: (version, state, the key of a live one).
type Versions = Vec<(u32, KeyState, Option<[u8; 32]>)>;

/// The cases: (name, tenant, domain, versions) with fixed keys.
fn cases() -> Vec<(&'static str, &'static str, &'static str, Versions)> {
    vec![
        ("first version", "acme", "medical", vec![(1, KeyState::Active, Some([0x44; 32]))]),
        (
            "after rotation",
            "acme",
            "medical",
            vec![(1, KeyState::DecryptOnly, Some([0x44; 32])), (2, KeyState::Active, Some([0x55; 32]))],
        ),
        (
            "after retirement",
            "acme",
            "medical",
            vec![
                (1, KeyState::Destroyed, None),
                (2, KeyState::DecryptOnly, Some([0x55; 32])),
                (3, KeyState::Active, Some([0x66; 32])),
            ],
        ),
        ("another tenant", "globex", "general", vec![(1, KeyState::Active, Some([0x44; 32]))]),
    ]
}

fn records(
    tenant: &str,
    domain: &str,
    versions: &[(u32, KeyState, Option<[u8; 32]>)],
) -> Vec<DomainKeyRecord> {
    versions
        .iter()
        .map(|(v, s, k)| DomainKeyRecord {
            tenant: TenantId::new(tenant).unwrap(),
            domain: DomainName::new(domain).unwrap(),
            version: kv(*v),
            state: *s,
            wrapped: k.map(|_| WrappedKey {
                root_key_id: "keyring".into(),
                root_version: kv(1),
                ciphertext: vec![0],
            }),
            tag: None,
        })
        .collect()
}

/// Tags as the library computes them.
fn library_tags(
    tenant: &str,
    domain: &str,
    versions: &[(u32, KeyState, Option<[u8; 32]>)],
) -> Vec<Option<[u8; 32]>> {
    let keys = versions
        .iter()
        .map(|(v, s, k)| (kv(*v), *s, KeyMaterial::from_bytes(k.unwrap_or([0; 32]))))
        .collect();
    let set = DomainKeySet::from_keys(
        TenantId::new(tenant).unwrap(),
        DomainName::new(domain).unwrap(),
        keys,
        Suite::default(),
        Backend::preferred(),
    )
    .unwrap();
    let mut recs = records(tenant, domain, versions);
    set.tag_records(&mut recs, None).unwrap();
    recs.iter().map(|r| r.tag).collect()
}

/// FORMAT.md §7.5, written out with RustCrypto.
fn spec_tag(
    tenant: &str,
    domain: &str,
    versions: &[(u32, KeyState, Option<[u8; 32]>)],
    v: u32,
) -> Option<[u8; 32]> {
    let (_, _, key) = versions.iter().find(|(x, _, _)| *x == v)?;
    let key = (*key)?;
    let mut m = b"kluis/domain-key-set/v1".to_vec();
    for part in [tenant.as_bytes(), domain.as_bytes()] {
        m.extend_from_slice(&u16::try_from(part.len()).unwrap().to_be_bytes());
        m.extend_from_slice(part);
    }
    m.extend_from_slice(&u32::try_from(versions.len()).unwrap().to_be_bytes());
    let mut sorted = versions.to_vec();
    sorted.sort_by_key(|(v, _, _)| *v);
    for (ver, state, _) in sorted {
        m.extend_from_slice(&ver.to_be_bytes());
        m.push(match state {
            KeyState::Active => 1,
            KeyState::DecryptOnly => 2,
            _ => 3,
        });
    }
    let hk = hkdf::Hkdf::<sha2::Sha256>::from_prk(&key).unwrap();
    let mut k = [0u8; 32];
    hk.expand(b"kluis/domain-key-set-tag/v1", &mut k).unwrap();
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&k).unwrap();
    mac.update(&m);
    mac.update(&v.to_be_bytes());
    Some(mac.finalize().into_bytes().into())
}

fn generated() -> Value {
    let mut out = Vec::new();
    for (name, tenant, domain, versions) in cases() {
        let tags = library_tags(tenant, domain, &versions);
        let rows: Vec<Value> = versions
            .iter()
            .zip(&tags)
            .map(|((v, s, k), tag)| {
                json!({
                    "version": v,
                    "state": state_name(*s),
                    "domain_key": k.map(hex::encode),
                    "tag": tag.map(hex::encode),
                })
            })
            .collect();
        out.push(json!({ "name": name, "tenant": tenant, "domain": domain, "rows": rows }));
    }
    json!({ "format": "kluis domain key state tags v1 (docs/FORMAT.md §7.5)", "sets": out })
}

#[test]
fn committed_vectors_match_the_library_and_the_spec() {
    let text = std::fs::read_to_string(path()).unwrap_or_else(|e| panic!("{}: {e}", path().display()));
    let file: Value = serde_json::from_str(&text).unwrap();
    let sets = file["sets"].as_array().unwrap();
    assert_eq!(sets.len(), cases().len());
    for (set, (name, tenant, domain, versions)) in sets.iter().zip(cases()) {
        assert_eq!(set["name"], name);
        let lib = library_tags(tenant, domain, &versions);
        for ((row, (v, s, _)), lib_tag) in set["rows"].as_array().unwrap().iter().zip(&versions).zip(&lib) {
            assert_eq!(row["version"], *v);
            assert_eq!(row["state"], state_name(*s));
            let committed = row["tag"].as_str().map(|t| hex::decode(t).unwrap());
            assert_eq!(committed, lib_tag.map(|t| t.to_vec()), "{name} v{v}: library");
            assert_eq!(
                committed,
                spec_tag(tenant, domain, &versions, *v).map(|t| t.to_vec()),
                "{name} v{v}: spec"
            );
        }
    }
}

/// The same keys under another set give other tags: a tag moved between sets does not verify.
#[test]
fn tags_differ_across_sets_and_versions() {
    let all: Vec<[u8; 32]> =
        cases().iter().flat_map(|(_, t, d, v)| library_tags(t, d, v)).flatten().collect();
    let unique: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
}

#[test]
#[ignore = "writes tests/vectors/key_set_tags_v1.json when KLUIS_WRITE_VECTORS=1"]
fn generate() {
    if std::env::var("KLUIS_WRITE_VECTORS").as_deref() != Ok("1") || path().exists() {
        return;
    }
    std::fs::write(path(), serde_json::to_string_pretty(&generated()).unwrap() + "\n").unwrap();
}
