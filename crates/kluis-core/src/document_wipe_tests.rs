//! Buffer-level tests: plaintext is never left in a buffer that is dropped or reallocated
//! without a wipe. (A child module of `document`, so it can reach the internal buffers.)

use super::*;
use crate::ids::{DomainName, TenantId};
use crate::seal::KeyKind;

const CS_LOG2: u8 = 12;
const CS: usize = 1 << CS_LOG2;

fn wrapping() -> SealKey {
    SealKey::new(KeyMaterial::from_bytes([3; 32]), KeyRef::new(KeyKind::Domain, crate::KeyVersion::FIRST))
        .unwrap()
}

fn meta(name_len: usize) -> DocumentMetadata {
    DocumentMetadata {
        file_name: "n".repeat(name_len),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length: None,
        created_unix: 1_700_000_000,
        uploaded_by: "dr-jansen".into(),
    }
}

/// A stored document of `content` (4 KiB chunks) and its opener.
fn stored(content: &[u8]) -> (Vec<u8>, DocumentOpener) {
    let (t, d) = (TenantId::new("acme").unwrap(), DomainName::medical());
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-1" };
    let key = wrapping();
    let opts = DocumentOptions { chunk_log2: CS_LOG2, ..DocumentOptions::default() };
    let mut s = DocumentSealer::new(&key, &ctx, &meta(8), opts).unwrap();
    let mut object = s.header().to_vec();
    let chunks: Vec<&[u8]> = content.chunks(CS).collect();
    for (i, c) in chunks.iter().enumerate() {
        let mut buf = c.to_vec();
        s.seal_chunk(&mut buf, i + 1 == chunks.len()).unwrap();
        object.extend_from_slice(&buf);
    }
    let opener = DocumentHeader::parse(&object).unwrap().open(&key, &ctx).unwrap();
    (object, opener)
}

#[test]
fn open_range_leaves_no_plaintext_in_its_output_on_failure() {
    let content: Vec<u8> = (0..3 * CS + 100).map(|i| (i % 251) as u8 + 1).collect();
    let (object, opener) = stored(&content);
    let plan = opener.plan_range(object.len() as u64, 10, content.len() as u64).unwrap();
    let range = &object[plan.object_start as usize..plan.object_end as usize];
    assert_eq!(opener.open_range(&plan, range).unwrap().expose_secret(), &content[10..]);

    // The last chunk is altered: the first three open (their plaintext is written) before it fails.
    let mut bad = range.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    let mut out = vec![0u8; plan.take as usize];
    assert!(matches!(opener.open_range_into(&plan, &bad, &mut out), Err(Error::Decrypt)));
    assert!(out.iter().all(|&b| b == 0), "plaintext left in the output after a failed chunk");

    // The ciphertext stops after two chunks: both open, then the range is short.
    let short = &range[..2 * (CS + TAG_LEN)];
    let mut out = vec![0u8; plan.take as usize];
    assert!(matches!(opener.open_range_into(&plan, short, &mut out), Err(Error::Truncated)));
    assert!(out.iter().all(|&b| b == 0), "plaintext left in the output of a truncated range");
}

#[test]
fn metadata_is_encoded_into_one_buffer_of_its_final_size() {
    // Names that fit the first 256-byte bucket, and names that need the buffer to grow.
    for name_len in [0, 10, 200, 300, 700, 5000] {
        let encoded = meta(name_len).encode().unwrap();
        assert_eq!(encoded.len() % META_BUCKET, 0);
        assert_eq!(encoded.capacity(), encoded.len(), "name of {name_len} bytes: the buffer grew");
        assert_eq!(DocumentMetadata::decode(&encoded).unwrap(), meta(name_len));
    }
}

#[test]
fn the_sealer_tail_seals_its_held_chunk_where_it_was_filled() {
    let (t, d) = (TenantId::new("acme").unwrap(), DomainName::medical());
    let ctx = DocumentContext { tenant: &t, domain: &d, document_id: "doc-2" };
    let content = vec![7u8; CS + 100];
    let m = DocumentMetadata { length: Some(content.len() as u64), ..meta(8) };
    let opts = DocumentOptions { chunk_log2: CS_LOG2, pad: true, ..DocumentOptions::default() };
    let mut s = StreamSealer::new(DocumentSealer::new(&wrapping(), &ctx, &m, opts).unwrap());
    let mut out = Vec::new();
    s.push(&content, &mut out).unwrap();
    let mut tail = s.finish().unwrap();
    // The held plaintext is in a wiping buffer with room for padding and tag.
    let held: &Zeroizing<Vec<u8>> = tail.buf.as_ref().unwrap();
    assert_eq!(held.len(), 100);
    let (at, cap) = (held.as_ptr(), held.capacity());
    assert!(cap >= CS + TAG_LEN);
    let sealed = tail.next_chunk().unwrap().unwrap();
    assert_eq!((sealed.as_ptr(), sealed.capacity()), (at, cap), "the held chunk was reallocated");
    assert_eq!(sealed.len(), (padme(content.len() as u64).unwrap() as usize - CS) + TAG_LEN);
    assert!(tail.next_chunk().unwrap().is_none());
}
