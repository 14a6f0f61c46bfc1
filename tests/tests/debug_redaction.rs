//! `{:?}` of every key and secret type holds no key bytes and no plaintext.

mod common;

use common::*;
use kluis_core::crypto::hazmat::RawAead;
use kluis_core::document::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOptions, DocumentSealer,
};
use kluis_core::keys::{CacheConfig, CachingProvider, new_domain_key};
use kluis_core::{
    Backend, BlindIndexKey, DomainKeySet, KeyMaterial, KeyState, KeyringSecret, LocalKeyring, Passphrase,
    Plaintext, Suite,
};

const SECRET: [u8; 32] = [
    0xa1, 0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, 0x29, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x90, 0xa1,
    0xb2, 0xc3, 0xd4, 0xe5, 0xf6, 0x07, 0x18, 0x29, 0x3a, 0x4b, 0x5c, 0x6d, 0x7e, 0x8f, 0x91,
];
const CANARY: &str = "CANARY-burnout-Jan-Jansen";

/// No byte array printed in decimal or hex, no run of hex digits, none of the secret's bytes.
fn assert_clean(what: &str, dbg: &str) {
    let hex_lower: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
    let dec = format!("{:?}", &SECRET[..4]).trim_end_matches(']').to_string();
    assert!(!dbg.contains(&hex_lower[..8]), "{what}: hex key bytes in {dbg}");
    assert!(!dbg.to_lowercase().contains(&hex_lower[..8]), "{what}: hex key bytes in {dbg}");
    assert!(!dbg.contains(dec.trim_start_matches('[')), "{what}: decimal key bytes in {dbg}");
    assert!(!dbg.contains(CANARY), "{what}: plaintext in {dbg}");
    // Any byte array of 8+ elements is suspicious.
    let arr = regex_like_byte_array(dbg);
    assert!(!arr, "{what}: a byte array is printed: {dbg}");
}

fn regex_like_byte_array(s: &str) -> bool {
    // Looks for "[n, n, n, n, n, n, n, n" with n decimal.
    let bytes: Vec<&str> = s.split(['[', ']']).collect();
    bytes.iter().any(|part| {
        let nums: Vec<&str> = part.split(", ").collect();
        nums.len() >= 8 && nums.iter().all(|n| n.trim().parse::<u8>().is_ok())
    })
}

#[tokio::test]
async fn debug_output_never_holds_secrets() {
    let km = KeyMaterial::from_bytes(SECRET);
    assert_clean("KeyMaterial", &format!("{km:?}"));
    assert_clean("Passphrase", &format!("{:?}", Passphrase::new(CANARY.into())));
    assert_clean("Plaintext", &format!("{:?}", Plaintext::new(CANARY.as_bytes().to_vec())));
    let sk = kluis_core::SealKey::new(
        km.clone(),
        kluis_core::KeyRef { kind: kluis_core::KeyKind::Domain, version: Some(kv(1)) },
    )
    .unwrap();
    assert_clean("SealKey", &format!("{sk:?}"));
    assert_clean("SealKey alt", &format!("{sk:#?}"));
    for s in [
        KeyringSecret::RawKey(km.clone()),
        KeyringSecret::Passphrase(Passphrase::new(CANARY.into()), kluis_core::KdfParams::MINIMUM),
    ] {
        assert_clean("KeyringSecret", &format!("{s:?}"));
    }
    let (t, d) = (tenant("acme"), domain("medical"));
    let set = DomainKeySet::from_keys(
        t.clone(),
        d.clone(),
        vec![(kv(1), KeyState::Active, km.clone())],
        Suite::default(),
        Backend::preferred(),
    )
    .unwrap();
    assert_clean("DomainKeySet", &format!("{set:#?}"));
    let (srec, skey) = set.new_subject_key("emp-1", kv(1)).unwrap();
    assert_clean("SubjectKey", &format!("{skey:#?}"));
    assert_clean("SubjectKeyRecord", &format!("{srec:?}").replace(&format!("{:?}", srec.wrapped), ""));
    let bik = BlindIndexKey::derive(&sk, &t, &d, "c", "f", 16).unwrap();
    assert_clean("BlindIndexKey", &format!("{bik:?}"));
    for b in Backend::all() {
        assert_clean("RawAead", &format!("{:?}", RawAead::new(*b, Suite::Aes256Gcm, &SECRET).unwrap()));
    }

    let root = LocalKeyring::generate(0).unwrap();
    let (rec, _) = new_domain_key(&root, &t, &d, kv(1)).await.unwrap();
    assert_clean("LocalKeyring", &format!("{root:#?}"));
    assert_clean("DomainKeyRecord", &format!("{rec:#?}"));
    let cache = CachingProvider::new(root, CacheConfig::default());
    DomainKeySet::unwrap(&cache, &[rec]).await.unwrap();
    assert_clean("CachingProvider", &format!("{cache:#?}"));

    let meta = DocumentMetadata { file_name: format!("{CANARY}.pdf"), ..Default::default() };
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "d1" };
    let mut sealer = DocumentSealer::new(&sk, &ctx, &meta, DocumentOptions::default()).unwrap();
    assert_clean("DocumentMetadata", &format!("{meta:?}"));
    assert_clean("DocumentSealer", &format!("{sealer:#?}"));
    let mut obj = sealer.header().to_vec();
    let mut buf = CANARY.as_bytes().to_vec();
    sealer.seal_chunk(&mut buf, true).unwrap();
    obj.extend_from_slice(&buf);
    let h = DocumentHeader::parse(&obj).unwrap();
    assert_clean("DocumentHeader", &format!("{h:#?}"));
    let opener = h.open(&sk, &ctx).unwrap();
    assert_clean("DocumentOpener", &format!("{opener:#?}"));
    let st = opener.stream();
    assert_clean("StreamOpener", &format!("{st:#?}"));
    // Errors carry no plaintext either.
    let err = set.open(&Ctx::new("acme", "medical", "c", "f", "r").get(), CANARY.as_bytes()).unwrap_err();
    assert_clean("Error", &format!("{err:?} {err}"));
}
