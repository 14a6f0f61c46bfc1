//! Issue 6's command: `kluis keys migrate-root --to URL` moves the root key from the local keyring
//! to AWS KMS (moto's server, over real HTTP) and back, rewrapping domain keys only; every record
//! reads back the same after each move, and with the root in KMS no keyring passphrase is needed.
//!
//! Needs moto: `KLUIS_TEST_MOTO_URL` (set by `eval "$(bash scripts/start-moto.sh)"`, which
//! `scripts/test.sh` does). Without it the test says SKIPPED; with `CI=true` it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};

use common::{kluis, run_ok};

const REGION: &str = "eu-west-1";

fn moto_url() -> Option<String> {
    match std::env::var("KLUIS_TEST_MOTO_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("KLUIS_TEST_MOTO_URL is not set and CI=true: start moto with scripts/start-moto.sh");
            }
            println!(
                "SKIPPED: moto (KLUIS_TEST_MOTO_URL is not set; run `eval \"$(bash scripts/start-moto.sh)\"`)"
            );
            None
        }
    }
}

/// Creates a symmetric key on moto with one raw KMS JSON call (moto does not check signatures;
/// the region comes from the credential scope). Returns the key ARN.
fn create_moto_key(url: &str) -> String {
    let hostport = url.trim_start_matches("http://").trim_end_matches('/');
    let body = r#"{"Description":"kluis cli migrate-root test","KeyUsage":"ENCRYPT_DECRYPT"}"#;
    let req = format!(
        "POST / HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         X-Amz-Target: TrentService.CreateKey\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20261123/{REGION}/kms/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(hostport).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"), "moto CreateKey: {resp}");
    let at = resp.find("\"Arn\"").expect("an Arn in the CreateKey answer");
    let rest = &resp[at + 5..];
    let start = rest.find('"').unwrap() + 1;
    let end = start + rest[start..].find('"').unwrap();
    rest[start..end].to_owned()
}

/// `kluis` with AWS settings pointing at moto.
fn kluis_aws(dir: &Path, moto: &str, args: &[&str]) -> Command {
    let mut c = kluis(dir, args);
    c.env("AWS_ENDPOINT_URL", moto)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE");
    c
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The records of an export package (`kluis export --recipient`), decrypted with `identity`, one
/// JSON text each, sorted (a migration changes no record).
fn export(package: &[u8], identity: &str) -> Vec<String> {
    let key = kluis_service::package::PackageKey::Identity(identity.parse().unwrap());
    let files = kluis_service::package::read_package_to_memory(package, &key).unwrap();
    let mut lines: Vec<String> = files
        .iter()
        .filter(|(k, _)| k.starts_with("records/"))
        .map(|(_, v)| serde_json::from_slice::<serde_json::Value>(v).unwrap().to_string())
        .collect();
    lines.sort();
    lines
}

fn ok_bytes(out: Output, what: &str) -> Vec<u8> {
    assert!(
        out.status.success(),
        "{what} failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn migrate_root_to_aws_kms_and_back() {
    let Some(moto) = moto_url() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let jsonl = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cmd/ready.in/absence.jsonl");

    run_ok(&dir, &["init"]);
    run_ok(&dir, &["tenant", "add", "acme"]);
    run_ok(&dir, &["import", "--tenant", "acme", "--collection", "absence", jsonl.to_str().unwrap()]);
    let identity = age::x25519::Identity::generate();
    let secret = {
        use age::secrecy::ExposeSecret;
        identity.to_string().expose_secret().to_owned()
    };
    let recipient = identity.to_public().to_string();
    let ex = ["export", "--tenant", "acme", "--subject", "emp-1", "--recipient", recipient.as_str()];
    let before = export(&run_ok(&dir, &ex).stdout, &secret);
    assert!(before.iter().any(|l| l.contains("burn-out")), "the baseline export holds the diagnosis");

    // Keyring -> AWS KMS.
    let arn = create_moto_key(&moto);
    let to = format!("aws-kms://{REGION}/{arn}");
    let out = ok(
        kluis_aws(&dir, &moto, &["keys", "migrate-root", "--to", &to]).output().unwrap(),
        "migrate-root to kms",
    );
    assert!(out.contains("rewrapped"), "{out}");
    let toml = std::fs::read_to_string(dir.join("kluis.toml")).unwrap();
    assert!(toml.contains("aws-kms://"), "kluis.toml names the KMS root: {toml}");

    // With the root in KMS, reading needs no keyring passphrase.
    let mut c = kluis_aws(&dir, &moto, &ex);
    c.env_remove("KLUIS_PASSPHRASE");
    let after_kms = export(&ok_bytes(c.output().unwrap(), "export with the root in kms"), &secret);
    assert_eq!(before, after_kms, "records read back the same after the move to KMS");

    // ... and it really goes to the KMS: with the KMS unreachable the read fails (no data).
    let mut c = kluis_aws(&dir, "http://127.0.0.1:9", &ex);
    c.env_remove("KLUIS_PASSPHRASE");
    let out = c.output().unwrap();
    assert!(!out.status.success(), "a read with the KMS unreachable must fail");
    assert!(out.stdout.is_empty(), "nothing written out");

    // A rerun is a no-op that says so (resumable: nothing left to rewrap).
    let again = kluis_aws(&dir, &moto, &["keys", "migrate-root", "--to", &to]).output().unwrap();
    assert!(!again.status.success(), "migrating to the root already in use is refused");

    // AWS KMS -> a new local keyring.
    let back = format!("keyring://{}", dir.join("keyring-2.kr").display());
    let out = ok(
        kluis_aws(&dir, &moto, &["keys", "migrate-root", "--to", &back]).output().unwrap(),
        "migrate-root back",
    );
    assert!(out.contains("rewrapped"), "{out}");
    let after_back =
        export(&ok_bytes(kluis(&dir, &ex).output().unwrap(), "export back on a keyring"), &secret);
    assert_eq!(before, after_back, "records read back the same after the move back");

    // And now the KMS is not needed: a wrong endpoint does not matter.
    let mut c = kluis(&dir, &["keys", "list"]);
    c.env("AWS_ENDPOINT_URL", "http://127.0.0.1:9");
    ok(c.output().unwrap(), "keys list on the keyring root");
}
