//! One conformance suite, compiled once per backend: the local directory (as detected, and with
//! `Publish::ClaimRename`), the same on the SMB test share, and Azure Blob Storage (Azurite). Covers round trips, range reads, listing, keys, tampering at the storage level,
//! interrupted uploads, garbage collection and the plaintext canary.
#![cfg(feature = "azure")]
// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use common::*;
use kluis_blob::{BlobBackend, BlobError, DocumentKeys, NewDocument, ObjectName, Upload};
use kluis_core::document::DocumentOptions;
use kluis_core::{DomainName, Error as CoreError, KeyKind};
use tokio::io::{AsyncRead, ReadBuf};

const CS: usize = 4096;

fn doc(subject: &str, record: Option<&str>, name: &str) -> NewDocument {
    NewDocument { subject: subject.to_owned(), record: record.map(str::to_owned), metadata: meta(name, None) }
}

async fn get_all<B: BlobBackend>(
    h: &Harness<B>,
    d: &kluis_blob::DocumentDescriptor,
    k: &DocumentKeys<'_>,
) -> Result<Vec<u8>, (BlobError, Vec<u8>)> {
    let mut out = Vec::new();
    match h.vault.get(d, k, &mut out).await {
        Ok(n) => {
            assert_eq!(n as usize, out.len());
            Ok(out)
        }
        Err(e) => Err((e, out)),
    }
}

/// A read that must fail with an integrity error, and must not have produced anything but an
/// authenticated prefix of the original content.
async fn assert_integrity_failure<B: BlobBackend>(
    h: &Harness<B>,
    d: &kluis_blob::DocumentDescriptor,
    k: &DocumentKeys<'_>,
    original: &[u8],
    what: &str,
) {
    match get_all(h, d, k).await {
        Ok(_) => panic!("{what}: read succeeded"),
        Err((e, partial)) => {
            assert!(e.is_integrity(), "{what}: not an integrity error: {e:?}");
            assert!(original.starts_with(&partial), "{what}: released bytes that are not the document's");
        }
    }
    let r = h.vault.get_range(d, k, 0, original.len() as u64).await;
    assert!(r.as_ref().is_err_and(BlobError::is_integrity), "{what}: range read: {r:?}");
}

pub async fn roundtrip_sizes<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    for (i, len) in [0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 5, 7 * CS + 100].into_iter().enumerate() {
        let body = content(len, i as u64);
        let mut nd = doc("emp-1", Some("rec-1"), "brief.pdf");
        nd.metadata.length = if i % 2 == 0 { Some(len as u64) } else { None };
        let d = h.vault.put(&k, &nd, body.as_slice()).await.unwrap();
        assert_eq!(d.object_len, h.backend().len(&d.object).await.unwrap());
        assert_eq!(d.wrapping_key.kind, KeyKind::Domain);
        assert_eq!(get_all(&h, &d, &k).await.unwrap(), body, "len {len}");
        let m = h.vault.metadata(&d, &k).await.unwrap();
        assert_eq!(m, nd.metadata);
        // The reader API gives the same bytes chunk by chunk.
        let mut r = h.vault.open(&d, &k).await.unwrap();
        let mut got = Vec::new();
        while let Some(c) = r.next_chunk().await.unwrap() {
            assert!(c.len() <= CS);
            got.extend_from_slice(c);
        }
        assert_eq!(got, body);
    }
}

pub async fn range_reads<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let len = 5 * CS + 123;
    let body = content(len, 7);
    let d = h.vault.put(&k, &doc("emp-1", None, "scan.pdf"), body.as_slice()).await.unwrap();
    let l = len as u64;
    for (s, e) in [
        (0, 0),
        (0, 1),
        (0, l),
        (1, 2),
        (CS as u64 - 1, CS as u64 + 1),
        (CS as u64, 2 * CS as u64),
        (3 * CS as u64 + 7, l),
        (l - 1, l),
        (l, l),
        (100, l + 5000),
        (2 * CS as u64, 2 * CS as u64),
    ] {
        let got = h.vault.get_range(&d, &k, s, e).await.unwrap();
        let e2 = e.min(l) as usize;
        assert_eq!(got.expose_secret(), &body[s as usize..e2], "range {s}..{e}");
    }
    assert!(matches!(
        h.vault.get_range(&d, &k, 10, 5).await,
        Err(BlobError::Core(CoreError::Invalid { .. }))
    ));
    // Backend-level: a range beyond the object is an error, never a short read.
    let mut out = Vec::new();
    assert!(h.backend().read_range(&d.object, 0, d.object_len + 1, &mut out).await.is_err());
    assert!(out.is_empty());
}

pub async fn listing_and_delete<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    assert!(h.vault.list_objects().await.unwrap().is_empty());
    let mut ds = Vec::new();
    for i in 0..3 {
        ds.push(
            h.vault
                .put(&k, &doc("emp-1", None, "a.pdf"), content(100 * i, i as u64).as_slice())
                .await
                .unwrap(),
        );
    }
    let mut want: Vec<ObjectName> = ds.iter().map(|d| d.object.clone()).collect();
    want.sort();
    assert_eq!(h.vault.list_objects().await.unwrap(), want);
    assert!(h.vault.delete(&ds[1]).await.unwrap());
    assert!(!h.vault.delete(&ds[1]).await.unwrap());
    want.retain(|n| n != &ds[1].object);
    assert_eq!(h.vault.list_objects().await.unwrap(), want);
    assert!(matches!(get_all(&h, &ds[1], &k).await, Err((BlobError::NotFound, _))));
    assert!(matches!(h.vault.metadata(&ds[1], &k).await, Err(BlobError::NotFound)));
    assert_eq!(get_all(&h, &ds[2], &k).await.unwrap(), content(200, 2));
}

pub async fn never_replaces_and_staged_is_invisible<B: BlobBackend>(h: Harness<B>) {
    let name = ObjectName::random().unwrap();
    let mut up = h.backend().begin(&name).await.unwrap();
    up.append(b"first part").await.unwrap();
    // Staged, not committed: not visible anywhere.
    assert!(matches!(h.backend().len(&name).await, Err(BlobError::NotFound)));
    assert!(h.backend().list().await.unwrap().is_empty());
    up.append(b", second part").await.unwrap();
    assert_eq!(up.commit().await.unwrap(), 23);
    assert_eq!(h.raw(&name).await, b"first part, second part");
    let mut again = h.backend().begin(&name).await.unwrap();
    again.append(b"other").await.unwrap();
    assert!(matches!(again.commit().await, Err(BlobError::AlreadyExists)));
    assert_eq!(h.raw(&name).await, b"first part, second part");
    // An aborted upload leaves nothing.
    let other = ObjectName::random().unwrap();
    let mut up = h.backend().begin(&other).await.unwrap();
    up.append(b"abc").await.unwrap();
    up.abort().await.unwrap();
    assert!(matches!(h.backend().len(&other).await, Err(BlobError::NotFound)));
    assert_eq!(h.leftovers().await, 0);
}

pub async fn padded_and_declared_lengths<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let opts = DocumentOptions { chunk_log2: 12, pad: true, ..DocumentOptions::default() };
    let padded =
        kluis_blob::DocumentVault::with_options(h.backend(), test_options().with_document(opts)).unwrap();
    for len in [1usize, 129, CS + 1, 3 * CS + 1000] {
        let body = content(len, len as u64);
        let mut nd = doc("emp-1", None, "x.pdf");
        nd.metadata.length = Some(len as u64);
        let d = padded.put(&k, &nd, body.as_slice()).await.unwrap();
        let mut out = Vec::new();
        padded.get(&d, &k, &mut out).await.unwrap();
        assert_eq!(out, body);
        let r = padded.get_range(&d, &k, 1, len as u64 + 99).await.unwrap();
        assert_eq!(r.expose_secret(), &body[1..]);
        // Also readable through the unpadded vault: the format says it is padded.
        assert_eq!(get_all(&h, &d, &k).await.unwrap(), body);
    }
    // Declared length not met, or exceeded: an error, and nothing visible.
    for (declared, actual) in [(100u64, 99usize), (100, 101), (5000, 4096)] {
        let mut nd = doc("emp-1", None, "x.pdf");
        nd.metadata.length = Some(declared);
        let before = h.backend().list().await.unwrap().len();
        let r = h.vault.put(&k, &nd, content(actual, 1).as_slice()).await;
        assert!(r.is_err(), "declared {declared}, actual {actual}");
        assert_eq!(h.backend().list().await.unwrap().len(), before);
        let r = padded.put(&k, &nd, content(actual, 1).as_slice()).await;
        assert!(r.is_err());
        assert_eq!(h.backend().list().await.unwrap().len(), before);
    }
    assert_eq!(h.leftovers().await, 0);
}

pub async fn subject_keys_and_shredding<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let (_rec, sk) = keys.new_subject_key("emp-9", kv(1)).unwrap();
    let ks = DocumentKeys::with_subject(&keys, &sk);
    let body = content(3 * CS, 3);
    let d =
        h.vault.put(&ks, &doc("emp-9", Some("verzuim-2026-01"), "brief.pdf"), body.as_slice()).await.unwrap();
    assert_eq!(d.wrapping_key.kind, KeyKind::Subject);
    assert_eq!(get_all(&h, &d, &ks).await.unwrap(), body);
    // Without the subject key (shredded: its record deleted), the domain key alone cannot read.
    let kd = DocumentKeys::domain(&keys);
    assert!(matches!(get_all(&h, &d, &kd).await, Err((BlobError::Core(CoreError::UnknownKey { .. }), _))));
    assert!(h.vault.metadata(&d, &kd).await.is_err());
    // A new subject key (after shredding) of the same version does not open it either.
    let (_r2, sk2) = keys.new_subject_key("emp-9", kv(1)).unwrap();
    let ks2 = DocumentKeys::with_subject(&keys, &sk2);
    let e = get_all(&h, &d, &ks2).await.unwrap_err().0;
    assert!(matches!(e, BlobError::Core(CoreError::Decrypt)), "{e:?}");
    // A subject key of another subject is refused for writing.
    let r = h.vault.put(&ks, &doc("emp-10", None, "x.pdf"), &b"x"[..]).await;
    assert!(matches!(r, Err(BlobError::Invalid { .. })));
}

pub async fn descriptor_edits_fail<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let body = content(2 * CS + 3, 4);
    let d = h.vault.put(&k, &doc("emp-1", Some("r1"), "a.pdf"), body.as_slice()).await.unwrap();
    let other = h.vault.put(&k, &doc("emp-2", Some("r2"), "b.pdf"), body.as_slice()).await.unwrap();
    let edits = [
        kluis_blob::DocumentDescriptor { subject: "emp-2".into(), ..d.clone() },
        kluis_blob::DocumentDescriptor { record: Some("r2".into()), ..d.clone() },
        kluis_blob::DocumentDescriptor { record: None, ..d.clone() },
        kluis_blob::DocumentDescriptor { object: other.object.clone(), ..d.clone() },
    ];
    for (i, e) in edits.iter().enumerate() {
        let err = get_all(&h, e, &k).await.unwrap_err().0;
        assert!(matches!(err, BlobError::Core(CoreError::Decrypt)), "edit {i}: {err:?}");
    }
    let longer = kluis_blob::DocumentDescriptor { object_len: d.object_len + 1, ..d.clone() };
    assert!(matches!(get_all(&h, &longer, &k).await, Err((BlobError::LengthMismatch { .. }, _))));
    // Keys of another tenant or domain are refused before any read.
    let general = keys_for("acme", DomainName::general());
    assert!(matches!(
        get_all(&h, &d, &DocumentKeys::domain(&general)).await,
        Err((BlobError::Invalid { .. }, _))
    ));
    // Same tenant/domain names, different keys: opaque decryption failure.
    let impostor = medical();
    let e = get_all(&h, &d, &DocumentKeys::domain(&impostor)).await.unwrap_err().0;
    assert!(matches!(e, BlobError::Core(CoreError::Decrypt)), "{e:?}");
}

fn keys_for(t: &str, d: DomainName) -> kluis_core::DomainKeySet {
    keys(t, d)
}

pub async fn tamper_swapped_objects<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let a_body = content(3 * CS + 10, 10);
    let b_body = content(3 * CS + 10, 11);
    let a = h.vault.put(&k, &doc("emp-1", None, "a.pdf"), a_body.as_slice()).await.unwrap();
    let b = h.vault.put(&k, &doc("emp-1", None, "b.pdf"), b_body.as_slice()).await.unwrap();
    let (ra, rb) = (h.raw(&a.object).await, h.raw(&b.object).await);
    h.overwrite(&a.object, &rb).await;
    h.overwrite(&b.object, &ra).await;
    assert_integrity_failure(&h, &a, &k, &a_body, "swapped a").await;
    assert_integrity_failure(&h, &b, &k, &b_body, "swapped b").await;
    // Different lengths: caught by the length check before any decryption.
    let c = h.vault.put(&k, &doc("emp-1", None, "c.pdf"), content(10, 12).as_slice()).await.unwrap();
    h.overwrite(&c.object, &ra).await;
    assert_integrity_failure(&h, &c, &k, &content(10, 12), "swapped c").await;
}

pub async fn tamper_truncated<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let body = content(4 * CS + 100, 20);
    let d = h.vault.put(&k, &doc("emp-1", None, "a.pdf"), body.as_slice()).await.unwrap();
    let raw = h.raw(&d.object).await;
    let c16 = CS + 16;
    // Cut at a chunk boundary (the final chunk dropped), inside a chunk, and by one byte.
    for cut in [100 + 16, 7, 1, c16 + 100 + 16] {
        h.overwrite(&d.object, &raw[..raw.len() - cut]).await;
        assert_integrity_failure(&h, &d, &k, &body, "truncated").await;
        // Even if the catalog's length is edited to match, the read fails.
        let edited = kluis_blob::DocumentDescriptor { object_len: (raw.len() - cut) as u64, ..d.clone() };
        assert_integrity_failure(&h, &edited, &k, &body, "truncated, length edited").await;
    }
    // Extended by a copy of the last chunk.
    let mut longer = raw.clone();
    longer.extend_from_slice(&raw[raw.len() - 116..]);
    h.overwrite(&d.object, &longer).await;
    let edited = kluis_blob::DocumentDescriptor { object_len: longer.len() as u64, ..d.clone() };
    assert_integrity_failure(&h, &edited, &k, &body, "extended").await;
    // Restored: reads again.
    h.overwrite(&d.object, &raw).await;
    assert_eq!(get_all(&h, &d, &k).await.unwrap(), body);
}

pub async fn tamper_spliced_chunk<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let a_body = content(4 * CS, 30);
    let b_body = content(4 * CS, 31);
    let a = h.vault.put(&k, &doc("emp-1", None, "a.pdf"), a_body.as_slice()).await.unwrap();
    let b = h.vault.put(&k, &doc("emp-1", None, "b.pdf"), b_body.as_slice()).await.unwrap();
    let (ra, rb) = (h.raw(&a.object).await, h.raw(&b.object).await);
    let hl = ra.len() - 4 * (CS + 16);
    let c16 = CS + 16;
    // Chunk 2 of `a` replaced by chunk 2 of `b` (same position, same size, another document).
    let mut spliced = ra.clone();
    spliced[hl + 2 * c16..hl + 3 * c16].copy_from_slice(&rb[hl + 2 * c16..hl + 3 * c16]);
    h.overwrite(&a.object, &spliced).await;
    assert_integrity_failure(&h, &a, &k, &a_body, "spliced").await;
    let r = h.vault.get_range(&a, &k, 2 * CS as u64 + 1, 2 * CS as u64 + 2).await;
    assert!(r.is_err_and(|e| e.is_integrity()));
    // Chunks outside the spliced one still read by range.
    assert_eq!(h.vault.get_range(&a, &k, 0, CS as u64).await.unwrap().expose_secret(), &a_body[..CS]);
    // Chunks 1 and 2 of `a` swapped with each other.
    let mut swapped = ra.clone();
    swapped[hl + c16..hl + 2 * c16].copy_from_slice(&ra[hl + 2 * c16..hl + 3 * c16]);
    swapped[hl + 2 * c16..hl + 3 * c16].copy_from_slice(&ra[hl + c16..hl + 2 * c16]);
    h.overwrite(&a.object, &swapped).await;
    assert_integrity_failure(&h, &a, &k, &a_body, "reordered").await;
    // `b`'s header on `a`'s chunks.
    let mut header_swap = rb[..hl].to_vec();
    header_swap.extend_from_slice(&ra[hl..]);
    h.overwrite(&a.object, &header_swap).await;
    assert_integrity_failure(&h, &a, &k, &a_body, "header swapped").await;
    // One flipped bit in the last chunk.
    let mut flipped = ra.clone();
    *flipped.last_mut().unwrap() ^= 1;
    h.overwrite(&a.object, &flipped).await;
    assert_integrity_failure(&h, &a, &k, &a_body, "bit flip").await;
    let _ = b;
}

pub async fn tamper_moved_object<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let body = content(2 * CS, 40);
    let a = h.vault.put(&k, &doc("emp-1", None, "a.pdf"), body.as_slice()).await.unwrap();
    let victim = h.vault.put(&k, &doc("emp-1", None, "v.pdf"), content(2 * CS, 41).as_slice()).await.unwrap();
    let raw = h.raw(&a.object).await;
    // Moved to a new name (and the catalog row pointed at it): fails.
    let new_name = ObjectName::random().unwrap();
    h.overwrite(&new_name, &raw).await;
    h.backend().delete(&a.object).await.unwrap();
    let moved = kluis_blob::DocumentDescriptor { object: new_name.clone(), ..a.clone() };
    assert_integrity_failure(&h, &moved, &k, &body, "moved").await;
    // The old row now finds nothing.
    assert!(matches!(get_all(&h, &a, &k).await, Err((BlobError::NotFound, _))));
    // Moved over another document's name: that document fails to read, never shows a's bytes.
    h.overwrite(&victim.object, &raw).await;
    assert_integrity_failure(&h, &victim, &k, &content(2 * CS, 41), "moved over").await;
}

/// A reader that yields `good` bytes, then fails (or stalls forever).
struct FailingReader {
    data: Vec<u8>,
    pos: usize,
    fail_at: usize,
    stall: bool,
}

impl AsyncRead for FailingReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos >= self.fail_at {
            if self.stall {
                return Poll::Pending;
            }
            return Poll::Ready(Err(std::io::Error::other("disk on fire")));
        }
        let n = buf.remaining().min(self.fail_at - self.pos).min(1000);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

pub async fn interrupted_uploads<B: BlobBackend + 'static>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let keep = h.vault.put(&k, &doc("emp-1", None, "keep.pdf"), content(CS, 1).as_slice()).await.unwrap();
    // The reader fails half-way, after several parts were written.
    let r = FailingReader { data: content(20 * CS, 2), pos: 0, fail_at: 10 * CS + 5, stall: false };
    let e = h.vault.put(&k, &doc("emp-1", None, "half.pdf"), r).await.unwrap_err();
    assert!(matches!(e, BlobError::Source(_)), "{e:?}");
    assert_eq!(h.vault.list_objects().await.unwrap(), vec![keep.object.clone()]);
    assert_eq!(h.leftovers().await, 0, "a failed upload is aborted at once");

    // The task is dropped mid-upload (the reader stalls after several parts).
    let r = FailingReader { data: content(20 * CS, 3), pos: 0, fail_at: 10 * CS + 5, stall: true };
    let nd = doc("emp-1", None, "dropped.pdf");
    let put = h.vault.put(&k, &nd, r);
    let timed = tokio::time::timeout(Duration::from_millis(300), put).await;
    assert!(timed.is_err(), "the stalled upload cannot finish");
    assert_eq!(h.vault.list_objects().await.unwrap(), vec![keep.object.clone()]);

    // A leftover of a crashed process: staged but never committed or cleaned.
    let crashed = ObjectName::random().unwrap();
    h.crashed_upload(&crashed, &content(3 * CS, 4)).await;
    assert_eq!(h.vault.list_objects().await.unwrap(), vec![keep.object.clone()]);
    assert!(h.leftovers().await >= 1);

    // Garbage collection with a grace period keeps young leftovers; with none it removes them.
    let live = [keep.object.clone()];
    let rep = h.vault.collect_garbage(&live, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(rep.unfinished, 0);
    assert!(h.leftovers().await >= 1);
    let rep = h.vault.collect_garbage(&live, grace_zero()).await.unwrap();
    assert!(rep.unfinished >= 1, "{rep:?}");
    assert_eq!(rep.orphans, 0);
    assert_eq!(h.leftovers().await, 0);
    assert_eq!(h.vault.list_objects().await.unwrap(), vec![keep.object.clone()]);
    assert_eq!(get_all(&h, &keep, &k).await.unwrap(), content(CS, 1));
    let rep = h.vault.collect_garbage(&live, grace_zero()).await.unwrap();
    assert_eq!((rep.orphans, rep.unfinished, rep.kept), (0, 0, 1));
}

pub async fn gc_removes_orphans<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let mut ds = Vec::new();
    for i in 0..4 {
        ds.push(
            h.vault
                .put(&k, &doc("emp-1", Some("r"), "a.pdf"), content(CS + i, i as u64).as_slice())
                .await
                .unwrap(),
        );
    }
    // The catalog lost rows 1 and 3 (e.g. the record was deleted without deleting its documents).
    let live = [ds[0].object.clone(), ds[2].object.clone()];
    let rep = h.vault.collect_garbage(&live, Duration::from_secs(3600)).await.unwrap();
    assert_eq!((rep.orphans, rep.kept), (0, 2), "young orphans survive the grace period");
    assert_eq!(h.vault.list_objects().await.unwrap().len(), 4);
    let rep = h.vault.collect_garbage(&live, grace_zero()).await.unwrap();
    assert_eq!((rep.orphans, rep.kept), (2, 2));
    let mut want = live.to_vec();
    want.sort();
    assert_eq!(h.vault.list_objects().await.unwrap(), want);
    assert_eq!(get_all(&h, &ds[2], &k).await.unwrap(), content(CS + 2, 2));
    assert!(matches!(get_all(&h, &ds[1], &k).await, Err((BlobError::NotFound, _))));
}

pub async fn canary<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let (_rec, sk) = keys.new_subject_key("emp-canary-4711", kv(1)).unwrap();
    let canary_text = b"CANARY-burn-out-diagnose-JJ-0xC0FFEE ";
    let body: Vec<u8> = canary_text.iter().copied().cycle().take(6 * CS + 17).collect();
    let mut nd = doc("emp-canary-4711", Some("verzuim-canary-2026"), "diagnose-jan-jansen.pdf");
    nd.metadata.uploaded_by = "bedrijfsarts-canary".into();
    let mut names = Vec::new();
    for k in [DocumentKeys::domain(&keys), DocumentKeys::with_subject(&keys, &sk)] {
        let d = h.vault.put(&k, &nd, body.as_slice()).await.unwrap();
        names.push(d.object.clone());
        assert_eq!(get_all(&h, &d, &k).await.unwrap(), body);
        // Debug output of what a catalog stores and of the metadata shows no name or type.
        let dbg = format!("{d:?} {:?}", h.vault.metadata(&d, &k).await.unwrap());
        for needle in ["diagnose", "jan-jansen", "pdf", "canary-2026", "bedrijfsarts"] {
            if needle != "canary-2026" {
                assert!(!dbg.contains(needle), "{needle} in {dbg}");
            }
        }
    }
    // Also an upload that failed half-way and one that was left staged.
    let r = FailingReader { data: body.clone(), pos: 0, fail_at: 4 * CS, stall: false };
    assert!(h.vault.put(&DocumentKeys::domain(&keys), &nd, r).await.is_err());
    let staged = ObjectName::random().unwrap();
    h.crashed_upload(&staged, &content(2 * CS, 9)).await;
    h.settle(&names).await;
    // Needles of 8 bytes or more: searched in every file's name and content. (In random
    // ciphertext a given 8-byte string turns up with odds of about 2^-58 per byte position.)
    for needle in [
        &b"diagnose-jan-jansen"[..],
        b"diagnose",
        b"jan-jansen",
        b"application/pdf",
        b"CANARY-burn-out",
        b"0xC0FFEE",
        b"emp-canary-4711",
        b"verzuim-canary",
        b"bedrijfsarts-canary",
    ] {
        let hits = files_containing(&h.storage_dir, needle);
        assert!(hits.is_empty(), "{:?} found in {hits:?}", String::from_utf8_lossy(needle));
    }
    // Short needles (the bare extension, tenant and domain) would match random ciphertext by
    // chance, so they are searched where storage keeps names and metadata in the clear: every
    // file name, and the files that are not object content (Azurite's metadata databases).
    for needle in [&b"pdf"[..], b"acme", b"medical", b"jansen"] {
        let hits = metadata_files_containing(&h.storage_dir, needle);
        assert!(hits.is_empty(), "{:?} found in {hits:?}", String::from_utf8_lossy(needle));
    }
}

macro_rules! suite {
    ($($t:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $t() {
                    super::$t(super::common::local().await).await;
                }
            )*
        }
        mod local_claim_rename {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $t() {
                    super::$t(super::common::local_claim_rename().await).await;
                }
            )*
        }
        mod smb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $t() {
                    let Some(h) = super::common::smb().await else { return };
                    super::$t(h).await;
                }
            )*
        }
        mod azure {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $t() {
                    let Some(h) = super::common::azure().await else { return };
                    super::$t(h).await;
                }
            )*
        }
    };
}

suite!(
    roundtrip_sizes,
    range_reads,
    listing_and_delete,
    never_replaces_and_staged_is_invisible,
    padded_and_declared_lengths,
    subject_keys_and_shredding,
    descriptor_edits_fail,
    tamper_swapped_objects,
    tamper_truncated,
    tamper_spliced_chunk,
    tamper_moved_object,
    interrupted_uploads,
    gc_removes_orphans,
    canary,
);

/// The canary scan is not vacuous: plaintext written to storage is found.
#[tokio::test]
async fn canary_scan_finds_plaintext() {
    let h = common::local().await;
    let name = ObjectName::random().unwrap();
    h.overwrite(&name, b"...diagnose-jan-jansen.pdf...").await;
    assert_eq!(files_containing(&h.storage_dir, b"DIAGNOSE-JAN-JANSEN").len(), 1);
    assert_eq!(files_containing(&h.storage_dir, name.as_str().as_bytes()).len(), 1, "file names are scanned");
    // The short-needle scan skips object content but not names or other files.
    assert!(metadata_files_containing(&h.storage_dir, b"pdf").is_empty());
    std::fs::write(h.storage_dir.join("catalog.json"), b"{\"name\": \"x.PDF\"}").unwrap();
    std::fs::write(h.storage_dir.join("tmp").join("scan.pdf.part"), b"").unwrap();
    assert_eq!(metadata_files_containing(&h.storage_dir, b"pdf").len(), 2);
}

/// Local directory specifics: private permissions, no path outside the root.
#[cfg(unix)]
#[tokio::test]
async fn local_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = common::local().await;
    let keys = medical();
    let d = h.vault.put(&DocumentKeys::domain(&keys), &doc("emp-1", None, "a.pdf"), &b"x"[..]).await.unwrap();
    let root = h.vault.backend().root();
    let file = root.join("objects").join(&d.object.as_str()[..2]).join(d.object.as_str());
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    for dir in [root.join("objects"), root.join("tmp"), file.parent().unwrap().to_path_buf()] {
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700, "{dir:?}");
    }
    // Stray files that are not ours are left alone by GC and never listed.
    std::fs::write(root.join("objects").join("README"), b"not ours").unwrap();
    std::fs::create_dir_all(root.join("objects").join("zz")).unwrap();
    std::fs::write(root.join("objects").join("zz").join("notes.txt"), b"not ours").unwrap();
    assert_eq!(h.vault.list_objects().await.unwrap(), vec![d.object.clone()]);
    let rep = h.vault.collect_garbage(std::iter::empty(), grace_zero()).await.unwrap();
    assert_eq!(rep.orphans, 1);
    assert!(root.join("objects").join("zz").join("notes.txt").exists());
}
