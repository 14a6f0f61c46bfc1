//! The keyring generation recorded in the database (rollback detection).

use super::*;

/// Reserved tenant and domain of the store's own metadata key.
pub(super) const META_TENANT: &str = "_kluis";
pub(super) const META_DOMAIN: &str = "meta";
pub(super) const META_GENERATION: &str = "keyring_generation";
/// First byte of the generation record's format 1 (docs/FORMAT.md §8.6).
pub(super) const GENERATION_RECORD_V1: u8 = 0x01;

impl<E: Engine> Store<E> {
    pub(super) async fn meta_set(&self, provider: &dyn RootKeyProvider) -> Result<DomainKeySet> {
        let tenant = TenantId::new(META_TENANT)?;
        let domain = DomainName::new(META_DOMAIN)?;
        self.ensure_domain_key_unchecked(provider, &tenant, &domain).await?;
        self.key_set_unchecked(provider, &tenant, &domain).await
    }

    pub(super) fn meta_ctx<'a>(tenant: &'a TenantId, domain: &'a DomainName) -> Context<'a> {
        Context { tenant, domain, collection: "kluis_meta", field: META_GENERATION, record: "database" }
    }

    /// The rollback check, run whenever keys are unlocked ([`Store::admin_access`], [`Store::access`], [`Store::key_set`]
    /// and every operation that unwraps or rewraps domain keys). For a provider that keeps a
    /// generation (the local keyring) it compares that generation with the one this database
    /// recorded, sealed under the store's metadata key so it cannot be forged:
    /// - a keyring older than the record: [`kluis_core::Error::KeyringRollback`];
    /// - a keyring newer than the record (an older record put back, an older database restored,
    ///   or a keyring change not recorded): [`kluis_core::Error::DatabaseBehindKeyring`];
    /// - no record while the database holds tenants' domain keys (the record was deleted, or the
    ///   database predates it): [`StoreError::MetadataMissing`]; on a database without any the
    ///   generation is recorded now (first use).
    ///
    /// A keyring and a database rolled back together to a matching older pair are not detected
    /// here (SECURITY.md). Providers without a generation (KMS) pass.
    pub async fn check_rollback(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        match self.check_keyring_generation(provider).await? {
            GenerationStatus::InSync => Ok(()),
            GenerationStatus::DatabaseBehind { keyring, database } => {
                Err(StoreError::Core(kluis_core::Error::DatabaseBehindKeyring { keyring, database }))
            }
        }
    }

    /// Compares the provider's keyring generation with the one this database recorded (sealed, so
    /// an edit by a DBA is detected) and reports the outcome: [`GenerationStatus::InSync`], or
    /// [`GenerationStatus::DatabaseBehind`] (which [`Store::check_rollback`] refuses). A keyring
    /// older than the record is [`kluis_core::Error::KeyringRollback`]; a missing record on a
    /// database that holds domain keys is [`StoreError::MetadataMissing`]. On a database without
    /// domain keys the generation is recorded (first use).
    pub async fn check_keyring_generation(&self, provider: &dyn RootKeyProvider) -> Result<GenerationStatus> {
        let Some(keyring) = provider.generation() else { return Ok(GenerationStatus::InSync) };
        let sealed = match self.backend.meta(META_GENERATION).await? {
            Some(s) => s,
            None => {
                // First use: no tenant key yet (the metadata key may exist: another process that
                // is recording the generation right now creates it first).
                if self.backend.tenants().await?.iter().all(|t| t == META_TENANT) {
                    self.write_generation(provider, keyring).await?;
                    return Ok(GenerationStatus::InSync);
                }
                // Tenant keys are created only after the generation is recorded: one that
                // another process recorded and then made tenant keys after our first read is
                // there now. Missing still, it is missing.
                self.backend
                    .meta(META_GENERATION)
                    .await?
                    .ok_or(StoreError::MetadataMissing(META_GENERATION))?
            }
        };
        let (clear, sealed_part) = match sealed.split_first() {
            // Format 1: 0x01 || u64_be(generation) || sealed(u64_be(generation)): the value in
            // clear lets a keyring too old to open the record (it lacks the root key version the
            // metadata key is wrapped under now) be recognised.
            Some((&GENERATION_RECORD_V1, rest)) => match rest.split_first_chunk::<8>() {
                Some((g, s)) => (Some(u64::from_be_bytes(*g)), s),
                None => return Err(StoreError::MetadataTampered(META_GENERATION)),
            },
            // Written before format 1: the sealed value alone.
            _ => (None, sealed.as_slice()),
        };
        let verified = self.generation_seen.lock().ok().and_then(|g| g.clone());
        let opened = match verified {
            // The same bytes were opened before: no need to unwrap the metadata key again.
            Some((g, bytes)) if ct_eq(&bytes, &sealed) => Ok(g),
            _ => self.open_generation(provider, sealed_part).await,
        };
        let database = match (opened, clear) {
            (Ok(g), Some(c)) if g != c => return Err(StoreError::MetadataTampered(META_GENERATION)),
            (Ok(g), _) => {
                if let Ok(mut seen) = self.generation_seen.lock() {
                    *seen = Some((g, sealed.clone()));
                }
                g
            }
            // A keyring older than the record cannot open it once a root rotation rewrapped the
            // metadata key: that failure is the rollback.
            (Err(_), Some(c)) if keyring < c => {
                return Err(StoreError::Core(kluis_core::Error::KeyringRollback { keyring, database: c }));
            }
            (Err(e), _) => return Err(e),
        };
        Ok(keys::check_generation(keyring, database)?)
    }

    pub(super) async fn open_generation(&self, provider: &dyn RootKeyProvider, sealed: &[u8]) -> Result<u64> {
        let set = self.meta_set(provider).await?;
        let ctx = Self::meta_ctx(set.tenant(), set.domain());
        let pt = set.open(&ctx, sealed).map_err(|_| StoreError::MetadataTampered(META_GENERATION))?;
        let b: [u8; 8] =
            pt.expose_secret().try_into().map_err(|_| StoreError::MetadataTampered(META_GENERATION))?;
        Ok(u64::from_be_bytes(b))
    }

    /// Records the provider's current keyring generation: after a keyring change (root rotation,
    /// new passphrase), at setup, or after checking why the database is behind. Refuses a keyring
    /// older than the record ([`kluis_core::Error::KeyringRollback`]).
    pub async fn record_keyring_generation(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        let Some(g) = provider.generation() else { return Ok(()) };
        match self.check_keyring_generation(provider).await {
            Ok(GenerationStatus::InSync) => Ok(()),
            Ok(GenerationStatus::DatabaseBehind { .. }) | Err(StoreError::MetadataMissing(_)) => {
                self.write_generation(provider, g).await
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn write_generation(&self, provider: &dyn RootKeyProvider, g: u64) -> Result<()> {
        let set = self.meta_set(provider).await?;
        let ctx = Self::meta_ctx(set.tenant(), set.domain());
        let mut record = Vec::with_capacity(9 + 8 + 80);
        record.push(GENERATION_RECORD_V1);
        record.extend_from_slice(&g.to_be_bytes());
        record.extend_from_slice(&set.seal(&ctx, &g.to_be_bytes())?);
        self.backend.set_meta(META_GENERATION, record.clone()).await?;
        if let Ok(mut seen) = self.generation_seen.lock() {
            *seen = Some((g, record));
        }
        Ok(())
    }
}
