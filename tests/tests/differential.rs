//! The two backends (RustCrypto and ring) produce and accept exactly the same bytes.

mod common;

use common::*;
use kluis_core::crypto::hazmat;
use kluis_core::document::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOptions, DocumentSealer,
};
use kluis_core::{Backend, BlindIndexKey};
use proptest::prelude::*;

fn pair() -> (Backend, Backend) {
    let all = Backend::all();
    assert!(all.len() >= 2, "differential tests need the ring feature: both backends must be compiled in");
    (all[0], all[1])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn sealed_values_cross_open(pt in proptest::collection::vec(any::<u8>(), 0..1500), suite_i in 0usize..2,
                                seed in any::<u8>(), flip in any::<bool>()) {
        let (a, b) = pair();
        let (from, to) = if flip { (b, a) } else { (a, b) };
        let c = Ctx::new("acme", "medical", "absence", "diagnosis", "r-1");
        let ks = domain_key(seed, 4, from);
        let ko = domain_key(seed, 4, to);
        let sealed = ks.seal(SUITES[suite_i], &c.get(), &pt).unwrap();
        let opened = ko.open(&c.get(), &sealed).unwrap();
        prop_assert_eq!(opened.expose_secret(), &pt[..]);
        // And both reject the same tampering.
        let mut t = sealed.clone();
        let i = pt.len() % sealed.len();
        t[i] ^= 0x20;
        prop_assert!(ko.open(&c.get(), &t).is_err());
        prop_assert!(ks.open(&c.get(), &t).is_err());
    }

    #[test]
    fn raw_aead_agrees(key in any::<[u8; 32]>(), nonce in any::<[u8; 12]>(),
                       aad in proptest::collection::vec(any::<u8>(), 0..64),
                       pt in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (a, b) = pair();
        let ka = hazmat::RawAead::new(a, kluis_core::Suite::Aes256Gcm, &key).unwrap();
        let kb = hazmat::RawAead::new(b, kluis_core::Suite::Aes256Gcm, &key).unwrap();
        let mut ba = pt.clone();
        let mut bb = pt.clone();
        let ta = ka.seal(&nonce, &aad, &mut ba).unwrap();
        let tb = kb.seal(&nonce, &aad, &mut bb).unwrap();
        prop_assert_eq!(&ba, &bb);
        prop_assert_eq!(ta, tb);
        kb.open(&nonce, &aad, &mut ba, &ta).unwrap();
        prop_assert_eq!(ba, pt);
    }

    #[test]
    fn hkdf_and_hmac_agree(prk in any::<[u8; 32]>(), info in proptest::collection::vec(any::<u8>(), 0..200),
                           len in 1usize..200) {
        let (a, b) = pair();
        let mut oa = vec![0u8; len];
        let mut ob = vec![0u8; len];
        hazmat::hkdf_expand(a, &prk, &info, &mut oa).unwrap();
        hazmat::hkdf_expand(b, &prk, &info, &mut ob).unwrap();
        prop_assert_eq!(oa, ob);
        prop_assert_eq!(hazmat::hmac_sha256(a, &prk, &info), hazmat::hmac_sha256(b, &prk, &info));
    }
}

#[test]
fn documents_cross_open() {
    let (a, b) = pair();
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-7" };
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    for suite in SUITES {
        for (from, to) in [(a, b), (b, a)] {
            let ks = domain_key(3, 1, from);
            let ko = domain_key(3, 1, to);
            let meta = DocumentMetadata { file_name: "brief.pdf".into(), ..Default::default() };
            let opts = DocumentOptions { suite, chunk_log2: 12, pad: false, backend: from };
            let mut s = DocumentSealer::new(&ks, &ctx, &meta, opts).unwrap();
            let mut obj = s.header().to_vec();
            let chunks: Vec<&[u8]> = data.chunks(4096).collect();
            for (i, c) in chunks.iter().enumerate() {
                let mut buf = c.to_vec();
                s.seal_chunk(&mut buf, i + 1 == chunks.len()).unwrap();
                obj.extend_from_slice(&buf);
            }
            let h = DocumentHeader::parse(&obj).unwrap();
            let opener = h.open_with(&ko, &ctx, to).unwrap();
            let mut st = opener.stream();
            let mut out = Vec::new();
            st.push(&obj[h.len()..], &mut out).unwrap();
            st.finish(&mut out).unwrap();
            assert_eq!(out, data, "{suite:?} {from:?} -> {to:?}");
        }
    }
}

#[test]
fn blind_indexes_agree() {
    let (a, b) = pair();
    let t = tenant("acme");
    let d = domain("general");
    for v in [&b""[..], b"Jansen", b"123456782"] {
        let ia = BlindIndexKey::derive(&domain_key(9, 1, a), &t, &d, "employee", "bsn", 16).unwrap().index(v);
        let ib = BlindIndexKey::derive(&domain_key(9, 1, b), &t, &d, "employee", "bsn", 16).unwrap().index(v);
        assert_eq!(ia, ib);
    }
}
