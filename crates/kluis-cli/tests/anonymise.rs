//! `kluis anonymise` (issue 17, point 2): an anonymised copy for a test environment. Production
//! values are absent from every file of the copy; the medical domain is absent entirely; the
//! same input gives the same pseudonym throughout; BSNs pass the eleven-test; dates of one
//! subject move by one offset; ids are replaced consistently in records and audit entries; the
//! copy opens with its own keyring and not with production's; status, doctor, export and audit
//! verify work on it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{PASSPHRASE, kluis};
use kluis_blob::NewDocument;
use kluis_core::{DocumentMetadata, DomainName};

const TARGET_PASS: &str = "test environment passphrase, not production's";
const ACTOR: &str = "ops.canary.user";

const SCHEMA: &str = r#"
[collections.employee.fields]
name       = { type = "text", domain = "general", pseudonym = "name", max_bytes = 200 }
bsn        = { type = "text", domain = "general", pseudonym = "bsn", blind_index = true, max_bytes = 9 }
email      = { type = "text", domain = "general", pseudonym = "email" }
address    = { type = "text", domain = "general", pseudonym = "address" }
born       = { type = "date", domain = "general", pseudonym = "date" }
department = { type = "text", domain = "general" }

[collections.absence.fields]
start_date    = { type = "date", domain = "general", pseudonym = "date" }
end_date      = { type = "date", domain = "general", pseudonym = "date" }
work_capacity = { type = "percentage", domain = "general" }
reported_by   = { type = "text", domain = "general", pseudonym = "name" }
remark        = { type = "text", domain = "general", pseudonym = "text" }
diagnosis     = { type = "text", domain = "medical" }
doctor_notes  = { type = "text", domain = "medical" }
"#;

/// Production values that must not appear anywhere in the copy.
const CANARIES: [&str; 18] = [
    "Hendrika Canarywoman",
    "Pieterjan Canaryman",
    "123456782",
    "111222333",
    "hendrika.canary@bedrijf.nl",
    "pj.canary@bedrijf.nl",
    "Canarystraat 17, 9999 ZZ Kanariedorp",
    "Vogelweg 3, 8888 YY Kanariestad",
    "burn-out canary diagnosis",
    "canary doctor notes",
    "canary remark about the knee",
    "emp-canary-1",
    "emp-canary-2",
    "rec-canary-",
    "canary-document",
    ACTOR,
    "dr.canary",
    "canary-workstation",
];

fn cli(dir: &Path, args: &[&str]) -> Output {
    kluis(dir, args).env("USER", ACTOR).env("KLUIS_TARGET_PASSPHRASE", TARGET_PASS).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> Output {
    let out = cli(dir, args);
    assert!(
        out.status.success(),
        "kluis {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// `kluis` on the copy, with the copy's passphrase.
fn on_copy(dir: &Path, args: &[&str]) -> Output {
    kluis(dir, args).env("KLUIS_PASSPHRASE", TARGET_PASS).env("USER", "tester").output().unwrap()
}

fn eleven_test(s: &str) -> bool {
    let d: Vec<i64> = s.chars().filter_map(|c| c.to_digit(10)).map(i64::from).collect();
    d.len() == 9
        && s.len() == 9
        && d.iter().zip([9, 8, 7, 6, 5, 4, 3, 2, -1]).map(|(x, w)| x * w).sum::<i64>() % 11 == 0
}

fn days(date: &str) -> i64 {
    // Days from 0000-03-01 (enough to compare differences).
    let v: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (y, m, d) = (v[0], v[1], v[2]);
    let y = if m <= 2 { y - 1 } else { y };
    let mp = (m + 9) % 12;
    365 * y + y / 4 - y / 100 + y / 400 + (153 * mp + 2) / 5 + d - 1
}

fn read_all(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(read_all(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every record of a subject of an export, by collection: field values.
fn export(dir: &Path, subject: &str, copy: bool) -> Vec<(String, BTreeMap<String, serde_json::Value>)> {
    // A subject access package for a fresh age identity (`kluis export` writes nothing else).
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let args = ["export", "--tenant", "acme", "--subject", subject, "--recipient", &recipient];
    let out = if copy { on_copy(dir, &args) } else { ok(dir, &args) };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let key = kluis_service::package::PackageKey::Identity(identity);
    kluis_service::package::read_package_to_memory(&out.stdout[..], &key)
        .unwrap()
        .into_iter()
        .filter(|(path, _)| path.starts_with("records/"))
        .map(|(_, v)| serde_json::from_slice::<serde_json::Value>(&v).unwrap())
        .map(|v| {
            let fields: BTreeMap<String, serde_json::Value> =
                v["fields"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            (v["collection"].as_str().unwrap().to_owned(), fields)
        })
        .collect()
}

/// A production data directory (SQLite, or the database at `store`) with two employees, their
/// absences, and on SQLite a medical document and a read through the facade.
async fn production(tmp: &Path, store: Option<&str>) -> std::path::PathBuf {
    let dir = tmp.join("prod");
    let schema = tmp.join("schema.toml");
    std::fs::write(&schema, SCHEMA).unwrap();
    match store {
        Some(url) => ok(&dir, &["--store", url, "init", "--schema", schema.to_str().unwrap()]),
        None => ok(&dir, &["init", "--schema", schema.to_str().unwrap()]),
    };
    ok(&dir, &["tenant", "add", "acme"]);
    let employees = tmp.join("employees.jsonl");
    std::fs::write(
        &employees,
        "{\"id\":\"rec-canary-e1\",\"subject\":\"emp-canary-1\",\"name\":\"Hendrika Canarywoman\",\"bsn\":\"123456782\",\"email\":\"hendrika.canary@bedrijf.nl\",\"address\":\"Canarystraat 17, 9999 ZZ Kanariedorp\",\"born\":\"1980-02-29\",\"department\":\"Logistiek\"}\n\
         {\"id\":\"rec-canary-e2\",\"subject\":\"emp-canary-2\",\"name\":\"Pieterjan Canaryman\",\"bsn\":\"111222333\",\"email\":\"pj.canary@bedrijf.nl\",\"address\":\"Vogelweg 3, 8888 YY Kanariestad\",\"born\":\"1975-12-31\",\"department\":\"Logistiek\"}\n",
    )
    .unwrap();
    let absences = tmp.join("absences.jsonl");
    std::fs::write(
        &absences,
        "{\"id\":\"rec-canary-a1\",\"subject\":\"emp-canary-1\",\"start_date\":\"2026-02-27\",\"end_date\":\"2026-03-02\",\"work_capacity\":\"50\",\"reported_by\":\"Pieterjan Canaryman\",\"remark\":\"canary remark about the knee\",\"diagnosis\":\"burn-out canary diagnosis\",\"doctor_notes\":\"canary doctor notes\"}\n\
         {\"id\":\"rec-canary-a2\",\"subject\":\"emp-canary-2\",\"start_date\":\"2026-05-01\",\"end_date\":\"2026-05-21\",\"reported_by\":\"Hendrika Canarywoman\",\"diagnosis\":\"burn-out canary diagnosis\"}\n",
    )
    .unwrap();
    ok(&dir, &["import", "--tenant", "acme", "--collection", "employee", employees.to_str().unwrap()]);
    ok(&dir, &["import", "--tenant", "acme", "--collection", "absence", absences.to_str().unwrap()]);
    if store.is_some() {
        return dir;
    }
    // A medical document, through the library.
    let data = common::Data::open(&dir).await;
    let access = data.access().await;
    let doc = NewDocument {
        subject: "emp-canary-1".into(),
        record: Some("rec-canary-a1".into()),
        metadata: DocumentMetadata {
            file_name: "canary-document.pdf".into(),
            extension: "pdf".into(),
            content_type: "application/pdf".into(),
            length: Some(26),
            created_unix: 1_795_000_000,
            uploaded_by: "dr.canary".into(),
        },
    };
    data.docs.put(&access, &DomainName::medical(), doc, &b"canary-document content!!!"[..]).await.unwrap();
    // A read through the facade, so the audit log names a subject, a record and fields.
    let svc = kluis_service::Service::new(
        kluis_service::authz::Authorizer::builtin(),
        std::sync::Arc::clone(&data.store),
        std::sync::Arc::new(data.keyring),
    );
    let acme = kluis_core::TenantId::new("acme").unwrap();
    let doctor = kluis_service::authz::Principal::new(
        kluis_service::authz::UserId::new("dr.canary").unwrap(),
        Some(acme),
        [kluis_service::authz::RoleName::new("company_doctor").unwrap()],
    );
    let ctx = kluis_service::RequestContext::new("canary-workstation", "absence management");
    let rec = svc.get(&doctor, &ctx, "absence", "rec-canary-a1").await.unwrap();
    assert_eq!(rec.subject, "emp-canary-1");
    data.store.pool().close().await;
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymised_copy_holds_no_production_value_and_still_works() {
    let tmp = tempfile::tempdir().unwrap();
    let prod = production(tmp.path(), None).await;
    let copy = tmp.path().join("copy");
    let out = ok(&prod, &["anonymise", "--to", copy.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("4 records"), "{text}");
    assert!(text.contains("left out: 1 documents, domains medical"), "{text}");

    // No production value in any file of the copy (database, WAL, schema, keyring, config).
    for (p, bytes) in read_all(&copy) {
        for c in CANARIES {
            assert!(!contains(&bytes, c.as_bytes()), "{c:?} in {}", p.display());
        }
    }
    // The medical domain is absent: no field, no column, no key.
    let schema = std::fs::read_to_string(copy.join("schema.toml")).unwrap();
    assert!(!schema.contains("medical") && !schema.contains("diagnosis"), "{schema}");
    {
        use sqlx::{ConnectOptions, Row};
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(copy.join("kluis.sqlite"))
            .connect()
            .await
            .unwrap();
        let medical: i64 = sqlx::query("SELECT COUNT(*) FROM kluis_domain_keys WHERE domain = 'medical'")
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
        assert_eq!(medical, 0);
        let cols: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info('kluis_r_absence')")
            .fetch_all(&mut c)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(!cols.iter().any(|c| c.contains("diagnosis") || c.contains("doctor")), "{cols:?}");
        let docs: i64 =
            sqlx::query("SELECT COUNT(*) FROM kluis_documents").fetch_one(&mut c).await.unwrap().get(0);
        assert_eq!(docs, 0, "documents are left out");
        let subjects: Vec<String> =
            sqlx::query("SELECT DISTINCT subject FROM kluis_r_absence ORDER BY subject")
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert_eq!(subjects.len(), 2);
        let employees: Vec<String> =
            sqlx::query("SELECT DISTINCT subject FROM kluis_r_employee ORDER BY subject")
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert_eq!(subjects, employees, "a subject keeps one id across collections");
    }

    // The copy opens with its own keyring: status, doctor and audit verify.
    for args in [&["status"][..], &["doctor"], &["audit", "verify"]] {
        let out = on_copy(&copy, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Its audit log holds the production entries with the ids replaced as in the records.
    let log = on_copy(&copy, &["audit", "export"]);
    let log: Vec<serde_json::Value> =
        String::from_utf8_lossy(&log.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(log.iter().all(|e| e["actor"] != ACTOR && e["actor"] != "dr.canary"), "actors are pseudonymised");
    let read = log.iter().find(|e| e["action"] == "read").expect("the production read, copied");
    let subject = read["subject"].as_str().unwrap().to_owned();
    let record = read["record"].as_str().unwrap().to_owned();
    assert!(subject.starts_with("s-") && record.starts_with("r-"), "{read}");
    assert!(!read["fields"].as_str().unwrap().contains("medical"), "{read}");
    {
        use sqlx::{ConnectOptions, Row};
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(copy.join("kluis.sqlite"))
            .connect()
            .await
            .unwrap();
        let owner: String = sqlx::query("SELECT subject FROM kluis_r_absence WHERE id = ?")
            .bind(&record)
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
        assert_eq!(owner, subject, "the audit entry names the copied record and its copied subject");
    }

    // The copied subject exports: pseudonyms, consistent and well-formed.
    let recs = export(&copy, &subject, true);
    let emp = &recs.iter().find(|(c, _)| c == "employee").unwrap().1;
    let abs = &recs.iter().find(|(c, _)| c == "absence").unwrap().1;
    eprintln!("copy: {emp:?}\n      {abs:?}");
    assert!(eleven_test(emp["bsn"].as_str().unwrap()), "{emp:?}");
    assert!(emp["email"].as_str().unwrap().ends_with("@test.invalid"), "{emp:?}");
    assert_eq!(emp["department"], "Logistiek", "a field without a pseudonym kind is copied");
    assert!(!abs.contains_key("diagnosis"));
    // Durations stay true, and the subject's dates all move by one offset.
    let (s, e) = (abs["start_date"].as_str().unwrap(), abs["end_date"].as_str().unwrap());
    assert_eq!(days(e) - days(s), days("2026-03-02") - days("2026-02-27"));
    let shift = days(s) - days("2026-02-27");
    assert_ne!(shift, 0);
    assert_eq!(days(emp["born"].as_str().unwrap()) - days("1980-02-29"), shift, "{emp:?}");
    // The same name gives the same pseudonym: each of the two reported the other's absence.
    let other_subject: String = {
        use sqlx::{ConnectOptions, Row};
        let mut c = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(copy.join("kluis.sqlite"))
            .connect()
            .await
            .unwrap();
        sqlx::query("SELECT subject FROM kluis_r_employee WHERE subject <> ?")
            .bind(&subject)
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0)
    };
    let other_recs = export(&copy, &other_subject, true);
    let other_emp = &other_recs.iter().find(|(c, _)| c == "employee").unwrap().1;
    let other_abs = &other_recs.iter().find(|(c, _)| c == "absence").unwrap().1;
    assert_eq!(abs["reported_by"], other_emp["name"], "one name, one pseudonym");
    assert_eq!(other_abs["reported_by"], emp["name"], "one name, one pseudonym");

    // Production keys open nothing in the copy: its keyring replaced by production's.
    std::fs::copy(prod.join("keyring.kr"), copy.join("keyring.kr")).unwrap();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let out = kluis(&copy, &["export", "--tenant", "acme", "--subject", &subject, "--recipient", &recipient])
        .env("KLUIS_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    assert!(!out.status.success(), "production's keyring opened the copy");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("@test.invalid"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_needs_a_new_directory_and_its_own_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let prod = production(tmp.path(), None).await;
    // Not empty: exit 5, nothing written there.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep.txt"), "keep").unwrap();
    let out = cli(&prod, &["anonymise", "--to", busy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // An existing data directory (production itself): exit 5.
    let out = cli(&prod, &["anonymise", "--to", prod.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    // No passphrase for the copy: exit 2, no directory made.
    let copy = tmp.path().join("copy");
    let out = kluis(&prod, &["anonymise", "--to", copy.to_str().unwrap()])
        .env_remove("KLUIS_TARGET_PASSPHRASE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(!copy.exists());
    // Every field dropped: refused.
    let out = cli(&prod, &["anonymise", "--to", copy.to_str().unwrap(), "--drop-domain", "general"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(!copy.exists());
    // A target that cannot be made (under a file): exit 1.
    let under_file = tmp.path().join("schema.toml").join("copy");
    let out = cli(&prod, &["anonymise", "--to", under_file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    // None of these copies started: production's log has no anonymise entry.
    let log = ok(&prod, &["audit", "export"]);
    assert!(!String::from_utf8_lossy(&log.stdout).contains("\"anonymise\""), "no copy was made");
}

/// PostgreSQL to PostgreSQL: the copy's database (`--to-store`) holds no production value (a
/// pg_dump of it is scanned), and the copy works through its kluis.toml.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_to_postgres() {
    let Some(from) = common::ServerDb::new("postgres", "kluis_anon").await else { return };
    let Some(to) = common::ServerDb::new("postgres", "kluis_anon").await else { return };
    let (from_url, to_url) = (from.url.clone(), to.url.clone());
    let tmp = tempfile::tempdir().unwrap();
    let prod = production(tmp.path(), Some(&from_url)).await;
    let copy = tmp.path().join("copy");
    let out = ok(&prod, &["anonymise", "--to", copy.to_str().unwrap(), "--to-store", &to_url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 records"), "{out:?}");
    let dump = tokio::process::Command::new("pg_dump").arg("--dbname").arg(&to_url).output().await.unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(dump.stdout.len() > 1000);
    for c in CANARIES {
        assert!(!contains(&dump.stdout, c.as_bytes()), "{c:?} in the copy's database");
    }
    for (p, bytes) in read_all(&copy) {
        for c in CANARIES {
            assert!(!contains(&bytes, c.as_bytes()), "{c:?} in {}", p.display());
        }
    }
    for args in [&["status"][..], &["doctor"], &["audit", "verify"]] {
        let out = on_copy(&copy, args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let subjects: Vec<String> = {
        let p = sqlx::PgPool::connect(&to_url).await.unwrap();
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT subject FROM kluis_r_employee ORDER BY subject")
                .fetch_all(&p)
                .await
                .unwrap();
        let medical: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM kluis_domain_keys WHERE domain = 'medical'")
                .fetch_one(&p)
                .await
                .unwrap();
        assert_eq!(medical, 0);
        p.close().await;
        rows
    };
    assert_eq!(subjects.len(), 2);
    let recs = export(&copy, &subjects[0], true);
    let emp = &recs.iter().find(|(c, _)| c == "employee").unwrap().1;
    assert!(eleven_test(emp["bsn"].as_str().unwrap()), "{emp:?}");
    from.drop_db().await;
    to.drop_db().await;
}
