//! A subject's rows deleted in one transaction.

use super::*;

impl<E: Engine> SqlBackend<E> {
    /// Shreds a subject in one transaction: its subject keys, its rows in every table listed in
    /// `kluis_tables` and document catalog entries; records `audit` (a legal override) and
    /// appends `entry` (an audit log entry) in the same transaction if given.
    pub async fn delete_subject(
        &self,
        tenant: &str,
        subject: &str,
        audit: Option<OverrideRow>,
        entry: Option<crate::audit::AuditAppend>,
        app_tables: &[crate::app_table::AppTable],
    ) -> Result<SubjectDeleted> {
        let mut tx = self.pool.begin().await?;
        // The head lock first: on SQLite it takes the write lock up front.
        Self::lock_head(&mut tx).await?;
        let tables = query::<E>("SELECT collection, table_name FROM kluis_tables ORDER BY collection")
            .fetch_all(&mut *tx)
            .await?;
        let mut removed = 0u64;
        let mut gone = Vec::new();
        for row in &tables {
            let collection = text(row, 0)?;
            let name = text(row, 1)?;
            if !crate::layout::is_table_name(&name) {
                return Err(StoreError::Corrupt {
                    what: "kluis_tables",
                    reason: format!("table name {name:?}"),
                });
            }
            for id in Self::subject_row_ids(&mut tx, &name, tenant, subject).await? {
                gone.push(RowLogEntry {
                    tenant: tenant.to_owned(),
                    collection: collection.clone(),
                    record: id,
                    tag: None,
                });
            }
            let sql = format!("DELETE FROM {name} WHERE tenant = ? AND subject = ?");
            removed +=
                query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).execute(&mut *tx).await?.rows_affected();
        }
        // Rows of the legacy layout not moved yet.
        let legacy =
            query::<E>(&E::sql("SELECT collection, id FROM kluis_records WHERE tenant = ? AND subject = ?"))
                .bind(tenant)
                .bind(subject)
                .fetch_all(&mut *tx)
                .await?;
        for row in &legacy {
            let collection = text(row, 0)?;
            let id = text(row, 1)?;
            for table in ["kluis_fields", "kluis_blind_index"] {
                let sql =
                    format!("DELETE FROM {table} WHERE tenant = ? AND collection = ? AND record_id = ?");
                query::<E>(&E::sql(&sql)).bind(tenant).bind(&collection).bind(&id).execute(&mut *tx).await?;
            }
        }
        removed += legacy.len() as u64;
        let keys = query::<E>(&E::sql(
            "SELECT domain, version FROM kluis_subject_keys WHERE tenant = ? AND subject = ? ORDER BY domain, version",
        ))
        .bind(tenant)
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| Ok((text(r, 0)?, r.col::<i64>(1)?)))
        .collect::<Result<Vec<_>>>()?;
        let mut documents = 0;
        for table in ["kluis_records", "kluis_subject_keys", "kluis_documents"] {
            let sql = format!("DELETE FROM {table} WHERE tenant = ? AND subject = ?");
            let n =
                query::<E>(&E::sql(&sql)).bind(tenant).bind(subject).execute(&mut *tx).await?.rows_affected();
            if table == "kluis_documents" {
                documents = n;
            }
        }
        // The subject's protected values in the application's mapped tables (in this database):
        // every protected column, blind index and row tag of its rows set to NULL. The rows and
        // their clear columns are the application's, and stay.
        let mut app_rows = 0u64;
        for t in app_tables.iter().filter(|t| !t.external) {
            use crate::app_table::TenantSource;
            let (tenant_sql, tenant_bind) = match &t.tenant {
                TenantSource::Column(c) => (format!("{c} = ? AND "), true),
                TenantSource::Fixed(x) if x.as_str() == tenant => (String::new(), false),
                TenantSource::Fixed(_) => continue,
            };
            let mut cols: Vec<&str> = Vec::new();
            for c in t.protected_columns() {
                cols.push(&c.name);
                if let Some(i) = &c.blind_index_column {
                    cols.push(i);
                }
            }
            cols.push(&t.row_tag_column);
            let sets: Vec<String> = cols.iter().map(|c| format!("{c} = NULL")).collect();
            let any: Vec<String> = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect();
            let sql = format!(
                "UPDATE {} SET {} WHERE {tenant_sql}{} = ? AND ({})",
                t.table,
                sets.join(", "),
                t.subject_column,
                any.join(" OR ")
            );
            let sql = E::sql(&sql).into_owned();
            let mut q = query::<E>(&sql);
            if tenant_bind {
                q = q.bind(tenant);
            }
            app_rows += q.bind(subject).execute(&mut *tx).await?.rows_affected();
        }
        if let Some(a) = audit {
            Self::insert_override(&mut tx, a).await?;
        }
        Self::finish_log(&mut tx, TxLog { locked: true, rows: gone, audits: entry.into_iter().collect() })
            .await?;
        tx.commit().await?;
        Ok(SubjectDeleted { records: removed, documents, subject_keys: keys, app_rows })
    }
}
