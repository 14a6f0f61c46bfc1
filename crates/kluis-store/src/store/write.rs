//! The write path: transactions planned, sealed and written, pipelined.

use super::*;

/// One operation of a transaction, checked, with its subject keys in the call's cache, not yet
/// sealed ([`Store::plan_transaction`], then [`Store::seal_planned`]).
pub(super) enum Planned<'o> {
    Insert {
        row: RecordRow,
        fields: &'o [(String, Value)],
    },
    Update {
        row: RecordRow,
        expected_version: i64,
        set: &'o [(String, Value)],
        remove: &'o [String],
        /// The cells as read (the tag covers the row as it will be).
        current: Vec<FieldRow>,
        /// The row tag as read.
        current_tag: Vec<u8>,
    },
    /// Writes that need no sealing (a delete and its override).
    Ready(Vec<WriteOp>),
}

/// Sealed writes a transaction may have ready ahead of the one being written.
pub(super) const PIPELINE_DEPTH: usize = 64;

impl<E: Engine> Store<E> {
    /// Inserts one record.
    pub async fn insert(&self, access: &Access, collection: &str, record: NewRecord) -> Result<Written> {
        let mut out =
            self.transaction(access, vec![Op::Insert { collection: collection.to_owned(), record }]).await?;
        out.pop().ok_or_else(|| StoreError::Invalid("empty result".into()))
    }

    /// Updates one record that has `expected_version`; a concurrent change gives
    /// [`StoreError::Conflict`].
    pub async fn update(
        &self,
        access: &Access,
        collection: &str,
        id: &str,
        expected_version: u64,
        changes: Changes,
    ) -> Result<Written> {
        let op =
            Op::Update { collection: collection.to_owned(), id: id.to_owned(), expected_version, changes };
        let mut out = self.transaction(access, vec![op]).await?;
        out.pop().ok_or_else(|| StoreError::Invalid("empty result".into()))
    }

    /// Deletes one record (refused before retain-until without a legal override).
    pub async fn delete(
        &self,
        access: &Access,
        collection: &str,
        id: &str,
        expected_version: Option<u64>,
        legal_override: Option<LegalOverride>,
    ) -> Result<()> {
        let op = Op::Delete {
            collection: collection.to_owned(),
            id: id.to_owned(),
            expected_version,
            legal_override,
        };
        self.transaction(access, vec![op]).await.map(|_| ())
    }

    /// Runs several operations in one database transaction: all are applied, or (on any error,
    /// including a conflict) none.
    ///
    /// A write sealed under a subject key that another process re-encrypted away or shredded
    /// meanwhile is refused by the database and retried here with fresh keys; after
    /// a few attempts the error is [`StoreError::KeyChanged`] (retryable).
    pub async fn transaction(&self, access: &Access, ops: Vec<Op>) -> Result<Vec<Written>> {
        self.run_transaction(access, ops, None).await
    }

    /// [`Store::transaction`], with `audit` (if any) appended in the same database transaction
    /// (after the rows and their row log entries; the head lock is taken first).
    pub(crate) async fn run_transaction(
        &self,
        access: &Access,
        ops: Vec<Op>,
        audit: Option<&AuditAppend>,
    ) -> Result<Vec<Written>> {
        access.require_write("a write")?;
        let mut attempt = 1;
        loop {
            match self.write_pipelined(access, &ops, audit).await {
                Ok(written) => {
                    tracing::debug!(tenant = %access.tenant, ops = written.len(), "kluis-store transaction committed");
                    return Ok(written);
                }
                Err(StoreError::KeyChanged { .. }) if attempt < KEY_CHANGED_RETRIES => {
                    self.forget_cached_keys(&access.tenant);
                    attempt += 1;
                }
                // A deadlock victim (e.g. MariaDB, a writer's share locks against a concurrent
                // re-encryption) was rolled back whole: run it again.
                Err(e) if e.is_deadlock() && attempt < KEY_CHANGED_RETRIES => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt of a transaction. Everything is checked and every subject key is at hand
    /// before the database transaction begins; then the writes are sealed one operation at a
    /// time while the earlier ones are being written (the database works on one statement
    /// while the next record is sealed). Any error, in sealing or in writing, rolls all of it
    /// back.
    pub(super) async fn write_pipelined(
        &self,
        access: &Access,
        ops: &[Op],
        audit: Option<&AuditAppend>,
    ) -> Result<Vec<Written>> {
        let mut tags = Tags::new();
        let (planned, written) = self.plan_transaction(access, ops, &mut tags).await?;
        self.write_planned(access, planned, audit, tags).await?;
        Ok(written)
    }

    /// Seals `planned` while writing it in one database transaction (audit head lock first, the
    /// entry last).
    pub(super) async fn write_planned(
        &self,
        access: &Access,
        planned: Vec<Planned<'_>>,
        audit: Option<&AuditAppend>,
        mut tags: Tags,
    ) -> Result<()> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Option<WriteOp>>(PIPELINE_DEPTH);
        let seal = async {
            let tx = tx;
            if let Some(a) = audit
                && tx.send(Some(WriteOp::Audit(a.clone()))).await.is_err()
            {
                // The writer stopped: its error is the answer.
                return Ok(());
            }
            for p in planned {
                for w in self.seal_planned(access, p, &mut tags)? {
                    if tx.send(Some(w)).await.is_err() {
                        return Ok(());
                    }
                }
            }
            // The end mark: only now may the writer commit.
            let _ = tx.send(None).await;
            Ok::<(), StoreError>(())
        };
        let (sealed, applied) = tokio::join!(seal, self.backend.apply_stream(rx));
        // A sealing error closed the channel without the end mark: the writer rolled back.
        sealed?;
        applied
    }

    /// Checks a transaction's operations, reads what updates and deletes need, and gets every
    /// subject key the writes will be sealed under into `tags`; seals nothing, writes nothing.
    pub(super) async fn plan_transaction<'o>(
        &self,
        access: &Access,
        ops: &'o [Op],
        tags: &mut Tags,
    ) -> Result<(Vec<Planned<'o>>, Vec<Written>)> {
        let tenant = access.tenant.to_string();
        let now = now_unix();
        let mut planned = Vec::with_capacity(ops.len());
        let mut written = Vec::with_capacity(ops.len());
        for op in ops {
            match op {
                Op::Insert { collection, record } => {
                    // The rules an import checks up front (NewRecord::check); the domain keys are
                    // checked by prepare_fields.
                    record.check(&self.schema, collection)?;
                    let coll = self.schema.collection(collection)?;
                    let id = match &record.id {
                        Some(id) => id.clone(),
                        None => random_id()?,
                    };
                    access.in_scope(collection, &id, &record.subject)?;
                    self.prepare_fields(access, coll, &record.subject, &record.fields, tags, true).await?;
                    let row = RecordRow {
                        tenant: tenant.clone(),
                        collection: collection.clone(),
                        id: id.clone(),
                        subject: record.subject.clone(),
                        version: 1,
                        created_at: now,
                        updated_at: now,
                        retain_until: record.retain_until,
                        tag: Vec::new(),
                    };
                    planned.push(Planned::Insert { row, fields: &record.fields });
                    written.push(Written { collection: collection.clone(), id, version: 1 });
                }
                Op::Update { collection, id, expected_version, changes } => {
                    let expected_version = *expected_version;
                    let coll = self.schema.collection(collection)?;
                    check_id("record id", id)?;
                    for f in &changes.remove {
                        let def = field_def(coll, f)?;
                        access.require(def.domain.as_str())?;
                    }
                    let table = self.layout.table(collection)?;
                    let current = self.backend.get(table, &tenant, id).await?.ok_or_else(|| {
                        StoreError::NotFound { collection: collection.clone(), record: id.clone() }
                    })?;
                    access.in_scope(collection, id, &current.record.subject)?;
                    Self::check_row(access, &current, tags)?;
                    let current_tag = current.record.tag.clone();
                    // Retention can be extended, never shortened while it runs.
                    if let (Some(old), Some(new)) = (current.record.retain_until, changes.retain_until)
                        && new < old
                        && old > now
                    {
                        return Err(StoreError::RetentionActive {
                            collection: collection.clone(),
                            record: id.clone(),
                            retain_until: old,
                        });
                    }
                    self.prepare_fields(access, coll, &current.record.subject, &changes.set, tags, false)
                        .await?;
                    let version = expected_version
                        .checked_add(1)
                        .ok_or_else(|| StoreError::Invalid("version overflow".into()))?;
                    let row = RecordRow {
                        version: to_i64(version)?,
                        updated_at: now,
                        retain_until: changes.retain_until.or(current.record.retain_until),
                        ..current.record
                    };
                    planned.push(Planned::Update {
                        row,
                        expected_version: to_i64(expected_version)?,
                        set: &changes.set,
                        remove: &changes.remove,
                        current: current.fields,
                        current_tag,
                    });
                    written.push(Written { collection: collection.clone(), id: id.clone(), version });
                }
                Op::Delete { collection, id, expected_version, legal_override } => {
                    let table = self.layout.table(collection)?.clone();
                    check_id("record id", id)?;
                    let current = self.backend.get(&table, &tenant, id).await?.ok_or_else(|| {
                        StoreError::NotFound { collection: collection.clone(), record: id.clone() }
                    })?;
                    access.in_scope(collection, id, &current.record.subject)?;
                    // Deleting needs the keys of every domain the record holds, including the
                    // domains of the catalog documents attached to it (deleted with it).
                    for f in &current.fields {
                        access.require(&f.domain)?;
                    }
                    for d in self.backend.list_documents(&tenant, DocumentFilter::Record(id)).await? {
                        if d.subject == current.record.subject {
                            access.require(&d.domain)?;
                        }
                    }
                    let expected = match *expected_version {
                        Some(v) => to_i64(v)?,
                        None => current.record.version,
                    };
                    let mut writes = Vec::with_capacity(2);
                    if let Some(until) = current.record.retain_until
                        && until > now
                    {
                        let Some(o) = legal_override else {
                            return Err(StoreError::RetentionActive {
                                collection: collection.clone(),
                                record: id.clone(),
                                retain_until: until,
                            });
                        };
                        writes.push(WriteOp::Override(OverrideRow {
                            tenant: tenant.clone(),
                            action: "delete".into(),
                            target: format!("{collection}/{id}"),
                            reason: o.reason.clone(),
                            authorised_by: o.authorised_by.clone(),
                            at: now,
                        }));
                    }
                    writes.push(WriteOp::Delete {
                        table,
                        tenant: tenant.clone(),
                        id: id.clone(),
                        expected_version: Some(expected),
                    });
                    planned.push(Planned::Ready(writes));
                    written.push(Written { collection: collection.clone(), id: id.clone(), version: 0 });
                }
            }
        }
        Ok((planned, written))
    }
}
