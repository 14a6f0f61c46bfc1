//! `kluis anonymise --to DIR`: a new data directory for a test environment (OTAP) made from this
//! one, in which
//! - the medical domain (and any `--drop-domain`) is absent: no field, no ciphertext, no key;
//! - every general field the schema gives a `pseudonym` kind holds a pseudonym of that kind, the
//!   same for the same value throughout the copy; dates of one subject move by one offset;
//! - subject and record ids are replaced, consistently in records and audit entries;
//! - documents are left out (the count is reported);
//! - everything is sealed under the keys of a new keyring with its own passphrase
//!   (`KLUIS_TARGET_PASSPHRASE`): production keys never leave, and nothing in the copy opens
//!   with them.
//!
//! The pseudonyms come from a key made for this one copy and forgotten when it is done.

mod pseudonym;

use std::sync::Arc;

use kluis_blob::BlobBackend;
use kluis_core::{DomainName, TenantId};
use kluis_keyring::KeyringFile;
use kluis_service::AdminEvent;
use kluis_store::audit::{AuditAppend, AuditEntry};
use kluis_store::{Access, Engine, FieldValue, NewRecord, Op, Schema, Value};
use serde_json::json;
use zeroize::Zeroizing;

use self::pseudonym::Pseudonymiser;
use crate::cli::AnonymiseArgs;
use crate::config::{self, FileConfig, Settings};
use crate::env::{Env, Job, Root};
use crate::error::{CliError, Result, io};
use crate::out::Report;

/// The environment variable with the new keyring's passphrase.
pub const TARGET_PASSPHRASE_ENV: &str = "KLUIS_TARGET_PASSPHRASE";

/// Records per page read and per transaction written.
const PAGE: u32 = 500;

/// What the copy holds.
#[derive(Debug, Default)]
struct Counts {
    tenants: u64,
    records: u64,
    pseudonymised: u64,
    audit_entries: u64,
}

/// `kluis anonymise`.
pub(crate) async fn anonymise<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    args: &AnonymiseArgs,
) -> Result<Report> {
    let to = &args.to;
    if to.join(config::CONFIG_FILE).exists() {
        return Err(CliError::AlreadyInitialised(to.clone()));
    }
    if to.exists() && std::fs::read_dir(to).map_err(io("read", to))?.next().is_some() {
        return Err(CliError::Refused(format!(
            "{} is not empty: the copy goes into a new directory",
            to.display()
        )));
    }
    let pass = match std::env::var(TARGET_PASSPHRASE_ENV) {
        Ok(p) if !p.is_empty() => Zeroizing::new(p),
        _ => {
            return Err(CliError::Usage(format!(
                "set {TARGET_PASSPHRASE_ENV} to the passphrase of the copy's new keyring"
            )));
        }
    };
    let mut dropped = vec![DomainName::medical()];
    for d in &args.drop_domain {
        let d =
            DomainName::new(d.clone()).map_err(|e| CliError::Usage(format!("--drop-domain {d:?}: {e}")))?;
        if !dropped.contains(&d) {
            dropped.push(d);
        }
    }
    let schema = env.store.schema().without_domains(&dropped);
    if schema.collections().next().is_none() {
        return Err(CliError::Refused(
            "the copy would hold no field: every field is in a dropped domain".into(),
        ));
    }
    let tenants = env.tenants().await?;
    let made = !to.exists();
    std::fs::create_dir_all(to).map_err(io("create directory", to))?;
    // The copy leaves production: recorded before anything is read (no entry, no copy).
    let recorded = env
        .audit_admin(
            actor,
            AdminEvent::Other {
                action: "anonymise".into(),
                tenant: None,
                detail: format!(
                    "{} tenants to a test copy, domains left out: {}",
                    tenants.len(),
                    dropped.iter().map(DomainName::as_str).collect::<Vec<_>>().join(",")
                ),
            },
        )
        .await;
    if let Err(e) = recorded {
        if made {
            let _ = std::fs::remove_dir(to);
        }
        return Err(e);
    }
    let mut accesses = Vec::new();
    for t in &tenants {
        accesses.push(env.admin_access(t).await?);
    }
    let documents = env.store.document_object_names().await?.len();
    let file = FileConfig { root: None, store: args.to_store.clone(), blobs: None };
    let settings = Settings::resolve(to, &file, args.to_store.as_deref(), None, None, env.settings.json)?;
    let keyring_path = settings.keyring_path().ok_or(CliError::NotAvailable("a copy with a KMS root"))?;
    let root = Root::Keyring(KeyringFile::create(&keyring_path, config::keyring_secret(&pass))?);
    std::fs::write(&settings.schema, schema.to_toml()).map_err(io("write", &settings.schema))?;
    let job = CopyJob {
        source: env,
        accesses,
        dropped: dropped.clone(),
        schema,
        root: Some(root),
        p: Pseudonymiser::random()?,
    };
    let counts = crate::env::run_job(settings, true, job).await?;
    // Written last: a directory without kluis.toml is not a data directory.
    file.save(to)?;
    let mut r = Report::new(json!({
        "to": to, "tenants": counts.tenants, "records": counts.records,
        "pseudonymised_values": counts.pseudonymised, "audit_entries": counts.audit_entries,
        "documents_left_out": documents,
        "domains_left_out": dropped.iter().map(DomainName::as_str).collect::<Vec<_>>(),
    }));
    r.line(format!(
        "anonymised copy in {}: {} tenants, {} records ({} values pseudonymised), {} audit entries; left out: {} documents, domains {}",
        to.display(),
        counts.tenants,
        counts.records,
        counts.pseudonymised,
        counts.audit_entries,
        documents,
        dropped.iter().map(DomainName::as_str).collect::<Vec<_>>().join(", ")
    ));
    r.line(format!(
        "next: kluis --data-dir {} status, with the {TARGET_PASSPHRASE_ENV} passphrase in KLUIS_PASSPHRASE",
        to.display()
    ));
    Ok(r)
}

/// Writes the copy into the new data directory's store.
struct CopyJob<'a, SB: Engine, SO: BlobBackend> {
    source: &'a Env<SB, SO>,
    accesses: Vec<Access>,
    dropped: Vec<DomainName>,
    schema: Schema,
    root: Option<Root>,
    p: Pseudonymiser,
}

impl<SB: Engine, SO: BlobBackend + Clone> Job for CopyJob<'_, SB, SO> {
    type Out = Counts;

    async fn run<B: Engine, O: BlobBackend + Clone + 'static>(mut self, env: Env<B, O>) -> Result<Counts> {
        let root = self.root.take().ok_or(CliError::NotAvailable("root key provider"))?;
        let env = Env::with_root(env.settings.clone(), Arc::clone(&env.store), env.blobs.clone(), root);
        let provider = env.provider().await?;
        env.store.record_keyring_generation(provider).await?;
        let service = env.service().await?;
        let who = kluis_service::AdminActor::new("kluis-anonymise", "kluis-cli", "anonymise");
        let mut domains: Vec<DomainName> = Vec::new();
        for c in self.schema.collections() {
            for f in c.fields() {
                if !domains.contains(&f.domain) {
                    domains.push(f.domain.clone());
                }
            }
        }
        let mut counts = Counts::default();
        for src in &self.accesses {
            let t = src.tenant().clone();
            let entry = |_: &[DomainName]| {
                service.admin_entry(
                    &who,
                    AdminEvent::Other {
                        action: "tenant_add".into(),
                        tenant: Some(t.clone()),
                        detail: format!(
                            "domains {}",
                            domains.iter().map(DomainName::as_str).collect::<Vec<_>>().join(",")
                        ),
                    },
                )
            };
            env.store.add_domain_keys_audited(provider, &t, &domains, &entry).await?;
            let access = env.admin_access(&t).await?;
            for c in self.schema.collections() {
                let mut after: Option<String> = None;
                loop {
                    let page = self.source.store.list(src, &c.name, None, after.as_deref(), PAGE).await?;
                    let mut ops = Vec::with_capacity(page.records.len());
                    for rec in &page.records {
                        ops.push(self.copy_of(&t, &c.name, rec, &mut counts)?);
                    }
                    if !ops.is_empty() {
                        let n = ops.len() as u64;
                        let audit = service.admin_entry(
                            &who,
                            AdminEvent::Import {
                                tenant: t.clone(),
                                what: format!("anonymised {}", c.name),
                                count: n,
                            },
                        );
                        env.store.audited_transaction(&access, ops, audit).await?;
                        counts.records += n;
                    }
                    match page.next {
                        Some(n) => after = Some(n),
                        None => break,
                    }
                }
            }
            counts.tenants += 1;
        }
        counts.audit_entries = self.copy_audit(&env).await?;
        Ok(counts)
    }
}

impl<SB: Engine, SO: BlobBackend> CopyJob<'_, SB, SO> {
    /// The insert of `rec`'s copy: new ids, the kept fields, pseudonyms where the schema says.
    fn copy_of(
        &self,
        t: &TenantId,
        collection: &str,
        rec: &kluis_store::Record,
        counts: &mut Counts,
    ) -> Result<Op> {
        let coll = self.schema.collection(collection)?;
        let mut new =
            NewRecord::new(&self.p.subject(t.as_str(), &rec.subject)).id(&self.p.record(t.as_str(), &rec.id));
        if let Some(u) = rec.retain_until {
            new = new.retain_until(u);
        }
        for (name, v) in &rec.fields {
            let Some(def) = coll.field(name) else { continue };
            let FieldValue::Value(v) = v else { continue };
            let v = match (def.pseudonym, v) {
                (Some(kind), Value::Text(s) | Value::Date(s)) => {
                    counts.pseudonymised += 1;
                    let p = self.p.value(kind, t.as_str(), &rec.subject, s)?;
                    if matches!(v, Value::Date(_)) { Value::Date(p) } else { Value::Text(p) }
                }
                _ => v.clone(),
            };
            new = new.set(name, v);
        }
        Ok(Op::Insert { collection: collection.to_owned(), record: new })
    }

    /// Appends every production audit entry to the copy's log with its ids replaced as in the
    /// records, actors pseudonymised, fields of dropped domains and free text left out; returns
    /// how many.
    async fn copy_audit<B: Engine, O: BlobBackend + Clone>(&self, env: &Env<B, O>) -> Result<u64> {
        let mut after = 0;
        let mut n = 0;
        loop {
            let page = self.source.store.audit_page(None, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for row in &page {
                let entry = self.anonymised_entry(&row.entry);
                env.store
                    .append_audit(AuditAppend {
                        entry,
                        checkpoint_every: kluis_store::audit::DEFAULT_CHECKPOINT_EVERY,
                    })
                    .await?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn anonymised_entry(&self, e: &AuditEntry) -> AuditEntry {
        let t = e.tenant.as_str();
        let list = |s: &str, f: &dyn Fn(&str) -> String| -> String {
            s.split(',').filter(|x| !x.is_empty()).map(f).collect::<Vec<_>>().join(",")
        };
        let opt = |s: &str| if s.is_empty() { String::new() } else { "[anonymised]".to_owned() };
        AuditEntry {
            at_ms: e.at_ms,
            actor: list(&e.actor, &|u| self.p.user(u)),
            roles: e.roles.clone(),
            support_grant: opt(&e.support_grant),
            tenant: e.tenant.clone(),
            subject: list(&e.subject, &|s| self.p.subject(t, s)),
            collection: e.collection.clone(),
            record: list(&e.record, &|r| self.p.record(t, r)),
            fields: e
                .fields
                .split(',')
                .filter(|f| {
                    !f.is_empty() && !self.dropped.iter().any(|d| f.split(':').next() == Some(d.as_str()))
                })
                .collect::<Vec<_>>()
                .join(","),
            action: e.action.clone(),
            outcome: e.outcome.clone(),
            reason: opt(&e.reason),
            break_glass: opt(&e.break_glass),
            access_point: opt(&e.access_point),
            purpose: opt(&e.purpose),
            on_behalf_of: list(&e.on_behalf_of, &|u| self.p.user(u)),
        }
    }
}
