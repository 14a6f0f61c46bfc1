//! `kluis export`: a subject access / portability package (`kluis_service::package`), encrypted
//! for the requester with age, streamed into a file or standard output.

use std::collections::BTreeSet;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use kluis_blob::BlobBackend;
use kluis_service::AdminEvent;
use kluis_service::package::{PackagePlan, PackageProgress, Recipients, write_package};
use kluis_store::{Access, Engine};
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::ExportArgs;
use crate::env::Env;
use crate::error::{CliError, Result, io};
use crate::out::Report;

/// The reason the manifest gives for a domain left out by `--domains`.
pub const NOT_SELECTED: &str = "not selected by the operator (--domains)";

/// The recipients from the options: `--recipient` (repeatable) or `--passphrase-env VAR`, never
/// neither (a package is never written in the clear).
pub fn recipients(args: &ExportArgs) -> Result<Recipients> {
    match (&args.recipients[..], &args.passphrase_env) {
        ([], None) => Err(CliError::Usage(
            "export needs --recipient AGE_RECIPIENT or --passphrase-env VAR: a package is never written unencrypted"
                .into(),
        )),
        (rs, None) => Recipients::x25519(rs).map_err(|e| CliError::Usage(e.to_string())),
        ([], Some(var)) => {
            let value = std::env::var_os(var)
                .ok_or_else(|| CliError::Usage(format!("--passphrase-env {var}: the variable is not set")))?;
            let value = Zeroizing::new(value.into_string().map_err(|_| {
                CliError::Usage(format!("--passphrase-env {var}: the variable is not UTF-8"))
            })?);
            if value.is_empty() {
                return Err(CliError::Usage(format!("--passphrase-env {var}: the variable is empty")));
            }
            Recipients::passphrase(value).map_err(|e| CliError::Usage(e.to_string()))
        }
        (_, Some(_)) => Err(CliError::Usage("give --recipient or --passphrase-env, not both".into())),
    }
}

/// Where the package goes: a temporary file beside the target, renamed onto it (never over an
/// existing file) once complete; or standard output.
enum Target {
    File { tmp: tempfile::NamedTempFile, path: PathBuf },
    Stdout,
}

fn open_target(output: Option<&Path>) -> Result<Target> {
    let Some(path) = output else {
        if std::io::stdout().is_terminal() {
            return Err(CliError::Usage(
                "refusing to write an encrypted package to a terminal: use -o FILE or redirect standard output"
                    .into(),
            ));
        }
        return Ok(Target::Stdout);
    };
    if path.exists() {
        return Err(CliError::Io {
            op: "create",
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    // Mode 0600 (tempfile's default), in the target's directory so the rename is atomic.
    let tmp = tempfile::Builder::new()
        .prefix(".kluis-export-")
        .suffix(".part")
        .tempfile_in(&dir)
        // The OS error without tempfile's path (a random name the user never asked for).
        .map_err(|e| CliError::Io {
            op: "create",
            path: path.to_owned(),
            source: std::io::Error::from(e.kind()),
        })?;
    Ok(Target::File { tmp, path: path.to_owned() })
}

/// `kluis export`.
pub async fn export<B: Engine, O: BlobBackend + Clone + 'static>(
    env: &Env<B, O>,
    actor: &str,
    args: &ExportArgs,
) -> Result<Report> {
    let recipients = recipients(args)?;
    let t = env.tenant(&args.tenant).await?;
    kluis_store::check_id("subject id", &args.subject)?;
    // The data domains (not the tenant's row tag key, which every read needs and which holds no
    // data).
    let tenant_domains: Vec<_> = env
        .tenant_domains(&t)
        .await?
        .into_iter()
        .filter(|d| d.as_str() != kluis_store::layout::ROW_TAG_DOMAIN)
        .collect();
    let selected: BTreeSet<String> = if args.domains.is_empty() {
        tenant_domains.iter().map(|d| d.to_string()).collect()
    } else {
        let mut s = BTreeSet::new();
        for d in &args.domains {
            if !tenant_domains.iter().any(|x| x.as_str() == d) {
                return Err(CliError::UnknownDomain { tenant: t.to_string(), domain: d.clone() });
            }
            s.insert(d.clone());
        }
        s
    };
    let all = env.admin_access(&t).await?;
    if !env.subject_exists(&all, &args.subject).await? {
        return Err(CliError::UnknownSubject { tenant: t.to_string(), subject: args.subject.clone() });
    }
    // The operator's keys, limited to the selected domains (and read-only).
    let provider = env.provider().await?;
    let chosen: Vec<kluis_core::DomainName> =
        tenant_domains.iter().filter(|d| selected.contains(d.as_str())).cloned().collect();
    let access = env.store.admin_access(provider, &t, &chosen).await?.read_only();
    drop(all);
    let withheld: Vec<String> =
        tenant_domains.iter().map(|d| d.to_string()).filter(|d| !selected.contains(d)).collect();
    let mut plan = PackagePlan::new(t.clone(), &args.subject).map_err(|e| CliError::Usage(e.to_string()))?;
    for c in env.store.schema().collections() {
        plan = plan.collection(&c.name, &access);
    }
    plan = plan.documents(&access);
    for d in &withheld {
        plan = plan.withhold(d, NOT_SELECTED);
    }
    let target = open_target(args.output.as_deref())?;

    // Fail closed: the entry before anything (the age header included) is written out.
    let docs_total = env.store.documents_of_subject(&Access::catalog(t.clone()), &args.subject).await?.len();
    let event = AdminEvent::Other {
        action: "export".into(),
        tenant: Some(t.clone()),
        detail: format!(
            "package of subject {} domains {} withheld {} documents {} encryption {}",
            args.subject,
            selected.iter().cloned().collect::<Vec<_>>().join(","),
            if withheld.is_empty() { "none".to_owned() } else { withheld.join(",") },
            docs_total,
            recipients.describe(),
        ),
    };
    env.audit_admin(actor, event).await?;

    let bar = crate::out::progress_bar(
        env.settings.json,
        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes}, {bytes_per_sec}, eta {eta}",
        format!("exporting {}", args.subject),
    );
    let tick = |p: &PackageProgress| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes);
        bar.set_message(format!(
            "exporting {}: {} records, {} documents",
            args.subject, p.records, p.documents
        ));
    };
    let docs = env.documents();
    let service_err = |e: kluis_service::Error| match e {
        kluis_service::Error::Store(s) => CliError::Store(s),
        kluis_service::Error::Blob(b) => CliError::Blob(b),
        other => CliError::Service(other.to_string()),
    };
    let (summary, shown) = match target {
        Target::File { tmp, path } => {
            let file = tmp.as_file().try_clone().map_err(io("write", &path))?;
            let out = std::io::BufWriter::with_capacity(64 * 1024, file);
            let summary = write_package(&env.store, &docs, &plan, &recipients, out, tick).await.map_err(
                |e| match e {
                    kluis_service::Error::Io(m) => {
                        CliError::Io { op: "write", path: path.clone(), source: std::io::Error::other(m) }
                    }
                    other => service_err(other),
                },
            )?;
            tmp.as_file().sync_all().map_err(io("write", &path))?;
            // Never over a file that appeared meanwhile.
            tmp.persist_noclobber(&path).map_err(|e| CliError::Io {
                op: "create",
                path: path.clone(),
                source: e.error,
            })?;
            (summary, path.display().to_string())
        }
        Target::Stdout => {
            let out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
            let summary = write_package(&env.store, &docs, &plan, &recipients, out, tick).await.map_err(
                |e| match e {
                    kluis_service::Error::Io(m) => CliError::Output(std::io::Error::other(m)),
                    other => service_err(other),
                },
            )?;
            (summary, "standard output".to_owned())
        }
    };
    bar.finish_and_clear();
    let withheld_json: Vec<_> = summary
        .withheld
        .iter()
        .map(|w| json!({ "domain": w.domain, "reason": w.reason, "fields": w.fields, "records": w.records, "documents": w.documents }))
        .collect();
    let mut r = Report::new(json!({
        "tenant": t.as_str(), "subject": args.subject, "records": summary.records,
        "documents": summary.documents, "document_bytes": summary.document_bytes,
        "package_bytes": summary.package_bytes, "withheld": withheld_json,
        "output": shown, "encryption": recipients.describe(),
    }));
    if args.output.is_none() {
        // The package went to standard output: the report goes to standard error.
        eprintln!(
            "package of subject {}: {} records, {} documents ({} bytes) written to standard output ({})",
            args.subject,
            summary.records,
            summary.documents,
            summary.document_bytes,
            recipients.describe()
        );
        return Ok(Report::silent());
    }
    r.line(format!(
        "package of subject {}: {} records, {} documents ({} bytes) written to {shown} ({})",
        args.subject,
        summary.records,
        summary.documents,
        summary.document_bytes,
        recipients.describe()
    ));
    for w in &summary.withheld {
        r.line(format!(
            "withheld: domain {} ({}): {} field(s), {} record(s) with values, {} document(s)",
            w.domain,
            w.reason,
            w.fields.len(),
            w.records,
            w.documents
        ));
    }
    Ok(r)
}
