//! The documents catalog.

use super::*;

/// The document key version named by a catalog key reference `subject:<domain>:v<N>`. `N` is
/// written in decimal without leading zeros and starts at 1: `v0`, `v01` and the like name no
/// version (`None`).
pub fn document_key_version(key_ref: &str, domain: &str) -> Option<i64> {
    let rest = key_ref.strip_prefix("subject:")?.strip_prefix(domain)?.strip_prefix(":v")?;
    if rest.starts_with('0') || rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse::<kluis_core::KeyVersion>().ok().map(kluis_core::KeyVersion::to_stored)
}

impl<E: Engine> SqlBackend<E> {
    pub(super) async fn insert_document_tx(
        tx: &mut sqlx::Transaction<'static, E::Db>,
        d: DocumentRow,
    ) -> Result<()> {
        let res = query::<E>(&E::sql(
                "INSERT INTO kluis_documents (tenant, document_id, domain, subject, record_id, object_name, key_ref, padded_size, created_at, sealed_meta, key_version) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&d.tenant)
            .bind(&d.document_id)
            .bind(&d.domain)
            .bind(&d.subject)
            .bind(&d.record_id)
            .bind(&d.object_name)
            .bind(&d.key_ref)
            .bind(d.padded_size)
            .bind(d.created_at)
            .bind(&d.sealed_meta)
            .bind(document_key_version(&d.key_ref, &d.domain))
            .execute(&mut **tx)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if unique_violation(&e) => {
                Err(StoreError::AlreadyExists { collection: "kluis_documents".into(), record: d.document_id })
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) fn document_from(row: &RowOf<E>) -> Result<DocumentRow> {
        Ok(DocumentRow {
            tenant: text(row, 0)?,
            document_id: text(row, 1)?,
            domain: text(row, 2)?,
            subject: text(row, 3)?,
            record_id: opt_text(row, 4)?,
            object_name: text(row, 5)?,
            key_ref: text(row, 6)?,
            padded_size: row.col(7)?,
            created_at: row.col(8)?,
            sealed_meta: row.col(9)?,
        })
    }
    /// Inserts a documents catalog entry.
    pub async fn insert_document(&self, d: DocumentRow) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        Self::insert_document_tx(&mut tx, d).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lists catalog entries by subject or record, ordered by document id.
    pub async fn list_documents(&self, tenant: &str, filter: DocumentFilter<'_>) -> Result<Vec<DocumentRow>> {
        let (col, val) = match filter {
            DocumentFilter::Subject(s) => ("subject", s),
            DocumentFilter::Record(r) => ("record_id", r),
        };
        let sql = format!(
            "SELECT tenant, document_id, domain, subject, record_id, object_name, key_ref, padded_size, created_at, sealed_meta \
                 FROM kluis_documents WHERE tenant = ? AND {col} = ? ORDER BY document_id"
        );
        let rows = query::<E>(&E::sql(&sql)).bind(tenant).bind(val).fetch_all(&self.pool).await?;
        rows.iter().map(Self::document_from).collect()
    }

    /// Deletes a catalog entry; `false` if there was none.
    pub async fn delete_document(&self, tenant: &str, document_id: &str) -> Result<bool> {
        let done = query::<E>(&E::sql("DELETE FROM kluis_documents WHERE tenant = ? AND document_id = ?"))
            .bind(tenant)
            .bind(document_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// One catalog entry.
    pub async fn document(&self, tenant: &str, document_id: &str) -> Result<Option<DocumentRow>> {
        let row = query::<E>(&E::sql(
                "SELECT tenant, document_id, domain, subject, record_id, object_name, key_ref, padded_size, created_at, sealed_meta \
                 FROM kluis_documents WHERE tenant = ? AND document_id = ?",
            ))
            .bind(tenant)
            .bind(document_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::document_from).transpose()
    }

    /// Replaces the catalog entry (tenant, document id) of `row` if its object name is still
    /// `expected_object_name` (compare-and-swap); `false` if it changed or is gone.
    pub async fn replace_document(&self, expected_object_name: &str, d: DocumentRow) -> Result<bool> {
        let done = query::<E>(&E::sql(
                "UPDATE kluis_documents SET domain = ?, subject = ?, record_id = ?, object_name = ?, key_ref = ?, \
                 padded_size = ?, created_at = ?, sealed_meta = ?, key_version = ? \
                 WHERE tenant = ? AND document_id = ? AND object_name = ?",
            ))
            .bind(&d.domain)
            .bind(&d.subject)
            .bind(&d.record_id)
            .bind(&d.object_name)
            .bind(&d.key_ref)
            .bind(d.padded_size)
            .bind(d.created_at)
            .bind(&d.sealed_meta)
            .bind(document_key_version(&d.key_ref, &d.domain))
            .bind(&d.tenant)
            .bind(&d.document_id)
            .bind(expected_object_name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every object name referenced by any catalog entry, all tenants, sorted.
    pub async fn document_object_names(&self) -> Result<Vec<String>> {
        let rows = query::<E>("SELECT DISTINCT object_name FROM kluis_documents ORDER BY object_name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| text(r, 0)).collect()
    }
}
