//! Schema loading: TOML with line-numbered errors, and validation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use kluis_store::StoreError;
use kluis_store::schema::{FieldType, Schema, field};

#[test]
fn toml_schema_loads() {
    let s = Schema::from_toml(
        r#"
[collections.absence.fields]
diagnosis = { type = "text", domain = "medical", max_bytes = 100 }
capacity  = { type = "percentage", domain = "general" }
number    = { type = "text", domain = "general", blind_index = true }
note      = { type = "text", domain = "arbo-dienst" }
"#,
    )
    .unwrap();
    let c = s.collection("absence").unwrap();
    let d = c.field("diagnosis").unwrap();
    assert_eq!(
        (d.ty, d.domain.as_str(), d.max_bytes, d.blind_index),
        (FieldType::Text, "medical", 100, false)
    );
    assert!(c.field("number").unwrap().blind_index);
    assert_eq!(c.field("note").unwrap().domain.as_str(), "arbo-dienst");
    assert!(matches!(s.collection("nope"), Err(StoreError::UnknownCollection(_))));
}

fn toml_err(text: &str) -> (usize, usize, String) {
    match Schema::from_toml(text) {
        Err(StoreError::SchemaToml { line, column, message }) => (line, column, message),
        other => panic!("expected a toml error, got {other:?}"),
    }
}

#[test]
fn malformed_toml_names_the_line() {
    let (line, _, msg) = toml_err(
        "[collections.a.fields]\nx = { type = \"text\", domain = \"general\" }\ny = { type = \"text\" domain = \"general\" }\n",
    );
    assert_eq!(line, 3, "{msg}");
    let e = Schema::from_toml("[collections.a.fields]\n\n\nbroken = \n").unwrap_err();
    assert!(e.to_string().contains("line 4"), "{e}");
    // Unknown key and missing key are reported at their line too.
    let (line, _, msg) =
        toml_err("[collections.a.fields]\nx = { type = \"text\", domain = \"general\", colour = 1 }\n");
    assert_eq!(line, 2);
    assert!(msg.contains("colour"), "{msg}");
    let (line, _, _) = toml_err(
        "[collections.a.fields]\nok = { type = \"text\", domain = \"general\" }\nx = { type = \"text\" }\n",
    );
    assert_eq!(line, 3);
    let (line, _, _) =
        toml_err("[collections.a.fields]\nx = { type = \"text\", domain = \"general\", max_bytes = -1 }\n");
    assert_eq!(line, 2);
}

#[test]
fn invalid_schemas_are_refused() {
    let cases = [
        "[collections.a.fields]\nx = { type = \"money\", domain = \"general\" }\n",
        "[collections.a.fields]\nx = { type = \"text\", domain = \"Medical\" }\n",
        "[collections.a.fields]\nX = { type = \"text\", domain = \"general\" }\n",
        "[collections.A.fields]\nx = { type = \"text\", domain = \"general\" }\n",
        "[collections.a.fields]\nx = { type = \"text\", domain = \"general\", max_bytes = 0 }\n",
        "[collections.a.fields]\nx = { type = \"text\", domain = \"general\", max_bytes = 99999999 }\n",
        "[collections.a.fields]\nx = { type = \"bool\", domain = \"general\", blind_index = true }\n",
        "[collections.a]\n",
    ];
    for c in cases {
        assert!(matches!(Schema::from_toml(c), Err(StoreError::Schema(_))), "{c}");
    }
}

#[test]
fn schema_in_code() {
    let s = Schema::builder()
        .collection(
            "absence",
            [
                field("start_date", FieldType::Date, "general"),
                field("diagnosis", FieldType::Text, "medical").max_bytes(500),
                field("number", FieldType::Text, "general").blind_index(),
            ],
        )
        .build()
        .unwrap();
    assert_eq!(s.collection("absence").unwrap().fields().count(), 3);
    let dup = Schema::builder()
        .collection("a", [field("x", FieldType::Text, "general")])
        .collection("a", [field("y", FieldType::Text, "general")])
        .build();
    assert!(matches!(dup, Err(StoreError::Schema(_))));
    let bad_domain = Schema::builder().collection("a", [field("x", FieldType::Text, "Not Valid")]).build();
    assert!(matches!(bad_domain, Err(StoreError::Schema(_))));
}

/// A catalog key reference names subject key versions from 1, in decimal without leading zeros.
#[test]
fn document_key_refs_name_versions_from_1() {
    use kluis_store::backend::document_key_version;
    assert_eq!(document_key_version("subject:medical:v1", "medical"), Some(1));
    assert_eq!(document_key_version("subject:medical:v4294967295", "medical"), Some(4_294_967_295));
    for bad in
        ["subject:medical:v0", "subject:medical:v01", "subject:medical:v", "subject:medical:v4294967296"]
    {
        assert_eq!(document_key_version(bad, "medical"), None, "{bad}");
    }
}
