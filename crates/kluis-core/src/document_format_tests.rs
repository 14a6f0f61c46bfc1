//! The metadata encoding's reader rules (docs/FORMAT.md §9.5), on plaintext metadata bytes.

use super::*;

fn meta(length: Option<u64>) -> DocumentMetadata {
    DocumentMetadata {
        file_name: "a.pdf".into(),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length,
        created_unix: 1_763_900_000,
        uploaded_by: "dr.devries".into(),
    }
}

/// Offset of the length flag in `meta(..)`'s encoding: version, then three `p16` strings.
const FLAG_AT: usize = 1 + (2 + 5) + (2 + 3) + (2 + 15);

fn malformed(r: Result<DocumentMetadata>) -> &'static str {
    match r {
        Err(Error::Malformed { what: "document metadata", reason }) => reason,
        other => panic!("expected malformed metadata, got {other:?}"),
    }
}

#[test]
fn encoding_round_trips_and_is_bucketed() {
    for length in [None, Some(0), Some(10_000)] {
        let enc = meta(length).encode().unwrap();
        assert_eq!(enc.len(), META_BUCKET);
        assert_eq!(enc[FLAG_AT], u8::from(length.is_some()));
        assert_eq!(DocumentMetadata::decode(&enc).unwrap(), meta(length));
    }
}

#[test]
fn the_length_encoding_is_canonical() {
    // An unknown length is flag 0 and eight zero bytes; flag 0 with any other length is refused.
    let mut enc = meta(None).encode().unwrap();
    assert_eq!(&enc[FLAG_AT + 1..FLAG_AT + 9], &[0u8; 8]);
    for b in 0..8 {
        let mut t = enc.clone();
        t[FLAG_AT + 1 + b] = 1;
        assert_eq!(malformed(DocumentMetadata::decode(&t)), "length without its flag");
    }
    // Flag 1 with length 0 is a known, empty length.
    enc[FLAG_AT] = 1;
    assert_eq!(DocumentMetadata::decode(&enc).unwrap().length, Some(0));
    for flag in [2u8, 0x80, 0xff] {
        enc[FLAG_AT] = flag;
        assert_eq!(malformed(DocumentMetadata::decode(&enc)), "bad length flag");
    }
}

#[test]
fn invalid_utf8_in_any_string_is_malformed() {
    let enc = meta(Some(1)).encode().unwrap();
    // First byte of each string: file name, extension, content type, uploaded by.
    let uploaded_by = FLAG_AT + 1 + 8 + 8 + 2;
    for at in [1 + 2, 1 + 7 + 2, 1 + 7 + 5 + 2, uploaded_by] {
        let mut t = enc.clone();
        t[at] = 0xff;
        assert_eq!(malformed(DocumentMetadata::decode(&t)), "invalid utf-8", "string at {at}");
    }
    assert_eq!(&enc[uploaded_by..uploaded_by + 10], b"dr.devries");
}

#[test]
fn padding_must_be_zero_but_need_not_fill_a_bucket() {
    let enc = meta(None).encode().unwrap();
    let mut t = enc.clone();
    *t.last_mut().unwrap() = 1;
    assert_eq!(malformed(DocumentMetadata::decode(&t)), "non-zero padding");
    // Without padding, or with a few zero bytes, it still reads.
    let used = 26 + 5 + 3 + 15 + 10;
    assert_eq!(DocumentMetadata::decode(&enc[..used]).unwrap(), meta(None));
    assert_eq!(DocumentMetadata::decode(&enc[..used + 3]).unwrap(), meta(None));
    assert!(matches!(DocumentMetadata::decode(&enc[..used - 1]), Err(Error::Malformed { .. })));
}

#[test]
fn an_unknown_metadata_version_is_unsupported() {
    let mut enc = meta(None).encode().unwrap();
    enc[0] = 2;
    assert!(matches!(
        DocumentMetadata::decode(&enc),
        Err(Error::UnsupportedVersion { what: "document metadata", version: 2 })
    ));
}
