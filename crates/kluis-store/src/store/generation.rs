//! The keyring generation recorded in the database (rollback detection).

use super::*;

/// Reserved tenant and domain of the store's own metadata key.
pub(super) const META_TENANT: &str = "_kluis";
pub(super) const META_DOMAIN: &str = "meta";
pub(super) const META_GENERATION: &str = "keyring_generation";
/// First byte of the generation record's format 1 (docs/FORMAT.md §8.6): read, no longer written.
pub(super) const GENERATION_RECORD_V1: u8 = 0x01;
/// First byte of the generation record's format 2 (docs/FORMAT.md §8.6).
pub(super) const GENERATION_RECORD_V2: u8 = 0x02;

/// What the database records about the local keyring (docs/FORMAT.md §8.6), sealed under the
/// store's metadata key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyringRecord {
    /// The newest keyring generation recorded: a keyring newer than this is
    /// [`kluis_core::Error::DatabaseBehindKeyring`] until recorded.
    pub newest: u64,
    /// The oldest keyring generation still accepted: an older one is
    /// [`kluis_core::Error::KeyringRollback`]. Equal to `newest` unless running instances
    /// reported an older keyring file when the record was written (they keep working while a
    /// new root key version is rolled out).
    pub floor: u64,
    /// The root key version new domain keys are wrapped under, activated by
    /// [`Store::activate_root_version`] (`None` in a record written before format 2).
    pub active: Option<KeyVersion>,
}

impl KeyringRecord {
    /// `u64_be(newest) || u64_be(floor) || u32_be(active)`.
    pub(super) fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..8].copy_from_slice(&self.newest.to_be_bytes());
        out[8..16].copy_from_slice(&self.floor.to_be_bytes());
        out[16..].copy_from_slice(&self.active.map_or(0, KeyVersion::get).to_be_bytes());
        out
    }

    /// The 20 bytes of [`KeyringRecord::encode`]; `None` if malformed (floor above newest,
    /// version 0).
    pub(super) fn decode(b: &[u8]) -> Option<Self> {
        let (newest, rest) = b.split_first_chunk::<8>()?;
        let (floor, rest) = rest.split_first_chunk::<8>()?;
        let active: [u8; 4] = rest.try_into().ok()?;
        let (newest, floor) = (u64::from_be_bytes(*newest), u64::from_be_bytes(*floor));
        let active = KeyVersion::new(u32::from_be_bytes(active)).ok()?;
        (floor <= newest).then_some(Self { newest, floor, active: Some(active) })
    }

    fn of_generation(g: u64) -> Self {
        Self { newest: g, floor: g, active: None }
    }
}

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
    /// generation (the local keyring) it compares that generation with the [`KeyringRecord`] this
    /// database keeps, sealed under the store's metadata key so it cannot be forged:
    /// - a keyring older than the record's floor: [`kluis_core::Error::KeyringRollback`];
    /// - a keyring newer than the record's newest generation (an older record put back, an older
    ///   database restored, or a keyring change not recorded):
    ///   [`kluis_core::Error::DatabaseBehindKeyring`];
    /// - no record while the database holds tenants' domain keys (the record was deleted, or the
    ///   database predates it): [`StoreError::MetadataMissing`]; on a database without any the
    ///   generation is recorded now (first use).
    ///
    /// A keyring and a database rolled back together to a matching older pair are not detected
    /// here (SECURITY.md). Providers without a generation (KMS) pass. A store with instance
    /// reports enabled ([`Store::with_instance_reports`]) first renews its report when one is
    /// due.
    pub async fn check_rollback(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        self.report_if_due(provider).await?;
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
    /// older than the record's floor is [`kluis_core::Error::KeyringRollback`]; a missing record on a
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
                    let active = Some(provider.primary_version().await?);
                    self.write_record(
                        provider,
                        KeyringRecord { active, ..KeyringRecord::of_generation(keyring) },
                    )
                    .await?;
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
        let (format, clear, sealed_part) = match sealed.split_first() {
            // Format 2: 0x02 || record (20 bytes) || sealed(record).
            Some((&GENERATION_RECORD_V2, rest)) => match rest.split_first_chunk::<20>() {
                Some((r, s)) => match KeyringRecord::decode(r) {
                    Some(r) => (2, Some(r), s),
                    None => return Err(StoreError::MetadataTampered(META_GENERATION)),
                },
                None => return Err(StoreError::MetadataTampered(META_GENERATION)),
            },
            // Format 1: 0x01 || u64_be(generation) || sealed(u64_be(generation)): the value in
            // clear lets a keyring too old to open the record (it lacks the root key version the
            // metadata key is wrapped under now) be recognised.
            Some((&GENERATION_RECORD_V1, rest)) => match rest.split_first_chunk::<8>() {
                Some((g, s)) => (1, Some(KeyringRecord::of_generation(u64::from_be_bytes(*g))), s),
                None => return Err(StoreError::MetadataTampered(META_GENERATION)),
            },
            // Written before format 1: the sealed value alone.
            _ => (0, None, sealed.as_slice()),
        };
        let verified = self.generation_seen.lock().ok().and_then(|g| g.clone());
        let opened = match verified {
            // The same bytes were opened before: no need to unwrap the metadata key again.
            Some((r, bytes)) if ct_eq(&bytes, &sealed) => Ok(r),
            _ => self.open_generation(provider, sealed_part, format).await,
        };
        let record = match (opened, clear) {
            (Ok(r), Some(c)) if r != c => return Err(StoreError::MetadataTampered(META_GENERATION)),
            (Ok(r), _) => {
                if let Ok(mut seen) = self.generation_seen.lock() {
                    *seen = Some((r, sealed.clone()));
                }
                r
            }
            // A keyring older than the record cannot open it once a root rotation rewrapped the
            // metadata key: that failure is the rollback.
            (Err(_), Some(c)) if keyring < c.floor => {
                return Err(StoreError::Core(kluis_core::Error::KeyringRollback {
                    keyring,
                    database: c.floor,
                }));
            }
            (Err(e), _) => return Err(e),
        };
        Ok(keys::check_generation_range(keyring, record.floor, record.newest)?)
    }

    /// The record as last verified by the rollback check of this store, if any.
    pub(super) fn seen_record(&self) -> Option<KeyringRecord> {
        self.generation_seen.lock().ok().and_then(|g| g.as_ref().map(|(r, _)| *r))
    }

    /// The database's keyring record, after the rollback check ([`Store::check_rollback`]);
    /// `None` for a provider without a generation (KMS) or before the first record.
    pub async fn keyring_record(&self, provider: &dyn RootKeyProvider) -> Result<Option<KeyringRecord>> {
        if provider.generation().is_none() {
            return Ok(None);
        }
        self.check_rollback(provider).await?;
        Ok(self.seen_record())
    }

    pub(super) async fn open_generation(
        &self,
        provider: &dyn RootKeyProvider,
        sealed: &[u8],
        format: u8,
    ) -> Result<KeyringRecord> {
        let set = self.meta_set(provider).await?;
        let ctx = Self::meta_ctx(set.tenant(), set.domain());
        let pt = set.open(&ctx, sealed).map_err(|_| StoreError::MetadataTampered(META_GENERATION))?;
        let pt = pt.expose_secret();
        let record = if format == 2 {
            KeyringRecord::decode(pt)
        } else {
            pt.try_into().ok().map(|b: [u8; 8]| KeyringRecord::of_generation(u64::from_be_bytes(b)))
        };
        record.ok_or(StoreError::MetadataTampered(META_GENERATION))
    }

    /// Records the provider's current keyring generation: after a keyring change (root rotation,
    /// new passphrase), at setup, or after checking why the database is behind. Refuses a keyring
    /// older than the record ([`kluis_core::Error::KeyringRollback`]). The active root key
    /// version stays as it was ([`Store::activate_root_version`] changes it); the floor rises
    /// to the oldest generation a running instance reported ([`Store::with_instance_reports`]),
    /// or to this generation when none did.
    pub async fn record_keyring_generation(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        let Some(g) = provider.generation() else { return Ok(()) };
        let current = match self.check_keyring_generation(provider).await {
            Ok(GenerationStatus::InSync) => return Ok(()),
            Ok(GenerationStatus::DatabaseBehind { .. }) => self.seen_record(),
            Err(StoreError::MetadataMissing(_)) => None,
            Err(e) => return Err(e),
        };
        let held = provider.held_versions();
        let active = match current.and_then(|r| r.active) {
            Some(a) if held.as_ref().is_none_or(|h| h.contains(&a)) => a,
            _ => self.derive_active(provider).await?,
        };
        let floor =
            self.new_floor(provider, current.map_or(0, |r| r.floor), g, DEFAULT_INSTANCE_WINDOW).await?;
        self.write_record(provider, KeyringRecord { newest: g, floor, active: Some(active) }).await
    }

    /// The active root key version of a database whose record does not name one (written
    /// before format 2, or by another keyring): the newest root version of this provider that
    /// wraps a domain key and that the provider holds; its primary version if none does.
    async fn derive_active(&self, provider: &dyn RootKeyProvider) -> Result<KeyVersion> {
        let held = provider.held_versions();
        let used = self
            .all_domain_key_records()
            .await?
            .into_iter()
            .filter_map(|r| r.wrapped)
            .filter(|w| w.root_key_id == provider.root_key_id())
            .map(|w| w.root_version)
            .filter(|v| held.as_ref().is_none_or(|h| h.contains(v)))
            .max();
        match used {
            Some(v) => Ok(v),
            None => Ok(provider.primary_version().await?),
        }
    }

    /// The floor of a record of generation `newest`: the oldest generation reported by a running
    /// instance of this root key (never below `old`, never above `newest`); `newest` when no
    /// instance reported one.
    pub(super) async fn new_floor(
        &self,
        provider: &dyn RootKeyProvider,
        old: u64,
        newest: u64,
        window: Duration,
    ) -> Result<u64> {
        let oldest_running = self
            .instances(window)
            .await?
            .into_iter()
            .filter(|i| i.root_key_id == provider.root_key_id())
            .filter_map(|i| i.generation)
            .min();
        Ok(oldest_running.map_or(newest, |o| o.max(old)).min(newest))
    }

    /// Format 2: `0x02 || body || sealed(body)` under the metadata key `set`.
    fn sealed_record(set: &DomainKeySet, r: &KeyringRecord) -> Result<Vec<u8>> {
        let ctx = Self::meta_ctx(set.tenant(), set.domain());
        let body = r.encode();
        let mut record = Vec::with_capacity(1 + 20 + 92);
        record.push(GENERATION_RECORD_V2);
        record.extend_from_slice(&body);
        record.extend_from_slice(&set.seal(&ctx, &body)?);
        Ok(record)
    }

    pub(super) async fn write_record(&self, provider: &dyn RootKeyProvider, r: KeyringRecord) -> Result<()> {
        let record = Self::sealed_record(&self.meta_set(provider).await?, &r)?;
        self.backend.set_meta(META_GENERATION, record.clone()).await?;
        if let Ok(mut seen) = self.generation_seen.lock() {
            *seen = Some((r, record));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::Sqlite;

    fn meta_set(key: Vec<u8>, version: u32) -> DomainKeySet {
        crate::store::tests::set_of(META_TENANT, META_DOMAIN, version, key)
    }

    /// Prints a new vector (run by hand with `--ignored --nocapture` when the format changes).
    #[test]
    #[ignore = "writes a vector"]
    fn make_keyring_record_vector() {
        let key: Vec<u8> = (0x40u8..0x60).collect();
        let set = meta_set(key.clone(), 1);
        let r = KeyringRecord { newest: 7, floor: 5, active: Some(KeyVersion::new(3).unwrap()) };
        let body = r.encode();
        let record = Store::<Sqlite>::sealed_record(&set, &r).unwrap();
        println!("key {}\nbody {}\nrecord {}", hex::encode(key), hex::encode(body), hex::encode(record));
    }

    /// The committed keyring record vector (tests/vectors/keyring_record_v2.json): the clear part
    /// decodes to the values, the sealed part opens under the metadata key to the same bytes, and
    /// malformed clear parts are refused.
    #[test]
    fn keyring_record_vector() {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../../../../tests/vectors/keyring_record_v2.json")).unwrap();
        let hexf = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
        let record = hexf("record");
        assert_eq!(record[0], GENERATION_RECORD_V2);
        let body = &record[1..21];
        assert_eq!(body, hexf("body").as_slice());
        let r = KeyringRecord::decode(body).unwrap();
        assert_eq!(r.newest, v["newest"].as_u64().unwrap());
        assert_eq!(r.floor, v["floor"].as_u64().unwrap());
        assert_eq!(r.active.map(|a| u64::from(a.get())), v["active"].as_u64());
        assert_eq!(r.encode().as_slice(), body);
        let set = meta_set(hexf("meta_key"), v["meta_key_version"].as_u64().unwrap() as u32);
        let ctx = Store::<Sqlite>::meta_ctx(set.tenant(), set.domain());
        assert_eq!(set.open(&ctx, &record[21..]).unwrap().expose_secret() as &[u8], body);
        // Floor above newest, active version 0, a wrong length: malformed.
        let mut b = body.to_vec();
        b[15] = 8;
        assert_eq!(KeyringRecord::decode(&b), None);
        let mut b = body.to_vec();
        b[19] = 0;
        assert_eq!(KeyringRecord::decode(&b), None);
        assert_eq!(KeyringRecord::decode(&body[..19]), None);
    }
}
