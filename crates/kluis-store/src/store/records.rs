//! Reads: a record, a page, a blind-index search, each row checked and opened.

use super::*;

impl<E: Engine> Store<E> {
    pub(super) async fn open_record(
        &self,
        access: &Access,
        stored: StoredRecord,
        tags: &mut Tags,
    ) -> Result<Record> {
        access.in_scope(&stored.record.collection, &stored.record.id, &stored.record.subject)?;
        Self::check_row(access, &stored, tags)?;
        let table = self.layout.table(&stored.record.collection)?.clone();
        let r = stored.record;
        let mut fields = BTreeMap::new();
        // The associated data of each cell in turn (public bytes).
        let mut ad = Vec::with_capacity(160);
        let mut last: Option<(String, KeyVersion, Arc<SubjectKey>)> = None;
        for cell in stored.fields {
            let integrity = || StoreError::Integrity {
                collection: r.collection.clone(),
                record: r.id.clone(),
                field: cell.field.clone(),
            };
            let Some(set) = access.set(&cell.domain) else {
                // No key for this domain: withheld, and no decryption is attempted.
                fields.insert(cell.field, FieldValue::Withheld { domain: cell.domain });
                continue;
            };
            if !table.is_sealed(&cell.field) {
                // A clear field: its encoding, checked by the row tag already.
                let value = Value::decode(&cell.sealed).ok_or_else(integrity)?;
                fields.insert(cell.field, FieldValue::Value(value));
                continue;
            }
            let v = KeyVersion::from_stored(cell.key_version).map_err(|_| integrity())?;
            // The previous cell's key when it is the same (cells of a domain share one).
            let sk = match &last {
                Some((d, lv, k)) if *lv == v && *d == cell.domain => k.clone(),
                _ => match tags.key(&r.subject, &cell.domain, v) {
                    Some(k) => k.clone(),
                    None => {
                        self.load_subject_key(set, &r.subject, Some(v), tags).await?.ok_or_else(integrity)?.1
                    }
                },
            };
            let ctx = Context {
                tenant: &access.tenant,
                domain: set.domain(),
                collection: &r.collection,
                field: &cell.field,
                record: &r.id,
            };
            let pt = sk.open_vec(&ctx, cell.sealed, &mut ad).map_err(|_| integrity())?;
            let value = Value::decode(pt.expose_secret()).ok_or_else(integrity)?;
            fields.insert(cell.field, FieldValue::Value(value));
            last = Some((cell.domain, v, sk));
        }
        Ok(Record {
            version: u64::try_from(r.version).map_err(|_| StoreError::RowIntegrity {
                collection: r.collection.clone(),
                record: r.id.clone(),
            })?,
            collection: r.collection,
            id: r.id,
            subject: r.subject,
            created_at: r.created_at,
            updated_at: r.updated_at,
            retain_until: r.retain_until,
            fields,
        })
    }

    /// Reads one record; `None` if absent.
    pub async fn get(&self, access: &Access, collection: &str, id: &str) -> Result<Option<Record>> {
        let mut tags = Tags::new();
        let table = self.layout.table(collection)?;
        check_id("record id", id)?;
        // Another collection or id is refused before reading; the subject is checked on the row
        // (open_record).
        let other = match &access.scope {
            Scope::Tenant => false,
            Scope::Collection { collection: c, .. } => c != collection,
            Scope::Record { collection: c, record: r, .. } => c != collection || r != id,
        };
        if other {
            return Err(StoreError::OutOfScope {
                what: format!("record {collection}/{id}"),
                scope: access.scope.to_string(),
            });
        }
        match self.backend.get(table, access.tenant.as_str(), id).await? {
            None => Ok(None),
            Some(s) => Ok(Some(self.open_record(access, s, &mut tags).await?)),
        }
    }

    /// The domains of the cells a record holds, from its row as stored (nothing is opened and
    /// the row tag is not checked: the read an authorization decision leads to checks it);
    /// `None` if the record is absent.
    pub async fn record_domains(
        &self,
        tenant: &TenantId,
        collection: &str,
        id: &str,
    ) -> Result<Option<BTreeSet<String>>> {
        let table = self.layout.table(collection)?;
        check_id("record id", id)?;
        Ok(self
            .backend
            .get(table, tenant.as_str(), id)
            .await?
            .map(|s| s.fields.into_iter().map(|f| f.domain).collect()))
    }

    /// Which of `ids` the caller's tenant already holds in `collection` (one query per 1,000 ids;
    /// nothing is opened), for an import that skips records already present.
    pub async fn existing_ids(
        &self,
        access: &Access,
        collection: &str,
        ids: &[&str],
    ) -> Result<BTreeSet<String>> {
        let table = self.layout.table(collection)?;
        for id in ids {
            check_id("record id", id)?;
        }
        Ok(self.backend.existing_ids(table, access.tenant.as_str(), ids).await?.into_iter().collect())
    }

    /// Which tenants hold a record with this collection and id, with its subject (clear
    /// columns; ids are unique per tenant only).
    pub async fn record_owners(&self, collection: &str, id: &str) -> Result<Vec<crate::audit::RecordOwner>> {
        let table = self.layout.table(collection)?;
        check_id("record id", id)?;
        self.backend.record_owners(table, id).await
    }

    /// A page of a collection's records (optionally of one subject), ordered by id.
    pub async fn list(
        &self,
        access: &Access,
        collection: &str,
        subject: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page> {
        let mut tags = Tags::new();
        self.schema.collection(collection)?;
        if let Some(s) = subject {
            check_id("subject id", s)?;
        }
        if let Some(a) = after {
            check_id("cursor", a)?;
        }
        access.collection_in_scope(collection, subject)?;
        let limit = limit.clamp(1, 1000);
        let table = self.layout.table(collection)?;
        let records = if E::STREAM_PAGES {
            // Each record is opened as its row arrives, while the database reads the next ones
            // (both in this task: the server keeps reading meanwhile).
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let read = self.backend.list_each(table, access.tenant.as_str(), subject, after, limit, tx);
            // Moves the receiver in: an error here drops it, and the read stops.
            let open = async move {
                let mut records = Vec::with_capacity(limit as usize);
                while let Some(s) = rx.recv().await {
                    records.push(self.open_record(access, s, &mut tags).await?);
                }
                Ok::<_, StoreError>(records)
            };
            let (read, opened) = tokio::join!(read, open);
            // A read error closed the channel early: it is the answer, not the shorter page.
            read?;
            opened?
        } else {
            // The whole page first, then each record opened (Engine::STREAM_PAGES).
            let rows = self.backend.list(table, access.tenant.as_str(), subject, after, limit).await?;
            let mut records = Vec::with_capacity(rows.len());
            for s in rows {
                records.push(self.open_record(access, s, &mut tags).await?);
            }
            records
        };
        let full = records.len() == limit as usize;
        let next = if full { records.last().map(|r| r.id.clone()) } else { None };
        Ok(Page { records, next })
    }

    /// Records whose blind-indexed `field` equals `value` (confirmed by decrypting).
    pub async fn find(
        &self,
        access: &Access,
        collection: &str,
        field: &str,
        value: &Value,
    ) -> Result<Vec<Record>> {
        let mut tags = Tags::new();
        let coll = self.schema.collection(collection)?;
        let def = field_def(coll, field)?;
        if !def.blind_index {
            return Err(StoreError::NotIndexed {
                collection: collection.to_owned(),
                field: field.to_owned(),
            });
        }
        check_value(coll, def, value)?;
        if !matches!(&access.scope, Scope::Tenant)
            && !matches!(&access.scope, Scope::Collection { collection: c, .. } if c == collection)
        {
            return Err(StoreError::OutOfScope {
                what: format!("a search of collection {collection}"),
                scope: access.scope.to_string(),
            });
        }
        let set = access.require(def.domain.as_str())?;
        let encoded = value.encode();
        let mut candidates = Vec::new();
        for (v, state) in set.versions() {
            if state != KeyState::Destroyed {
                candidates.push((v.to_stored(), Self::blind_index(set, v, collection, field, &encoded)?));
            }
        }
        let table = self.layout.table(collection)?;
        let rows = self.backend.find_index(table, access.tenant.as_str(), field, candidates).await?;
        let mut out = Vec::new();
        // Hits outside the scope (another subject's, under a subject scope) are not opened.
        for s in rows.into_iter().filter(|s| access.scope.covers(collection, &s.record.id, &s.record.subject))
        {
            // A blind index is not covered by the row tag: each hit is opened and compared.
            let rec = self.open_record(access, s, &mut tags).await?;
            let hit = rec.get(field).is_some_and(|v| ct_eq(&v.encode(), &encoded));
            if hit {
                out.push(rec);
            }
        }
        Ok(out)
    }

    // ---------------------------------------------------------------- shredding
}
