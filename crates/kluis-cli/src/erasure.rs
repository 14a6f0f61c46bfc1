//! Erasure certificates on the command line: the file `kluis shred --certificate` writes,
//! `kluis audit certificates` and `kluis audit check-certificate`.

use std::io::Write;
use std::path::{Path, PathBuf};

use kluis_blob::BlobBackend;
use kluis_service::erasure::{CertificateCheck, CertifiedErasure};
use kluis_store::Engine;
use serde_json::json;

use crate::env::Env;
use crate::error::{CliError, Result, io};
use crate::out::Report;

/// Creates `path` as a new file (mode 0600 on Unix): an existing file is never overwritten.
pub(crate) fn create_file(path: &Path) -> Result<(PathBuf, std::fs::File)> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let f = o.open(path).map_err(io("create certificate file", path))?;
    Ok((path.to_owned(), f))
}

/// Writes one certificate to the file [`create_file`] made.
pub(crate) fn write_file(path: &Path, mut file: std::fs::File, c: &CertifiedErasure) -> Result<()> {
    let text = serde_json::to_string_pretty(c).map_err(|e| CliError::Service(e.to_string()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(io("write certificate file", path))
}

/// `kluis audit certificates`.
pub(crate) async fn certificates<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    tenant: &str,
    subject: Option<&str>,
    output: Option<&Path>,
) -> Result<Report> {
    let t = env.tenant(tenant).await?;
    let service = env.service().await?;
    let list = service
        .erasure_certificates(t.as_str(), subject)
        .await
        .map_err(|e| CliError::Service(e.to_string()))?;
    let text = serde_json::to_string_pretty(&list).map_err(|e| CliError::Service(e.to_string()))?;
    match output {
        Some(p) => {
            std::fs::write(p, format!("{text}\n")).map_err(io("write", p))?;
            let mut r = Report::new(json!({ "certificates": list.len(), "output": p }));
            r.line(format!("{} erasure certificates written to {}", list.len(), p.display()));
            Ok(r)
        }
        None => {
            println!("{text}");
            Ok(Report::silent())
        }
    }
}

/// `kluis audit check-certificate`.
pub(crate) async fn check<B: Engine, O: BlobBackend + Clone>(env: &Env<B, O>, file: &Path) -> Result<Report> {
    let text = std::fs::read_to_string(file).map_err(io("read certificate file", file))?;
    let c: CertifiedErasure = serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!("{} is not an erasure certificate file: {e}", file.display()))
    })?;
    if c.certificate.format != kluis_service::erasure::CERTIFICATE_FORMAT {
        return Err(CliError::Usage(format!(
            "{}: unknown certificate format {:?}",
            file.display(),
            c.certificate.format
        )));
    }
    let service = env.service().await?;
    let mismatch = |problem: &str| CliError::CertificateMismatch {
        file: file.display().to_string(),
        problem: problem.to_owned(),
    };
    match service.check_certificate(&c).await.map_err(|e| CliError::Service(e.to_string()))? {
        CertificateCheck::Matches => {}
        CertificateCheck::ChainBroken(rep) => {
            return Err(CliError::AuditBroken {
                entry: rep.first_bad.unwrap_or(rep.entries),
                problem: rep.problem.clone().unwrap_or_default(),
            });
        }
        CertificateCheck::NoEntry => {
            return Err(mismatch(&format!("the audit log has no entry {} of its tenant", c.audit_seq)));
        }
        _ => {
            return Err(mismatch(&format!("audit entry {} holds another certificate or hash", c.audit_seq)));
        }
    }
    let mut r = Report::new(json!({
        "ok": true, "audit_seq": c.audit_seq, "entry_hash": c.entry_hash,
        "tenant": c.certificate.tenant, "subject": c.certificate.subject,
    }));
    r.line(format!(
        "erasure certificate of subject {} ({}) matches audit entry {} of a verified chain",
        c.certificate.subject, c.certificate.tenant, c.audit_seq
    ));
    Ok(r)
}
