//! Document chunks: the bytes after the header, fed to `StreamOpener::push`/`finish` (in one piece
//! and in uneven pieces), to `DocumentOpener::layout`/`plan_range`/`open_range` and to
//! `open_chunk`. Nothing may panic, and:
//!
//! - the genuine chunk bytes open to the genuine content, whatever the piece sizes and ranges;
//! - anything that is not the genuine ciphertext never finishes successfully;
//! - whatever plaintext is released (before an error, or by a range read) is genuine content at
//!   the right offset.
//!
//! The documents are real ones, sealed once per process (`kluis_fuzz::documents()`, a `OnceLock`):
//! `DocumentSealer` draws a fresh data key, so their ciphertext differs between processes and a
//! stored corpus file can never equal it. So the input has two forms:
//!
//! - **raw** (any input not starting with 0xED): the input itself is the chunk bytes, tried
//!   against every fixture document;
//! - **edit** (`0xED, doc, script...`): the chunk bytes are the genuine ciphertext of fixture
//!   document `doc % 4` (multi, padded, empty, unsized), changed by the edit script (flip, truncate, swap, duplicate, delete,
//!   append, splice from another document, insert). An empty script is the genuine ciphertext.
//!
//! In both forms the remaining input bytes also choose the push piece sizes and the ranges read.
#![no_main]

use kluis_core::document::{DocumentOpener, RangePlan};
use kluis_core::{DocumentHeader, Error};
use kluis_fuzz::{SealedDocument, documents, fixture, must};
use libfuzzer_sys::fuzz_target;

const TAG_LEN: usize = 16;
const EDIT_MODE: u8 = 0xED;
const MAX_EDITS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let docs = documents();
    match data {
        [EDIT_MODE, which, script @ ..] => {
            let idx = usize::from(*which) % docs.len();
            let body = apply_edits(docs, idx, script);
            check(&docs[idx], &body, script);
        }
        _ => {
            for doc in docs {
                check(doc, data, data);
            }
        }
    }
});

/// Knob bytes: cycles over the input to pick sizes and offsets deterministically.
struct Knobs<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Knobs<'_> {
    fn u8(&mut self) -> u8 {
        if self.bytes.is_empty() {
            return 0;
        }
        let b = self.bytes[self.pos % self.bytes.len()];
        self.pos = self.pos.wrapping_add(1);
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(std::array::from_fn(|_| self.u8()))
    }
}

fn chunk_span(len: usize, c16: usize, i: usize) -> std::ops::Range<usize> {
    let start = (i * c16).min(len);
    start..((i + 1) * c16).min(len)
}

fn apply_edits(docs: &[SealedDocument], idx: usize, script: &[u8]) -> Vec<u8> {
    let doc = &docs[idx];
    let c16 = doc.chunk_size + TAG_LEN;
    let mut body = doc.body.clone();
    let mut s = script.iter().copied();
    let mut next = move || s.next();
    for _ in 0..MAX_EDITS {
        let Some(op) = next() else { break };
        let len = body.len();
        let nchunks = len.div_ceil(c16).max(1);
        let mut arg16 = || u16::from_be_bytes([next().unwrap_or(0), next().unwrap_or(0)]);
        match op % 8 {
            0 => {
                // Flip bits of one byte.
                let pos = usize::from(arg16());
                let mask = next().filter(|&m| m != 0).unwrap_or(1);
                if len > 0 {
                    body[pos % len] ^= mask;
                }
            }
            1 => {
                // Truncate.
                let n = usize::from(arg16()) % (len + 1);
                body.truncate(n);
            }
            2 => {
                // Swap two chunks (of equal length only, so the rest stays aligned).
                let i = usize::from(next().unwrap_or(0)) % nchunks;
                let j = usize::from(next().unwrap_or(0)) % nchunks;
                let (a, b) = (chunk_span(len, c16, i), chunk_span(len, c16, j));
                if a.len() == b.len() && a != b {
                    let tmp = body[a.clone()].to_vec();
                    body.copy_within(b.clone(), a.start);
                    body[b].copy_from_slice(&tmp);
                }
            }
            3 => {
                // Duplicate a chunk in place.
                let i = usize::from(next().unwrap_or(0)) % nchunks;
                let span = chunk_span(len, c16, i);
                let copy = body[span.clone()].to_vec();
                body.splice(span.end..span.end, copy);
            }
            4 => {
                // Delete a chunk.
                let i = usize::from(next().unwrap_or(0)) % nchunks;
                body.drain(chunk_span(len, c16, i));
            }
            5 => {
                // Append bytes from the script.
                let n = usize::from(next().unwrap_or(0));
                for _ in 0..n {
                    let Some(b) = next() else { break };
                    body.push(b);
                }
            }
            6 => {
                // Replace chunk i by chunk i of another document (same chunk size).
                let other = &docs[usize::from(next().unwrap_or(0)) % docs.len()];
                let i = usize::from(next().unwrap_or(0)) % nchunks;
                let src = chunk_span(other.body.len(), c16, i);
                let dst = chunk_span(len, c16, i);
                body.splice(dst, other.body[src].iter().copied());
            }
            _ => {
                // Insert one byte.
                let pos = usize::from(arg16()) % (len + 1);
                body.insert(pos, next().unwrap_or(0));
            }
        }
    }
    body
}

/// The decrypted stream: content, then zero padding up to the padded length (for padded documents).
fn stream_plaintext(doc: &SealedDocument) -> Vec<u8> {
    let mut s = doc.content.clone();
    let chunks = doc.body.len().div_ceil(doc.chunk_size + TAG_LEN).max(1);
    s.resize(doc.body.len() - chunks * TAG_LEN, 0);
    s
}

fn open(doc: &SealedDocument) -> DocumentOpener {
    let f = fixture();
    let header = must(DocumentHeader::parse(&doc.header));
    must(header.open(&f.seal_key, &f.document_context()))
}

fn check_stream(
    doc: &SealedDocument,
    body: &[u8],
    genuine: bool,
    how: &str,
    res: Result<(), Error>,
    out: &[u8],
) {
    assert!(
        doc.content.starts_with(out),
        "[{} {how}] released {} bytes that are not a prefix of the content",
        doc.name,
        out.len()
    );
    match res {
        Ok(()) => {
            assert!(genuine, "[{} {how}] a changed ciphertext ({} bytes) opened", doc.name, body.len());
            assert_eq!(out, doc.content.as_slice(), "[{} {how}] genuine ciphertext, wrong content", doc.name);
        }
        Err(e) => assert!(!genuine, "[{} {how}] the genuine ciphertext does not open: {e}", doc.name),
    }
}

fn check(doc: &SealedDocument, body: &[u8], knob_bytes: &[u8]) {
    let genuine = body == doc.body.as_slice();
    let c16 = doc.chunk_size + TAG_LEN;
    let mut knobs = Knobs { bytes: knob_bytes, pos: 0 };

    // 1. Stream, all in one push.
    {
        let mut s = open(doc).stream();
        let mut out = Vec::new();
        let res = match s.push(body, &mut out) {
            Ok(()) => s.finish(&mut out),
            Err(e) => {
                // An error is final: finishing afterwards must not succeed either.
                let mut more = Vec::new();
                assert!(s.finish(&mut more).is_err(), "[{}] finish succeeded after a push error", doc.name);
                Err(e)
            }
        };
        check_stream(doc, body, genuine, "one push", res, &out);
    }

    // 2. Stream in uneven pieces (sizes from the input, 0 to 2 chunks; empty pushes included).
    {
        let mut s = open(doc).stream();
        let mut out = Vec::new();
        let mut rest = body;
        let mut res = Ok(());
        let mut pushes = 0;
        while !rest.is_empty() || pushes == 0 {
            let want = usize::from(knobs.u16()) % (2 * c16 + 1);
            // Never take more than 64 pushes: the tail goes in one piece.
            let n = if pushes >= 64 { rest.len() } else { want.min(rest.len()) };
            let (piece, tail) = rest.split_at(n);
            pushes += 1;
            if let Err(e) = s.push(piece, &mut out) {
                res = Err(e);
                break;
            }
            rest = tail;
        }
        let res = match res {
            Ok(()) => s.finish(&mut out),
            Err(e) => Err(e),
        };
        check_stream(doc, body, genuine, "pieces", res, &out);
    }

    // 3. Layout and range reads of the object `header || body`.
    let opener = open(doc);
    let mut object = doc.header.clone();
    object.extend_from_slice(body);
    let object_len = object.len() as u64;
    let layout = opener.layout(object_len);
    if genuine {
        match layout {
            Ok(l) => {
                assert_eq!(l.content_len, doc.content.len() as u64, "[{}] layout content length", doc.name);
                assert_eq!(l.chunks, body.len().div_ceil(c16).max(1) as u64, "[{}] layout chunks", doc.name);
            }
            Err(e) => panic!("[{}] layout of the genuine object failed: {e}", doc.name),
        }
    }
    let content_len = layout.map(|l| l.content_len).unwrap_or(doc.content.len() as u64);
    let cs = doc.chunk_size as u64;
    let mut ranges = vec![
        (0, u64::MAX),
        (0, 0),
        (cs - 1, cs + 1),
        (cs, 2 * cs),
        (content_len.saturating_sub(1), content_len),
        (content_len, content_len),
        (content_len + 1, content_len + 2),
    ];
    for _ in 0..3 {
        let a = u64::from(knobs.u16());
        let b = u64::from(knobs.u16());
        ranges.push((a.min(b), a.max(b)));
    }
    // The true object length, and lengths a storage backend might report wrongly (a little longer
    // or shorter than the bytes it then returns).
    let delta = u64::from(knobs.u16()) % (2 * c16 as u64 + 1);
    let lens = [object_len, object_len + delta, object_len.saturating_sub(delta)];
    for (li, &len) in lens.iter().enumerate() {
        for &(start, end) in &ranges {
            let Ok(plan) = opener.plan_range(len, start, end) else {
                assert!(
                    !(genuine && li == 0 && start <= end.min(content_len)),
                    "[{}] plan_range({start}, {end}) of the genuine object failed",
                    doc.name
                );
                continue;
            };
            check_plan(doc, &plan, len, start, end);
            let ct = object.get(plan.object_start as usize..(plan.object_end.min(object_len)) as usize);
            let Some(ct) = ct else { continue };
            match opener.open_range(&plan, ct) {
                Ok(pt) if pt.is_empty() => assert_eq!(plan.take, 0, "[{}] open_range length", doc.name),
                Ok(pt) => {
                    let want = usize::try_from(start).ok().and_then(|s| doc.content.get(s..s + pt.len()));
                    assert_eq!(
                        want,
                        Some(pt.expose_secret()),
                        "[{}] open_range({start}, {end}) released bytes that are not the content there",
                        doc.name
                    );
                    assert_eq!(pt.len() as u64, plan.take, "[{}] open_range length", doc.name);
                }
                Err(e) => assert!(
                    !(genuine && li == 0),
                    "[{}] open_range({start}, {end}) of the genuine object failed: {e}",
                    doc.name
                ),
            }
        }
    }
    // Arbitrary (huge) object lengths, as a lying storage backend might report them: layout and
    // planning must not panic, and reading the planned range from the bytes that really exist
    // must fail cleanly (or return genuine content), not abort.
    for _ in 0..2 {
        let len = knobs.u64();
        let _ = opener.layout(len);
        let (a, b) = (knobs.u64(), knobs.u64());
        let (start, end) = (a.min(b), a.max(b));
        let Ok(plan) = opener.plan_range(len, start, end) else { continue };
        check_plan(doc, &plan, len, start, end);
        if !kluis_fuzz::lying_range_reads() {
            continue;
        }
        let available = plan.object_start.min(object_len) as usize..plan.object_end.min(object_len) as usize;
        match opener.open_range(&plan, &object[available]) {
            Ok(pt) if pt.is_empty() => {}
            Ok(pt) => {
                let want = usize::try_from(start).ok().and_then(|s| doc.content.get(s..s + pt.len()));
                assert_eq!(
                    want,
                    Some(pt.expose_secret()),
                    "[{}] lying-length read released wrong bytes",
                    doc.name
                );
            }
            Err(_) => {}
        }
    }

    // 4. One chunk opened directly with an index and finality chosen by the input.
    let nchunks = body.len().div_ceil(c16).max(1);
    let i = usize::from(knobs.u8()) % nchunks;
    let index = u64::from(knobs.u8() % 4);
    let last = knobs.u8() & 1 == 1;
    let mut buf = body[chunk_span(body.len(), c16, i)].to_vec();
    if let Ok(n) = opener.open_chunk(index, last, &mut buf) {
        assert_eq!(n, buf.len());
        let at = index as usize * doc.chunk_size;
        let stream = stream_plaintext(doc);
        assert_eq!(
            stream.get(at..at + n),
            Some(buf.as_slice()),
            "[{}] open_chunk({index}) released bytes that are not the stream there",
            doc.name
        );
    }
}

fn check_plan(doc: &SealedDocument, plan: &RangePlan, object_len: u64, start: u64, end: u64) {
    assert!(
        plan.object_start <= plan.object_end && plan.object_end <= object_len,
        "[{}] plan_range({object_len}, {start}, {end}) = {plan:?} is outside the object",
        doc.name
    );
    assert!(
        plan.first_chunk <= plan.last_chunk && plan.last_chunk <= plan.final_chunk,
        "[{}] plan_range({object_len}, {start}, {end}) = {plan:?}: bad chunk indexes",
        doc.name
    );
    assert!(plan.take <= end - start, "[{}] plan {plan:?} takes more than asked", doc.name);
}
