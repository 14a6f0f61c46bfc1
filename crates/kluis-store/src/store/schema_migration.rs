//! Schema migration: records moved between domains, made clear or sealed.

use super::*;

impl<E: Engine> Store<E> {
    /// Moves the stored data of the caller's tenant to `target`, a newer version of this store's
    /// schema: a field whose domain changed is re-sealed under the subject key of the new domain
    /// (and its blind index re-derived); a field that gained a blind index gets one; a field that
    /// lost it has it dropped. Each record is rewritten in its own transaction with the usual
    /// version check; a record changed concurrently is counted in `conflicts` and left for the
    /// next run. The migration is idempotent: run it until it reports nothing to do, then use a
    /// `Store` built with `target`. `access` must hold the old and the new domains.
    pub async fn migrate_schema(&self, access: &Access, target: &Schema) -> Result<MigrationReport> {
        access.whole_tenant("a schema migration")?;
        access.require_write("a schema migration")?;
        let mut tags = Tags::new();
        let mut report = MigrationReport::default();
        let tenant = access.tenant.to_string();
        // The target's columns (fields added, blind indexes added) exist before anything moves.
        let target_layout = Layout::of(target);
        self.backend.install(&target_layout).await?;
        for tcoll in target.collections() {
            let Ok(old) = self.schema.collection(&tcoll.name) else { continue };
            let new_table = target_layout.table(&tcoll.name)?;
            let changed: Vec<&FieldDef> = tcoll
                .fields()
                .filter(|f| {
                    old.field(&f.name).is_none_or(|o| {
                        o.domain != f.domain || o.blind_index != f.blind_index || o.clear != f.clear
                    })
                })
                .collect();
            // Read through the current columns and, for a field changing between sealed and
            // clear, its target column too: whichever holds the value (a record an earlier run
            // moved has it in the target column), so the row tag is checked over what is there.
            let mut read_table = (**self.layout.table(&tcoll.name)?).clone();
            for f in &changed {
                if old.field(&f.name).is_some_and(|o| o.clear != f.clear)
                    && let Some(c) = new_table.cell(&f.name)
                {
                    read_table.cells.push(c.clone());
                }
            }
            if changed.is_empty() {
                continue;
            }
            for f in &changed {
                access.require(f.domain.as_str())?;
            }
            let mut after: Option<String> = None;
            loop {
                let page = self.backend.list(&read_table, &tenant, None, after.as_deref(), 200).await?;
                let Some(last) = page.last() else { break };
                after = Some(last.record.id.clone());
                let full = page.len() == 200;
                for stored in page {
                    Self::check_row(access, &stored, &mut tags)?;
                    let ops = self
                        .migrate_record(access, (tcoll, new_table), &changed, stored, &mut report, &mut tags)
                        .await?;
                    let Some(ops) = ops else { continue };
                    match self.backend.apply(ops).await {
                        Ok(()) => report.records_updated += 1,
                        Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                            report.conflicts += 1
                        }
                        Err(e) => return Err(e),
                    }
                }
                if !full {
                    break;
                }
            }
        }
        Ok(report)
    }

    pub(super) async fn migrate_record(
        &self,
        access: &Access,
        (tcoll, table): (&Collection, &Arc<Table>),
        changed: &[&FieldDef],
        stored: StoredRecord,
        report: &mut MigrationReport,
        tags: &mut Tags,
    ) -> Result<Option<Vec<WriteOp>>> {
        let r = &stored.record;
        let old_table = self.layout.table(&r.collection)?;
        let mut set_fields = Vec::new();
        let mut set_indexes = Vec::new();
        let mut null_columns = Vec::new();
        let mut extra = Vec::new();
        for def in changed {
            let Some(cell) = stored.fields.iter().find(|c| c.field == def.name) else { continue };
            let integrity = || StoreError::Integrity {
                collection: r.collection.clone(),
                record: r.id.clone(),
                field: cell.field.clone(),
            };
            // A cell read from a clear column has key version 0 (subject key versions start at 1).
            let was_clear = cell.key_version == 0;
            if was_clear && def.clear {
                // Clear before and after (its domain changed): nothing is sealed, nothing moves.
                continue;
            }
            let same_index = self
                .schema
                .collection(&r.collection)
                .ok()
                .and_then(|c| c.field(&def.name))
                .is_some_and(|o| o.blind_index == def.blind_index);
            if !was_clear && !def.clear && cell.domain == def.domain.as_str() && same_index {
                // Sealed in the right domain with the right index: moved by an earlier run.
                continue;
            }
            // The subject key version of a sealed cell (a clear one has none).
            let cell_version = if was_clear {
                None
            } else {
                Some(KeyVersion::from_stored(cell.key_version).map_err(|_| integrity())?)
            };
            // The table says which domain a field's cells are in by the schema: a sealed cell an
            // earlier run already moved opens under the target domain, and is done.
            if let Some(cell_version) = cell_version
                && !def.clear
                && cell.domain != def.domain.as_str()
                && let Some(set) = access.set(def.domain.as_str())
                && let Ok(Some((_, k))) =
                    self.load_subject_key(set, &r.subject, Some(cell_version), tags).await
            {
                let ctx = Context {
                    tenant: &access.tenant,
                    domain: &def.domain,
                    collection: &r.collection,
                    field: &cell.field,
                    record: &r.id,
                };
                if k.open(&ctx, &cell.sealed).is_ok() {
                    continue;
                }
            }
            // The value's encoding, opened if it was sealed.
            let plain: zeroize::Zeroizing<Vec<u8>> = match cell_version {
                None => zeroize::Zeroizing::new(cell.sealed.clone()),
                Some(cell_version) => {
                    let old_set = access.require(&cell.domain)?;
                    let (_, old_key) = self
                        .load_subject_key(old_set, &r.subject, Some(cell_version), tags)
                        .await?
                        .ok_or_else(integrity)?;
                    let old_ctx = Context {
                        tenant: &access.tenant,
                        domain: old_set.domain(),
                        collection: &r.collection,
                        field: &cell.field,
                        record: &r.id,
                    };
                    let pt = old_key.open(&old_ctx, &cell.sealed).map_err(|_| integrity())?;
                    zeroize::Zeroizing::new(pt.expose_secret().to_vec())
                }
            };
            let new_set = access.require(def.domain.as_str())?;
            let index = |set: &DomainKeySet| -> Result<IndexRow> {
                let v =
                    set.active_version().ok_or_else(|| StoreError::Invalid("no active domain key".into()))?;
                Ok(IndexRow {
                    field: def.name.clone(),
                    key_version: v.to_stored(),
                    idx: Self::blind_index(set, v, &tcoll.name, &def.name, &plain)?,
                })
            };
            // The columns the value leaves when it changes between sealed and clear.
            let leaving = |out: &mut Vec<String>| {
                if let Some(c) = old_table.cell(&def.name) {
                    out.push(c.sealed.clone());
                    if c.clear.is_none() {
                        out.push(c.version.clone());
                    }
                    if let Some((i, j)) = &c.index {
                        out.push(i.clone());
                        out.push(j.clone());
                    }
                }
            };
            if def.clear {
                // Sealed before: the value goes to its clear column, the sealed one is emptied.
                set_fields.push(FieldRow {
                    field: def.name.clone(),
                    domain: def.domain.to_string(),
                    sealed: plain.to_vec(),
                    key_version: 0,
                });
                leaving(&mut null_columns);
                report.cells_clear_changed += 1;
            } else if was_clear || cell.domain != def.domain.as_str() {
                let (new_version, new_key) = self.subject_key_for_write(new_set, &r.subject, tags).await?;
                let ctx = Context {
                    tenant: &access.tenant,
                    domain: &def.domain,
                    collection: &r.collection,
                    field: &cell.field,
                    record: &r.id,
                };
                set_fields.push(FieldRow {
                    field: def.name.clone(),
                    domain: def.domain.to_string(),
                    sealed: new_key.seal(&ctx, &plain)?,
                    key_version: new_version.to_stored(),
                });
                if was_clear {
                    // The plaintext column is emptied in the same statement.
                    leaving(&mut null_columns);
                    report.cells_clear_changed += 1;
                } else {
                    report.cells_resealed += 1;
                }
                if def.blind_index {
                    set_indexes.push(index(new_set)?);
                    report.indexes_written += 1;
                }
            } else if def.blind_index {
                extra.push(WriteOp::SetIndex {
                    table: table.clone(),
                    tenant: r.tenant.clone(),
                    record_id: r.id.clone(),
                    index: index(new_set)?,
                });
                report.indexes_written += 1;
            } else {
                extra.push(WriteOp::DropIndex {
                    // The columns being given up are the current schema's.
                    table: old_table.clone(),
                    tenant: r.tenant.clone(),
                    record_id: r.id.clone(),
                    field: def.name.clone(),
                });
                report.indexes_dropped += 1;
            }
        }
        if set_fields.is_empty() && extra.is_empty() {
            return Ok(None);
        }
        let mut ops = Vec::with_capacity(1 + extra.len());
        if set_fields.is_empty() {
            // Only index entries change: the record's data and version stay as they are.
            return Ok(Some(extra));
        }
        // Re-sealed cells bump the version, so a concurrent writer that read the old cells conflicts.
        let new_version =
            r.version.checked_add(1).ok_or_else(|| StoreError::Invalid("version overflow".into()))?;
        let mut record = RecordRow { version: new_version, updated_at: now_unix(), ..r.clone() };
        record.tag = Self::row_tag(
            access,
            &record,
            &Self::cells_after(stored.fields.clone(), &set_fields, &[]),
            tags,
        )?;
        ops.push(WriteOp::Update {
            table: table.clone(),
            record,
            expected_version: r.version,
            expected_tag: r.tag.clone(),
            set_fields,
            remove_fields: Vec::new(),
            set_indexes,
            null_columns,
        });
        ops.extend(extra);
        Ok(Some(ops))
    }

    // ---------------------------------------------------------------- metadata
}
