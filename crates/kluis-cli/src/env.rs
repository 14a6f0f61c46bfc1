//! Opening the parts a command works on: root key provider, store, blob store.
//!
//! The store and blob backends are generic (their traits are not object-safe), so a command is a
//! [`Job`] run once per concrete (database engine, blob backend) pair by [`run_job`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kluis_blob::{BlobBackend, DocumentVault, LocalDir};
use kluis_core::keys::{BoxFuture, UnwrapRequest};
use kluis_core::{DomainName, KeyMaterial, KeyVersion, RootKeyProvider, TenantId, WrappedKey};
use kluis_keyring::KeyringFile;
use kluis_kms::AnyProvider;
use kluis_store::{Access, Engine, Schema, Store};
use tokio::sync::OnceCell;

use crate::config::{self, BlobUrl, Settings, StoreUrl};
use crate::error::{CliError, Result, io};

/// The root key provider: the local keyring file (kept open so `rotate-root` can write it) or
/// any other provider.
#[derive(Debug)]
pub enum Root {
    /// The local keyring file.
    Keyring(KeyringFile),
    /// A KMS provider.
    Other(AnyProvider),
}

impl Root {
    /// As a provider.
    pub fn provider(&self) -> &dyn RootKeyProvider {
        match self {
            Self::Keyring(k) => k.keyring(),
            Self::Other(p) => p,
        }
    }

    /// Opens the root key URL (asking for the passphrase of a `keyring://` root).
    pub async fn open(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("keyring://") {
            let path = PathBuf::from(path);
            if !path.exists() {
                return Err(CliError::Keyring(kluis_keyring::KeyringError::NotFound(path)));
            }
            let pass = config::passphrase("keyring passphrase: ", false)?;
            let file = KeyringFile::open(&path, config::keyring_secret(&pass))?;
            return Ok(Self::Keyring(file));
        }
        Ok(Self::Other(AnyProvider::connect(url, None, kluis_kms::RetryConfig::default()).await?))
    }
}

impl RootKeyProvider for Root {
    fn root_key_id(&self) -> &str {
        self.provider().root_key_id()
    }

    fn primary_version(&self) -> BoxFuture<'_, kluis_core::Result<KeyVersion>> {
        self.provider().primary_version()
    }

    fn wrap<'a>(
        &'a self,
        aad: &'a [u8],
        key: &'a KeyMaterial,
    ) -> BoxFuture<'a, kluis_core::Result<WrappedKey>> {
        self.provider().wrap(aad, key)
    }

    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, kluis_core::Result<Vec<kluis_core::Result<KeyMaterial>>>> {
        self.provider().unwrap_batch(items)
    }

    fn generation(&self) -> Option<u64> {
        self.provider().generation()
    }

    fn held_versions(&self) -> Option<Vec<KeyVersion>> {
        self.provider().held_versions()
    }

    fn is_legacy(&self, wrapped: &WrappedKey) -> bool {
        self.provider().is_legacy(wrapped)
    }

    fn unwrap_legacy<'a>(
        &'a self,
        aad: &'a [u8],
        wrapped: &'a WrappedKey,
    ) -> BoxFuture<'a, kluis_core::Result<KeyMaterial>> {
        self.provider().unwrap_legacy(aad, wrapped)
    }
}

/// What a command works on.
#[derive(Debug)]
pub struct Env<B: Engine, O: BlobBackend> {
    /// The resolved settings.
    pub settings: Settings,
    /// The store.
    pub store: Arc<Store<B>>,
    /// The blob backend.
    pub blobs: O,
    root: OnceCell<Arc<Root>>,
}

impl<B: Engine, O: BlobBackend + Clone> Env<B, O> {
    /// Builds an environment from opened parts.
    pub fn new(settings: Settings, store: Arc<Store<B>>, blobs: O) -> Self {
        Self { settings, store, blobs, root: OnceCell::new() }
    }

    /// Builds an environment with an already opened root.
    pub fn with_root(settings: Settings, store: Arc<Store<B>>, blobs: O, root: Root) -> Self {
        Self { settings, store, blobs, root: OnceCell::new_with(Some(Arc::new(root))) }
    }

    /// The root (opened, and the passphrase asked, on first use).
    pub async fn root(&self) -> Result<&Arc<Root>> {
        self.root.get_or_try_init(|| async { Root::open(&self.settings.root).await.map(Arc::new) }).await
    }

    /// The root as a provider.
    pub async fn provider(&self) -> Result<&dyn RootKeyProvider> {
        Ok(self.root().await?.provider())
    }

    /// The root, mutably (for `rotate-root`).
    pub async fn root_mut(&mut self) -> Result<&mut Root> {
        self.root().await?;
        self.root.get_mut().and_then(Arc::get_mut).ok_or(CliError::NotAvailable("exclusive root key access"))
    }

    /// The service facade over this store and root (for audited operations).
    pub async fn service(&self) -> Result<kluis_service::Service<B>> {
        let root: Arc<dyn RootKeyProvider> = Arc::clone(self.root().await?) as Arc<dyn RootKeyProvider>;
        Ok(kluis_service::Service::new(
            kluis_service::authz::Authorizer::builtin(),
            Arc::clone(&self.store),
            root,
        ))
    }

    /// Records an administrative event in the audit log through the service facade
    /// ([`kluis_service::Service::record_admin`]; same hash chain as data access).
    pub async fn audit_admin(&self, actor: &str, event: kluis_service::AdminEvent) -> Result<()> {
        let service = self.service().await?;
        let who = kluis_service::AdminActor::new(actor, "kluis-cli", "administration");
        service.record_admin(&who, event).await.map_err(|e| CliError::Service(e.to_string()))
    }

    /// The document vault over the blob backend.
    pub fn vault(&self) -> DocumentVault<O> {
        DocumentVault::new(self.blobs.clone())
    }

    /// The documents catalog (store rows joined with the vault).
    pub fn documents(&self) -> kluis_blob::catalog::Documents<B, O> {
        kluis_blob::catalog::Documents::new(Arc::clone(&self.store), self.vault())
    }

    /// The tenants that have domain keys.
    pub async fn tenants(&self) -> Result<Vec<TenantId>> {
        Ok(self.store.tenants().await?)
    }

    /// Checks that the tenant exists (has domain keys).
    pub async fn tenant(&self, tenant: &str) -> Result<TenantId> {
        let t = TenantId::new(tenant).map_err(|e| CliError::Usage(format!("tenant {tenant:?}: {e}")))?;
        if !self.tenants().await?.contains(&t) {
            return Err(CliError::UnknownTenant(tenant.to_owned()));
        }
        Ok(t)
    }

    /// The domains a tenant has keys for.
    pub async fn tenant_domains(&self, tenant: &TenantId) -> Result<Vec<DomainName>> {
        Ok(self.store.tenant_domains(tenant).await?)
    }

    /// Does the subject have a document, or a record in any collection, that `access` reaches?
    pub async fn subject_exists(&self, access: &Access, subject: &str) -> Result<bool> {
        if !self.store.documents_of_subject(access, subject).await?.is_empty() {
            return Ok(true);
        }
        for c in self.store.schema().collections() {
            let page = self.store.list(access, &c.name, Some(subject), None, 1).await?;
            if !page.records.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks that the tenant has the domain.
    pub async fn domain(&self, tenant: &TenantId, domain: &str) -> Result<DomainName> {
        let d = DomainName::new(domain).map_err(|e| CliError::Usage(format!("domain {domain:?}: {e}")))?;
        if !self.tenant_domains(tenant).await?.contains(&d) {
            return Err(CliError::UnknownDomain { tenant: tenant.to_string(), domain: domain.to_owned() });
        }
        Ok(d)
    }

    /// Administrative access to every domain the tenant has (no key is created but the row tag
    /// key, which every record read and write needs); moves legacy rows first.
    pub async fn admin_access(&self, tenant: &TenantId) -> Result<Access> {
        let provider = self.provider().await?;
        let domains = self.tenant_domains(tenant).await?;
        Ok(self.store.admin_access(provider, tenant, &domains).await?)
    }
}

/// A command, run against concrete backends.
pub trait Job {
    /// What it returns.
    type Out;
    /// Runs it.
    fn run<B: Engine, O: BlobBackend + Clone + 'static>(
        self,
        env: Env<B, O>,
    ) -> impl std::future::Future<Output = Result<Self::Out>>;
}

/// Reads the schema file.
pub fn load_schema(path: &Path) -> Result<Schema> {
    let text = std::fs::read_to_string(path).map_err(io("read schema", path))?;
    Ok(Schema::from_toml(&text)?)
}

async fn sqlite(path: &Path) -> Result<sqlx::SqlitePool> {
    Ok(kluis_store::Sqlite::open(path).await?)
}

async fn postgres(url: &str) -> Result<sqlx::PgPool> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .map_err(|e| db_error(url, &e))?;
    Ok(pool)
}

async fn mysql(url: &str) -> Result<sqlx::MySqlPool> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(8)
        .connect(url)
        .await
        .map_err(|e| db_error(url, &e))?;
    Ok(pool)
}

fn db_error(url: &str, e: &sqlx::Error) -> CliError {
    // sqlx messages may quote the URL; keep only its kind of failure.
    let reason = match e {
        sqlx::Error::Io(io) => io.to_string(),
        sqlx::Error::Tls(_) => "tls handshake failed".to_owned(),
        sqlx::Error::Database(d) => d.message().to_owned(),
        sqlx::Error::PoolTimedOut => "timed out".to_owned(),
        sqlx::Error::Configuration(_) => "invalid url".to_owned(),
        _ => "connection failed".to_owned(),
    };
    CliError::Database { url: config::redact_url(url), reason: config::one_line(&reason) }
}

/// Opens the blob backend of `settings`.
async fn open_blobs_then<B: Engine, J: Job>(settings: Settings, store: Store<B>, job: J) -> Result<J::Out> {
    let store = Arc::new(store);
    match settings.blobs.clone() {
        BlobUrl::Dir(p) => {
            let dir = LocalDir::open(p).await?;
            job.run(Env::new(settings, store, dir)).await
        }
        BlobUrl::Azure(url) => {
            let opts = kluis_blob::azure::AzureOptions::default();
            let az = if url.contains("sig=") {
                kluis_blob::azure::AzureBlob::with_sas_url(&url, &opts)?
            } else {
                kluis_blob::azure::AzureBlob::with_managed_identity(&url, &opts)?
            };
            job.run(Env::new(settings, store, az)).await
        }
    }
}

/// Opens the store of `settings` (running migrations when `migrate`), then the blob backend, and
/// runs `job` on them.
pub async fn run_job<J: Job>(settings: Settings, migrate: bool, job: J) -> Result<J::Out> {
    let schema = load_schema(&settings.schema)?;
    match settings.store.clone() {
        StoreUrl::Sqlite(p) => {
            if !migrate && !p.exists() {
                return Err(CliError::Io {
                    op: "open database",
                    path: p,
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            let s = Store::new(sqlite(&p).await?, schema);
            s.migrate().await?;
            open_blobs_then(settings, s, job).await
        }
        StoreUrl::Postgres(u) => {
            let s = Store::new(postgres(&u).await?, schema);
            s.migrate().await?;
            open_blobs_then(settings, s, job).await
        }
        StoreUrl::MySql(u) => {
            let s = Store::new(mysql(&u).await?, schema);
            s.migrate().await?;
            open_blobs_then(settings, s, job).await
        }
    }
}
