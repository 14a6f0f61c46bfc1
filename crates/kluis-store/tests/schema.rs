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

/// `NewRecord::check` refuses, before any key or database is touched, what an insert would
/// refuse for the record itself (issue 14: `kluis import` checks every line with it).
#[test]
fn new_records_are_checked_without_keys_or_database() {
    use kluis_store::{NewRecord, Value};
    let s = Schema::from_toml(
        r#"
[collections.absence.fields]
start_date    = { type = "date", domain = "general" }
work_capacity = { type = "percentage", domain = "general" }
hours         = { type = "integer", domain = "general" }
note          = { type = "text", domain = "medical", max_bytes = 5 }
"#,
    )
    .unwrap();
    let good = NewRecord::new("emp-1")
        .id("ar-1")
        .set("start_date", Value::Date("2024-02-29".into()))
        .set("work_capacity", Value::Decimal("50.5".into()))
        .set("hours", 32i64)
        .set("note", "griep");
    good.check(&s, "absence").unwrap();
    NewRecord::new("emp-1").check(&s, "absence").unwrap();
    let bad = |r: NewRecord| r.check(&s, "absence").unwrap_err();
    assert!(matches!(good.check(&s, "nope"), Err(StoreError::UnknownCollection(_))));
    assert!(matches!(bad(NewRecord::new("emp 1")), StoreError::InvalidId { what: "subject id", .. }));
    assert!(matches!(bad(NewRecord::new("emp-1").id("")), StoreError::InvalidId { what: "record id", .. }));
    assert!(matches!(bad(NewRecord::new("emp-1").set("nope", 1i64)), StoreError::UnknownField { .. }));
    for (field, v) in [
        ("start_date", Value::Date("2023-02-29".into())),
        ("start_date", Value::Date("29-02-2024".into())),
        ("start_date", Value::Text("2024-02-29".into())),
        ("work_capacity", Value::Decimal("100.01".into())),
        ("work_capacity", Value::Decimal("-1".into())),
        ("work_capacity", Value::Decimal("1.2.3".into())),
        ("hours", Value::Decimal("32".into())),
    ] {
        let e = bad(NewRecord::new("emp-1").set(field, v));
        assert!(matches!(&e, StoreError::WrongType { field: f, .. } if f == field), "{field}: {e}");
    }
    assert!(matches!(
        bad(NewRecord::new("emp-1").set("note", "griepje")),
        StoreError::TooLarge { max: 5, len: 7, .. }
    ));
    assert!(matches!(
        bad(NewRecord::new("emp-1").set("hours", 1i64).set("hours", 2i64)),
        StoreError::Invalid(_)
    ));
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

/// `pseudonym` names the kind of personal data a general field holds; a medical field cannot
/// have one, the kind must fit the type, and `to_toml` reads back to the same schema.
#[test]
fn pseudonyms_and_to_toml() {
    use kluis_store::Pseudonym;
    let text = r#"
[collections.employee.fields]
name       = { type = "text", domain = "general", pseudonym = "name", max_bytes = 200 }
bsn        = { type = "text", domain = "general", pseudonym = "bsn", blind_index = true }
born       = { type = "date", domain = "general", pseudonym = "date" }
hours      = { type = "integer", domain = "general", clear = true }
diagnosis  = { type = "text", domain = "medical" }
"#;
    let s = Schema::from_toml(text).unwrap();
    let c = s.collection("employee").unwrap();
    assert_eq!(c.field("bsn").unwrap().pseudonym, Some(Pseudonym::Bsn));
    assert_eq!(c.field("hours").unwrap().pseudonym, None);
    assert_eq!(Schema::from_toml(&s.to_toml()).unwrap(), s);
    let general = s.without_domains(&[kluis_core::DomainName::medical()]);
    let g = general.collection("employee").unwrap();
    assert!(g.field("diagnosis").is_none());
    assert_eq!(g.fields().count(), 4);
    for (bad, why) in [
        (
            r#"diagnosis = { type = "text", domain = "medical", pseudonym = "text" }"#,
            "left out of an anonymised copy",
        ),
        (
            r#"born = { type = "text", domain = "general", pseudonym = "date" }"#,
            "a date pseudonym needs a date field",
        ),
        (r#"n = { type = "text", domain = "general", pseudonym = "nickname" }"#, "unknown pseudonym"),
    ] {
        let e = Schema::from_toml(&format!("[collections.c.fields]\n{bad}\n")).unwrap_err().to_string();
        assert!(e.contains(why), "{e}");
    }
}
