//! Streamed documents: round trips, range reads, padding, and the tamper matrix
//! (truncate, extend, reorder, splice, swap, header edits).

mod common;

use common::*;
use kluis_core::document::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOptions, DocumentSealer, StreamSealer, padme,
};
use kluis_core::{Backend, Error, SealKey, Suite};
use proptest::prelude::*;

const CS_LOG2: u8 = 12; // 4 KiB chunks keep the tests small
const CS: usize = 1 << CS_LOG2;

fn meta(len: Option<u64>) -> DocumentMetadata {
    DocumentMetadata {
        file_name: "diagnose-jan-jansen.pdf".into(),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length: len,
        created_unix: 1_763_900_000,
        uploaded_by: "dr.devries".into(),
    }
}

fn content(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

struct Doc {
    header: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

impl Doc {
    fn object(&self) -> Vec<u8> {
        let mut o = self.header.clone();
        for c in &self.chunks {
            o.extend_from_slice(c);
        }
        o
    }
}

fn seal_doc(key: &SealKey, doc_id: &str, data: &[u8], opts: DocumentOptions) -> Doc {
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: doc_id };
    let m = meta(if opts.pad { Some(data.len() as u64) } else { None });
    let sealer = DocumentSealer::new(key, &ctx, &m, opts).unwrap();
    let header = sealer.header().to_vec();
    let mut s = StreamSealer::new(sealer);
    let mut out = Vec::new();
    // Push in odd-sized pieces.
    for piece in data.chunks(1000) {
        s.push(piece, &mut out).unwrap();
    }
    let mut tail = s.finish().unwrap();
    while let Some(c) = tail.next_chunk().unwrap() {
        out.extend_from_slice(&c);
    }
    let chunks = out.chunks(CS + 16).map(|c| c.to_vec()).collect();
    Doc { header, chunks }
}

fn opts(backend: Backend, suite: Suite, pad: bool) -> DocumentOptions {
    DocumentOptions { suite, chunk_log2: CS_LOG2, pad, backend }
}

/// Opens a whole object sequentially, pushing `step` bytes at a time.
fn open_object(key: &SealKey, doc_id: &str, object: &[u8], step: usize) -> Result<Vec<u8>, Error> {
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: doc_id };
    let hlen = DocumentHeader::header_len(object)?;
    let header = DocumentHeader::parse(object)?;
    let opener = header.open(key, &ctx)?;
    assert_eq!(opener.metadata().file_name, "diagnose-jan-jansen.pdf");
    let mut s = opener.stream();
    let mut out = Vec::new();
    for piece in object[hlen..].chunks(step.max(1)) {
        s.push(piece, &mut out)?;
    }
    s.finish(&mut out)?;
    Ok(out)
}

#[test]
fn round_trips_at_chunk_boundaries() {
    for &backend in backends() {
        for suite in SUITES {
            for pad in [false, true] {
                let k = domain_key(5, 1, backend);
                for n in [0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 7] {
                    let data = content(n, 1);
                    let doc = seal_doc(&k, "doc-1", &data, opts(backend, suite, pad));
                    let obj = doc.object();
                    for step in [1usize, 333, CS + 16, 1 << 20] {
                        if step == 1 && n > CS {
                            continue;
                        }
                        let got = open_object(&k, "doc-1", &obj, step).unwrap();
                        assert_eq!(got, data, "n={n} step={step} pad={pad} {suite:?} {backend:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn padding_hides_the_exact_size() {
    let k = domain_key(5, 1, Backend::preferred());
    let a = seal_doc(&k, "a", &content(100_000, 1), opts(Backend::preferred(), Suite::default(), true));
    let b = seal_doc(&k, "b", &content(100_300, 1), opts(Backend::preferred(), Suite::default(), true));
    assert_eq!(a.object().len(), b.object().len(), "Padmé should put both in one size bucket");
    assert_eq!(padme(100_000).unwrap(), padme(100_300).unwrap());
    assert_eq!(padme(100_000).unwrap(), 100_352);
    assert_eq!(padme(0).unwrap(), 0);
    assert_eq!(padme(1).unwrap(), 1);
    assert!(padme(1_000_000).unwrap() < 1_000_000 * 112 / 100);
    for n in [2u64, 9, 1000, 65_537, 1 << 30, u64::MAX / 4] {
        assert!(padme(n).unwrap() >= n);
    }
    // A padded document whose content is longer than declared is refused.
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "x" };
    let sealer =
        DocumentSealer::new(&k, &ctx, &meta(Some(10)), opts(Backend::preferred(), Suite::default(), true))
            .unwrap();
    let mut s = StreamSealer::new(sealer);
    assert!(matches!(s.push(&[0u8; 11], &mut Vec::new()), Err(Error::Invalid { .. })));
    // Padding needs the length up front.
    assert!(matches!(
        DocumentSealer::new(&k, &ctx, &meta(None), opts(Backend::preferred(), Suite::default(), true)),
        Err(Error::Invalid { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn range_reads_match_the_content(n in 0usize..(5 * CS), a in 0usize..(6 * CS), len in 0usize..(2 * CS), pad in any::<bool>()) {
        let k = domain_key(5, 1, Backend::preferred());
        let data = content(n, 9);
        let doc = seal_doc(&k, "doc-r", &data, opts(Backend::preferred(), Suite::default(), pad));
        let obj = doc.object();
        let t = tenant("acme");
        let d = domain("medical");
        let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-r" };
        let opener = DocumentHeader::parse(&obj).unwrap().open(&k, &ctx).unwrap();
        let layout = opener.layout(obj.len() as u64).unwrap();
        prop_assert_eq!(layout.content_len, n as u64);
        let start = a.min(n);
        let end = (start + len).min(n);
        let plan = opener.plan_range(obj.len() as u64, start as u64, end as u64).unwrap();
        let ct = &obj[plan.object_start as usize..plan.object_end as usize];
        let got = opener.open_range(&plan, ct).unwrap();
        prop_assert_eq!(got.expose_secret(), &data[start..end]);
    }
}

#[test]
fn tamper_matrix_for_documents() {
    let b = Backend::preferred();
    let k = domain_key(5, 1, b);
    let data = content(4 * CS + 100, 3);
    let doc = seal_doc(&k, "doc-1", &data, opts(b, Suite::default(), false));
    let other = seal_doc(&k, "doc-2", &content(4 * CS + 100, 4), opts(b, Suite::default(), false));
    assert_eq!(doc.chunks.len(), 5);
    let build = |chunks: &[Vec<u8>]| {
        let mut o = doc.header.clone();
        for c in chunks {
            o.extend_from_slice(c);
        }
        o
    };
    let open = |obj: &[u8]| open_object(&k, "doc-1", obj, 5000);

    assert_eq!(open(&doc.object()).unwrap(), data);

    // Truncation at a chunk boundary: the final chunk is missing.
    let r = open(&build(&doc.chunks[..4]));
    assert!(matches!(r, Err(Error::Truncated)), "{r:?}");
    assert!(matches!(open(&build(&doc.chunks[..1])), Err(Error::Truncated)));
    // Only the header.
    assert!(matches!(open(&doc.header), Err(Error::Truncated)));
    // Truncation inside the final chunk and inside a middle chunk.
    let obj = doc.object();
    assert!(open(&obj[..obj.len() - 1]).is_err());
    assert!(open(&obj[..obj.len() - 20]).is_err());
    assert!(open(&obj[..doc.header.len() + CS + 16 + 10]).is_err());
    // Extension: a byte, a copy of the final chunk, a chunk of another document.
    let mut ext = obj.clone();
    ext.push(0);
    assert!(matches!(open(&ext), Err(Error::Decrypt)));
    let mut dup = doc.chunks.clone();
    dup.push(doc.chunks[4].clone());
    assert!(open(&build(&dup)).is_err());
    // A whole document followed by more data: the final chunk is recognised as final.
    let full = seal_doc(&k, "doc-f", &content(2 * CS, 3), opts(b, Suite::default(), false));
    let mut more = full.object();
    more.extend_from_slice(&full.chunks[0]);
    let r = open_object(&k, "doc-f", &more, 5000);
    assert!(matches!(r, Err(Error::TrailingData)), "{r:?}");
    // Reordering two chunks.
    let mut swapped = doc.chunks.clone();
    swapped.swap(1, 2);
    assert!(matches!(open(&build(&swapped)), Err(Error::Decrypt)));
    // Dropping a middle chunk.
    let mut dropped = doc.chunks.clone();
    dropped.remove(2);
    assert!(matches!(open(&build(&dropped)), Err(Error::Decrypt)));
    // Splicing in the same-position chunk of another document under the same domain key.
    let mut spliced = doc.chunks.clone();
    spliced[2] = other.chunks[2].clone();
    assert!(matches!(open(&build(&spliced)), Err(Error::Decrypt)));
    // Another document's header in front of these chunks.
    let mut o2 = other.header.clone();
    for c in &doc.chunks {
        o2.extend_from_slice(c);
    }
    assert!(open_object(&k, "doc-2", &o2, 5000).is_err());
    // The whole object presented under another document id (moved to another name).
    assert!(matches!(open_object(&k, "doc-9", &obj, 5000), Err(Error::Decrypt)));
    // Every header byte flipped.
    for i in 0..doc.header.len() {
        let mut t = obj.clone();
        t[i] ^= 0x01;
        assert!(open(&t).is_err(), "header byte {i}");
    }
    // A flipped bit in each chunk.
    for ci in 0..doc.chunks.len() {
        let mut cs = doc.chunks.clone();
        cs[ci][7] ^= 0x10;
        assert!(matches!(open(&build(&cs)), Err(Error::Decrypt)), "chunk {ci}");
    }
    // Range reads see the same tampering.
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-1" };
    let opener = DocumentHeader::parse(&obj).unwrap().open(&k, &ctx).unwrap();
    let sw = build(&swapped);
    let plan = opener.plan_range(sw.len() as u64, CS as u64, 2 * CS as u64).unwrap();
    assert!(matches!(
        opener.open_range(&plan, &sw[plan.object_start as usize..plan.object_end as usize]),
        Err(Error::Decrypt)
    ));
    // A range read of the last chunk of a truncated object fails (it is not the final chunk).
    let short = build(&doc.chunks[..3]);
    let plan = opener.plan_range(short.len() as u64, 2 * CS as u64, 3 * CS as u64).unwrap();
    let r = opener.open_range(&plan, &short[plan.object_start as usize..plan.object_end as usize]);
    assert!(matches!(r, Err(Error::Truncated)), "{r:?}");
}

#[test]
fn wrong_wrapping_key_or_context_fails() {
    let b = Backend::preferred();
    let k = domain_key(5, 1, b);
    let doc = seal_doc(&k, "doc-1", &content(100, 1), opts(b, Suite::default(), false));
    let obj = doc.object();
    let h = DocumentHeader::parse(&obj).unwrap();
    assert_eq!(h.wrapping_key(), k.key_ref());
    let t = tenant("acme");
    let other_t = tenant("globex");
    let d = domain("medical");
    let g = domain("general");
    let wrong_key = domain_key(6, 1, b);
    let ok = DocumentContext { tenant: &t, domain: &d, document_id: "doc-1" };
    assert!(matches!(h.open(&wrong_key, &ok), Err(Error::Decrypt)));
    for ctx in [
        DocumentContext { tenant: &other_t, domain: &d, document_id: "doc-1" },
        DocumentContext { tenant: &t, domain: &g, document_id: "doc-1" },
        DocumentContext { tenant: &t, domain: &d, document_id: "doc-2" },
    ] {
        assert!(matches!(h.open(&k, &ctx), Err(Error::Decrypt)));
    }
}

#[test]
fn names_and_types_never_reach_the_object() {
    let b = Backend::preferred();
    let k = domain_key(5, 1, b);
    let canary = b"CANARY-medical-content-Jan-Jansen-diabetes".repeat(200);
    let doc = seal_doc(&k, "doc-1", &canary, opts(b, Suite::default(), true));
    let obj = doc.object();
    for needle in [
        &b"diagnose-jan-jansen"[..],
        b"diagnose",
        b".pdf",
        b"application/pdf",
        b"CANARY",
        b"dr.devries",
        b"Jansen",
    ] {
        assert!(!contains(&obj, needle), "{:?} found in the object", String::from_utf8_lossy(needle));
    }
    // Debug output of the metadata hides the name.
    let dbg = format!("{:?}", meta(None));
    assert!(!dbg.contains("jansen") && !dbg.contains("pdf"), "{dbg}");
}

#[test]
fn sealer_misuse_is_refused() {
    let b = Backend::preferred();
    let k = domain_key(5, 1, b);
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "x" };
    let mut s = DocumentSealer::new(&k, &ctx, &meta(None), opts(b, Suite::default(), false)).unwrap();
    let mut short = vec![0u8; 10];
    assert!(matches!(s.seal_chunk(&mut short, false), Err(Error::ApiMisuse(_))));
    let mut last = vec![0u8; 10];
    s.seal_chunk(&mut last, true).unwrap();
    let mut more = vec![0u8; 10];
    assert!(matches!(s.seal_chunk(&mut more, true), Err(Error::ApiMisuse(_))));
    let bad = DocumentOptions { chunk_log2: 30, ..opts(b, Suite::default(), false) };
    assert!(matches!(DocumentSealer::new(&k, &ctx, &meta(None), bad), Err(Error::Invalid { .. })));
}

#[test]
fn malformed_headers_are_typed_errors() {
    assert!(matches!(DocumentHeader::header_len(b"kdo"), Err(Error::Malformed { .. })));
    assert!(matches!(
        DocumentHeader::parse(b"nope-not-a-document-at-all-000000000000000000000"),
        Err(Error::Malformed { .. })
    ));
    let b = Backend::preferred();
    let k = domain_key(5, 1, b);
    let doc = seal_doc(&k, "doc-1", &content(10, 1), opts(b, Suite::default(), false));
    let mut h = doc.header.clone();
    h[4] = 2;
    assert!(matches!(DocumentHeader::parse(&h), Err(Error::UnsupportedVersion { version: 2, .. })));
    let mut h = doc.header.clone();
    h[6] = 40;
    assert!(matches!(DocumentHeader::parse(&h), Err(Error::Malformed { .. })));
    for n in 0..doc.header.len() {
        assert!(DocumentHeader::parse(&doc.header[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn a_declared_length_is_enforced_without_padding_too() {
    let b = Backend::preferred();
    let k = domain_key(5, 1, b);
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "x" };
    let o = opts(b, Suite::default(), false);
    // Sealing: fewer or more bytes than declared is refused.
    let mut s = StreamSealer::new(DocumentSealer::new(&k, &ctx, &meta(Some(5000)), o).unwrap());
    s.push(&[1u8; 4999], &mut Vec::new()).unwrap();
    assert!(matches!(s.finish(), Err(Error::Invalid { .. })));
    let mut s = StreamSealer::new(DocumentSealer::new(&k, &ctx, &meta(Some(5000)), o).unwrap());
    assert!(matches!(s.push(&[1u8; 5001], &mut Vec::new()), Err(Error::Invalid { .. })));
    // Opening: a document with a declared length checks it against the stored size.
    let mut sealer = DocumentSealer::new(&k, &ctx, &meta(Some(10)), o).unwrap();
    let mut obj = sealer.header().to_vec();
    let mut buf = vec![7u8; 10];
    sealer.seal_chunk(&mut buf, true).unwrap();
    obj.extend_from_slice(&buf);
    let opener = DocumentHeader::parse(&obj).unwrap().open(&k, &ctx).unwrap();
    assert_eq!(opener.layout(obj.len() as u64).unwrap().content_len, 10);
    assert!(opener.layout(obj.len() as u64 + 1).is_err());
}

#[test]
fn a_lying_object_length_is_an_error_not_an_abort() {
    // Found by fuzz/document_stream: storage reports a huge length but returns little data.
    let b = Backend::preferred();
    let k = domain_key(5, 1, b);
    let doc = seal_doc(&k, "doc-1", &content(100, 1), opts(b, Suite::default(), false));
    let obj = doc.object();
    let t = tenant("acme");
    let d = domain("medical");
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-1" };
    let opener = DocumentHeader::parse(&obj).unwrap().open(&k, &ctx).unwrap();
    for lie in [1u64 << 40, u64::MAX / 2, u64::MAX] {
        let plan = opener.plan_range(lie, 0, lie).unwrap();
        assert!(opener.open_range(&plan, &obj[doc.header.len()..]).is_err());
    }
}
