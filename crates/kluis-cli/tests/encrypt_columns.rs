//! `kluis encrypt-columns` on a data directory whose schema maps an application table that holds
//! plaintext today: the dry run shows the plan and changes nothing; the run seals every row,
//! clears the plaintext, refuses (and names) a row whose value does not fit, rewrites the table,
//! and leaves the plaintext in no file of the data directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{kluis, run_ok};

const SCHEMA: &str = r#"
[collections.absence.fields]
start_date = { type = "date", domain = "general" }
diagnosis  = { type = "text", domain = "medical" }

[tables.notes]
table = "app_notes"
primary_key = ["id"]
tenant_column = "tenant_id"
subject_column = "employee_id"

[tables.notes.columns]
diagnosis = { type = "text", domain = "medical", max_bytes = 40, plaintext_column = "diagnosis_text" }
"#;

const CANARY: &str = "canary-cli-91ac";

fn sql(dir: &Path, statements: &[String]) -> Vec<Vec<Option<String>>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::{ConnectOptions, Row};
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("kluis.sqlite"))
            .connect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for s in statements {
            for r in sqlx::query(s).fetch_all(&mut c).await.unwrap() {
                out.push(
                    (0..r.len())
                        .map(|i| {
                            r.try_get::<Option<String>, _>(i)
                                .or_else(|_| r.try_get::<Option<i64>, _>(i).map(|v| v.map(|v| v.to_string())))
                                .unwrap()
                        })
                        .collect(),
                );
            }
        }
        out
    })
}

#[test]
fn encrypt_columns_seals_in_place_and_leaves_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let schema = tmp.path().join("schema.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    run_ok(&dir, &["init", "--schema", schema.to_str().unwrap()]);
    run_ok(&dir, &["tenant", "add", "acme"]);
    // The application's table, its rows in clear, and Kluis's columns from `kluis schema sql`.
    let ddl = run_ok(&dir, &["schema", "sql", "--engine", "sqlite"]);
    let mut statements = vec![
        "CREATE TABLE app_notes (id INTEGER PRIMARY KEY, tenant_id TEXT NOT NULL, employee_id TEXT NOT NULL, diagnosis_text TEXT)".to_owned(),
    ];
    statements.extend(
        String::from_utf8(ddl.stdout).unwrap().lines().filter(|l| !l.starts_with("--")).map(str::to_owned),
    );
    for i in 1..=30 {
        let text = if i == 7 { format!("{:060}", 7) } else { format!("diagnosis {i} {CANARY}") };
        statements.push(format!(
            "INSERT INTO app_notes (id, tenant_id, employee_id, diagnosis_text) VALUES ({i}, 'acme', 'emp-{}', '{text}')",
            i % 4
        ));
    }
    sql(&dir, &statements);

    let out = run_ok(&dir, &["encrypt-columns", "--tenant", "acme", "--table", "notes", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("acme/notes: 30 rows hold plaintext to seal"), "{stdout}");
    assert!(stdout.contains("diagnosis_text -> diagnosis: 30 rows"), "{stdout}");
    let clear = sql(&dir, &["SELECT COUNT(*) FROM app_notes WHERE diagnosis_text IS NOT NULL".to_owned()]);
    assert_eq!(clear[0][0].as_deref(), Some("30"), "the dry run changed nothing");

    let out = run_ok(&dir, &["encrypt-columns", "--tenant", "acme", "--table", "notes", "--batch", "4"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("acme/notes: 29 rows sealed"), "{stdout}");
    assert!(stdout.contains("1 rows still hold plaintext; the table was rewritten"), "{stdout}");
    assert!(stdout.contains("refused 7: column diagnosis: larger than 40 bytes"), "{stdout}");
    let left = sql(
        &dir,
        &["SELECT id FROM app_notes WHERE diagnosis_text IS NOT NULL OR diagnosis IS NULL".to_owned()],
    );
    assert_eq!(left, vec![vec![Some("7".to_owned())]]);
    // The refused row, fixed by the application, is taken by a second run.
    sql(&dir, &["UPDATE app_notes SET diagnosis_text = 'fixed' WHERE id = 7".to_owned()]);
    let out = run_ok(&dir, &["--json", "encrypt-columns", "--tenant", "acme", "--table", "notes"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows_encrypted"], 1);
    assert_eq!(v["rows_left"], 0);
    // No plaintext in any file of the data directory (database, WAL, audit log included).
    for e in walk(&dir) {
        let b = std::fs::read(&e).unwrap();
        assert!(
            !b.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()),
            "{} holds the plaintext",
            e.display()
        );
    }
    // The runs are in the audit log.
    let out = run_ok(&dir, &["audit", "export"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"encrypt_columns\""), "{stdout}");
    assert!(!stdout.contains(CANARY));
    // A shred clears the subject's protected values in the mapped table too, and says so in the
    // erasure certificate.
    let out = run_ok(&dir, &["--json", "shred", "--tenant", "acme", "--subject", "emp-1"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mapped_rows_cleared"], 8, "{v}");
    let left = sql(
        &dir,
        &["SELECT COUNT(*) FROM app_notes WHERE employee_id = 'emp-1' AND (diagnosis IS NOT NULL OR kluis_row_tag IS NOT NULL)".to_owned()],
    );
    assert_eq!(left[0][0].as_deref(), Some("0"));
    let kept = sql(
        &dir,
        &["SELECT COUNT(*) FROM app_notes WHERE employee_id <> 'emp-1' AND diagnosis IS NOT NULL".to_owned()],
    );
    assert_eq!(kept[0][0].as_deref(), Some("22"));
    let out = run_ok(&dir, &["audit", "certificates", "--tenant", "acme"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"mapped_rows_cleared\": 8"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // An unknown mapping is a usage error naming it.
    let out = kluis(&dir, &["encrypt-columns", "--tenant", "acme", "--table", "nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
