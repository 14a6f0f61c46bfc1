//! Subject keys: created, unwrapped, cached per call and store-wide, forgotten.

use super::*;

/// (tenant, domain, subject, subject key version).
pub(super) type SubjectCacheKey = (String, String, String, KeyVersion);

/// (tenant, domain, subject).
pub(super) type NewestKey = (String, String, String);

/// Cache tags computed during one call, by (domain, domain key version).
pub(super) type Tags = CallCache;

/// State kept for the length of one call (a read of a page, a transaction, a step): the cache
/// tags computed per (domain, domain key version), and the subject keys already opened, by
/// subject, so a page of records looks each key up once and without allocating.
///
/// Writes also keep the newest subject key version found per (subject, domain), so the records
/// of a transaction after the first of a subject skip the store-wide cache, and the blind index
/// keys derived per (domain, domain key version, collection, field). A retried transaction starts
/// from a new `CallCache`.
#[derive(Default)]
pub(super) struct CallCache {
    pub(super) tags: Vec<(String, KeyVersion, [u8; 32])>,
    pub(super) keys: HashMap<String, Vec<(String, KeyVersion, Arc<SubjectKey>)>>,
    pub(super) newest: HashMap<String, Vec<(String, KeyVersion)>>,
    pub(super) index_keys: Vec<IndexKeyEntry>,
    /// Row tag keys derived during the call, by tenant and row_tags key version.
    pub(super) row_keys: Vec<(String, KeyVersion, BlindIndexKey)>,
}

/// A blind index key derived during one call: (domain, domain key version, collection, field).
pub(super) struct IndexKeyEntry {
    pub(super) domain: String,
    pub(super) version: KeyVersion,
    pub(super) collection: String,
    pub(super) field: String,
    pub(super) key: BlindIndexKey,
}

impl CallCache {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn tag(&self, domain: &str, version: KeyVersion) -> Option<[u8; 32]> {
        self.tags.iter().find(|(d, v, _)| d == domain && *v == version).map(|e| e.2)
    }

    pub(super) fn key(&self, subject: &str, domain: &str, version: KeyVersion) -> Option<&Arc<SubjectKey>> {
        self.keys.get(subject)?.iter().find(|(d, v, _)| d == domain && *v == version).map(|e| &e.2)
    }

    pub(super) fn remember(
        &mut self,
        subject: &str,
        domain: &str,
        version: KeyVersion,
        key: &Arc<SubjectKey>,
    ) {
        match self.keys.get_mut(subject) {
            Some(list) => list.push((domain.to_owned(), version, key.clone())),
            None => {
                self.keys.insert(subject.to_owned(), vec![(domain.to_owned(), version, key.clone())]);
            }
        }
    }

    pub(super) fn forget_subject(&mut self, subject: &str) {
        self.keys.remove(subject);
        self.newest.remove(subject);
    }

    /// The newest subject key version found during this call for (subject, domain), with its key.
    pub(super) fn newest_key(&self, subject: &str, domain: &str) -> Option<(KeyVersion, Arc<SubjectKey>)> {
        let v = self.newest.get(subject)?.iter().find(|(d, _)| d == domain)?.1;
        self.key(subject, domain, v).map(|k| (v, k.clone()))
    }

    pub(super) fn remember_newest(&mut self, subject: &str, domain: &str, version: KeyVersion) {
        match self.newest.get_mut(subject) {
            Some(list) => match list.iter_mut().find(|(d, _)| d == domain) {
                Some(e) => e.1 = version,
                None => list.push((domain.to_owned(), version)),
            },
            None => {
                self.newest.insert(subject.to_owned(), vec![(domain.to_owned(), version)]);
            }
        }
    }
}

pub(super) struct CachedSubjectKey {
    pub(super) key: Arc<SubjectKey>,
    pub(super) wrapping: KeyVersion,
    pub(super) tag: [u8; 32],
    pub(super) expires: Instant,
}

pub(super) const SUBJECT_CACHE_MAX: usize = 100_000;

#[derive(Default)]
pub(super) struct SubjectCache {
    pub(super) keys: HashMap<SubjectCacheKey, CachedSubjectKey>,
    /// The newest subject key version seen per subject, for writes.
    pub(super) newest: HashMap<NewestKey, (KeyVersion, Instant)>,
}

impl SubjectCache {
    pub(super) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(super) fn forget_subject(&mut self, tenant: &str, domain: Option<&str>, subject: &str) {
        let hit = |t: &str, d: &str, s: &str| t == tenant && s == subject && domain.is_none_or(|x| x == d);
        self.keys.retain(|k, _| !hit(&k.0, &k.1, &k.2));
        self.newest.retain(|k, _| !hit(&k.0, &k.1, &k.2));
    }

    pub(super) fn forget_domain(&mut self, tenant: &str, domain: &str) {
        self.keys.retain(|k, _| !(k.0 == tenant && k.1 == domain));
        self.newest.retain(|k, _| !(k.0 == tenant && k.1 == domain));
    }
}

impl<E: Engine> Store<E> {
    pub(super) fn subject_record(
        row: &SubjectKeyRow,
        tenant: &TenantId,
        set: &DomainKeySet,
    ) -> Result<SubjectKeyRecord> {
        let version = KeyVersion::from_stored(row.version).map_err(|_| StoreError::KeyIntegrity {
            what: format!("subject key {}/{}/{}", tenant, set.domain(), row.subject),
        })?;
        Ok(SubjectKeyRecord {
            tenant: tenant.clone(),
            domain: set.domain().clone(),
            subject: row.subject.clone(),
            version,
            wrapped: row.wrapped.clone(),
        })
    }

    /// A tag that proves which domain key version a cached subject key was unwrapped with,
    /// without keeping a copy of that key: a 256-bit HMAC under a key derived from it.
    pub(super) fn cache_tag(
        set: &DomainKeySet,
        version: KeyVersion,
        tags: &mut Tags,
    ) -> kluis_core::Result<[u8; 32]> {
        if let Some(t) = tags.tag(set.domain().as_str(), version) {
            return Ok(t);
        }
        let k = BlindIndexKey::derive(
            set.key(version)?,
            set.tenant(),
            set.domain(),
            "kluis-subject-cache",
            "tag",
            32,
        )?;
        let mut out = [0u8; 32];
        out.copy_from_slice(k.index(b"subject key cache").get(..32).unwrap_or(&[0u8; 32]));
        tags.tags.push((set.domain().to_string(), version, out));
        Ok(out)
    }

    pub(super) fn open_subject_row(
        &self,
        set: &DomainKeySet,
        row: &SubjectKeyRow,
        tags: &mut Tags,
    ) -> Result<Arc<SubjectKey>> {
        let tenant = set.tenant();
        let what = || format!("subject key {}/{}/{} v{}", tenant, set.domain(), row.subject, row.version);
        let rec = Self::subject_record(row, tenant, set)?;
        let wv = DomainKeySet::subject_key_wrapping_version(&rec).map_err(|e| key_integrity(what(), e))?;
        Self::require_version(set, wv)?;
        let key = Arc::new(set.open_subject_key(&rec).map_err(|e| key_integrity(what(), e))?);
        let tag = Self::cache_tag(set, wv, tags).map_err(|e| key_integrity(what(), e))?;
        if let Ok(mut c) = self.subject_keys.lock() {
            if c.len() >= SUBJECT_CACHE_MAX {
                let now = Instant::now();
                c.keys.retain(|_, e| e.expires > now);
                c.newest.retain(|_, e| e.1 > now);
                if c.len() >= SUBJECT_CACHE_MAX {
                    c.keys.clear();
                    c.newest.clear();
                }
            }
            let ck = (
                tenant.as_str().to_owned(),
                set.domain().as_str().to_owned(),
                row.subject.clone(),
                rec.version,
            );
            let expires = Instant::now() + self.subject_key_ttl;
            c.keys.insert(ck, CachedSubjectKey { key: key.clone(), wrapping: wv, tag, expires });
        }
        Ok(key)
    }

    pub(super) fn note_newest(&self, set: &DomainKeySet, subject: &str, version: KeyVersion) {
        if let Ok(mut c) = self.subject_keys.lock() {
            let k = (set.tenant().as_str().to_owned(), set.domain().as_str().to_owned(), subject.to_owned());
            c.newest.insert(k, (version, Instant::now() + self.subject_key_ttl));
        }
    }

    pub(super) fn cached_key(
        &self,
        set: &DomainKeySet,
        subject: &str,
        version: KeyVersion,
        tags: &mut Tags,
    ) -> Option<Arc<SubjectKey>> {
        let ck =
            (set.tenant().as_str().to_owned(), set.domain().as_str().to_owned(), subject.to_owned(), version);
        let cached = self.subject_keys.lock().ok().and_then(|c| {
            c.keys.get(&ck).filter(|e| e.expires > Instant::now()).map(|e| (e.key.clone(), e.wrapping, e.tag))
        })?;
        let (key, wv, tag) = cached;
        let mine = Self::cache_tag(set, wv, tags).ok()?;
        ct_eq(&mine, &tag).then_some(key)
    }

    /// A subject key of (tenant, domain, subject): version `version`, or the newest if `None`;
    /// from the cache when the caller's key set holds the domain key version that unwrapped it,
    /// else from the database. The newest version may be served from the cache for up to the
    /// TTL: a write under a version that another process deleted meanwhile is refused by the
    /// database ([`StoreError::KeyChanged`]) and retried.
    pub(super) async fn load_subject_key(
        &self,
        set: &DomainKeySet,
        subject: &str,
        version: Option<KeyVersion>,
        tags: &mut Tags,
    ) -> Result<Option<(KeyVersion, Arc<SubjectKey>)>> {
        let want = match version {
            Some(v) => Some(v),
            None => self.subject_keys.lock().ok().and_then(|c| {
                let k =
                    (set.tenant().as_str().to_owned(), set.domain().as_str().to_owned(), subject.to_owned());
                c.newest.get(&k).filter(|e| e.1 > Instant::now()).map(|e| e.0)
            }),
        };
        if let Some(v) = want {
            if let Some(key) = tags.key(subject, set.domain().as_str(), v) {
                return Ok(Some((v, key.clone())));
            }
            if let Some(key) = self.cached_key(set, subject, v, tags) {
                tags.remember(subject, set.domain().as_str(), v, &key);
                return Ok(Some((v, key)));
            }
        }
        let rows = self.backend.subject_keys(set.tenant().as_str(), set.domain().as_str(), subject).await?;
        if let Some(last) = rows.last()
            && let Ok(v) = KeyVersion::from_stored(last.version)
        {
            self.note_newest(set, subject, v);
        }
        let row = match version {
            Some(v) => rows.iter().find(|r| r.version == v.to_stored()),
            None => rows.last(),
        };
        match row {
            None => Ok(None),
            Some(row) => {
                let key = self.open_subject_row(set, row, tags)?;
                let v = key.version();
                tags.remember(subject, set.domain().as_str(), v, &key);
                Ok(Some((v, key)))
            }
        }
    }

    pub(super) async fn subject_key_for_write(
        &self,
        set: &DomainKeySet,
        subject: &str,
        tags: &mut Tags,
    ) -> Result<(KeyVersion, Arc<SubjectKey>)> {
        if let Some(k) = tags.newest_key(subject, set.domain().as_str()) {
            return Ok(k);
        }
        let found = match self.load_subject_key(set, subject, None, tags).await? {
            Some(k) => k,
            None => {
                let row = Self::new_subject_key_row(set, subject, KeyVersion::FIRST)?;
                // Inserted, or another writer won the race: either way read back the stored one.
                self.backend.insert_subject_key(row).await?;
                self.load_subject_key(set, subject, None, tags).await?.ok_or_else(|| {
                    StoreError::KeyChanged {
                        what: format!("subject key {}/{}/{subject}", set.tenant(), set.domain()),
                    }
                })?
            }
        };
        tags.remember_newest(subject, set.domain().as_str(), found.0);
        Ok(found)
    }

    pub(super) fn new_subject_key_row(
        set: &DomainKeySet,
        subject: &str,
        version: KeyVersion,
    ) -> Result<SubjectKeyRow> {
        Ok(Self::new_subject_key_pair(set, subject, version)?.0)
    }

    pub(super) fn new_subject_key_pair(
        set: &DomainKeySet,
        subject: &str,
        version: KeyVersion,
    ) -> Result<(SubjectKeyRow, SubjectKey)> {
        let wrap = set.active_version().ok_or_else(|| {
            StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("{}/{} (no active version)", set.tenant(), set.domain()),
            })
        })?;
        let (rec, key) = set.new_subject_key(subject, version)?;
        let row = SubjectKeyRow {
            tenant: rec.tenant.to_string(),
            domain: rec.domain.to_string(),
            subject: rec.subject.clone(),
            version: rec.version.to_stored(),
            wrapped: rec.wrapped,
            created_at: now_unix(),
            wrap_version: wrap.to_stored(),
        };
        Ok((row, key))
    }

    // ---------------------------------------------------------------- writes

    /// Drops every cached subject key of a tenant (after [`StoreError::KeyChanged`]).
    pub(crate) fn forget_cached_keys(&self, tenant: &TenantId) {
        if let Ok(mut c) = self.subject_keys.lock() {
            c.keys.retain(|k, _| k.0 != tenant.as_str());
            c.newest.retain(|k, _| k.0 != tenant.as_str());
        }
    }

    /// A subject key wrapped under a domain key version newer than any the caller holds: the
    /// domain key was rotated after the caller unlocked (retryable after unlocking again).
    pub(super) fn require_version(set: &DomainKeySet, wrap_version: KeyVersion) -> Result<()> {
        let newest = set.versions().iter().map(|(v, _)| *v).max();
        if newest.is_none_or(|n| wrap_version > n) {
            return Err(StoreError::KeyChanged {
                what: format!(
                    "domain key {}/{} v{wrap_version} is newer than the caller's keys: unlock again",
                    set.tenant(),
                    set.domain()
                ),
            });
        }
        Ok(())
    }

    pub(super) fn open_row_owned(
        set: &DomainKeySet,
        row: &SubjectKeyRow,
    ) -> Result<(KeyVersion, SubjectKey)> {
        let tenant = set.tenant();
        let what = || format!("subject key {}/{}/{} v{}", tenant, set.domain(), row.subject, row.version);
        let rec = Self::subject_record(row, tenant, set)?;
        let wv = DomainKeySet::subject_key_wrapping_version(&rec).map_err(|e| key_integrity(what(), e))?;
        Self::require_version(set, wv)?;
        let key = set.open_subject_key(&rec).map_err(|e| key_integrity(what(), e))?;
        Ok((rec.version, key))
    }

    /// The newest subject key of (caller's tenant, `domain`, `subject`) with its version,
    /// created (version 1, wrapped under the active domain key version) if the subject has none.
    /// For documents: the catalog's `key_ref` is then `subject:<domain>:v<version>`.
    pub async fn subject_key(
        &self,
        access: &Access,
        domain: &DomainName,
        subject: &str,
    ) -> Result<(KeyVersion, SubjectKey)> {
        check_id("subject id", subject)?;
        let set = access.require(domain.as_str())?;
        let (t, d) = (access.tenant.as_str(), domain.as_str());
        let mut rows = self.backend.subject_keys(t, d, subject).await?;
        if rows.is_empty() {
            self.backend
                .insert_subject_key(Self::new_subject_key_row(set, subject, KeyVersion::FIRST)?)
                .await?;
            rows = self.backend.subject_keys(t, d, subject).await?;
        }
        let row = rows
            .last()
            .ok_or_else(|| StoreError::KeyChanged { what: format!("subject key {t}/{d}/{subject}") })?;
        Self::open_row_owned(set, row)
    }

    /// Does `subject` have a subject key in any domain `access` holds (values sealed for it may
    /// exist, in Kluis's records or in the application's mapped tables)?
    pub async fn subject_has_keys(&self, access: &Access, subject: &str) -> Result<bool> {
        check_id("subject id", subject)?;
        for d in access.domains() {
            if !self.backend.subject_keys(access.tenant.as_str(), d, subject).await?.is_empty() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Version `version` of the subject key of (caller's tenant, `domain`, `subject`).
    /// [`StoreError::Shredded`] if the subject has no key at all in this domain,
    /// [`kluis_core::Error::UnknownKey`] if only that version is gone (re-encrypted away).
    pub async fn subject_key_version(
        &self,
        access: &Access,
        domain: &DomainName,
        subject: &str,
        version: KeyVersion,
    ) -> Result<SubjectKey> {
        check_id("subject id", subject)?;
        let set = access.require(domain.as_str())?;
        let (t, d) = (access.tenant.as_str(), domain.as_str());
        let rows = self.backend.subject_keys(t, d, subject).await?;
        if rows.is_empty() {
            return Err(StoreError::Shredded { tenant: t.to_owned(), subject: subject.to_owned() });
        }
        let row = rows.iter().find(|r| r.version == version.to_stored()).ok_or_else(|| {
            StoreError::Core(kluis_core::Error::UnknownKey {
                key: format!("subject key {t}/{d}/{subject} v{version}"),
            })
        })?;
        Ok(Self::open_row_owned(set, row)?.1)
    }
}
