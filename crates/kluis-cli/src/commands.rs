//! The commands.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use kluis_blob::{BlobBackend, ObjectName};
use kluis_core::{DomainName, KeyState, KeyVersion, TenantId};
use kluis_keyring::KeyringFile;
use kluis_service::{AdminActor, AdminEvent};
use kluis_store::schema::FieldType;
use kluis_store::{Access, Engine, LegalOverride, NewRecord, Op, StoreError, Value};
use serde_json::{Value as Json, json};

use crate::cli::{
    AccessCmd, AuditCmd, Command, Global, ImportArgs, InitArgs, KeysCmd, ReencryptArgs, ShredArgs, TenantCmd,
    TenantDomain,
};
use crate::config::{self, FileConfig, Settings};
use crate::env::{Env, Job, Root};
use crate::error::{CliError, Result, io};
use crate::out::{Report, table};
use crate::reencrypt;

/// A parsed command and who runs it.
#[derive(Debug)]
pub struct CommandJob {
    /// The command.
    pub command: Command,
    /// The actor recorded in the audit log.
    pub actor: String,
}

impl Job for CommandJob {
    type Out = Report;

    async fn run<B: Engine, O: BlobBackend + Clone + 'static>(self, mut env: Env<B, O>) -> Result<Report> {
        let actor = self.actor;
        match self.command {
            Command::Status => status(&env).await,
            Command::Doctor => doctor(&env).await,
            Command::Tenant(TenantCmd::Add { tenant }) => tenant_add(&env, &actor, &tenant).await,
            Command::Tenant(TenantCmd::List) => tenant_list(&env).await,
            Command::Keys(KeysCmd::List { tenant }) => keys_list(&env, tenant.as_deref()).await,
            Command::Keys(KeysCmd::Rotate(td)) => keys_rotate(&env, &actor, &td).await,
            Command::Keys(KeysCmd::Retire { td, version }) => keys_retire(&env, &actor, &td, version).await,
            Command::Keys(KeysCmd::RotateRoot { window }) => {
                rotate_root(&mut env, &actor, Duration::from_secs(window)).await
            }
            Command::Keys(KeysCmd::Instances { window }) => {
                instances(&env, Duration::from_secs(window)).await
            }
            Command::Keys(KeysCmd::MigrateRoot { to }) => migrate_root(&env, &actor, &to).await,
            Command::Keys(KeysCmd::Adopt) => keys_adopt(&env, &actor).await,
            Command::Keys(KeysCmd::RecordGeneration) => record_generation(&env, &actor).await,
            Command::Reencrypt(args) => reencrypt_cmd(&env, &actor, &args).await,
            Command::EncryptColumns(args) => encrypt_columns_cmd(&env, &actor, &args).await,
            Command::ReencryptColumns(args) => reencrypt_columns_cmd(&env, &actor, &args).await,
            Command::Shred(args) => shred(&env, &actor, &args).await,
            Command::Import(args) => import(&env, &actor, &args).await,
            Command::Export(args) => crate::package::export(&env, &actor, &args).await,
            Command::Audit(AuditCmd::Verify { against }) => audit_verify(&env, against.as_deref()).await,
            Command::Audit(AuditCmd::Export { output, tenant, .. }) => {
                audit_export(&env, &actor, tenant.as_deref(), output.as_deref()).await
            }
            Command::Audit(AuditCmd::Certificates { tenant, subject, output }) => {
                crate::erasure::certificates(&env, &tenant, subject.as_deref(), output.as_deref()).await
            }
            Command::Audit(AuditCmd::CheckCertificate { file }) => crate::erasure::check(&env, &file).await,
            Command::Access(AccessCmd::Review { tenant }) => {
                crate::access::review(&env, &actor, &tenant).await
            }
            Command::Access(AccessCmd::Assign { tenant, user, role }) => {
                crate::access::assign(&env, &actor, &tenant, &user, &role).await
            }
            Command::Access(AccessCmd::Grant { tenant, user, domains, actions, days }) => {
                crate::access::grant(&env, &actor, &tenant, &user, &domains, &actions, days).await
            }
            Command::Access(AccessCmd::Revoke { tenant, grant }) => {
                crate::access::revoke(&env, &actor, &tenant, &grant).await
            }
            Command::Backup(args) => crate::backup::backup(&env, &args.to).await,
            Command::Restore(args) => crate::backup::restore(&env, &actor, &args).await,
            Command::Anonymise(args) => crate::anonymise::anonymise(&env, &actor, &args).await,
            Command::Init(_) | Command::Demo | Command::Schema(_) => {
                Err(CliError::Usage("internal: dispatched twice".into()))
            }
        }
    }
}

// ------------------------------------------------------------------ audit of admin events

// ------------------------------------------------------------------ init

/// `kluis init`.
pub async fn init(global: &Global, dir: &Path, args: InitArgs) -> Result<Report> {
    if dir.join(config::CONFIG_FILE).exists() {
        return Err(CliError::AlreadyInitialised(dir.to_owned()));
    }
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let schema_text = match &args.schema {
        Some(p) => std::fs::read_to_string(p).map_err(io("read schema", p))?,
        None => config::DEFAULT_SCHEMA.to_owned(),
    };
    kluis_store::Schema::from_toml(&schema_text)?;
    let file =
        FileConfig { root: args.root.clone(), store: global.store.clone(), blobs: global.blobs.clone() };
    let settings =
        Settings::resolve(dir, &file, global.store.as_deref(), global.blobs.as_deref(), None, global.json)?;
    if let Some(r) = &args.root {
        kluis_kms::config::ProviderConfig::parse(r).map_err(|e| CliError::Usage(format!("--root: {e}")))?;
    }
    let root = match settings.keyring_path() {
        Some(path) if !path.exists() => {
            let pass = config::passphrase("new keyring passphrase: ", true)?;
            Root::Keyring(KeyringFile::create(&path, config::keyring_secret(&pass))?)
        }
        _ => Root::open(&settings.root).await?,
    };
    std::fs::write(&settings.schema, schema_text.as_bytes()).map_err(io("write", &settings.schema))?;
    let job = InitJob { root: Some(root) };
    let report = crate::env::run_job(settings.clone(), true, job).await?;
    // Written last: a directory without kluis.toml is not initialised, so a failed init can be rerun.
    file.save(dir)?;
    Ok(report)
}

struct InitJob {
    root: Option<Root>,
}

impl Job for InitJob {
    type Out = Report;

    async fn run<B: Engine, O: BlobBackend + Clone + 'static>(mut self, env: Env<B, O>) -> Result<Report> {
        let root = self.root.take().ok_or(CliError::NotAvailable("root key provider"))?;
        env.store.record_keyring_generation(root.provider()).await?;
        let mut r = Report::new(json!({
            "data_dir": env.settings.data_dir,
            "store": env.settings.store.display(),
            "blobs": env.settings.blobs.display(),
            "root": root_display(&env.settings.root),
            "schema": env.settings.schema,
        }));
        r.line(format!("initialised {}", env.settings.data_dir.display()));
        r.line(format!("  root key:  {}", root_display(&env.settings.root)));
        r.line(format!("  database:  {}", env.settings.store.display()));
        r.line(format!("  documents: {}", env.settings.blobs.display()));
        r.line(format!("  schema:    {}", env.settings.schema.display()));
        r.line("next: kluis tenant add TENANT");
        Ok(r)
    }
}

fn root_display(root: &str) -> String {
    config::redact_url(root)
}

// ------------------------------------------------------------------ status, tenants, keys list

async fn status<B: Engine, O: BlobBackend + Clone>(env: &Env<B, O>) -> Result<Report> {
    let usage = env.store.key_usage(None).await?;
    let tenants = env.tenants().await?;
    let pending: Vec<_> = usage
        .iter()
        .filter(|u| u.state == KeyState::DecryptOnly && !u.is_unused())
        .map(|u| format!("{}/{} v{}", u.tenant, u.domain, u.version))
        .collect();
    let mut r = Report::new(json!({
        "data_dir": env.settings.data_dir,
        "store": env.settings.store.display(),
        "blobs": env.settings.blobs.display(),
        "root": root_display(&env.settings.root),
        "tenants": tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "domain_key_versions": usage.len(),
        "awaiting_reencryption": pending,
    }));
    r.line(format!("data dir:  {}", env.settings.data_dir.display()));
    r.line(format!("root key:  {}", root_display(&env.settings.root)));
    r.line(format!("database:  {}", env.settings.store.display()));
    r.line(format!("documents: {}", env.settings.blobs.display()));
    r.line(format!(
        "tenants:   {}{}",
        tenants.len(),
        if tenants.is_empty() {
            String::new()
        } else {
            format!(" ({})", tenants.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", "))
        }
    ));
    r.line(format!("domain key versions: {}", usage.len()));
    if pending.is_empty() {
        r.line("nothing awaits re-encryption");
    } else {
        r.line(format!("awaiting re-encryption: {}", pending.join(", ")));
    }
    Ok(r)
}

async fn tenant_add<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    tenant: &str,
) -> Result<Report> {
    let t = TenantId::new(tenant).map_err(|e| CliError::Usage(format!("tenant {tenant:?}: {e}")))?;
    let existed = env.tenants().await?.contains(&t);
    let mut domains: Vec<DomainName> = vec![DomainName::general(), DomainName::medical()];
    for c in env.store.schema().collections() {
        for f in c.fields() {
            if !domains.contains(&f.domain) {
                domains.push(f.domain.clone());
            }
        }
    }
    let provider = env.provider().await?;
    let service = env.service().await?;
    let who = AdminActor::new(actor, "kluis-cli", "administration");
    // The new domain keys and their audit entry commit together.
    let entry = |created: &[DomainName]| {
        let names: Vec<&str> = created.iter().map(DomainName::as_str).collect();
        let action = if existed { "tenant_domains_add" } else { "tenant_add" };
        service.admin_entry(
            &who,
            AdminEvent::Other {
                action: action.into(),
                tenant: Some(t.clone()),
                detail: format!("domains {}", names.join(",")),
            },
        )
    };
    env.store.add_domain_keys_audited(provider, &t, &domains, &entry).await?;
    let names: Vec<&str> = domains.iter().map(DomainName::as_str).collect();
    let mut r = Report::new(json!({ "tenant": t.as_str(), "created": !existed, "domains": names }));
    if existed {
        r.line(format!("tenant {t} exists; domains: {}", names.join(", ")));
    } else {
        r.line(format!("tenant {t} added; domain keys v1: {}", names.join(", ")));
    }
    Ok(r)
}

async fn tenant_list<B: Engine, O: BlobBackend + Clone>(env: &Env<B, O>) -> Result<Report> {
    let tenants = env.tenants().await?;
    let names: Vec<&str> = tenants.iter().map(TenantId::as_str).collect();
    let mut r = Report::new(json!({ "tenants": names }));
    if names.is_empty() {
        r.line("no tenants; add one with `kluis tenant add TENANT`");
    }
    for n in names {
        r.line(n);
    }
    Ok(r)
}

async fn keys_list<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    tenant: Option<&str>,
) -> Result<Report> {
    let t = match tenant {
        Some(t) => Some(env.tenant(t).await?),
        None => None,
    };
    let usage = env.store.key_usage(t.as_ref()).await?;
    let rows: Vec<Vec<String>> = usage
        .iter()
        .map(|u| {
            vec![
                u.tenant.to_string(),
                u.domain.to_string(),
                format!("v{}", u.version),
                u.state.as_str().to_owned(),
                u.subject_keys.to_string(),
                u.records.to_string(),
                u.documents.to_string(),
            ]
        })
        .collect();
    let j: Vec<Json> = usage
        .iter()
        .map(|u| {
            json!({
                "tenant": u.tenant.as_str(), "domain": u.domain.as_str(), "version": u.version.get(),
                "state": u.state.as_str(), "subject_keys": u.subject_keys, "records": u.records,
                "documents": u.documents,
            })
        })
        .collect();
    let mut r = Report::new(Json::Array(j));
    if rows.is_empty() {
        r.line("no domain keys; add a tenant with `kluis tenant add TENANT`");
    } else {
        r.lines =
            table(&["TENANT", "DOMAIN", "VERSION", "STATE", "SUBJECT KEYS", "RECORDS", "DOCUMENTS"], &rows);
    }
    Ok(r)
}

// ------------------------------------------------------------------ key lifecycle

async fn keys_rotate<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    td: &TenantDomain,
) -> Result<Report> {
    let t = env.tenant(&td.tenant).await?;
    let d = env.domain(&t, &td.domain).await?;
    let provider = env.provider().await?;
    let service = env.service().await?;
    let who = AdminActor::new(actor, "kluis-cli", "administration");
    // The new key row and its audit entry commit together.
    let entry = |version: KeyVersion| {
        service.admin_entry(&who, AdminEvent::KeyRotation { tenant: t.clone(), domain: d.clone(), version })
    };
    let v = env.store.rotate_domain_key_audited(provider, &t, &d, &entry).await?;
    let mut r = Report::new(json!({ "tenant": t.as_str(), "domain": d.as_str(), "active_version": v.get() }));
    r.line(format!("{t}/{d}: v{v} is active; older versions are decrypt-only"));
    r.line(format!("next: kluis reencrypt --tenant {t} --domain {d}"));
    Ok(r)
}

async fn keys_retire<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    td: &TenantDomain,
    version: KeyVersion,
) -> Result<Report> {
    let t = env.tenant(&td.tenant).await?;
    let d = env.domain(&t, &td.domain).await?;
    let known = env.store.key_usage(Some(&t)).await?.iter().any(|u| u.domain == d && u.version == version);
    if !known {
        return Err(CliError::UnknownVersion { tenant: t.to_string(), domain: d.to_string(), version });
    }
    let provider = env.provider().await?;
    let service = env.service().await?;
    let who = AdminActor::new(actor, "kluis-cli", "administration");
    let entry =
        service.admin_entry(&who, AdminEvent::Retire { tenant: t.clone(), domain: d.clone(), version });
    env.store.retire_domain_version_audited(provider, &t, &d, version, entry).await?;
    let mut r =
        Report::new(json!({ "tenant": t.as_str(), "domain": d.as_str(), "retired_version": version.get() }));
    r.line(format!("{t}/{d} v{version} destroyed"));
    Ok(r)
}

async fn rotate_root<B: Engine, O: BlobBackend + Clone>(
    env: &mut Env<B, O>,
    actor: &str,
    window: Duration,
) -> Result<Report> {
    // A keyring whose primary version is the active one gets a new version (staged: primary in
    // the file, not yet active in the database); one whose primary is newer already has one.
    let provider = env.provider().await?;
    let record = env.store.keyring_record(provider).await?;
    let primary = provider.primary_version().await?;
    let active = record.and_then(|r| r.active);
    if let Some(active) = active.filter(|a| primary < *a) {
        // An older copy of the keyring file: a version made from it would fork the file's line.
        return Err(StoreError::RootVersionNotActive { primary, active }.into());
    }
    let staged_before = active.is_some_and(|a| a < primary);
    let created = match env.root_mut().await? {
        Root::Keyring(file) if !staged_before => Some(file.rotate()?),
        _ => None,
    };
    let root = env.root().await?;
    let provider = root.provider();
    // The keyring moved to a new generation: record it (the active version stays).
    env.store.record_keyring_generation(provider).await?;
    let version = match env.store.activate_root_version(provider, window).await {
        Ok(v) => v,
        Err(StoreError::RootVersionNotHeld { version, instances }) => {
            return Err(CliError::Refused(format!(
                "root key v{version} is {} in the keyring file but not active: {} running instance(s) do not hold it: {}. Give every instance the new keyring file (an instance reports within a minute of unlocking keys), then run `kluis keys rotate-root` again; until then new keys stay under the active version",
                if created.is_some() { "new" } else { "staged" },
                instances.len(),
                instances.join("; ")
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let service = env.service().await?;
    let who = AdminActor::new(actor, "kluis-cli", "administration");
    // The rewrapped rows and their audit entry commit together.
    let entry = |n: usize| service.admin_entry(&who, AdminEvent::RootRewrap { keys: n as u64 });
    let n = env.store.rewrap_domain_keys_audited(provider, &entry).await?;
    let mut r = Report::new(json!({
        "root_version": version.get(),
        "domain_keys_rewrapped": n,
        "new_version_created": created.is_some(),
    }));
    match (provider.generation(), created) {
        (None, _) => r.line(format!(
            "root key is in a KMS: rotate it there; {n} domain keys rewrapped under its primary version v{version}"
        )),
        (Some(_), Some(v)) => {
            r.line(format!("root key v{v} created in the keyring and activated; {n} domain keys rewrapped in one transaction"))
        }
        (Some(_), None) => r.line(format!(
            "staged root key v{version} activated (every running instance holds it); {n} domain keys rewrapped in one transaction"
        )),
    };
    Ok(r)
}

async fn instances<B: Engine, O: BlobBackend + Clone>(env: &Env<B, O>, window: Duration) -> Result<Report> {
    let provider = env.provider().await?;
    let record = env.store.keyring_record(provider).await?;
    let list = env.store.instances(window).await?;
    let json_list: Vec<_> = list
        .iter()
        .map(|i| {
            json!({
                "id": i.id, "label": i.label, "root_key_id": i.root_key_id,
                "generation": i.generation, "holds": i.held.to_string(), "seen_at": i.seen_at,
            })
        })
        .collect();
    let mut r = Report::new(json!({
        "active_root_version": record.and_then(|r| r.active).map(|v| v.get()),
        "generation_floor": record.map(|r| r.floor),
        "generation_newest": record.map(|r| r.newest),
        "instances": json_list,
    }));
    if let Some(rec) = record {
        let active = rec.active.map_or("not recorded".to_owned(), |v| format!("v{v}"));
        r.line(format!(
            "active root key version {active}; keyring generations {}..={} accepted",
            rec.floor, rec.newest
        ));
    }
    if list.is_empty() {
        r.line(format!("no instance reported in the last {} s", window.as_secs()));
    }
    for i in &list {
        let generation = i.generation.map_or("-".to_owned(), |g| g.to_string());
        r.line(format!(
            "{}  {}  root {}  generation {generation}  holds {}  seen {}",
            i.id, i.label, i.root_key_id, i.held, i.seen_at
        ));
    }
    Ok(r)
}

async fn migrate_root<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    to: &str,
) -> Result<Report> {
    let to_url = config::resolve_root(to, &env.settings.data_dir);
    kluis_kms::config::ProviderConfig::parse(&to_url).map_err(|e| CliError::Usage(format!("--to: {e}")))?;
    if to_url == env.settings.root {
        return Err(CliError::Usage(format!("the root key is already {}", root_display(&to_url))));
    }
    if to_url.starts_with("keyring://") && env.settings.root.starts_with("keyring://") {
        return Err(CliError::Usage(
            "both roots are local keyrings (they share one root key id): use `kluis keys rotate-root` for a new root key, or migrate to aws-kms:// or azure-kv://".into(),
        ));
    }
    let from = env.provider().await?;
    env.store.check_rollback(from).await?;
    let target = match to_url.strip_prefix("keyring://") {
        Some(p) if !Path::new(p).exists() => {
            let pass = config::passphrase("passphrase for the new keyring: ", true)?;
            Root::Keyring(KeyringFile::create(p, config::keyring_secret(&pass))?)
        }
        _ => Root::open(&to_url).await?,
    };
    let to_provider = target.provider();
    // Every domain key record, as stored.
    let records = env.store.all_domain_key_records().await?;
    let mut done = Vec::new();
    let report = kluis_kms::migrate_root(from, to_provider, &records, |r| {
        done.push(r.clone());
        Ok(())
    })
    .await;
    // Persist what was rewrapped in one transaction with its audit entry, even if the migration
    // stopped part-way (a rerun skips what is already under the target).
    let service = env.service().await?;
    let who = AdminActor::new(actor, "kluis-cli", "administration");
    let event = AdminEvent::Other {
        action: "migrate_root".into(),
        tenant: None,
        detail: format!("to {} rewrapped {}", root_display(&to_url), done.len()),
    };
    env.store.store_rewrapped_audited(&records, &done, Some(service.admin_entry(&who, event))).await?;
    let report = report?;
    let remaining = records
        .len()
        .checked_sub(report.rewrapped + report.already_done + report.destroyed)
        .ok_or_else(|| CliError::Service("the root migration counted more keys than there are".into()))?;
    if remaining == 0 {
        let mut file = FileConfig::load(&env.settings.data_dir)?;
        file.root = Some(to.to_owned());
        file.save(&env.settings.data_dir)?;
        env.store.record_keyring_generation(to_provider).await?;
    }
    let mut r = Report::new(json!({
        "to": root_display(&to_url), "rewrapped": report.rewrapped,
        "already_done": report.already_done, "destroyed": report.destroyed,
    }));
    r.line(format!(
        "root moved to {}: {} domain keys rewrapped, {} already there, {} destroyed versions skipped",
        root_display(&to_url),
        report.rewrapped,
        report.already_done,
        report.destroyed
    ));
    r.line("kluis.toml now names the new root; keep the old one until backups made before today expire");
    Ok(r)
}

async fn keys_adopt<B: Engine, O: BlobBackend + Clone>(env: &Env<B, O>, actor: &str) -> Result<Report> {
    let provider = env.provider().await?;
    let rep = env.store.adopt_legacy_keys(provider).await?;
    let event = AdminEvent::Other {
        action: "keys_adopt".into(),
        tenant: None,
        detail: format!(
            "sets tagged {} rewrapped {} generation recorded {}",
            rep.sets_tagged, rep.rewrapped, rep.generation_recorded
        ),
    };
    env.audit_admin(actor, event).await?;
    let mut r = Report::new(json!({
        "sets_tagged": rep.sets_tagged, "rewrapped": rep.rewrapped,
        "generation_recorded": rep.generation_recorded,
    }));
    r.line(format!(
        "{} key sets tagged, {} legacy wraps rewrapped{}",
        rep.sets_tagged,
        rep.rewrapped,
        if rep.generation_recorded { ", keyring generation recorded" } else { "" }
    ));
    Ok(r)
}

async fn record_generation<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
) -> Result<Report> {
    let provider = env.provider().await?;
    let Some(g) = provider.generation() else {
        let mut r = Report::new(json!({ "generation": null }));
        r.line("the root key is in a KMS: it keeps no generation; nothing to record");
        return Ok(r);
    };
    env.store.record_keyring_generation(provider).await?;
    let event = AdminEvent::Other {
        action: "record_generation".into(),
        tenant: None,
        detail: format!("generation {g}"),
    };
    env.audit_admin(actor, event).await?;
    let mut r = Report::new(json!({ "generation": g }));
    r.line(format!("keyring generation {g} recorded in the database"));
    Ok(r)
}

// ------------------------------------------------------------------ encrypt-columns

/// How long a worker waits for rows other workers' batches hold, counted from its last progress:
/// twice the lease (a dead worker's batch is released within one), and half a minute more.
fn worker_wait(lease_secs: u64) -> std::time::Duration {
    std::time::Duration::from_secs(lease_secs.saturating_mul(2).saturating_add(30))
}

fn batch_limits(rows: u32, lease_secs: u64) -> kluis_store::BatchLimits {
    kluis_store::BatchLimits { rows, lease: std::time::Duration::from_secs(lease_secs) }
}

/// On SQLite, what a run says about several workers.
fn one_writer_note<B: Engine>() -> Option<&'static str> {
    (B::KIND == kluis_store::EngineKind::Sqlite)
        .then_some("SQLite runs one worker: batches of several processes run one after another")
}

async fn encrypt_columns_cmd<B: Engine, O: BlobBackend + Clone + 'static>(
    env: &Env<B, O>,
    actor: &str,
    args: &crate::cli::EncryptColumnsArgs,
) -> Result<Report> {
    let t = env.tenant(&args.tenant).await?;
    let access = env.admin_access(&t).await?;
    let table = args.table.as_str();
    let plan = env.store.encrypt_columns_plan(&access, table).await?;
    let columns: Vec<serde_json::Value> = plan
        .columns
        .iter()
        .map(|(c, p, n)| json!({ "column": c, "plaintext_column": p, "rows_with_plaintext": n }))
        .collect();
    if args.dry_run {
        let mut r = Report::new(
            json!({ "tenant": t.as_str(), "table": table, "rows": plan.rows, "columns": columns }),
        );
        r.line(format!("{t}/{table}: {} rows hold plaintext to seal", plan.rows));
        for (c, p, n) in &plan.columns {
            r.line(format!("  {p} -> {c}: {n} rows"));
        }
        return Ok(r);
    }
    let bar = crate::out::progress_bar(
        env.settings.json,
        "{spinner} {msg} [{bar:30}] {pos}/{len} rows, {per_sec}, eta {eta}",
        format!("encrypting {t}/{table}"),
    );
    bar.set_length(plan.rows);
    let who = kluis_store::audit::AuditEntry { actor: actor.to_owned(), ..Default::default() };
    let limits = batch_limits(args.worker.batch, args.worker.lease);
    let run = crate::columns::run(
        async |after| env.store.encrypt_columns_step(&access, table, &limits, after.as_deref(), &who).await,
        async || Ok(env.store.encrypt_columns_plan(&access, table).await?.rows),
        worker_wait(args.worker.lease),
        |s| bar.inc(s.rows_written),
    )
    .await?;
    bar.finish_and_clear();
    if !args.no_purge {
        env.store.purge_app_table(table).await?;
    }
    let left = env.store.encrypt_columns_plan(&access, table).await?.rows;
    let mut r = Report::new(json!({
        "tenant": t.as_str(), "table": table, "rows_encrypted": run.written, "passes": run.passes,
        "conflicts": run.conflicts, "retries": run.retries, "rows_left": left, "purged": !args.no_purge,
        "refused": run.refused.iter().map(|(id, why)| json!({ "record": id, "reason": why })).collect::<Vec<_>>(),
    }));
    r.line(format!(
        "{t}/{table}: {} rows sealed in {} passes; {left} rows still hold plaintext{}",
        run.written,
        run.passes,
        if args.no_purge { "" } else { "; the table was rewritten" }
    ));
    for (id, why) in &run.refused {
        r.line(format!("  refused {id}: {why}"));
    }
    if let Some(note) = one_writer_note::<B>() {
        r.line(note);
    }
    Ok(r)
}

// ------------------------------------------------------------------ reencrypt-columns

async fn reencrypt_columns_cmd<B: Engine, O: BlobBackend + Clone + 'static>(
    env: &Env<B, O>,
    actor: &str,
    args: &crate::cli::ReencryptColumnsArgs,
) -> Result<Report> {
    let t = env.tenant(&args.td.tenant).await?;
    let d = env.domain(&t, &args.td.domain).await?;
    let provider = env.provider().await?;
    let access = env.store.admin_access(provider, &t, std::slice::from_ref(&d)).await?;
    let table = args.table.as_str();
    let todo = env.store.reencrypt_columns_plan(&access, table, &d).await?;
    if args.dry_run {
        let mut r =
            Report::new(json!({ "tenant": t.as_str(), "domain": d.as_str(), "table": table, "rows": todo }));
        r.line(format!("{t}/{d} {table}: {todo} rows hold values to seal again"));
        return Ok(r);
    }
    let run =
        reencrypt_table(env, actor, &access, &d, table, batch_limits(args.worker.batch, args.worker.lease))
            .await?;
    let left = env.store.reencrypt_columns_plan(&access, table, &d).await?;
    let mut r = Report::new(json!({
        "tenant": t.as_str(), "domain": d.as_str(), "table": table, "rows_resealed": run.written,
        "passes": run.passes, "conflicts": run.conflicts, "retries": run.retries, "rows_left": left,
        "refused": run.refused.iter().map(|(id, why)| json!({ "record": id, "reason": why })).collect::<Vec<_>>(),
    }));
    r.line(format!(
        "{t}/{d} {table}: {} rows sealed again in {} passes; {left} rows left on older keys",
        run.written, run.passes
    ));
    for (id, why) in &run.refused {
        r.line(format!("  refused {id}: {why}"));
    }
    if let Some(note) = one_writer_note::<B>() {
        r.line(note);
    }
    Ok(r)
}

/// One worker's re-encryption of a mapped table's values of `d`.
async fn reencrypt_table<B: Engine, O: BlobBackend + Clone + 'static>(
    env: &Env<B, O>,
    actor: &str,
    access: &Access,
    d: &DomainName,
    table: &str,
    limits: kluis_store::BatchLimits,
) -> Result<crate::columns::ColumnsRun> {
    let todo = env.store.reencrypt_columns_plan(access, table, d).await?;
    let bar = crate::out::progress_bar(
        env.settings.json,
        "{spinner} {msg} [{bar:30}] {pos}/{len} rows, {per_sec}, eta {eta}",
        format!("re-encrypting {}/{d} {table}", access.tenant()),
    );
    bar.set_length(todo);
    let who = kluis_store::audit::AuditEntry { actor: actor.to_owned(), ..Default::default() };
    let run = crate::columns::run(
        async |after| {
            env.store.reencrypt_columns_step(access, table, d, &limits, after.as_deref(), &who).await
        },
        async || env.store.reencrypt_columns_plan(access, table, d).await,
        worker_wait(limits.lease.as_secs()),
        |s| bar.inc(s.rows_written),
    )
    .await?;
    bar.finish_and_clear();
    Ok(run)
}

// ------------------------------------------------------------------ reencrypt

async fn reencrypt_cmd<B: Engine, O: BlobBackend + Clone + 'static>(
    env: &Env<B, O>,
    actor: &str,
    args: &ReencryptArgs,
) -> Result<Report> {
    let t = env.tenant(&args.td.tenant).await?;
    let d = env.domain(&t, &args.td.domain).await?;
    let provider = env.provider().await?;
    let access = env.store.admin_access(provider, &t, std::slice::from_ref(&d)).await?;
    let docs = env.documents();
    let bar = crate::out::progress_bar(
        env.settings.json,
        "{spinner} {msg} [{bar:30}] {pos}/{len} subjects+documents, {per_sec}, eta {eta}",
        format!("re-encrypting {t}/{d}"),
    );
    let on_round = |p: &reencrypt::Progress| {
        let done = p.done.subjects_moved + p.done.documents_moved;
        bar.set_length(done + p.remaining_subjects + p.remaining_documents);
        bar.set_position(done);
    };
    let mut summary = reencrypt::reencrypt(&env.store, &docs, &access, &d, args.batch, on_round).await?;
    bar.finish_and_clear();
    // Values in the application's mapped tables keep older subject key versions alive: seal them
    // again under the new ones, then let the store's steps delete the old versions.
    let mut app_rows = 0u64;
    let mut app_refused: BTreeMap<String, String> = BTreeMap::new();
    if summary.kept_for_app_tables > 0 {
        let tables: Vec<String> = env
            .store
            .schema()
            .app_tables()
            .filter(|t| !t.external && t.protected_columns().any(|c| c.domain == d))
            .map(|t| t.name.clone())
            .collect();
        for table in &tables {
            let rows = u32::try_from(args.batch).map_err(|_| {
                CliError::Usage(format!("--batch {} is more rows than a batch can hold", args.batch))
            })?;
            let limits = kluis_store::BatchLimits::rows(rows.max(1));
            let run = reencrypt_table(env, actor, &access, &d, table, limits).await?;
            app_rows += run.written;
            app_refused.extend(run.refused.into_iter().map(|(id, why)| (format!("{table}/{id}"), why)));
        }
        let again = reencrypt::reencrypt(&env.store, &docs, &access, &d, args.batch, |_| {}).await?;
        summary.rounds += again.rounds;
        summary.retries += again.retries;
        summary.conflicts += again.conflicts;
        summary.kept_for_app_tables = again.kept_for_app_tables;
    }
    let event = AdminEvent::Reencrypt {
        tenant: t.clone(),
        domain: d.clone(),
        moved: summary.subjects_moved + summary.documents_moved,
        remaining: summary.kept_for_app_tables,
    };
    env.audit_admin(actor, event).await?;
    let usage = env.store.key_usage(Some(&t)).await?;
    let retirable: Vec<u32> = usage
        .iter()
        .filter(|u| u.domain == d && u.state == KeyState::DecryptOnly && u.is_unused())
        .map(|u| u.version.get())
        .collect();
    let mut r = Report::new(json!({
        "tenant": t.as_str(), "domain": d.as_str(), "summary": summary, "retirable_versions": retirable,
        "app_rows_resealed": app_rows,
        "app_rows_refused": app_refused.iter().map(|(id, why)| json!({ "row": id, "reason": why })).collect::<Vec<_>>(),
    }));
    let app =
        if app_rows > 0 { format!(", {app_rows} rows of mapped tables sealed again") } else { String::new() };
    if summary.kept_for_app_tables == 0 {
        r.line(format!(
            "{t}/{d}: {} subjects moved, {} records re-sealed, {} documents rewritten{app}; nothing left on older versions",
            summary.subjects_moved, summary.records_resealed, summary.documents_moved
        ));
    } else {
        r.line(format!(
            "{t}/{d}: {} subjects moved, {} records re-sealed, {} documents rewritten{app}; {} subjects keep an older \
             subject key for values in mapped tables that could not be sealed again (refused rows below, or rows \
             an application changed meanwhile: run kluis reencrypt again)",
            summary.subjects_moved, summary.records_resealed, summary.documents_moved, summary.kept_for_app_tables
        ));
    }
    for (id, why) in &app_refused {
        r.line(format!("  refused {id}: {why}"));
    }
    for v in retirable {
        r.line(format!("v{v} is unused: kluis keys retire --tenant {t} --domain {d} --version {v}"));
    }
    Ok(r)
}

// ------------------------------------------------------------------ shred

async fn shred<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    args: &ShredArgs,
) -> Result<Report> {
    let t = env.tenant(&args.tenant).await?;
    kluis_store::check_id("subject id", &args.subject)?;
    let mut access = env.admin_access(&t).await?;
    // A subject with keys and no record may have values in the application's mapped tables.
    if !env.subject_exists(&access, &args.subject).await?
        && !env.store.subject_has_keys(&access, &args.subject).await?
    {
        return Err(CliError::UnknownSubject { tenant: t.to_string(), subject: args.subject.clone() });
    }
    let objects: Vec<String> = env
        .store
        .documents_of_subject(&access, &args.subject)
        .await?
        .into_iter()
        .map(|d| d.object_name)
        .collect();
    let legal = match (&args.legal_override_reason, &args.authorised_by) {
        (Some(reason), Some(by)) => Some(LegalOverride { reason: reason.clone(), authorised_by: by.clone() }),
        _ => None,
    };
    let provider = env.provider().await?;
    let service = env.service().await?;
    let who = AdminActor::new(actor, "kluis-cli", "administration");
    // Before anything is shredded: a certificate file that cannot be created stops the command.
    let cert_file = args.certificate.as_deref().map(crate::erasure::create_file).transpose()?;
    // The removal of the subject's keys, records and catalog rows commits with its audit entry.
    let entry =
        service.admin_entry(&who, AdminEvent::Shred { tenant: t.clone(), subject: args.subject.clone() });
    let rep = match env
        .store
        .shred_subject_audited(provider, &mut access, &args.subject, legal.clone(), entry)
        .await
    {
        Ok(rep) => rep,
        Err(e) => {
            if let Some((path, file)) = cert_file {
                drop(file);
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
    };
    // The catalog rows are gone with the shred; the objects are unreadable (their keys are
    // destroyed) and are deleted now.
    let mut deleted = 0u64;
    for o in &objects {
        if let Ok(name) = ObjectName::parse(o)
            && env.blobs.delete(&name).await?
        {
            deleted += 1;
        }
    }
    // What was destroyed, in the audit log's hash chain (and in the file, if asked).
    let certificate = kluis_service::erasure::ErasureCertificate::of_shred(
        t.as_str(),
        &args.subject,
        service.now_ms(),
        &rep,
        Some(deleted),
        legal.as_ref(),
    );
    let certified =
        service.certify_erasure(&who, certificate).await.map_err(|e| CliError::Service(e.to_string()))?;
    if let Some((path, file)) = cert_file {
        crate::erasure::write_file(&path, file, &certified)?;
    }
    let destroyed: Vec<String> = rep.destroyed_versions.iter().map(|(d, v)| format!("{d} v{v}")).collect();
    let mut r = Report::new(json!({
        "tenant": t.as_str(), "subject": args.subject, "records_removed": rep.records_removed,
        "documents_removed": deleted, "destroyed_versions": destroyed,
        "mapped_rows_cleared": rep.app_rows_cleared, "mapped_rows_reindexed": rep.app_rows_reindexed,
        "certificate": { "audit_seq": certified.audit_seq, "entry_hash": certified.entry_hash, "file": args.certificate },
    }));
    r.line(format!(
        "subject {} of {t} shredded: {} records and {deleted} documents removed, key versions destroyed: {}",
        args.subject,
        rep.records_removed,
        if destroyed.is_empty() { "none".to_owned() } else { destroyed.join(", ") }
    ));
    if let Some(n) = rep.app_rows_cleared {
        r.line(format!(
            "mapped tables: the subject's values cleared in {n} rows; {} rows of other subjects re-indexed",
            rep.app_rows_reindexed
        ));
    }
    r.line(format!(
        "erasure certificate: audit entry {}{}",
        certified.audit_seq,
        args.certificate.as_ref().map(|p| format!(", written to {}", p.display())).unwrap_or_default()
    ));
    Ok(r)
}

// ------------------------------------------------------------------ import / export

/// Converts a JSON value to a field value of `ty`.
fn to_value(ty: FieldType, v: &Json) -> std::result::Result<Value, String> {
    match (ty, v) {
        (FieldType::Text, Json::String(s)) => Ok(Value::Text(s.clone())),
        (FieldType::Integer, Json::Number(n)) => {
            n.as_i64().map(Value::Integer).ok_or("not an integer".into())
        }
        (FieldType::Decimal | FieldType::Percentage, Json::Number(n)) => Ok(Value::Decimal(n.to_string())),
        (FieldType::Decimal | FieldType::Percentage, Json::String(s)) if is_decimal(s) => {
            Ok(Value::Decimal(s.clone()))
        }
        (FieldType::Date, Json::String(s)) => Ok(Value::Date(s.clone())),
        (FieldType::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (FieldType::Bytes, Json::String(s)) => {
            hex_decode(s).map(Value::Bytes).ok_or_else(|| "bytes must be a hex string".into())
        }
        _ => Err(format!("expected {}", ty.as_str())),
    }
}

fn is_decimal(s: &str) -> bool {
    let body = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = body.split_once('.').unwrap_or((body, "0"));
    !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok())).collect()
}

/// One parsed import line.
struct Line {
    no: usize,
    id: String,
    record: NewRecord,
}

/// What a line is checked against before anything is written.
struct ImportTarget<'a> {
    schema: &'a kluis_store::Schema,
    collection: &'a str,
    coll: &'a kluis_store::schema::Collection,
    /// The domains the tenant has keys of.
    domains: &'a [DomainName],
}

/// Parses one line and checks it as the store will when writing it (`NewRecord::check`, and that
/// the tenant has a key of each field's domain), so a file is refused whole before any write.
fn parse_line(target: &ImportTarget<'_>, no: usize, text: &str) -> std::result::Result<Line, String> {
    let v: Json =
        serde_json::from_str(text).map_err(|e| format!("not json: {}", config::one_line(&e.to_string())))?;
    let Json::Object(map) = v else { return Err("not a json object".into()) };
    let id = map.get("id").and_then(Json::as_str).ok_or("missing \"id\" (a string)")?.to_owned();
    kluis_store::check_id("record id", &id).map_err(|e| e.to_string())?;
    let subject = map.get("subject").and_then(Json::as_str).ok_or("missing \"subject\" (a string)")?;
    kluis_store::check_id("subject id", subject).map_err(|e| e.to_string())?;
    let mut rec = NewRecord::new(subject).id(&id);
    for (k, val) in &map {
        match k.as_str() {
            "id" | "subject" => {}
            "retain_until" => {
                let u = val.as_i64().ok_or("retain_until must be unix seconds")?;
                rec = rec.retain_until(u);
            }
            name => {
                let def = target.coll.field(name).ok_or_else(|| format!("unknown field {name:?}"))?;
                if val.is_null() {
                    continue;
                }
                if !target.domains.contains(&def.domain) {
                    return Err(format!(
                        "field {name:?}: the tenant has no key of domain {:?}",
                        def.domain.as_str()
                    ));
                }
                let value = to_value(def.ty, val).map_err(|e| format!("field {name:?}: {e}"))?;
                rec = rec.set(name, value);
            }
        }
    }
    rec.check(target.schema, target.collection).map_err(|e| e.to_string())?;
    Ok(Line { no, id, record: rec })
}

async fn import<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    args: &ImportArgs,
) -> Result<Report> {
    let t = env.tenant(&args.tenant).await?;
    let schema = env.store.schema();
    let coll = schema.collection(&args.collection)?;
    let domains = env.tenant_domains(&t).await?;
    let target = ImportTarget { schema, collection: &args.collection, coll, domains: &domains };
    let bytes = std::fs::read(&args.file).map_err(io("read", &args.file))?;
    let mut lines = Vec::new();
    let mut bad: Vec<(usize, String)> = Vec::new();
    let mut seen = HashSet::new();
    // Every line is checked, and every bad one reported, before anything is written.
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let no = i + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            bad.push((no, "not UTF-8".to_owned()));
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(&target, no, text) {
            Ok(line) if !seen.insert(line.id.clone()) => {
                bad.push((no, format!("duplicate id {:?}", line.id)))
            }
            Ok(line) => lines.push(line),
            Err(e) => bad.push((no, e)),
        }
    }
    let file_name = args.file.display().to_string();
    if let Some((line, reason)) = bad.first() {
        for (no, why) in &bad {
            eprintln!("{file_name}:{no}: {why}");
        }
        return Err(CliError::BadImport {
            file: file_name,
            count: bad.len(),
            line: *line,
            reason: reason.clone(),
        });
    }
    let access = env.admin_access(&t).await?;
    let service = env.service().await?;
    let who = AdminActor::new(actor, "kluis-cli", "administration");
    let (mut imported, mut skipped) = (0u64, 0u64);
    for chunk in lines.chunks(args.batch.max(1)) {
        let skipped_before = skipped;
        let mut ops = Vec::new();
        let mut in_batch = Vec::new();
        let ids: Vec<&str> = chunk.iter().map(|l| l.id.as_str()).collect();
        let present = env.store.existing_ids(&access, &args.collection, &ids).await?;
        for l in chunk {
            if present.contains(&l.id) {
                skipped += 1;
            } else {
                ops.push(Op::Insert { collection: args.collection.clone(), record: l.record.clone() });
                in_batch.push(l);
            }
        }
        if ops.is_empty() {
            continue;
        }
        let n = ops.len() as u64;
        // The batch and its audit entry commit together (or neither).
        let event = AdminEvent::Import {
            tenant: t.clone(),
            what: format!(
                "collection {} lines {}-{} ({} already present)",
                args.collection,
                chunk.first().map_or(0, |l| l.no),
                chunk.last().map_or(0, |l| l.no),
                skipped - skipped_before
            ),
            count: n,
        };
        if let Err(e) = env.store.audited_transaction(&access, ops, service.admin_entry(&who, event)).await {
            let at =
                in_batch.iter().find(|l| e.to_string().contains(&l.id)).or(in_batch.first()).map(|l| l.no);
            return Err(CliError::BadImport {
                file: file_name,
                count: 1,
                line: at.unwrap_or(0),
                reason: format!("{e} (this batch was rolled back; {imported} records imported before it)"),
            });
        }
        imported += n;
    }
    if imported == 0 {
        // Nothing written: the entry says so on its own.
        let event = AdminEvent::Import {
            tenant: t.clone(),
            what: format!("collection {} ({skipped} already present)", args.collection),
            count: 0,
        };
        env.audit_admin(actor, event).await?;
    }
    let mut r = Report::new(
        json!({ "tenant": t.as_str(), "collection": args.collection, "imported": imported, "skipped": skipped }),
    );
    r.line(format!("{imported} records imported into {t}/{}, {skipped} already present", args.collection));
    Ok(r)
}

// ------------------------------------------------------------------ audit and access review

async fn audit_verify<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    against: Option<&str>,
) -> Result<Report> {
    let svc = |e: kluis_service::Error| CliError::Service(e.to_string());
    let rep = match against {
        Some(text) => {
            let cp =
                kluis_service::audit::Checkpoint::parse(text).map_err(|e| CliError::Usage(e.to_string()))?;
            kluis_service::audit::verify_against(&env.store, &cp).await.map_err(svc)?
        }
        None => kluis_service::audit::verify(&env.store).await.map_err(svc)?,
    };
    if let Some(bad) = rep.first_bad {
        return Err(CliError::AuditBroken { entry: bad, problem: rep.problem.clone().unwrap_or_default() });
    }
    if let Some(rows) = &rep.rows {
        if let Some(p) = &rows.log_problem {
            return Err(CliError::AuditBroken { entry: rep.entries, problem: format!("row log: {p}") });
        }
        if let Some(first) = rows.problems.first() {
            for p in &rows.problems {
                eprintln!("{}/{}/{}: {}", p.tenant, p.collection, p.record, p.finding.describe());
            }
            return Err(CliError::RowsStale {
                problems: rows.problems.len(),
                first: format!(
                    "{}/{}/{}: {}",
                    first.tenant,
                    first.collection,
                    first.record,
                    first.finding.describe()
                ),
                more: if rows.problems.len() > 1 { ", see the lines above" } else { "" },
            });
        }
    }
    let head = kluis_service::audit::head(&env.store).await.map_err(svc)?;
    let head_text = head.as_ref().map(kluis_service::audit::Checkpoint::to_text);
    let (rows, logged, uncovered) =
        rep.rows.as_ref().map_or((0, 0, 0), |r| (r.rows, r.log_entries, r.uncovered));
    let mut r = Report::new(json!({
        "ok": true, "entries": rep.entries, "checkpoints": rep.checkpoints, "head": head_text,
        "against": against.is_some(), "rows": rows, "row_log_entries": logged, "row_log_uncovered": uncovered,
    }));
    r.line(format!(
        "audit log ok: {} entries, {} checkpoints verified{}",
        rep.entries,
        rep.checkpoints,
        if against.is_some() { ", consistent with the given checkpoint" } else { "" }
    ));
    r.line(format!(
        "rows ok: {rows} rows are the ones Kluis wrote last ({logged} row log entries{})",
        if uncovered > 0 {
            format!(", the last {uncovered} not yet covered by an audit entry")
        } else {
            String::new()
        }
    ));
    if let Some(h) = head_text {
        r.line(format!("head: {h}"));
        r.line("keep the head line outside this database; `kluis audit verify --against LINE` later detects a truncated or rewritten log");
    }
    Ok(r)
}

async fn audit_export<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    tenant: Option<&str>,
    output: Option<&Path>,
) -> Result<Report> {
    let svc = |e: kluis_service::Error| CliError::Service(e.to_string());
    let tenant = match tenant {
        Some(t) => {
            let t = env.tenant(t).await?;
            // Fail closed: the export is logged before anything is written.
            let event = AdminEvent::Other {
                action: "export_audit".into(),
                tenant: Some(t.clone()),
                detail: "the tenant's audit entries".into(),
            };
            env.audit_admin(actor, event).await?;
            Some(t)
        }
        None => None,
    };
    let out: Box<dyn std::io::Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p).map_err(io("create", p))?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let n = match &tenant {
        Some(t) => kluis_service::audit::export_tenant_jsonl(&env.store, t, out).await,
        None => kluis_service::audit::export_jsonl(&env.store, out).await,
    }
    .map_err(svc)?;
    Ok(match output {
        Some(p) => {
            let mut r = Report::new(json!({ "entries": n, "output": p }));
            r.line(format!("{n} audit entries written to {}", p.display()));
            r
        }
        None => Report::silent(),
    })
}

// ------------------------------------------------------------------ doctor

#[derive(Default)]
struct Checks {
    lines: Vec<String>,
    json: Vec<Json>,
    failed: usize,
    warned: usize,
}

impl Checks {
    fn ok(&mut self, what: &str, detail: String) {
        self.lines.push(format!("ok    {what}: {detail}"));
        self.json.push(json!({ "check": what, "status": "ok", "detail": detail }));
    }
    fn warn(&mut self, what: &str, detail: String, fix: String) {
        self.warned += 1;
        self.lines.push(format!("warn  {what}: {detail}"));
        self.lines.push(format!("      fix: {fix}"));
        self.json.push(json!({ "check": what, "status": "warn", "detail": detail, "fix": fix }));
    }
    fn fail(&mut self, what: &str, detail: String, fix: String) {
        self.failed += 1;
        self.lines.push(format!("FAIL  {what}: {detail}"));
        self.lines.push(format!("      fix: {fix}"));
        self.json.push(json!({ "check": what, "status": "fail", "detail": detail, "fix": fix }));
    }
}

async fn doctor<B: Engine, O: BlobBackend + Clone + 'static>(env: &Env<B, O>) -> Result<Report> {
    let mut c = Checks::default();
    c.ok("configuration", format!("{} and {}", config::CONFIG_FILE, env.settings.schema.display()));
    c.ok("database", format!("{} reachable, migrations applied", env.settings.store.display()));
    // Keyring / root.
    let root = match env.settings.keyring_path() {
        Some(p) => match KeyringFile::inspect(&p) {
            Err(e) => {
                c.fail(
                    "keyring",
                    config::one_line(&e.to_string()),
                    "restore keyring.kr from its backup".into(),
                );
                None
            }
            Ok(_) => match env.root().await {
                Ok(r) => {
                    c.ok("keyring", format!("{} opens", p.display()));
                    Some(r)
                }
                Err(e) => {
                    c.fail(
                        "keyring",
                        config::one_line(&e.to_string()),
                        "check KLUIS_PASSPHRASE, or restore keyring.kr from its backup".into(),
                    );
                    None
                }
            },
        },
        None => match env.root().await {
            Ok(r) => {
                c.ok("root key", root_display(&env.settings.root));
                Some(r)
            }
            Err(e) => {
                c.fail(
                    "root key",
                    config::one_line(&e.to_string()),
                    "check the KMS credentials and key".into(),
                );
                None
            }
        },
    };
    if let Some(root) = root {
        match env.store.check_keyring_generation(root.provider()).await {
            Ok(kluis_core::keys::GenerationStatus::InSync) => c.ok("keyring generation", "matches the database".into()),
            Ok(kluis_core::keys::GenerationStatus::DatabaseBehind { keyring, database }) => c.fail(
                "keyring generation",
                format!("keyring is at {keyring}, the database recorded {database}: keys stay locked"),
                "an older database (or generation record) was restored, or a keyring change was not recorded: find out which, then `kluis keys record-generation`".into(),
            ),
            Err(e) => c.fail(
                "keyring generation",
                config::one_line(&e.to_string()),
                "an older keyring was restored: restore the newest keyring.kr".into(),
            ),
        }
    }
    // Blob store.
    let live: HashSet<String> = env.store.document_object_names().await?.into_iter().collect();
    match env.blobs.list().await {
        Ok(objects) => {
            let names: HashSet<String> = objects.iter().map(|o| o.as_str().to_owned()).collect();
            let missing = live.difference(&names).count();
            let orphans = names.difference(&live).count();
            if missing > 0 {
                c.fail(
                    "documents",
                    format!("{missing} catalog documents have no stored object"),
                    "restore the blob store from its backup".into(),
                );
            } else {
                c.ok("documents", format!("{} objects, {} in the catalog", names.len(), live.len()));
            }
            if orphans > 0 {
                c.warn(
                    "documents",
                    format!("{orphans} objects are in no catalog row (interrupted uploads or shredded)"),
                    "they are removed by the documents' garbage collection".into(),
                );
            }
        }
        Err(e) => c.fail(
            "documents",
            config::one_line(&e.to_string()),
            format!("check that {} is reachable and writable", env.settings.blobs.display()),
        ),
    }
    // Key states.
    let usage = env.store.key_usage(None).await?;
    let mut by_td: BTreeMap<(String, String), Vec<&kluis_store::KeyUsage>> = BTreeMap::new();
    for u in &usage {
        by_td.entry((u.tenant.to_string(), u.domain.to_string())).or_default().push(u);
    }
    if by_td.is_empty() {
        c.warn("keys", "no tenants yet".into(), "kluis tenant add TENANT".into());
    }
    for ((t, d), versions) in &by_td {
        let active = versions.iter().filter(|u| u.state == KeyState::Active).count();
        if active != 1 {
            c.fail(
                "keys",
                format!("{t}/{d} has {active} active versions"),
                "the key table was edited: restore the database".into(),
            );
            continue;
        }
        if let Some(root) = root {
            let tid = TenantId::new(t.clone())?;
            let did = DomainName::new(d.clone())?;
            if let Err(e) = env.store.key_set(root.provider(), &tid, &did).await {
                c.fail(
                    "keys",
                    format!("{t}/{d}: {}", config::one_line(&e.to_string())),
                    "the key rows were altered, the wrong root key is configured, or the database predates key state tags (`kluis keys adopt` after checking `kluis keys list`)".into(),
                );
                continue;
            }
        }
        for u in versions.iter().filter(|u| u.state == KeyState::DecryptOnly) {
            if u.is_unused() {
                c.warn(
                    "keys",
                    format!("{t}/{d} v{} is decrypt-only and unused", u.version),
                    format!("kluis keys retire --tenant {t} --domain {d} --version {}", u.version),
                );
            } else {
                c.warn(
                    "keys",
                    format!(
                        "{t}/{d} v{} still holds {} subject keys, {} records, {} documents",
                        u.version, u.subject_keys, u.records, u.documents
                    ),
                    format!("kluis reencrypt --tenant {t} --domain {d}"),
                );
            }
        }
    }
    if c.failed == 0 && c.warned == 0 {
        c.lines.push("all checks passed".into());
    }
    let failed = c.failed;
    let r = Report { lines: c.lines, json: json!({ "checks": c.json, "failed": failed }), silent: false };
    if failed > 0 {
        r.print(env.settings.json).map_err(CliError::Output)?;
        return Err(CliError::DoctorFailed(failed));
    }
    Ok(r)
}

/// `kluis schema sql`: the DDL of every mapped application table.
pub fn schema_sql(dir: &std::path::Path, args: &crate::cli::SchemaSqlArgs) -> Result<Report> {
    use crate::cli::SqlEngine;
    use kluis_store::Dialect;
    let path = args.schema.clone().unwrap_or_else(|| dir.join(crate::config::SCHEMA_FILE));
    let schema = crate::env::load_schema(&path)?;
    let (dialect, name) = match args.engine {
        SqlEngine::Sqlite => (Dialect::Sqlite, "sqlite"),
        SqlEngine::Postgres => (Dialect::Postgres, "postgres"),
        SqlEngine::Mysql => (Dialect::MySql, "mysql"),
        SqlEngine::Mssql => (Dialect::MsSql, "mssql"),
    };
    let mut report = Report::new(serde_json::Value::Null);
    let mut tables = Vec::new();
    for t in schema.app_tables() {
        let sql = t.ddl(dialect);
        for l in sql.lines() {
            report.line(l);
        }
        tables.push(serde_json::json!({ "mapping": t.name, "table": t.table, "sql": sql }));
    }
    if tables.is_empty() {
        report.line(format!("-- the schema {} maps no application table ([tables.*])", path.display()));
    }
    report.json = serde_json::json!({ "engine": name, "tables": tables });
    Ok(report)
}
