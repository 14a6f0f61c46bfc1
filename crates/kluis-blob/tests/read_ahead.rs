//! Read-ahead of the document reader (`VaultOptions::read_ahead`): same bytes as reading without
//! it, errors in order (a failed read, a tampered or truncated chunk after the read-ahead
//! boundary), and a reader or call dropped half-way. 4 KiB chunks, reads of three chunks, so a
//! document of a few chunks already crosses several reads; on the local directory, the SMB share
//! and Azurite.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Harness, content, medical, meta, test_options};
use kluis_blob::{
    BlobBackend, BlobError, DocumentDescriptor, DocumentKeys, DocumentVault, GcReport, NewDocument,
    ObjectName,
};

const CS: usize = 4096;
const C16: usize = CS + 16;
const PER_READ: usize = 3;

fn doc(name: &str) -> NewDocument {
    NewDocument { subject: "emp-7".to_owned(), record: None, metadata: meta(name, None) }
}

/// A backend that passes everything through, except that reads starting at or after `fail_from`
/// fail with an I/O error (after `delay`, if set), and that counts reads.
#[derive(Debug)]
struct Faulty<B> {
    inner: B,
    fail_from: u64,
    delay: Option<Duration>,
    reads: AtomicUsize,
}

impl<B> Faulty<B> {
    fn new(inner: B, fail_from: u64) -> Self {
        Self { inner, fail_from, delay: None, reads: AtomicUsize::new(0) }
    }
}

impl<B: BlobBackend> Faulty<B> {
    async fn check(&self, start: u64) -> kluis_blob::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if start >= self.fail_from {
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            return Err(BlobError::Io { op: "read", source: std::io::Error::other("injected failure") });
        }
        Ok(())
    }
}

impl<B: BlobBackend> BlobBackend for Faulty<B> {
    type Upload = B::Upload;
    async fn begin(&self, name: &ObjectName) -> kluis_blob::Result<B::Upload> {
        self.inner.begin(name).await
    }
    async fn len(&self, name: &ObjectName) -> kluis_blob::Result<u64> {
        self.inner.len(name).await
    }
    async fn read_range(
        &self,
        name: &ObjectName,
        s: u64,
        e: u64,
        out: &mut Vec<u8>,
    ) -> kluis_blob::Result<()> {
        self.check(s).await?;
        self.inner.read_range(name, s, e, out).await
    }
    async fn read_split(
        &self,
        name: &ObjectName,
        s: u64,
        e: u64,
        piece: usize,
        out: &mut [Vec<u8>],
    ) -> kluis_blob::Result<usize> {
        self.check(s).await?;
        self.inner.read_split(name, s, e, piece, out).await
    }
    async fn delete(&self, name: &ObjectName) -> kluis_blob::Result<bool> {
        self.inner.delete(name).await
    }
    async fn list(&self) -> kluis_blob::Result<Vec<ObjectName>> {
        self.inner.list().await
    }
    async fn collect_garbage(
        &self,
        live: &HashSet<ObjectName>,
        grace: Duration,
    ) -> kluis_blob::Result<GcReport> {
        self.inner.collect_garbage(live, grace).await
    }
}

async fn get_all<B: BlobBackend>(
    v: &DocumentVault<B>,
    d: &DocumentDescriptor,
    k: &DocumentKeys<'_>,
) -> Result<Vec<u8>, (BlobError, Vec<u8>)> {
    let mut out = Vec::new();
    match v.get(d, k, &mut out).await {
        Ok(n) => {
            assert_eq!(n as usize, out.len());
            Ok(out)
        }
        Err(e) => Err((e, out)),
    }
}

/// Chunk by chunk through the reader: the chunks returned before the first error, and the error.
async fn chunks_until_error<B: BlobBackend>(
    v: &DocumentVault<B>,
    d: &DocumentDescriptor,
    k: &DocumentKeys<'_>,
) -> (Vec<u8>, Option<BlobError>) {
    let mut r = v.open(d, k).await.unwrap();
    let mut out = Vec::new();
    loop {
        match r.next_chunk().await {
            Ok(Some(c)) => out.extend_from_slice(c),
            Ok(None) => return (out, None),
            Err(e) => {
                // After an error the reader stays failed: it never resumes, never ends cleanly.
                assert!(r.next_chunk().await.is_err(), "reader resumed after an error");
                return (out, Some(e));
            }
        }
    }
}

/// Every size around read and chunk boundaries reads back the same with and without read-ahead,
/// and the read-ahead path is the one taken for documents of more than one read.
pub async fn same_bytes_as_without<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let off = DocumentVault::with_options(h.backend(), test_options().with_read_ahead(false)).unwrap();
    for len in [0, 1, CS, PER_READ * CS, PER_READ * CS + 1, 7 * CS + 5, 20 * CS, 31 * CS - 1] {
        let body = content(len, len as u64 + 1);
        let d = h.vault.put(&k, &doc("a.pdf"), body.as_slice()).await.unwrap();
        assert_eq!(get_all(&h.vault, &d, &k).await.unwrap(), body, "len {len}, read-ahead");
        assert_eq!(get_all(&off, &d, &k).await.unwrap(), body, "len {len}, read-ahead off");
        let r = h.vault.open(&d, &k).await.unwrap();
        let ahead = format!("{r:?}").contains("read_ahead: true");
        assert_eq!(ahead, len > PER_READ * CS, "len {len}: read-ahead used: {ahead}");
        let r = off.open(&d, &k).await.unwrap();
        assert!(format!("{r:?}").contains("read_ahead: false"));
    }
}

/// A backend error in the second (or a later) read: reported after exactly the chunks of the
/// reads before it, never earlier, never skipped; with and without read-ahead.
pub async fn backend_error_in_a_later_read<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let body = content(10 * CS + 77, 3);
    let d = h.vault.put(&k, &doc("a.pdf"), body.as_slice()).await.unwrap();
    let header = d.object_len - (10 * C16 + 77 + 16) as u64;
    for ahead in [true, false] {
        for failing_read in 1..4u64 {
            let from = header + failing_read * (PER_READ * C16) as u64;
            let v = DocumentVault::with_options(
                Faulty::new(h.backend(), from),
                test_options().with_read_ahead(ahead),
            )
            .unwrap();
            let want = failing_read as usize * PER_READ * CS;
            let (e, partial) = get_all(&v, &d, &k).await.unwrap_err();
            assert!(matches!(e, BlobError::Io { op: "read", .. }), "{e:?}");
            assert!(!e.is_integrity());
            assert_eq!(partial, body[..want], "ahead {ahead}, read {failing_read}: wrong prefix");
            let (partial, e) = chunks_until_error(&v, &d, &k).await;
            assert!(matches!(e, Some(BlobError::Io { .. })), "{e:?}");
            assert_eq!(partial, body[..want]);
        }
    }
}

/// A flipped bit in a chunk at or after the read-ahead boundary (first chunk of the second read,
/// the middle of a later one, the final chunk) and truncation at a read boundary: integrity
/// errors after exactly the authenticated chunks before the bad one.
pub async fn tamper_after_the_boundary<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let chunks = 12;
    let body = content(chunks * CS, 9);
    let d = h.vault.put(&k, &doc("a.pdf"), body.as_slice()).await.unwrap();
    let raw = h.raw(&d.object).await;
    // No padding, whole chunks: the final chunk is a full one too.
    let header = raw.len() - chunks * C16;
    let off = DocumentVault::with_options(h.backend(), test_options().with_read_ahead(false)).unwrap();
    for bad in [PER_READ, PER_READ + 1, 2 * PER_READ + 1, chunks - 1] {
        let mut t = raw.clone();
        t[header + bad * C16 + 100] ^= 0x01;
        h.overwrite(&d.object, &t).await;
        let (e, partial) = get_all(&h.vault, &d, &k).await.unwrap_err();
        assert!(e.is_integrity(), "chunk {bad}: {e:?}");
        assert_eq!(partial, body[..bad * CS], "chunk {bad}: not exactly the authenticated prefix");
        let (e, partial) = get_all(&off, &d, &k).await.unwrap_err();
        assert!(e.is_integrity());
        assert_eq!(partial, body[..bad * CS]);
        let (partial, e) = chunks_until_error(&h.vault, &d, &k).await;
        assert!(e.is_some_and(|e| e.is_integrity()));
        assert_eq!(partial, body[..bad * CS]);
    }
    // Truncated at a read boundary, the catalog length edited to match: the last chunk left is
    // not a final chunk, so the read fails after the chunks before it.
    for keep in [2 * PER_READ, 2 * PER_READ + 1] {
        let cut = &raw[..header + keep * C16];
        h.overwrite(&d.object, cut).await;
        let edited = DocumentDescriptor { object_len: cut.len() as u64, ..d.clone() };
        let (e, partial) = get_all(&h.vault, &edited, &k).await.unwrap_err();
        assert!(e.is_integrity(), "{e:?}");
        assert_eq!(partial, body[..(keep - 1) * CS]);
    }
    h.overwrite(&d.object, &raw).await;
    assert_eq!(get_all(&h.vault, &d, &k).await.unwrap(), body);
}

/// A reader dropped half-way (a read being opened ahead), and a call dropped while it waits for
/// a slow read: the vault reads the document again correctly, and a reader whose call was
/// dropped fails rather than returning chunks out of step.
pub async fn dropped_half_way<B: BlobBackend>(h: Harness<B>) {
    let keys = medical();
    let k = DocumentKeys::domain(&keys);
    let body = content(40 * CS, 5);
    let d = h.vault.put(&k, &doc("a.pdf"), body.as_slice()).await.unwrap();
    for stop in [1, PER_READ, PER_READ + 1, 20] {
        let mut r = h.vault.open(&d, &k).await.unwrap();
        let mut got = Vec::new();
        for _ in 0..stop {
            got.extend_from_slice(r.next_chunk().await.unwrap().unwrap());
        }
        assert_eq!(got, body[..stop * CS]);
        drop(r);
        assert_eq!(get_all(&h.vault, &d, &k).await.unwrap(), body, "after dropping at {stop}");
    }
    // A read that hangs (starting at the third read), and a call given up while waiting for it.
    let header = d.object_len - (40 * C16) as u64;
    let mut slow = Faulty::new(h.backend(), header + (2 * PER_READ * C16) as u64);
    slow.delay = Some(Duration::from_secs(30));
    let v = DocumentVault::with_options(slow, test_options()).unwrap();
    let mut r = v.open(&d, &k).await.unwrap();
    let mut got = Vec::new();
    let mut gave_up = false;
    for _ in 0..40 {
        match tokio::time::timeout(Duration::from_millis(300), r.next_chunk()).await {
            Ok(c) => got.extend_from_slice(c.unwrap().unwrap()),
            Err(_) => {
                gave_up = true;
                break;
            }
        }
    }
    assert!(gave_up, "the slow read did not block");
    assert_eq!(got, body[..got.len()], "returned bytes that are not the document's");
    assert!(got.len() >= PER_READ * CS, "the first read was not returned");
    let e = r.next_chunk().await.unwrap_err();
    assert!(matches!(e, BlobError::Invalid { what: "document reader", .. }), "{e:?}");
    drop(r);
    assert_eq!(get_all(&h.vault, &d, &k).await.unwrap(), body);
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
        mod local_current_thread {
            $(
                #[tokio::test]
                async fn $t() {
                    super::$t(super::common::local().await).await;
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

suite!(same_bytes_as_without, backend_error_in_a_later_read, tamper_after_the_boundary, dropped_half_way);
