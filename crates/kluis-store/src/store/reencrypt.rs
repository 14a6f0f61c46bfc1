//! Re-encryption onto a domain's newest key version, step by step.

use super::*;

impl<E: Engine> Store<E> {
    /// Rotates the domain key of `domain`, moves every subject key and blind index of the tenant
    /// onto the new version, then destroys all older versions. Returns the destroyed versions.
    pub async fn retire_domain_versions(
        &self,
        provider: &dyn RootKeyProvider,
        access: &mut Access,
        domain: &DomainName,
    ) -> Result<Vec<KeyVersion>> {
        let mut tags = Tags::new();
        let tenant = access.tenant.clone();
        let new_rec = self.rotate_verified(provider, &tenant, domain, None).await?;
        let set = self.key_set(provider, &tenant, domain).await?;
        let records = self.domain_records(&tenant, domain).await?;
        // Rewrap the remaining subject keys under the new version.
        let rows = self.backend.all_subject_keys(tenant.as_str(), domain.as_str()).await?;
        let mut rewrapped = Vec::with_capacity(rows.len());
        for row in &rows {
            let rec = Self::subject_record(row, &tenant, &set)?;
            let what = format!("subject key {tenant}/{domain}/{}", row.subject);
            let new = set.rewrap_subject_key(&rec).map_err(|e| key_integrity(what, e))?;
            rewrapped.push(SubjectKeyRow {
                wrapped: new.wrapped,
                wrap_version: new_rec.version.to_stored(),
                ..row.clone()
            });
        }
        self.backend.rewrap_subject_keys(rewrapped).await?;
        access.sets.insert(domain.to_string(), Arc::new(set));
        // Re-derive blind indexes of this domain's fields under the new version.
        let mut ops = Vec::new();
        for (collection, record_id, field, kv) in
            self.backend.index_rows(&self.layout, tenant.as_str()).await?
        {
            let Ok(coll) = self.schema.collection(&collection) else { continue };
            let Some(def) = coll.field(&field) else { continue };
            if def.domain != *domain || kv == new_rec.version.to_stored() {
                continue;
            }
            let table = self.layout.table(&collection)?.clone();
            let Some(stored) = self.backend.get(&table, tenant.as_str(), &record_id).await? else {
                continue;
            };
            let rec = self.open_record(access, stored, &mut tags).await?;
            let Some(v) = rec.get(&field) else { continue };
            let set = access.require(domain.as_str())?;
            let idx = Self::blind_index(set, new_rec.version, &collection, &field, &v.encode())?;
            ops.push(WriteOp::SetIndex {
                table,
                tenant: tenant.to_string(),
                record_id: record_id.clone(),
                index: IndexRow { field: field.clone(), key_version: new_rec.version.to_stored(), idx },
            });
        }
        self.backend.apply(ops).await?;
        // Destroy every older version: nothing depends on them any more (checked again in the
        // destroying transaction: a version a concurrent writer used meanwhile is kept).
        let mut destroyed = Vec::new();
        for r in &records {
            if r.state != KeyState::DecryptOnly {
                continue;
            }
            match self.destroy_verified(provider, &tenant, domain, r.version, None).await {
                Ok(()) => destroyed.push(r.version),
                Err(StoreError::KeyInUse { .. }) => tracing::warn!(
                    tenant = %tenant, domain = %domain, version = r.version.get(),
                    "kluis-store: domain key version still in use after rotation; kept (re-encrypt, then retire it)"
                ),
                Err(e) => return Err(e),
            }
        }
        let set = self.key_set(provider, &tenant, domain).await?;
        access.sets.insert(domain.to_string(), Arc::new(set));
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_domain(tenant.as_str(), domain.as_str());
        }
        Ok(destroyed)
    }

    /// One step of re-encryption after a rotation: up to `max_subjects` subjects whose subject
    /// key is wrapped under an older domain key version get a new subject key version wrapped
    /// under the active one; every cell of `domain` of that subject is re-sealed under it and its
    /// blind indexes re-derived under the active version; older subject key versions that no
    /// cell and no catalog document uses any more are deleted. One database transaction per
    /// subject (a crash loses nothing; the next step continues). A record changed concurrently
    /// makes its subject count as a conflict, left for the next step; nothing a writer did is
    /// overwritten. `access` must hold `domain`, unlocked after the rotation
    /// ([`StoreError::KeyChanged`] otherwise).
    pub async fn reencrypt_step(
        &self,
        access: &Access,
        domain: &DomainName,
        max_subjects: usize,
    ) -> Result<ReencryptProgress> {
        access.whole_tenant("a re-encryption")?;
        access.require_write("a re-encryption")?;
        let (set, active) = self.current_keys(access, domain).await?;
        let (t, d) = (access.tenant.as_str(), domain.as_str());
        let limit = u32::try_from(max_subjects.max(1)).unwrap_or(u32::MAX);
        let mut tags = Tags::new();
        let mut progress = ReencryptProgress::default();
        let app_tables: Vec<crate::app_table::AppTable> = self.schema.app_tables().cloned().collect();
        for subject in self
            .backend
            .reencrypt_candidates(&self.layout, &app_tables, t, d, active.to_stored(), limit)
            .await?
        {
            match self.reencrypt_subject(access, set, &subject, active, &mut tags).await? {
                SubjectStep::Moved(resealed) => {
                    progress.subjects_moved += 1;
                    progress.records_resealed += resealed;
                }
                SubjectStep::Conflict => progress.conflicts += 1,
                SubjectStep::KeptForAppTables => progress.kept_for_app_tables += 1,
            }
        }
        progress.remaining_subjects = self
            .backend
            .count_stale_subjects(&self.layout, &app_tables, t, d, active.to_stored(), false)
            .await?;
        progress.kept_for_app_tables = progress.kept_for_app_tables.max(
            self.backend
                .count_stale_subjects(&self.layout, &app_tables, t, d, active.to_stored(), true)
                .await?,
        );
        tracing::info!(
            tenant = %access.tenant, domain = %domain, moved = progress.subjects_moved,
            remaining = progress.remaining_subjects, conflicts = progress.conflicts,
            "kluis-store re-encryption step"
        );
        Ok(progress)
    }

    /// The key set of `domain` in `access` and its active version, which must be the database's
    /// ([`StoreError::KeyChanged`] if the caller's keys are older).
    pub(super) async fn current_keys<'a>(
        &self,
        access: &'a Access,
        domain: &DomainName,
    ) -> Result<(&'a DomainKeySet, KeyVersion)> {
        let set = access.require(domain.as_str())?;
        let records = self.domain_records(&access.tenant, domain).await?;
        let db_active = keys::validate_versions(&records)
            .map_err(|e| key_integrity(format!("domain key {}/{domain}", access.tenant), e))?;
        let Some(active) = db_active else {
            return Err(StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{}/{domain} (no active version)", access.tenant),
            }));
        };
        if set.active_version() != Some(active) {
            return Err(StoreError::KeyChanged {
                what: format!(
                    "the caller's keys of {}/{domain} are older than the database's (active v{active}): unlock again",
                    access.tenant
                ),
            });
        }
        Ok((set, active))
    }

    /// One subject of [`Store::reencrypt_step`]: `Some(records re-sealed)`, or `None` on a
    /// concurrent change (nothing written).
    pub(super) async fn reencrypt_subject(
        &self,
        access: &Access,
        set: &DomainKeySet,
        subject: &str,
        active: KeyVersion,
        tags: &mut Tags,
    ) -> Result<SubjectStep> {
        let (t, d) = (access.tenant.as_str(), set.domain().as_str());
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_subject(t, Some(d), subject);
        }
        tags.forget_subject(subject);
        let rows = self.backend.subject_keys(t, d, subject).await?;
        let Some(newest) = rows.last() else { return Ok(SubjectStep::Moved(0)) };
        let newest_wrap = kluis_core::SealedHeader::parse(&newest.wrapped).ok().and_then(|h| h.key.version);
        let (target, target_key, new_key) =
            if newest_wrap == Some(active) && newest.wrap_version == active.to_stored() {
                let (v, k) = Self::open_row_owned(set, newest)?;
                (v, k, None)
            } else {
                let next = KeyVersion::from_stored(newest.version)
                    .and_then(KeyVersion::next)
                    .map_err(|_| StoreError::Invalid("subject key versions exhausted".into()))?;
                let (row, key) = Self::new_subject_key_pair(set, subject, next)?;
                (next, key, Some(row))
            };
        let mut plan_records = Vec::new();
        let mut resealed = 0u64;
        for stored in self.backend.subject_cells(&self.layout, t, d, subject).await? {
            // The whole row is checked, and its new tag covers it with the re-sealed cells.
            Self::check_row(access, &stored, tags)?;
            let r = &stored.record;
            let coll = self.schema.collection(&r.collection).ok();
            let mut cells = Vec::new();
            let mut indexes = Vec::new();
            let table = self.layout.table(&stored.record.collection)?;
            // Clear fields have no subject key: nothing to re-seal.
            for cell in stored.fields.iter().filter(|c| c.domain == d && table.is_sealed(&c.field)) {
                let integrity = || StoreError::Integrity {
                    collection: r.collection.clone(),
                    record: r.id.clone(),
                    field: cell.field.clone(),
                };
                // The header's version is the one the cell really needs (authenticated on open).
                let hv = kluis_core::SealedHeader::parse(&cell.sealed)
                    .ok()
                    .and_then(|h| h.key.version)
                    .ok_or_else(integrity)?;
                let def = coll.and_then(|c| c.field(&cell.field));
                let indexed = def.is_some_and(|f| f.blind_index && f.domain == *set.domain());
                let needs_reseal = hv != target || cell.key_version != target.to_stored();
                if !needs_reseal && !indexed {
                    continue;
                }
                let ctx = Context {
                    tenant: &access.tenant,
                    domain: set.domain(),
                    collection: &r.collection,
                    field: &cell.field,
                    record: &r.id,
                };
                let (_, old) =
                    self.load_subject_key(set, subject, Some(hv), tags).await?.ok_or_else(integrity)?;
                let pt = old.open(&ctx, &cell.sealed).map_err(|_| integrity())?;
                if needs_reseal {
                    cells.push(FieldRow {
                        field: cell.field.clone(),
                        domain: cell.domain.clone(),
                        sealed: target_key.seal(&ctx, pt.expose_secret())?,
                        key_version: target.to_stored(),
                    });
                }
                if indexed {
                    indexes.push(IndexRow {
                        field: cell.field.clone(),
                        key_version: active.to_stored(),
                        idx: Self::blind_index(set, active, &r.collection, &cell.field, pt.expose_secret())?,
                    });
                }
            }
            if !cells.is_empty() {
                resealed += 1;
            }
            if !cells.is_empty() || !indexes.is_empty() {
                let tag =
                    Self::row_tag(access, r, &Self::cells_after(stored.fields.clone(), &cells, &[]), tags)?;
                plan_records.push(ReencryptRecord {
                    table: self.layout.table(&r.collection)?.clone(),
                    id: r.id.clone(),
                    version: r.version,
                    cells,
                    indexes,
                    tag,
                    expected_tag: r.tag.clone(),
                });
            }
        }
        let drop_versions: Vec<i64> =
            rows.iter().map(|r| r.version).filter(|v| *v != target.to_stored()).collect();
        let plan = ReencryptPlan {
            tenant: t.to_owned(),
            domain: d.to_owned(),
            subject: subject.to_owned(),
            new_key,
            records: plan_records,
            drop_versions,
            tables: self.layout.tables().to_vec(),
            app_tables: self.schema.app_tables().cloned().collect(),
        };
        let idle = plan.new_key.is_none() && plan.records.is_empty();
        let outcome = self.backend.reencrypt_subject(plan).await?;
        if let Ok(mut c) = self.subject_keys.lock() {
            c.forget_subject(t, Some(d), subject);
        }
        tags.forget_subject(subject);
        Ok(match outcome {
            o if !o.applied => SubjectStep::Conflict,
            o if idle && o.dropped.is_empty() && o.kept_for_app => SubjectStep::KeptForAppTables,
            _ => SubjectStep::Moved(resealed),
        })
    }
}

/// What [`Store::reencrypt_subject`] did with one subject.
pub(super) enum SubjectStep {
    /// Moved, with this many records re-sealed.
    Moved(u64),
    /// Nothing written: a record or key changed concurrently (the next step retries).
    Conflict,
    /// Nothing left to do but delete an older subject key version that values in the
    /// application's mapped tables are still sealed under: kept.
    KeptForAppTables,
}
