//! The forgery an RSA Key Vault key invites, carried out against the HTTPS stand-in: with only
//! the vault key's **public** half (what `keys/get` returns), a DBA builds a wrapped domain key
//! for a key of their choosing, inserts it by SQL as the new active version and demotes the real
//! one. The next open refuses it with a key integrity error naming the row, for the signed
//! envelope (a signature that does not verify) and for the unsigned envelope of Kluis 0.1.
//! Unsigned rows an operator has checked are rewrapped by `adopt_legacy_keys`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assertion is the report"
)]

mod common;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use kluis_core::keys::domain_key_ad;
use kluis_core::{
    Backend as CryptoBackend, Context, DomainKeySet, KeyMaterial, KeyState, RootKeyProvider, Suite,
    WrappedKey,
};
use kluis_store::{Schema, Sqlite, Store, StoreError};
use rsa::pkcs8::DecodePrivateKey;
use rsa::{BigUint, Oaep, RsaPublicKey};
use sha2_10::{Digest, Sha256};

const SCHEMA: &str = r#"
[collections.absence.fields]
diagnosis = { type = "text", domain = "medical" }
"#;

/// What the attacker chooses as the medical key.
const CHOSEN: [u8; 32] = [0x41; 32];

async fn store(dir: &std::path::Path) -> Store<Sqlite> {
    let backend = Sqlite::open(&dir.join("kluis.sqlite")).await.unwrap();
    let s = Store::new(backend, Schema::from_toml(SCHEMA).unwrap());
    s.migrate().await.unwrap();
    s
}

/// The vault key's public half and current version id, fetched as any principal with
/// `keys/get` can.
async fn public_key(s: &keyvault::StandIn) -> (RsaPublicKey, String) {
    let url = format!("{}/keys/{KV_KEY}?api-version={}", s.endpoint(), keyvault::API_VERSION);
    let bytes =
        s.http_client().get(url).bearer_auth(keyvault::TOKEN).send().await.unwrap().bytes().await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let b =
        |k: &str| BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(body["key"][k].as_str().unwrap()).unwrap());
    let kid = body["key"]["kid"].as_str().unwrap();
    let id = kid.rsplit('/').next().unwrap().to_owned();
    (RsaPublicKey::new(b("n"), b("e")).unwrap(), id)
}

/// Kluis's binding of a wrap to its associated data (`sha256_labelled`).
fn bound(key: &[u8; 32], aad: &[u8]) -> Vec<u8> {
    let label = b"kluis/azure-kv-wrap/v1";
    let mut h = Sha256::new();
    h.update((label.len() as u64).to_be_bytes());
    h.update(label);
    h.update((aad.len() as u64).to_be_bytes());
    h.update(aad);
    let mut out = key.to_vec();
    out.extend_from_slice(&h.finalize());
    out
}

/// RSA-OAEP-256 of `key || binding` under the public key: exactly what Key Vault's wrapKey
/// returns, made without the vault.
fn oaep(public: &RsaPublicKey, key: &[u8; 32], aad: &[u8]) -> Vec<u8> {
    public.encrypt(&mut rsa::rand_core::OsRng, Oaep::new::<Sha256>(), &bound(key, aad)).unwrap()
}

/// Envelope 1 (unsigned, Kluis 0.1): `0x01 | 0x01 | id len | id | ciphertext`.
fn legacy_envelope(id: &str, ct: &[u8]) -> Vec<u8> {
    let mut e = vec![1, 1, u8::try_from(id.len()).unwrap()];
    e.extend_from_slice(id.as_bytes());
    e.extend_from_slice(ct);
    e
}

/// Envelope 2 with a signature the attacker can make: a valid PS256 signature under another
/// RSA key (they hold no private half of the vault key).
fn forged_signed_envelope(id: &str, ct: &[u8]) -> Vec<u8> {
    let other = rsa::RsaPrivateKey::from_pkcs8_pem(include_str!("data/test-rsa-2.pem")).unwrap();
    let digest = Sha256::digest(ct);
    let sig = other
        .sign_with_rng(&mut rsa::rand_core::OsRng, rsa::Pss::new::<Sha256>(), digest.as_slice())
        .unwrap();
    let mut e = vec![2, 1, u8::try_from(id.len()).unwrap()];
    e.extend_from_slice(id.as_bytes());
    e.extend_from_slice(&u16::try_from(ct.len()).unwrap().to_be_bytes());
    e.extend_from_slice(ct);
    e.extend_from_slice(&sig);
    e
}

fn root_key_id() -> String {
    format!("azure-kv://{}/{KV_KEY}", keyvault::HOST)
}

async fn sql(s: &Store<Sqlite>, q: &str, bytes: Option<Vec<u8>>) -> u64 {
    let mut query = sqlx::query(q);
    if let Some(b) = bytes {
        query = query.bind(b);
    }
    query.execute(s.pool()).await.unwrap().rows_affected()
}

/// The DBA inserts `wrapped` as medical v2 (active) and demotes v1.
async fn plant(s: &Store<Sqlite>, wrapped: Vec<u8>) {
    sql(s, "UPDATE kluis_domain_keys SET state = 'decrypt-only' WHERE tenant = 'acme' AND domain = 'medical' AND version = 1", None).await;
    sql(
        s,
        "INSERT INTO kluis_domain_keys (tenant, domain, version, state, wrapped, tag) VALUES ('acme', 'medical', 2, 'active', ?, NULL)",
        Some(wrapped),
    )
    .await;
}

#[tokio::test]
async fn a_wrap_built_from_the_public_key_is_refused() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (public, id) = public_key(&s).await;
    let aad = domain_key_ad(&t, &d, kv(2)).unwrap();
    let ct = oaep(&public, &CHOSEN, &aad);
    let legacy =
        WrappedKey { root_key_id: root_key_id(), root_version: kv(1), ciphertext: legacy_envelope(&id, &ct) };
    // The forgery is real: Key Vault itself unwraps it to the attacker's key (only the legacy
    // path, which trusts the row, asks it to).
    assert!(p.is_legacy(&legacy));
    assert_eq!(p.unwrap_legacy(&aad, &legacy).await.unwrap().expose_secret(), &CHOSEN);

    for (name, envelope) in
        [("signed", forged_signed_envelope(&id, &ct)), ("unsigned", legacy.ciphertext.clone())]
    {
        let dir = tempfile::tempdir().unwrap();
        let st = store(dir.path()).await;
        st.admin_access(&p, &t, std::slice::from_ref(&d)).await.unwrap();
        let w = WrappedKey { root_key_id: root_key_id(), root_version: kv(1), ciphertext: envelope };
        plant(&st, w.to_bytes().unwrap()).await;
        let e = st.admin_access(&p, &t, std::slice::from_ref(&d)).await.unwrap_err();
        match &e {
            StoreError::KeyIntegrity { what } => assert!(what.contains("acme/medical v2"), "{name}: {what}"),
            other => panic!("{name}: expected a key integrity error, got {other:?}"),
        }
        // The provider refuses the row on its own too, before asking Key Vault to unwrap it.
        let unwraps_before = s.with(|st| st.count("POST", "/unwrapkey"));
        let items = [kluis_core::keys::UnwrapRequest { aad: &aad, wrapped: &w }];
        let r = p.unwrap_batch(&items).await.unwrap().pop().unwrap();
        assert_eq!(kind_of(&r.unwrap_err()), Some(kluis_core::ProviderErrorKind::UnwrapRefused), "{name}");
        assert_eq!(
            s.with(|st| st.count("POST", "/unwrapkey")),
            unwraps_before,
            "{name}: key vault not asked"
        );
    }
}

/// Wraps made by Kluis now are signed (envelope 2) and verify; a signature moved to another
/// row, or a ciphertext changed under a valid signature, does not.
#[tokio::test]
async fn signed_wraps_bind_the_row() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let k = KeyMaterial::generate().unwrap();
    let aad1 = domain_key_ad(&t, &d, kv(1)).unwrap();
    let w = p.wrap(&aad1, &k).await.unwrap();
    assert_eq!(w.ciphertext[0], 2, "envelope 2");
    assert!(!p.is_legacy(&w));
    assert_eq!(s.with(|st| st.signed.len()), 1, "one sign call per wrap");
    let one = |aad: Vec<u8>, w: WrappedKey| {
        let p = &p;
        async move { kluis_core::keys::unwrap_one(p, &aad, &w).await }
    };
    assert_eq!(one(aad1.clone(), w.clone()).await.unwrap(), k);
    // Moved to version 2 of the same domain: the signature covers the associated data.
    assert!(one(domain_key_ad(&t, &d, kv(2)).unwrap(), w.clone()).await.is_err());
    // A byte of the ciphertext flipped under the valid signature.
    let mut bad = w.clone();
    let i = 3 + 32 + 2 + 5;
    bad.ciphertext[i] ^= 1;
    assert!(one(aad1.clone(), bad).await.is_err());
    // The signature cut short, or removed.
    let mut cut = w.clone();
    cut.ciphertext.truncate(cut.ciphertext.len() - 1);
    assert!(one(aad1.clone(), cut).await.is_err());
}

/// A database of Kluis 0.1 on an RSA key (unsigned wraps, no state tags) is refused until an
/// operator adopts it; after `adopt_legacy_keys` its data opens and its rows are signed and
/// tagged.
#[tokio::test]
async fn legacy_rows_open_after_adoption() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (public, id) = public_key(&s).await;
    let real = KeyMaterial::generate().unwrap();
    let aad = domain_key_ad(&t, &d, kv(1)).unwrap();
    let legacy = WrappedKey {
        root_key_id: root_key_id(),
        root_version: kv(1),
        ciphertext: legacy_envelope(&id, &oaep(&public, real.expose_secret(), &aad)),
    };
    // A value sealed under that key by Kluis 0.1.
    let old = DomainKeySet::from_keys(
        t.clone(),
        d.clone(),
        vec![(kv(1), KeyState::Active, real.clone())],
        Suite::default(),
        CryptoBackend::preferred(),
    )
    .unwrap();
    let ctx = Context { tenant: &t, domain: &d, collection: "absence", field: "diagnosis", record: "r1" };
    let sealed = old.seal(&ctx, b"burn-out").unwrap();

    let dir = tempfile::tempdir().unwrap();
    let st = store(dir.path()).await;
    sql(
        &st,
        "INSERT INTO kluis_domain_keys (tenant, domain, version, state, wrapped, tag) VALUES ('acme', 'medical', 1, 'active', ?, NULL)",
        Some(legacy.to_bytes().unwrap()),
    )
    .await;
    let e = st.key_set(&p, &t, &d).await.unwrap_err();
    assert!(matches!(&e, StoreError::KeyIntegrity { what } if what.contains("acme/medical v1")), "{e:?}");

    let report = st.adopt_legacy_keys(&p).await.unwrap();
    assert_eq!((report.rewrapped, report.sets_tagged), (1, 1));
    let set = st.key_set(&p, &t, &d).await.unwrap();
    assert_eq!(set.open(&ctx, &sealed).unwrap().expose_secret(), b"burn-out");
    // Idempotent.
    let again = st.adopt_legacy_keys(&p).await.unwrap();
    assert_eq!((again.rewrapped, again.sets_tagged), (0, 0));
}
