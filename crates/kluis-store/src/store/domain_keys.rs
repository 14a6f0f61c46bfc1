//! Domain keys: created, unlocked, verified, rotated, rewrapped under a new root key, destroyed.

use super::*;

/// The updates that turn `old` rows into `new` records (same tenant and domain): every row whose
/// state, wrapped key or tag changed, each written only if still as read.
pub(super) fn key_row_updates(old: &[DomainKeyRow], new: &[DomainKeyRow]) -> Vec<KeyRowUpdate> {
    new.iter()
        .filter_map(|n| {
            let o = old.iter().find(|o| o.version == n.version)?;
            (o != n).then(|| KeyRowUpdate { old: o.clone(), new: n.clone() })
        })
        .collect()
}

impl<E: Engine> Store<E> {
    pub(super) fn records_from_rows(
        tenant: &TenantId,
        domain: &DomainName,
        rows: &[DomainKeyRow],
    ) -> Result<Vec<DomainKeyRecord>> {
        rows.iter()
            .map(|r| {
                let what = || format!("domain key {tenant}/{domain} v{}", r.version);
                let version = KeyVersion::from_stored(r.version)
                    .map_err(|_| StoreError::KeyIntegrity { what: what() })?;
                let state =
                    KeyState::parse(&r.state).map_err(|_| StoreError::KeyIntegrity { what: what() })?;
                let wrapped = match &r.wrapped {
                    Some(b) => Some(
                        WrappedKey::from_bytes(b).map_err(|_| StoreError::KeyIntegrity { what: what() })?,
                    ),
                    None => None,
                };
                let tag = match &r.tag {
                    Some(t) => {
                        Some(<[u8; 32]>::try_from(t.as_slice()).map_err(|_| StoreError::KeyIntegrity {
                            what: format!("{}: the state tag is not 32 bytes", what()),
                        })?)
                    }
                    None => None,
                };
                Ok(DomainKeyRecord {
                    tenant: tenant.clone(),
                    domain: domain.clone(),
                    version,
                    state,
                    wrapped,
                    tag,
                })
            })
            .collect()
    }

    pub(super) fn rows_from_records(records: &[DomainKeyRecord]) -> Result<Vec<DomainKeyRow>> {
        records
            .iter()
            .map(|r| {
                Ok(DomainKeyRow {
                    tenant: r.tenant.to_string(),
                    domain: r.domain.to_string(),
                    version: r.version.to_stored(),
                    state: r.state.as_str().to_owned(),
                    wrapped: r.wrapped.as_ref().map(WrappedKey::to_bytes).transpose()?,
                    tag: r.tag.map(|t| t.to_vec()),
                })
            })
            .collect()
    }

    pub(super) async fn domain_records(
        &self,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<Vec<DomainKeyRecord>> {
        let rows = self.backend.domain_keys(tenant.as_str(), domain.as_str()).await?;
        Self::records_from_rows(tenant, domain, &rows)
    }

    /// The rows of (tenant, domain), their records and the unwrapped set (state tags verified).
    pub(super) async fn verified_records(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<(Vec<DomainKeyRow>, Vec<DomainKeyRecord>, DomainKeySet)> {
        let rows = self.backend.domain_keys(tenant.as_str(), domain.as_str()).await?;
        let records = Self::records_from_rows(tenant, domain, &rows)?;
        if records.is_empty() {
            return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{tenant}/{domain}"),
            }));
        }
        // Two active versions, a destroyed one still wrapped, ...: the rows were altered.
        keys::validate_versions(&records)
            .map_err(|e| StoreError::KeyIntegrity { what: format!("domain key {tenant}/{domain}: {e}") })?;
        match DomainKeySet::unwrap(provider, &records).await {
            Ok(set) => Ok((rows, records, set)),
            Err(e) => Err(Self::name_failing_row(provider, &records, e).await),
        }
    }

    /// Turns a failed unwrap of a key set into an error naming the row that failed: a wrapped
    /// key the provider refuses (forged, altered, moved) is unwrapped alone to find it.
    pub(super) async fn name_failing_row(
        provider: &dyn RootKeyProvider,
        records: &[DomainKeyRecord],
        e: kluis_core::Error,
    ) -> StoreError {
        use kluis_core::{Error as E, ProviderErrorKind};
        let per_row = matches!(
            e,
            E::Decrypt
                | E::Malformed { .. }
                | E::UnsupportedVersion { .. }
                | E::Provider { kind: ProviderErrorKind::UnwrapRefused, .. }
        );
        let set_label =
            records.first().map(|r| format!("domain key {}/{}", r.tenant, r.domain)).unwrap_or_default();
        if !per_row {
            return key_integrity(set_label, e);
        }
        for r in records {
            let Some(w) = &r.wrapped else { continue };
            let Ok(aad) = keys::domain_key_ad(&r.tenant, &r.domain, r.version) else { continue };
            if let Err(one) = keys::unwrap_one(provider, &aad, w).await {
                return key_integrity(
                    format!("domain key {}/{} v{}: {one}", r.tenant, r.domain, r.version),
                    one,
                );
            }
        }
        key_integrity(format!("{set_label}: {e}"), e)
    }

    /// Creates version 1 of a domain key if the tenant has none for `domain`, after the rollback
    /// check ([`Store::check_rollback`]).
    pub async fn ensure_domain_key(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<()> {
        self.check_rollback(provider).await?;
        self.ensure_domain_key_unchecked(provider, tenant, domain).await
    }

    pub(super) async fn ensure_domain_key_unchecked(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<()> {
        if !self.backend.domain_keys(tenant.as_str(), domain.as_str()).await?.is_empty() {
            return Ok(());
        }
        self.require_active_root(provider).await?;
        let (rec, _key) = keys::new_domain_key(provider, tenant, domain, KeyVersion::FIRST).await?;
        match self.backend.put_domain_keys(Self::rows_from_records(&[rec])?, true, None).await {
            Ok(()) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates version 1 of every domain key of `domains` that `tenant` lacks, all in one
    /// database transaction with the audit entry `audit(domains created)`: the keys and their
    /// entry are committed together, or neither. Returns the domains created (none: nothing is
    /// written, not even the entry). Keys another process creates meanwhile are left to it.
    pub async fn add_domain_keys_audited(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domains: &[DomainName],
        audit: &(dyn Fn(&[DomainName]) -> AuditAppend + Send + Sync),
    ) -> Result<Vec<DomainName>> {
        self.check_rollback(provider).await?;
        let mut created = Vec::new();
        let mut records = Vec::new();
        for d in domains {
            if created.contains(d) || !self.backend.domain_keys(tenant.as_str(), d.as_str()).await?.is_empty()
            {
                continue;
            }
            self.require_active_root(provider).await?;
            let (rec, _key) = keys::new_domain_key(provider, tenant, d, KeyVersion::FIRST).await?;
            records.push(rec);
            created.push(d.clone());
        }
        if created.is_empty() {
            return Ok(created);
        }
        let entry = audit(&created);
        match self.backend.put_domain_keys(Self::rows_from_records(&records)?, true, Some(entry)).await {
            Ok(()) => Ok(created),
            // Another process created one of them: it logs its own; ours are made one by one.
            Err(StoreError::AlreadyExists { .. }) => {
                for d in domains {
                    self.ensure_domain_key_unchecked(provider, tenant, d).await?;
                }
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Loads and unwraps the domain key set of (tenant, domain), after the rollback check
    /// ([`Store::check_rollback`]). A wrapped key row altered or forged in the database, or a
    /// row's state, or the set of versions, changed outside Kluis gives
    /// [`StoreError::KeyIntegrity`] naming the row.
    pub async fn key_set(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<DomainKeySet> {
        self.check_rollback(provider).await?;
        self.key_set_unchecked(provider, tenant, domain).await
    }

    pub(super) async fn key_set_unchecked(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<DomainKeySet> {
        Ok(self.verified_records(provider, tenant, domain).await?.2)
    }

    /// **The administrative capability**: the keys of the named domains of a tenant for the
    /// whole tenant, reading and writing (creating version 1 of a missing domain key), after the
    /// rollback check ([`Store::check_rollback`]) and moving legacy rows. This is the one way to
    /// an [`Access`] without an authorization decision; it is for the administrative tools (the
    /// CLI, re-encryption, shredding, backups, migrations). An application's requests go through
    /// [`Store::access`] with the proof of an allowed decision.
    pub async fn admin_access(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domains: &[DomainName],
    ) -> Result<Access> {
        self.check_rollback(provider).await?;
        self.move_legacy(provider).await?;
        let mut access = Access::new(tenant.clone()).with(self.row_tag_set(provider, tenant).await?)?;
        for d in domains {
            self.ensure_domain_key_unchecked(provider, tenant, d).await?;
            access = access.with(self.key_set_unchecked(provider, tenant, d).await?)?;
        }
        Ok(access)
    }

    /// **The capability of one allowed decision**: exactly the keys of the proof's tenant and
    /// domains (a proof for `general` never loads the `medical` key), limited to the proof's
    /// target ([`Scope`]: a record, a collection, optionally one subject's) and, for a read,
    /// search or export, to reading only ([`Access::read_only`]). A write, delete or shred proof
    /// gives reading and writing within the target. A proof for an action that neither reveals
    /// nor changes data (`manage_keys`, `read_audit`, `manage_access`) gives no data keys:
    /// [`StoreError::OutOfScope`].
    ///
    /// Only `kluis_authz::Authorizer::check` makes an [`AccessProof`], so outside
    /// [`Store::admin_access`] every [`Access`] that opens or writes a value comes from here.
    pub async fn access(&self, provider: &dyn RootKeyProvider, proof: &AccessProof) -> Result<Access> {
        let writes = match proof.action() {
            Action::Read | Action::Search | Action::Export => false,
            Action::Write | Action::Delete | Action::Shred => true,
            other => {
                return Err(StoreError::OutOfScope {
                    what: "data keys".into(),
                    scope: format!("a {other} decision"),
                });
            }
        };
        let access = self.admin_access(provider, proof.tenant(), proof.domains()).await?;
        let own = |s: &Option<std::sync::Arc<str>>| s.as_deref().map(str::to_owned);
        let scope = match proof.target() {
            Target::Tenant => Scope::Tenant,
            Target::Collection { collection, subject } => {
                Scope::Collection { collection: collection.to_string(), subject: own(subject) }
            }
            Target::Record { collection, record, subject } => Scope::Record {
                collection: collection.to_string(),
                record: record.to_string(),
                subject: own(subject),
            },
        };
        let access = access.narrow(scope)?;
        Ok(if writes { access } else { access.read_only() })
    }

    /// The tenant's [`ROW_TAG_DOMAIN`] key set (created at its first use).
    pub(crate) async fn row_tag_set(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
    ) -> Result<DomainKeySet> {
        let d = DomainName::new(ROW_TAG_DOMAIN)?;
        self.ensure_domain_key_unchecked(provider, tenant, &d).await?;
        self.key_set_unchecked(provider, tenant, &d).await
    }

    /// Root key rotation, database side: rewraps every live domain key of every tenant under the
    /// provider's primary root version (call after rotating the keyring or KMS key; for a local
    /// keyring, after [`Store::activate_root_version`] made that version active, else
    /// [`StoreError::RootVersionNotActive`]). Once this is
    /// done and recorded, the old root version can be removed from the keyring, which makes every
    /// older database backup unreadable, including the copies of shredded subject keys in it.
    /// Returns how many keys were rewrapped.
    pub async fn rewrap_domain_keys(&self, provider: &dyn RootKeyProvider) -> Result<usize> {
        self.rewrap_domain_keys_with(provider, None).await
    }

    /// [`Store::rewrap_domain_keys`] with the audit entry `audit(rows rewrapped)` appended **in
    /// the same database transaction** as the rewrapped rows (in its own when there is nothing
    /// to rewrap): both are committed, or neither.
    pub async fn rewrap_domain_keys_audited(
        &self,
        provider: &dyn RootKeyProvider,
        audit: &(dyn Fn(usize) -> AuditAppend + Send + Sync),
    ) -> Result<usize> {
        self.rewrap_domain_keys_with(provider, Some(audit)).await
    }

    pub(super) async fn rewrap_domain_keys_with(
        &self,
        provider: &dyn RootKeyProvider,
        audit: Option<&(dyn Fn(usize) -> AuditAppend + Send + Sync)>,
    ) -> Result<usize> {
        self.check_rollback(provider).await?;
        self.require_active_root(provider).await?;
        let primary = provider.primary_version().await?;
        let rows = self.backend.all_domain_keys().await?;
        let mut out = Vec::new();
        for row in rows {
            let tenant = TenantId::new(row.tenant.clone())?;
            let domain = DomainName::new(row.domain.clone())?;
            let mut recs = Self::records_from_rows(&tenant, &domain, std::slice::from_ref(&row))?;
            let Some(rec) = recs.pop() else { continue };
            let Some(w) = &rec.wrapped else { continue };
            if w.root_key_id == provider.root_key_id() && w.root_version == primary {
                continue;
            }
            let what = format!("domain key {tenant}/{domain} v{}", rec.version);
            let new = keys::rewrap_domain_key(provider, provider, &rec)
                .await
                .map_err(|e| key_integrity(what, e))?;
            let old = row.wrapped.clone().unwrap_or_default();
            for r in Self::rows_from_records(std::slice::from_ref(&new))? {
                out.push((r, old.clone()));
            }
        }
        let n = out.len();
        // One transaction for every row, each written only if it still holds the bytes read:
        // a provider failure above writes nothing, and so does a concurrent change.
        let entry = audit.map(|a| a(n));
        if n > 0 {
            self.backend.rewrap_domain_key_rows(out, entry).await?;
        } else if let Some(e) = entry {
            self.backend.apply(vec![WriteOp::Audit(e)]).await?;
        }
        Ok(n)
    }

    /// Every domain key record of every tenant, as stored (a root migration through another
    /// provider rewraps them; [`Store::store_rewrapped`] writes the result).
    pub async fn all_domain_key_records(&self) -> Result<Vec<DomainKeyRecord>> {
        let mut out = Vec::new();
        for row in self.backend.all_domain_keys().await? {
            let tenant = TenantId::new(row.tenant.clone())?;
            let domain = DomainName::new(row.domain.clone())?;
            out.extend(Self::records_from_rows(&tenant, &domain, std::slice::from_ref(&row))?);
        }
        Ok(out)
    }

    /// Writes rewrapped domain key records (`new`, each a record of `old` with another wrapped
    /// key) in one transaction, each only if its row still holds the wrapped key of `old`
    /// ([`StoreError::KeyChanged`] and nothing written otherwise).
    pub async fn store_rewrapped(&self, old: &[DomainKeyRecord], new: &[DomainKeyRecord]) -> Result<()> {
        self.store_rewrapped_audited(old, new, None).await
    }

    /// [`Store::store_rewrapped`] with `audit` (if any) appended in the same database transaction
    /// as the rows (in its own when there is nothing to write).
    pub async fn store_rewrapped_audited(
        &self,
        old: &[DomainKeyRecord],
        new: &[DomainKeyRecord],
        audit: Option<AuditAppend>,
    ) -> Result<()> {
        let mut out = Vec::with_capacity(new.len());
        for n in new {
            let o = old
                .iter()
                .find(|o| o.tenant == n.tenant && o.domain == n.domain && o.version == n.version)
                .ok_or_else(|| {
                    StoreError::Invalid(format!(
                        "domain key {}/{} v{} was not read",
                        n.tenant, n.domain, n.version
                    ))
                })?;
            if (o.state, o.tag) != (n.state, n.tag) {
                return Err(StoreError::Invalid(format!(
                    "domain key {}/{} v{}: a rewrap changes the wrapped key only",
                    n.tenant, n.domain, n.version
                )));
            }
            let old_bytes = o.wrapped.as_ref().map(WrappedKey::to_bytes).transpose()?.unwrap_or_default();
            for r in Self::rows_from_records(std::slice::from_ref(n))? {
                out.push((r, old_bytes.clone()));
            }
        }
        if out.is_empty() {
            return match audit {
                Some(e) => self.backend.apply(vec![WriteOp::Audit(e)]).await,
                None => Ok(()),
            };
        }
        self.backend.rewrap_domain_key_rows(out, audit).await
    }

    // ---------------------------------------------------------------- rotation and re-encryption

    /// Per domain key version (of one tenant, or all): its state and what still depends on it.
    /// A version can be retired ([`Store::retire_domain_version`]) when it is not active and
    /// [`KeyUsage::is_unused`].
    pub async fn key_usage(&self, tenant: Option<&TenantId>) -> Result<Vec<KeyUsage>> {
        let rows = self.backend.key_usage(&self.layout, tenant.map(TenantId::as_str)).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            if r.tenant == META_TENANT {
                continue;
            }
            let what = || StoreError::KeyIntegrity {
                what: format!("domain key {}/{} v{}", r.tenant, r.domain, r.version),
            };
            out.push(KeyUsage {
                tenant: TenantId::new(r.tenant.clone())?,
                domain: DomainName::new(r.domain.clone())?,
                version: KeyVersion::from_stored(r.version).map_err(|_| what())?,
                state: match &r.state {
                    Some(s) => KeyState::parse(s).map_err(|_| what())?,
                    // A version used by subject keys but without a row of its own: gone.
                    None => KeyState::Destroyed,
                },
                subject_keys: r.subject_keys,
                records: r.records,
                documents: r.documents,
            });
        }
        Ok(out)
    }

    /// Rotates the domain key of (tenant, domain): a new version becomes active (new subject
    /// keys and blind indexes use it), the old active version becomes decrypt-only. Nothing is
    /// re-encrypted yet: run [`Store::reencrypt_step`] (with keys unlocked after the rotation)
    /// until it reports nothing remaining, then [`Store::retire_domain_version`]. Returns the
    /// new version.
    pub async fn rotate_domain_key(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
    ) -> Result<KeyVersion> {
        self.rotate_domain_key_with(provider, tenant, domain, None).await
    }

    /// [`Store::rotate_domain_key`] with the audit entry `audit(new version)` appended **in the
    /// same database transaction** as the new key row: both are committed, or neither.
    pub async fn rotate_domain_key_audited(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        audit: &(dyn Fn(KeyVersion) -> AuditAppend + Send + Sync),
    ) -> Result<KeyVersion> {
        self.rotate_domain_key_with(provider, tenant, domain, Some(audit)).await
    }

    pub(super) async fn rotate_domain_key_with(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        audit: Option<&(dyn Fn(KeyVersion) -> AuditAppend + Send + Sync)>,
    ) -> Result<KeyVersion> {
        self.check_rollback(provider).await?;
        let new_rec = self.rotate_verified(provider, tenant, domain, audit).await?;
        tracing::info!(tenant = %tenant, domain = %domain, version = new_rec.version.get(), "kluis-store domain key rotated");
        Ok(new_rec.version)
    }

    /// Rotation on a verified set: the new version is inserted and every live row retagged (the
    /// old active one turned decrypt-only) in one transaction.
    pub(super) async fn rotate_verified(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        audit: Option<&(dyn Fn(KeyVersion) -> AuditAppend + Send + Sync)>,
    ) -> Result<DomainKeyRecord> {
        Self::not_row_tags(domain)?;
        self.require_active_root(provider).await?;
        let (old_rows, mut records, set) = self.verified_records(provider, tenant, domain).await?;
        let (new_rec, _) = keys::rotate_domain_key(provider, &set, &mut records).await?;
        let mut rows = Self::rows_from_records(&records)?;
        let new_row = rows.pop().ok_or_else(|| StoreError::Invalid("empty rotation".into()))?;
        let entry = audit.map(|a| a(new_rec.version));
        self.backend.rotate_domain_keys(key_row_updates(&old_rows, &rows), new_row, entry).await?;
        Ok(new_rec)
    }

    /// Every row is tagged under the row_tags key's version 1: rotating it (and then destroying
    /// the version the rows need) is refused until re-tagging exists.
    pub(super) fn not_row_tags(domain: &DomainName) -> Result<()> {
        if domain.as_str() == ROW_TAG_DOMAIN {
            return Err(StoreError::Invalid(format!(
                "the {ROW_TAG_DOMAIN} key is not rotated or retired: every record row is tagged under it"
            )));
        }
        Ok(())
    }

    /// Destroys `version` on a verified set, retagging the remaining live rows, in the backend's
    /// one transaction that checks nothing uses the version.
    pub(super) async fn destroy_verified(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: KeyVersion,
        audit: Option<AuditAppend>,
    ) -> Result<()> {
        Self::not_row_tags(domain)?;
        let (old_rows, mut records, set) = self.verified_records(provider, tenant, domain).await?;
        let Some(rec) = records.iter_mut().find(|r| r.version == version) else {
            return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{tenant}/{domain} v{version}"),
            }));
        };
        match rec.state {
            KeyState::Destroyed => return Ok(()),
            KeyState::Active => {
                return Err(StoreError::ActiveKey {
                    tenant: tenant.to_string(),
                    domain: domain.to_string(),
                    version,
                });
            }
            _ => keys::destroy_domain_key(rec)?,
        }
        set.tag_records(&mut records, None)?;
        let rows = Self::rows_from_records(&records)?;
        let updates = key_row_updates(&old_rows, &rows);
        self.backend
            .destroy_domain_version(
                &self.layout,
                tenant.as_str(),
                domain.as_str(),
                version.to_stored(),
                updates,
                audit,
            )
            .await
    }

    /// Destroys version `version` of a domain key (state destroyed, wrapped bytes removed), in
    /// one transaction that first checks nothing depends on it: refused with
    /// [`StoreError::KeyInUse`] while any subject key, record cell, blind index or catalog
    /// document still uses it, and with [`StoreError::ActiveKey`] for the active version.
    pub async fn retire_domain_version(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: KeyVersion,
    ) -> Result<()> {
        self.retire_domain_version_with(provider, tenant, domain, version, None).await
    }

    /// [`Store::retire_domain_version`] with `audit` appended **in the same database
    /// transaction** as the destruction: both are committed, or neither (a version destroyed
    /// already commits nothing, the entry included).
    pub async fn retire_domain_version_audited(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: KeyVersion,
        audit: AuditAppend,
    ) -> Result<()> {
        self.retire_domain_version_with(provider, tenant, domain, version, Some(audit)).await
    }

    pub(super) async fn retire_domain_version_with(
        &self,
        provider: &dyn RootKeyProvider,
        tenant: &TenantId,
        domain: &DomainName,
        version: KeyVersion,
        audit: Option<AuditAppend>,
    ) -> Result<()> {
        self.check_rollback(provider).await?;
        self.destroy_verified(provider, tenant, domain, version, audit).await?;
        tracing::info!(tenant = %tenant, domain = %domain, version = version.get(), "kluis-store domain key version retired");
        Ok(())
    }

    // ---------------------------------------------------------------- schema migration
}
