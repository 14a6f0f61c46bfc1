//! The core story of Kluis, end to end, on a temporary directory:
//! a passphrase keyring, per-tenant medical and general domain keys, an absence report whose
//! diagnosis is sealed under the medical key, what an HR manager and the company doctor each
//! get, a ciphertext moved to another record (refused), a medical document with an encrypted
//! name, a key rotation, and a crypto-shredded employee.
//!
//! `cargo run -p kluis-keyring --release --example demo`

use kluis_core::document::{
    DocumentContext, DocumentHeader, DocumentMetadata, DocumentOptions, DocumentSealer, StreamSealer,
};
use kluis_core::keys::{new_domain_key, rotate_domain_key};
use kluis_core::{
    Context, DomainKeySet, DomainName, KdfParams, KeyVersion, KeyringSecret, Passphrase, TenantId,
};
use kluis_keyring::KeyringFile;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Res<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("keyring.kr");
    let secret = || {
        KeyringSecret::Passphrase(Passphrase::new("demo passphrase, do not use".into()), KdfParams::DEFAULT)
    };
    let t0 = std::time::Instant::now();
    let kf = KeyringFile::create(&path, secret())?;
    println!("1. keyring created at {} (Argon2id m=64 MiB t=3 p=1, {:?})", path.display(), t0.elapsed());
    let wrong = KeyringFile::open(
        &path,
        KeyringSecret::Passphrase(Passphrase::new("guess".into()), KdfParams::DEFAULT),
    );
    println!(
        "   opening with a wrong passphrase: {}",
        wrong.err().map(|e| e.to_string()).unwrap_or_default()
    );
    let root = kf.into_keyring();

    let acme = TenantId::new("acme-zorg")?;
    let (general, medical) = (DomainName::general(), DomainName::medical());
    let (g1, _) = new_domain_key(&root, &acme, &general, KeyVersion::FIRST).await?;
    let (m1, _) = new_domain_key(&root, &acme, &medical, KeyVersion::FIRST).await?;
    println!(
        "2. domain keys for tenant {acme}: general v1, medical v1 (stored only wrapped by the root key)"
    );

    let general_keys = DomainKeySet::unwrap(&root, std::slice::from_ref(&g1)).await?;
    let mut medical_records = vec![m1];
    let medical_keys = DomainKeySet::unwrap(&root, &medical_records).await?;
    let ctx = |d, field, record| report(&acme, d, field, record);
    let (general_s, medical_s) = (&general, &medical);
    let start = general_keys.seal(&ctx(general_s, "start_date", "ar-17"), b"2026-11-02")?;
    let capacity = general_keys.seal(&ctx(general_s, "work_capacity", "ar-17"), b"50%")?;
    let diagnosis = medical_keys.seal(&ctx(medical_s, "diagnosis", "ar-17"), b"burn-out")?;
    println!("3. absence report ar-17 sealed: start_date and work_capacity (general), diagnosis (medical)");
    println!("   a DBA sees diagnosis = {}...", hex_prefix(&diagnosis));

    // The HR manager holds only the general key set.
    println!(
        "4. HR manager: start_date={}, work_capacity={}, diagnosis=[withheld: no medical key]",
        text(&general_keys.open(&ctx(general_s, "start_date", "ar-17"), &start)?),
        text(&general_keys.open(&ctx(general_s, "work_capacity", "ar-17"), &capacity)?)
    );
    println!(
        "   company doctor: diagnosis={}",
        text(&medical_keys.open(&ctx(medical_s, "diagnosis", "ar-17"), &diagnosis)?)
    );
    let moved = medical_keys.open(&ctx(medical_s, "diagnosis", "ar-18"), &diagnosis);
    println!(
        "5. the diagnosis cell copied to record ar-18: {}",
        moved.err().map(|e| e.to_string()).unwrap_or_default()
    );

    // A medical document: name, extension and content type are in the encrypted header.
    let doc_ctx = DocumentContext { tenant: &acme, domain: &medical, document_id: "doc-0001" };
    let meta = DocumentMetadata {
        file_name: "diagnose-jan-jansen.pdf".into(),
        extension: "pdf".into(),
        content_type: "application/pdf".into(),
        length: Some(200_000),
        created_unix: kluis_keyring::unix_now(),
        uploaded_by: "dr.devries".into(),
    };
    let content = vec![0x25u8; 200_000];
    let sealer = DocumentSealer::new(
        medical_keys.active_key()?,
        &doc_ctx,
        &meta,
        DocumentOptions { pad: true, ..Default::default() },
    )?;
    let mut object = sealer.header().to_vec();
    let mut s = StreamSealer::new(sealer);
    s.push(&content, &mut object)?;
    let mut tail = s.finish()?;
    while let Some(c) = tail.next_chunk()? {
        object.extend_from_slice(&c);
    }
    let stored_name = "doc-0001"; // opaque: chosen by the store, never the file name
    println!(
        "6. document stored as object {stored_name:?}, {} bytes (Padmé-padded); contains \"jansen\": {}",
        object.len(),
        object.windows(6).any(|w| w == b"jansen")
    );
    let header = DocumentHeader::parse(&object)?;
    let opener = header.open(medical_keys.active_key()?, &doc_ctx)?;
    println!(
        "   company doctor opens it: {} ({}), {} bytes",
        opener.metadata().file_name,
        opener.metadata().content_type,
        opener.layout(object.len() as u64)?.content_len
    );

    // Rotation: v2 becomes active, v1 decrypt-only; old data still opens.
    let before = DomainKeySet::unwrap(&root, &medical_records).await?;
    rotate_domain_key(&root, &before, &mut medical_records).await?;
    let rotated = DomainKeySet::unwrap(&root, &medical_records).await?;
    println!(
        "7. medical key rotated: versions {:?}; ar-17 diagnosis still opens: {}",
        rotated.versions(),
        text(&rotated.open(&ctx(medical_s, "diagnosis", "ar-17"), &diagnosis)?)
    );

    // Crypto-shredding with a subject key.
    let (jan_record, jan) = rotated.new_subject_key("emp-jan", KeyVersion::FIRST)?;
    let jan_note = jan.seal(&ctx(medical_s, "doctor_notes", "ar-19"), b"terugval, opnieuw 0%")?;
    drop(jan);
    // The store deletes the subject key row (and, per docs, every copy of the domain key version
    // that wrapped it): no key that opens Jan's data exists any more. Even a new key for the same
    // subject does not.
    drop(jan_record);
    let (_, fresh) = rotated.new_subject_key("emp-jan", KeyVersion::FIRST)?;
    let after = fresh.open(&ctx(medical_s, "doctor_notes", "ar-19"), &jan_note);
    println!(
        "8. emp-jan crypto-shredded (subject key deleted); their note with a fresh key for the same subject: {}",
        after.err().map(|e| e.to_string()).unwrap_or_default()
    );
    Ok(())
}

fn report<'a>(tenant: &'a TenantId, domain: &'a DomainName, field: &'a str, record: &'a str) -> Context<'a> {
    Context { tenant, domain, collection: "absence_report", field, record }
}

fn text(p: &kluis_core::Plaintext) -> String {
    String::from_utf8_lossy(p.expose_secret()).into_owned()
}

fn hex_prefix(b: &[u8]) -> String {
    b.iter().take(12).map(|x| format!("{x:02x}")).collect()
}
