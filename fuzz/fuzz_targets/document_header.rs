//! Document headers: `header_len`, `parse` and (for headers that parse) `open` with the fixed key
//! must never panic on arbitrary bytes. The seed corpus holds genuine headers sealed under the
//! fixture key, so mutations reach the data-key unwrap and the metadata decryption.
#![no_main]

use kluis_core::document::PREFIX_LEN;
use kluis_core::{Backend, DocumentHeader};
use kluis_fuzz::fixture;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = fixture();

    let len = DocumentHeader::header_len(data);
    if let Ok(n) = len {
        assert!(n >= PREFIX_LEN, "header_len {n} is shorter than the prefix");
    }
    let Ok(header) = DocumentHeader::parse(data) else { return };
    match len {
        Ok(n) => assert_eq!(header.len(), n, "parse and header_len disagree"),
        Err(e) => panic!("parse accepted what header_len rejects: {e}"),
    }
    assert!(header.len() <= data.len());
    assert!(!header.is_empty());
    let _ = (header.suite(), header.wrapping_key());
    let cs = header.chunk_size();
    assert!(cs.is_power_of_two() && (1 << 12..=1 << 24).contains(&cs), "chunk size {cs}");

    // Parsing only the header's own bytes gives the same result.
    let exact = data.get(..header.len()).map(DocumentHeader::parse);
    assert!(matches!(exact, Some(Ok(_))), "header does not parse from its own bytes");

    for &backend in Backend::all() {
        let opened = header.open_with(&f.seal_key, &f.document_context(), backend);
        let Ok(opener) = opened else { continue };
        assert_eq!(opener.header_len(), header.len());
        assert_eq!(opener.chunk_size(), cs);
        let _ = format!("{:?}", opener.metadata());
        // The document with an empty body or one empty final chunk: plan and layout must not
        // panic whatever the object length.
        for extra in [0u64, 1, 15, 16, 17, cs as u64 + 16, cs as u64 + 17, u64::MAX - header.len() as u64] {
            let object_len = (header.len() as u64).saturating_add(extra);
            let _ = opener.layout(object_len);
            let _ = opener.plan_range(object_len, 0, u64::MAX);
        }
        // Bound to its document: another document id does not open it.
        let mut other = f.document_context();
        other.document_id = "doc-0002";
        assert!(header.open_with(&f.seal_key, &other, backend).is_err(), "opened for another document");
    }
});
