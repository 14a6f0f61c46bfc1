//! Cells and rows: values sealed into cells, blind indexes, row tags made and checked.

use super::*;

impl<E: Engine> Store<E> {
    pub(super) fn blind_index(
        set: &DomainKeySet,
        version: KeyVersion,
        coll: &str,
        field: &str,
        encoded: &[u8],
    ) -> Result<Vec<u8>> {
        let k = BlindIndexKey::derive(
            set.key(version)?,
            set.tenant(),
            set.domain(),
            coll,
            field,
            DEFAULT_INDEX_LEN,
        )?;
        Ok(k.index(encoded))
    }

    /// [`Self::blind_index`] with the index key derived once per call.
    pub(super) fn blind_index_cached(
        set: &DomainKeySet,
        version: KeyVersion,
        coll: &str,
        field: &str,
        encoded: &[u8],
        tags: &mut Tags,
    ) -> Result<Vec<u8>> {
        let domain = set.domain().as_str();
        let hit = tags
            .index_keys
            .iter()
            .find(|e| e.version == version && e.domain == domain && e.collection == coll && e.field == field);
        if let Some(e) = hit {
            return Ok(e.key.index(encoded));
        }
        let key = BlindIndexKey::derive(
            set.key(version)?,
            set.tenant(),
            set.domain(),
            coll,
            field,
            DEFAULT_INDEX_LEN,
        )?;
        let idx = key.index(encoded);
        tags.index_keys.push(IndexKeyEntry {
            domain: domain.to_owned(),
            version,
            collection: coll.to_owned(),
            field: field.to_owned(),
            key,
        });
        Ok(idx)
    }

    /// Checks fields (known, of the right type and size, set once, domain key held) and makes
    /// sure this call holds the subject's newest key of each domain they use (loading or creating
    /// it), so [`Self::seal_fields_now`] needs no database.
    ///
    /// `values_checked`: [`check_fields`] already ran on `fields` (an insert's
    /// [`NewRecord::check`]); then only the domain keys are checked here, in the same order.
    pub(super) async fn prepare_fields(
        &self,
        access: &Access,
        coll: &Collection,
        subject: &str,
        fields: &[(String, Value)],
        tags: &mut Tags,
        values_checked: bool,
    ) -> Result<()> {
        if values_checked {
            for (name, _) in fields {
                access.require(field_def(coll, name)?.domain.as_str())?;
            }
        } else {
            check_fields(coll, fields, |def| access.require(def.domain.as_str()).map(|_| ()))?;
        }
        // Once per domain of the record (a record has few domains and many fields).
        let mut done: Vec<&DomainName> = Vec::with_capacity(2);
        for (name, _) in fields {
            let def = field_def(coll, name)?;
            if def.clear || done.contains(&&def.domain) {
                continue;
            }
            let set = access.require(def.domain.as_str())?;
            self.subject_key_for_write(set, subject, tags).await?;
            done.push(&def.domain);
        }
        Ok(())
    }

    /// Seals fields checked by [`Self::prepare_fields`] under the subject keys it left in `tags`.
    ///
    /// The values are encoded into one buffer of their total size (wiped on drop, never
    /// reallocated) and sealed in one call ([`keys::seal_fields`]: one draw from the OS for the
    /// salts of the record's cells).
    pub(super) fn seal_fields_now(
        access: &Access,
        coll: &Collection,
        id: &str,
        subject: &str,
        fields: &[(String, Value)],
        tags: &mut Tags,
    ) -> Result<(Vec<FieldRow>, Vec<IndexRow>)> {
        // Per field: its definition, key set, subject key (none for a clear field) and where its
        // encoding is in `encoded`.
        struct Cell<'f> {
            name: &'f str,
            def: &'f FieldDef,
            set: &'f DomainKeySet,
            key: Option<(KeyVersion, Arc<SubjectKey>)>,
            at: std::ops::Range<usize>,
        }
        let total = fields.iter().map(|(_, v)| v.encoded_len()).sum();
        let mut encoded = zeroize::Zeroizing::new(Vec::with_capacity(total));
        let mut plan: Vec<Cell<'_>> = Vec::with_capacity(fields.len());
        for (name, v) in fields {
            let def = field_def(coll, name)?;
            let set = access.require(def.domain.as_str())?;
            let key = if def.clear {
                None
            } else {
                // The key of the previous field's domain: fields of one domain usually come
                // together.
                match plan.iter().rev().find_map(|c| c.key.as_ref().filter(|_| c.def.domain == def.domain)) {
                    Some((v, k)) => Some((*v, k.clone())),
                    None => Some(tags.newest_key(subject, def.domain.as_str()).ok_or_else(|| {
                        StoreError::KeyChanged {
                            what: format!("subject key {}/{}/{subject}", access.tenant, def.domain),
                        }
                    })?),
                }
            };
            let start = encoded.len();
            v.encode_into(&mut encoded);
            plan.push(Cell { name, def, set, key, at: start..encoded.len() });
        }
        let bytes = |at: &std::ops::Range<usize>| {
            encoded.get(at.clone()).ok_or_else(|| StoreError::Invalid("encoded field".into()))
        };
        let mut to_seal = Vec::with_capacity(plan.len());
        for c in &plan {
            if let Some((_, k)) = &c.key {
                to_seal.push(keys::FieldToSeal {
                    key: k,
                    context: Context {
                        tenant: &access.tenant,
                        domain: &c.def.domain,
                        collection: &coll.name,
                        field: c.name,
                        record: id,
                    },
                    plaintext: bytes(&c.at)?,
                });
            }
        }
        let mut sealed = keys::seal_fields(&to_seal)?.into_iter();
        drop(to_seal);
        let mut cells = Vec::with_capacity(plan.len());
        let mut indexes = Vec::new();
        for c in &plan {
            let Some((skv, _)) = &c.key else {
                // Stored in clear, in its encoding (which the row tag covers); no subject key.
                cells.push(FieldRow {
                    field: c.name.to_owned(),
                    domain: c.def.domain.as_str().to_owned(),
                    sealed: bytes(&c.at)?.to_vec(),
                    key_version: 0,
                });
                continue;
            };
            cells.push(FieldRow {
                field: c.name.to_owned(),
                domain: c.def.domain.as_str().to_owned(),
                sealed: sealed.next().ok_or_else(|| StoreError::Invalid("sealed field".into()))?,
                key_version: skv.to_stored(),
            });
            if c.def.blind_index {
                let active = c.set.active_version().ok_or_else(|| {
                    StoreError::Core(kluis_core::Error::UnknownKey {
                        key: format!("{}/{} (no active version)", access.tenant, c.def.domain),
                    })
                })?;
                indexes.push(IndexRow {
                    field: c.name.to_owned(),
                    key_version: active.to_stored(),
                    idx: Self::blind_index_cached(c.set, active, &coll.name, c.name, bytes(&c.at)?, tags)?,
                });
            }
        }
        Ok((cells, indexes))
    }

    /// The writes of one planned operation, sealed (no database, no waiting).
    pub(super) fn seal_planned(
        &self,
        access: &Access,
        p: Planned<'_>,
        tags: &mut Tags,
    ) -> Result<Vec<WriteOp>> {
        Ok(match p {
            Planned::Insert { mut row, fields } => {
                let coll = self.schema.collection(&row.collection)?;
                let table = self.layout.table(&row.collection)?.clone();
                let (fields, indexes) =
                    Self::seal_fields_now(access, coll, &row.id, &row.subject, fields, tags)?;
                row.tag = Self::row_tag(access, &row, &fields, tags)?;
                vec![WriteOp::Insert { table, record: row, fields, indexes }]
            }
            Planned::Update { mut row, expected_version, set, remove, current, current_tag } => {
                let coll = self.schema.collection(&row.collection)?;
                let table = self.layout.table(&row.collection)?.clone();
                let (fields, indexes) =
                    Self::seal_fields_now(access, coll, &row.id, &row.subject, set, tags)?;
                row.tag = Self::row_tag(access, &row, &Self::cells_after(current, &fields, remove), tags)?;
                vec![WriteOp::Update {
                    table,
                    record: row,
                    expected_version,
                    expected_tag: current_tag,
                    set_fields: fields,
                    remove_fields: remove.to_vec(),
                    set_indexes: indexes,
                    null_columns: Vec::new(),
                }]
            }
            Planned::Ready(writes) => writes,
        })
    }

    // ---------------------------------------------------------------- row tags

    /// The row tag key of `version` of the tenant's row_tags domain key, derived once per call.
    pub(super) fn row_key<'c>(
        set: &DomainKeySet,
        version: KeyVersion,
        tags: &'c mut Tags,
    ) -> Result<&'c BlindIndexKey> {
        let tenant = set.tenant().as_str();
        let pos = match tags.row_keys.iter().position(|(t, v, _)| *v == version && t == tenant) {
            Some(p) => p,
            None => {
                let k = BlindIndexKey::derive(
                    set.key(version)?,
                    set.tenant(),
                    set.domain(),
                    "kluis-rows",
                    "tag",
                    32,
                )?;
                tags.row_keys.push((tenant.to_owned(), version, k));
                tags.row_keys.len() - 1
            }
        };
        tags.row_keys.get(pos).map(|(_, _, k)| k).ok_or_else(|| StoreError::Invalid("row key cache".into()))
    }

    /// The row tag of `row` with `cells` (every cell the row will hold), under the active version
    /// of the tenant's row_tags key.
    pub(super) fn row_tag(
        access: &Access,
        row: &RecordRow,
        cells: &[FieldRow],
        tags: &mut Tags,
    ) -> Result<Vec<u8>> {
        Self::tag_over(access, &tag_input(row, cells), tags)
    }

    /// A row tag over `input` (a row's tag input, of either kind) under the active version of the
    /// tenant's row_tags key: `0x01 || u32 BE version || HMAC-SHA256`.
    pub(super) fn tag_over(access: &Access, input: &[u8], tags: &mut Tags) -> Result<Vec<u8>> {
        let set = access.rows()?;
        let v = set.active_version().ok_or_else(|| {
            StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{}/{ROW_TAG_DOMAIN} (no active version)", access.tenant),
            })
        })?;
        let mac = Self::row_key(set, v, tags)?.index(input);
        let mut out = Vec::with_capacity(layout::ROW_TAG_LEN);
        out.push(layout::ROW_TAG_V1);
        out.extend_from_slice(&v.to_be_bytes());
        out.extend_from_slice(&mac);
        Ok(out)
    }

    /// Does `tag` hold a live version of the tenant's row_tags key and the MAC of `input` under
    /// it?
    pub(super) fn tag_matches(access: &Access, tag: &[u8], input: &[u8], tags: &mut Tags) -> Result<bool> {
        let Some(v) = layout::tag_version(tag) else { return Ok(false) };
        let set = access.rows()?;
        if set.key(v).is_err() {
            // No such version, or destroyed.
            return Ok(false);
        }
        let mac = Self::row_key(set, v, tags)?.index(input);
        Ok(tag.get(5..).is_some_and(|stored| ct_eq(stored, &mac)))
    }

    /// Checks a row against its tag ([`StoreError::RowIntegrity`] naming the record if it does
    /// not match).
    pub(super) fn check_row(access: &Access, stored: &StoredRecord, tags: &mut Tags) -> Result<()> {
        let r = &stored.record;
        let bad = || StoreError::RowIntegrity { collection: r.collection.clone(), record: r.id.clone() };
        if r.tenant == access.tenant.as_str()
            && Self::tag_matches(access, &r.tag, &tag_input(r, &stored.fields), tags)?
        {
            Ok(())
        } else {
            Err(bad())
        }
    }

    /// The cells a row holds after an update: `current` without the fields set or removed,
    /// then the new ones.
    pub(super) fn cells_after(current: Vec<FieldRow>, set: &[FieldRow], remove: &[String]) -> Vec<FieldRow> {
        let mut out: Vec<FieldRow> = current
            .into_iter()
            .filter(|c| !remove.contains(&c.field) && !set.iter().any(|f| f.field == c.field))
            .collect();
        out.extend(set.iter().cloned());
        out
    }

    // ---------------------------------------------------------------- reads
}

fn put(out: &mut Vec<u8>, b: &[u8]) {
    // Names and ids are at most 128 bytes and cells at most a few MiB: a u32 length is exact.
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// The bytes a row tag covers (docs/FORMAT.md §10): the label, then tenant, collection, id and
/// subject (each a u32 BE length and its bytes), version, created_at and updated_at (i64 BE),
/// retain_until (`0x00`, or `0x01` and i64 BE), the number of present cells (u32 BE), and per
/// present cell in field-name order: field name, subject key version (i64 BE) and sealed bytes.
pub(super) fn tag_input(r: &RecordRow, fields: &[FieldRow]) -> Vec<u8> {
    let mut cells: Vec<&FieldRow> = fields.iter().collect();
    cells.sort_by(|a, b| a.field.cmp(&b.field));
    let size: usize = cells.iter().map(|c| c.field.len() + c.sealed.len() + 16).sum();
    let mut out = Vec::with_capacity(layout::ROW_TAG_LABEL.len() + 128 + size);
    out.extend_from_slice(layout::ROW_TAG_LABEL);
    put(&mut out, r.tenant.as_bytes());
    put(&mut out, r.collection.as_bytes());
    put(&mut out, r.id.as_bytes());
    put(&mut out, r.subject.as_bytes());
    out.extend_from_slice(&r.version.to_be_bytes());
    out.extend_from_slice(&r.created_at.to_be_bytes());
    out.extend_from_slice(&r.updated_at.to_be_bytes());
    match r.retain_until {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&t.to_be_bytes());
        }
    }
    out.extend_from_slice(&u32::try_from(cells.len()).unwrap_or(u32::MAX).to_be_bytes());
    for c in cells {
        put(&mut out, c.field.as_bytes());
        out.extend_from_slice(&c.key_version.to_be_bytes());
        put(&mut out, &c.sealed);
    }
    out
}
