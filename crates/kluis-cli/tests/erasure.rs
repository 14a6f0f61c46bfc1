//! Erasure certificates from the command line (issue 17, point 3): `kluis shred --certificate`
//! writes what was destroyed, the audit log holds the same certificate in its hash chain, and
//! `kluis audit check-certificate` ties a file to it; a certificate path that cannot be created
//! stops the shred before anything is destroyed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::path::Path;

use common::{kluis, run_ok};

/// A data directory with tenant `acme` and two records of `emp-1` (one document-less) and one of
/// `emp-2`.
fn data_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    run_ok(&dir, &["init"]);
    run_ok(&dir, &["tenant", "add", "acme"]);
    let file = tmp.path().join("in.jsonl");
    std::fs::write(
        &file,
        "{\"id\":\"ar-1\",\"subject\":\"emp-1\",\"diagnosis\":\"griep\"}\n\
         {\"id\":\"ar-2\",\"subject\":\"emp-1\",\"start_date\":\"2026-01-05\"}\n\
         {\"id\":\"ar-3\",\"subject\":\"emp-2\",\"diagnosis\":\"rugpijn\"}\n",
    )
    .unwrap();
    run_ok(&dir, &["import", "--tenant", "acme", "--collection", "absence", file.to_str().unwrap()]);
    (tmp, dir)
}

fn records_of(dir: &Path, subject: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::{ConnectOptions, Row};
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("kluis.sqlite"))
            .connect()
            .await
            .unwrap();
        sqlx::query("SELECT COUNT(*) FROM kluis_r_absence WHERE subject = ?")
            .bind(subject)
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get::<i64, _>(0)
    })
}

#[test]
fn a_shred_certificate_matches_the_audit_log_and_an_edit_does_not() {
    let (tmp, dir) = data_dir();
    let cert = tmp.path().join("emp-1.erasure.json");
    let out = run_ok(
        &dir,
        &["shred", "--tenant", "acme", "--subject", "emp-1", "--certificate", cert.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("erasure certificate: audit entry"), "{stdout}");
    assert_eq!(records_of(&dir, "emp-1"), 0);
    assert_eq!(records_of(&dir, "emp-2"), 1);

    // The file says what was destroyed.
    let text = std::fs::read_to_string(&cert).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = &v["certificate"];
    assert_eq!(c["format"], "kluis-erasure-certificate:v1");
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["subject"], "emp-1");
    assert_eq!(c["records_removed"], 2);
    assert_eq!(c["blobs_deleted"], 0);
    assert_eq!(c["purge"]["engine"], "sqlite");
    let keys: Vec<String> = c["subject_keys_destroyed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| format!("{} v{}", k["domain"].as_str().unwrap(), k["version"]))
        .collect();
    assert_eq!(keys, ["general v1", "medical v1"], "emp-1 had a key in both domains");
    let destroyed = c["domain_key_versions_destroyed"].as_array().unwrap();
    assert_eq!(destroyed.len(), 2, "the version that wrapped each of them: {destroyed:?}");
    assert!(!text.contains("griep"), "a certificate holds no value");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777, 0o600);
    }

    // The same certificate is in the audit log, and the file matches its entry.
    let out = run_ok(&dir, &["audit", "check-certificate", cert.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("matches audit entry"), "{out:?}");
    let listed = run_ok(&dir, &["audit", "certificates", "--tenant", "acme", "--subject", "emp-1"]);
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0], v);
    let none = run_ok(&dir, &["audit", "certificates", "--tenant", "acme", "--subject", "emp-2"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&none.stdout).unwrap(), serde_json::json!([]));
    run_ok(&dir, &["audit", "verify"]);

    // A certificate edited after the fact (fewer records) no longer matches: exit 6.
    let edited = tmp.path().join("edited.json");
    std::fs::write(&edited, text.replace("\"records_removed\": 2", "\"records_removed\": 1")).unwrap();
    let out = kluis(&dir, &["audit", "check-certificate", edited.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds another certificate"), "{out:?}");
    // Pointing at another entry: exit 6 too.
    let moved = tmp.path().join("moved.json");
    let seq = v["audit_seq"].as_i64().unwrap();
    std::fs::write(&moved, text.replace(&format!("\"audit_seq\": {seq}"), "\"audit_seq\": 1")).unwrap();
    let out = kluis(&dir, &["audit", "check-certificate", moved.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    // Not a certificate at all: a usage error.
    let junk = tmp.path().join("junk.json");
    std::fs::write(&junk, "{\"certificate\": 1}").unwrap();
    let out = kluis(&dir, &["audit", "check-certificate", junk.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn the_entry_in_the_log_is_covered_by_the_chain() {
    let (tmp, dir) = data_dir();
    let cert = tmp.path().join("c.json");
    run_ok(
        &dir,
        &["shred", "--tenant", "acme", "--subject", "emp-1", "--certificate", cert.to_str().unwrap()],
    );
    // Someone with database access lowers the count in the stored certificate.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::ConnectOptions;
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("kluis.sqlite"))
            .connect()
            .await
            .unwrap();
        let done = sqlx::query(
            "UPDATE kluis_audit SET reason = replace(reason, '\"records_removed\":2', '\"records_removed\":1') \
             WHERE action = 'erasure_certificate'",
        )
        .execute(&mut c)
        .await
        .unwrap();
        assert_eq!(done.rows_affected(), 1);
    });
    let out = kluis(&dir, &["audit", "verify"]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let out = kluis(&dir, &["audit", "check-certificate", cert.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(6), "the chain is broken: {out:?}");
}

#[test]
fn a_certificate_path_that_cannot_be_created_stops_the_shred() {
    let (tmp, dir) = data_dir();
    // An existing file is never overwritten.
    let taken = tmp.path().join("taken.json");
    std::fs::write(&taken, "keep me").unwrap();
    let out = kluis(
        &dir,
        &["shred", "--tenant", "acme", "--subject", "emp-1", "--certificate", taken.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("create certificate file"), "{out:?}");
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "keep me");
    assert_eq!(records_of(&dir, "emp-1"), 2, "nothing shredded");
    // A directory that does not exist.
    let nowhere = tmp.path().join("no-such-dir").join("c.json");
    let out = kluis(
        &dir,
        &["shred", "--tenant", "acme", "--subject", "emp-1", "--certificate", nowhere.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(records_of(&dir, "emp-1"), 2, "nothing shredded");
    // An unknown subject: exit 4, and no certificate file is left behind.
    let unknown = tmp.path().join("unknown.json");
    let out = kluis(
        &dir,
        &["shred", "--tenant", "acme", "--subject", "emp-9", "--certificate", unknown.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(!unknown.exists());
    let certs = run_ok(&dir, &["audit", "certificates", "--tenant", "acme"]);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&certs.stdout).unwrap(), serde_json::json!([]));
}
