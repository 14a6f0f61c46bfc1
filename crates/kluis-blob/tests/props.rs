//! Property tests on the local directory: random sizes, chunk sizes, padding and ranges round
//! trip; concurrent uploads and reads on one vault do not interfere.
#![cfg(feature = "azure")]
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::sync::Arc;

use common::*;
use kluis_blob::{DocumentKeys, DocumentVault, NewDocument, VaultOptions};
use kluis_core::document::DocumentOptions;
use proptest::prelude::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_and_ranges(
        len in 0usize..40_000,
        chunk_log2 in 12u8..=13,
        pad in any::<bool>(),
        declare in any::<bool>(),
        read_chunks in 1usize..5,
        write_buffer in 1usize..20_000,
        ranges in proptest::collection::vec((0u64..45_000, 0u64..45_000), 1..6),
        seed in any::<u64>(),
    ) {
        rt().block_on(async {
            let tmp = tempfile::tempdir().unwrap();
            let backend = kluis_blob::LocalDir::open(tmp.path()).await.unwrap().with_write_buffer(write_buffer);
            let doc_opts = DocumentOptions { chunk_log2, pad, ..DocumentOptions::default() };
            let c16 = (1usize << chunk_log2) + 16;
            let vault = DocumentVault::with_options(
                backend,
                VaultOptions::default().with_document(doc_opts).with_read_size(read_chunks * c16),
            )
            .unwrap();
            let keys = medical();
            let k = DocumentKeys::domain(&keys);
            let body = content(len, seed);
            let mut m = meta("p.pdf", None);
            if pad || declare {
                m.length = Some(len as u64);
            }
            let nd = NewDocument { subject: "emp-p".into(), record: None, metadata: m };
            let d = vault.put(&k, &nd, body.as_slice()).await.unwrap();
            let mut out = Vec::new();
            assert_eq!(vault.get(&d, &k, &mut out).await.unwrap(), len as u64);
            assert_eq!(out, body);
            for (a, b) in ranges {
                let (s, e) = (a.min(b), a.max(b));
                let got = vault.get_range(&d, &k, s, e).await;
                if s as usize > len {
                    assert!(got.is_err());
                } else {
                    let e2 = (e as usize).min(len);
                    assert_eq!(got.unwrap().expose_secret(), &body[s as usize..e2]);
                }
            }
        });
    }
}

#[test]
fn concurrent_puts_and_gets() {
    rt().block_on(async {
        let h = local().await;
        let vault = Arc::new(h.vault);
        let keys = Arc::new(medical());
        let mut tasks = Vec::new();
        for i in 0..16u64 {
            let (vault, keys) = (vault.clone(), keys.clone());
            tasks.push(tokio::spawn(async move {
                let k = DocumentKeys::domain(&keys);
                let body = content(5000 * i as usize + 1, i);
                let nd =
                    NewDocument { subject: format!("emp-{i}"), record: None, metadata: meta("c.pdf", None) };
                let d = vault.put(&k, &nd, body.as_slice()).await.unwrap();
                let mut out = Vec::new();
                vault.get(&d, &k, &mut out).await.unwrap();
                assert_eq!(out, body);
                d.object
            }));
        }
        let mut names = Vec::new();
        for t in tasks {
            names.push(t.await.unwrap());
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 16);
        assert_eq!(vault.list_objects().await.unwrap(), names);
    });
}
