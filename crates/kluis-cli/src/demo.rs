//! `kluis demo`: the main story end to end, about one screen long.
//!
//! Runs on a fresh temporary data directory (removed at the end) unless `--data-dir` names a
//! directory that is not initialised yet (it is kept then). The keyring passphrase is the fixed,
//! public [`DEMO_PASSPHRASE`]: the demo's data is not protected by it.

use std::path::PathBuf;
use std::sync::Arc;

use kluis_blob::{BlobBackend, NewDocument};
use kluis_core::{DocumentMetadata, DomainName, KeyVersion, TenantId};
use kluis_keyring::KeyringFile;
use kluis_service::authz::{
    Action, ActionSet, Authorizer, GrantScope, Policy, Principal, RoleName, StoreRegistry, UserId,
};
use kluis_service::clock::SystemClock;
use kluis_service::{AdminActor, AdminEvent, RequestContext};
use kluis_store::{Engine, FieldValue, NewRecord, Record};
use serde_json::json;
use zeroize::Zeroizing;

use crate::cli::Global;
use crate::config::{self, FileConfig, Settings};
use crate::env::{Env, Job, Root};
use crate::error::{CliError, Result};
use crate::out::Report;

/// The demo's keyring passphrase: fixed and public, for the demo only.
pub const DEMO_PASSPHRASE: &str = "kluis demo passphrase - public, never use for real data";

/// Runs the demo.
pub async fn run(global: &Global) -> Result<Report> {
    let (tmp, dir) = match &global.data_dir {
        Some(d) => {
            if d.join(config::CONFIG_FILE).exists() {
                return Err(CliError::AlreadyInitialised(d.clone()));
            }
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("kluis-demo-")
                .tempdir()
                .map_err(crate::error::io("create temporary directory", std::env::temp_dir()))?;
            let p = t.path().to_path_buf();
            (Some(t), p)
        }
    };
    std::fs::create_dir_all(&dir).map_err(crate::error::io("create directory", &dir))?;
    let file = FileConfig::default();
    let settings =
        Settings::resolve(&dir, &file, global.store.as_deref(), global.blobs.as_deref(), None, global.json)?;
    std::fs::write(&settings.schema, config::DEFAULT_SCHEMA)
        .map_err(crate::error::io("write", &settings.schema))?;
    let keyring_path = settings.keyring_path().unwrap_or_else(|| dir.join(config::KEYRING_FILE));
    let secret = config::keyring_secret(&Zeroizing::new(DEMO_PASSPHRASE.to_owned()));
    let keyring = KeyringFile::create(&keyring_path, secret)?;
    file.save(&dir)?;
    let report = crate::env::run_job(
        settings,
        true,
        DemoJob { root: Some(Root::Keyring(keyring)), dir: dir.clone(), temporary: tmp.is_some() },
    )
    .await;
    drop(tmp);
    report
}

struct DemoJob {
    root: Option<Root>,
    dir: PathBuf,
    temporary: bool,
}

fn shown(r: &Record, field: &str) -> String {
    match r.fields.get(field) {
        Some(FieldValue::Withheld { domain }) => format!("[withheld: {domain}]"),
        Some(v) => match v.value() {
            Some(
                kluis_store::Value::Text(s) | kluis_store::Value::Date(s) | kluis_store::Value::Decimal(s),
            ) => s.clone(),
            Some(_) => "(value)".into(),
            None => "-".into(),
        },
        None => "-".into(),
    }
}

fn who(user: &str, tenant: &TenantId, role: &str) -> Result<Principal> {
    let u = UserId::new(user).map_err(|e| CliError::Service(e.to_string()))?;
    let r = RoleName::new(role).map_err(|e| CliError::Service(e.to_string()))?;
    Ok(Principal::new(u, Some(tenant.clone()), [r]))
}

impl Job for DemoJob {
    type Out = Report;

    async fn run<B: Engine, O: BlobBackend + Clone + 'static>(mut self, env: Env<B, O>) -> Result<Report> {
        let root = self.root.take().ok_or(CliError::NotAvailable("demo root key"))?;
        let env = Env::with_root(env.settings.clone(), Arc::clone(&env.store), env.blobs.clone(), root);
        let svc_err = |e: kluis_service::Error| CliError::Service(e.to_string());
        let mut r = Report::new(json!({}));
        let provider = env.provider().await?;
        env.store.record_keyring_generation(provider).await?;
        r.line(format!(
            "1. data dir {}{}; keyring passphrase is the fixed demo one ({DEMO_PASSPHRASE:?})",
            self.dir.display(),
            if self.temporary { " (temporary, removed at the end)" } else { "" }
        ));

        let acme = TenantId::new("acme-zorg")?;
        let other = TenantId::new("bakkerij-jansen")?;
        let (general, medical) = (DomainName::general(), DomainName::medical());
        for t in [&acme, &other] {
            for d in [&general, &medical] {
                env.store.ensure_domain_key(provider, t, d).await?;
            }
        }
        r.line(format!("2. tenants {acme} and {other}, each with a general and a medical domain key (wrapped by the root key)"));

        // The service with the persisted access registry (so `kluis access review` shows the
        // roles, the support grant and the break-glass access afterwards).
        let root: Arc<dyn kluis_core::keys::RootKeyProvider> =
            Arc::clone(env.root().await?) as Arc<dyn kluis_core::keys::RootKeyProvider>;
        let registry = Arc::new(StoreRegistry::new(Arc::clone(&env.store), Arc::clone(&root)));
        registry.load_tenant(&acme).await.map_err(svc_err)?;
        let authz = Authorizer::new(Policy::builtin(), registry.clone(), Arc::new(SystemClock));
        let service = kluis_service::Service::new(authz.clone(), Arc::clone(&env.store), root);
        let hr = who("p.devries", &acme, "hr_manager")?;
        let doctor = who("dr.jansen", &acme, "company_doctor")?;
        let stranger = who("k.bakker", &other, "hr_manager")?;
        let ctx = RequestContext::new("kluis-demo", "verzuimbegeleiding");
        for (emp, name) in
            [("emp-1", "Jan Jansen"), ("emp-2", "Fatima el Amrani"), ("emp-3", "Kees de Vries")]
        {
            let rec = NewRecord::new(emp).id(emp).set("name", name).set("department", "zorg");
            service.insert(&hr, &ctx, "employee", rec).await.map_err(svc_err)?;
        }
        for (id, emp, diag) in [("ar-1", "emp-1", "burn-out"), ("ar-2", "emp-2", "hernia")] {
            let rec = NewRecord::new(emp)
                .id(id)
                .set("start_date", kluis_store::Value::Date("2026-11-02".into()))
                .set("work_capacity", kluis_store::Value::Decimal("50".into()))
                .set("diagnosis", diag)
                .set("doctor_notes", "terugkeer in fasen");
            service.insert(&doctor, &ctx, "absence", rec).await.map_err(svc_err)?;
        }
        r.line("3. HR (p.devries) added 3 employees; the company doctor (dr.jansen) added 2 absence reports with general and medical fields");

        let hr_view = service.get(&hr, &ctx, "absence", "ar-1").await.map_err(svc_err)?;
        let dr_view = service.get(&doctor, &ctx, "absence", "ar-1").await.map_err(svc_err)?;
        r.line(format!(
            "4. ar-1 as HR:     start {}, capacity {}%, diagnosis {}",
            shown(&hr_view, "start_date"),
            shown(&hr_view, "work_capacity"),
            shown(&hr_view, "diagnosis")
        ));
        r.line(format!(
            "   ar-1 as doctor: start {}, capacity {}%, diagnosis {}",
            shown(&dr_view, "start_date"),
            shown(&dr_view, "work_capacity"),
            shown(&dr_view, "diagnosis")
        ));
        let denied = service.get(&stranger, &ctx, "absence", "ar-1").await;
        r.line(format!(
            "5. k.bakker of {other} reads ar-1: {}",
            match denied {
                Ok(_) => "ALLOWED (unexpected)".to_owned(),
                Err(e) => format!("refused ({e})"),
            }
        ));

        let docs = env.documents();
        let facade = service.documents(&docs).map_err(svc_err)?;
        let content = b"%PDF-1.7 demo: belastbaarheid 4 uur per dag".to_vec();
        let doc = NewDocument {
            subject: "emp-1".into(),
            record: Some("ar-1".into()),
            metadata: DocumentMetadata {
                file_name: "advies-bedrijfsarts.pdf".into(),
                extension: "pdf".into(),
                content_type: "application/pdf".into(),
                length: Some(content.len() as u64),
                created_unix: kluis_keyring::unix_now(),
                uploaded_by: "dr.jansen".into(),
            },
        };
        facade.put(&doctor, &ctx, &medical, doc, &content[..]).await.map_err(svc_err)?;
        let as_hr = facade.list_by_subject(&hr, &ctx, "emp-1").await.map_err(svc_err)?;
        let as_dr = facade.list_by_subject(&doctor, &ctx, "emp-1").await.map_err(svc_err)?;
        let name = |l: &[kluis_blob::catalog::DocumentEntry]| {
            l.first()
                .map(|e| {
                    e.metadata
                        .as_ref()
                        .map(|m| m.file_name.clone())
                        .unwrap_or_else(|| "[withheld: medical]".into())
                })
                .unwrap_or_default()
        };
        r.line(format!(
            "6. a medical document for emp-1, encrypted with its name: HR sees {}, the doctor sees {}",
            name(&as_hr),
            name(&as_dr)
        ));

        let v = env.store.rotate_domain_key(provider, &acme, &medical).await?;
        // The version before it (a rotation makes version 2 or later).
        let old = KeyVersion::new(v.get() - 1)?;
        let admin = env.store.admin_access(provider, &acme, std::slice::from_ref(&medical)).await?;
        let sum = crate::reencrypt::reencrypt(&env.store, &docs, &admin, &medical, 10, |_| {}).await?;
        env.store.retire_domain_version(provider, &acme, &medical, old).await?;
        let actor = AdminActor::new("demo-operator", "kluis-demo", "key rotation");
        let rec = |e| service.record_admin(&actor, e);
        rec(AdminEvent::KeyRotation { tenant: acme.clone(), domain: medical.clone(), version: v })
            .await
            .map_err(svc_err)?;
        rec(AdminEvent::Reencrypt {
            tenant: acme.clone(),
            domain: medical.clone(),
            moved: sum.subjects_moved + sum.documents_moved,
            remaining: 0,
        })
        .await
        .map_err(svc_err)?;
        rec(AdminEvent::Retire { tenant: acme.clone(), domain: medical.clone(), version: old })
            .await
            .map_err(svc_err)?;
        let again = service.get(&doctor, &ctx, "absence", "ar-1").await.map_err(svc_err)?;
        r.line(format!(
            "7. medical key rotated to v{v}: {} subjects, {} records and {} document re-encrypted, v{} destroyed; ar-1 diagnosis still {}",
            sum.subjects_moved,
            sum.records_resealed,
            sum.documents_moved,
            old,
            shown(&again, "diagnosis")
        ));

        let shred = service.shred(&doctor, &ctx, "emp-2", None).await.map_err(svc_err)?;
        let gone = service.get(&doctor, &ctx, "absence", "ar-2").await;
        r.line(format!(
            "8. emp-2 crypto-shredded: {} records removed, key versions destroyed: {}; reading ar-2 now: {}",
            shred.records_removed,
            shred.destroyed_versions.iter().map(|(d, v)| format!("{d} v{v}")).collect::<Vec<_>>().join(", "),
            match gone {
                Ok(_) => "still there (unexpected)".to_owned(),
                Err(e) => e.to_string(),
            }
        ));

        let admin = who("a.visser", &acme, "tenant_admin")?;
        for (user, role) in
            [("p.devries", "hr_manager"), ("dr.jansen", "company_doctor"), ("m.smit", "case_manager")]
        {
            let user = UserId::new(user).map_err(|e| CliError::Service(e.to_string()))?;
            let role = RoleName::new(role).map_err(|e| CliError::Service(e.to_string()))?;
            registry.assign_role(&authz, &admin, &acme, user, role).await.map_err(svc_err)?;
        }
        let scope = GrantScope {
            domains: [general.clone()].into_iter().collect(),
            actions: ActionSet::of(&[Action::Read]),
        };
        let lisa = UserId::new("support.lisa").map_err(|e| CliError::Service(e.to_string()))?;
        let grant = registry
            .grant_support(
                &authz,
                &admin,
                &acme,
                lisa.clone(),
                scope,
                std::time::Duration::from_secs(7 * 86_400),
            )
            .await
            .map_err(svc_err)?;
        let support = Principal::support(lisa, grant.id.clone());
        service
            .get(&support, &ctx.clone().in_tenant(acme.clone()), "employee", "emp-1")
            .await
            .map_err(svc_err)?;
        let case = who("m.smit", &acme, "case_manager")?;
        let bg = ctx.clone().break_glass("employee unreachable, acute safety concern");
        service.get(&case, &bg, "absence", "ar-1").await.map_err(svc_err)?;
        r.line(format!(
            "9. access registry (in the database, every row authenticated): 3 roles assigned by a.visser; support.lisa read emp-1 under grant {} (7 days, general only); m.smit broke the glass into ar-1's medical fields{}",
            grant.id,
            if self.temporary { String::new() } else { format!("; see `kluis --data-dir {} access review --tenant {acme}`", self.dir.display()) }
        ));

        let ver = kluis_service::audit::verify(&env.store).await.map_err(svc_err)?;
        r.line(format!(
            "10. audit log: {} entries (every read, the refusal, rotation, shred and its erasure certificate, access changes), hash chain {}; {}",
            ver.entries,
            if ver.first_bad.is_none() { "verified".to_owned() } else { format!("BROKEN at {:?}", ver.first_bad) },
            match &ver.rows {
                Some(rows) if rows.is_ok() => format!("all {} rows are the ones Kluis wrote last (row log: {} changes)", rows.rows, rows.log_entries),
                Some(rows) => format!("ROWS DIFFER from the row log: {} records", rows.problems.len()),
                None => "rows not checked".to_owned(),
            }
        ));
        r.json = json!({
            "data_dir": self.dir, "temporary": self.temporary, "hr_diagnosis": shown(&hr_view, "diagnosis"),
            "reencrypted": sum, "audit_entries": ver.entries, "audit_ok": ver.is_ok(),
        });
        Ok(r)
    }
}
