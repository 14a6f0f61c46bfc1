//! Instance reports and root key activation: each running instance reports the root key
//! versions it holds, and a new root key version becomes the one new keys are wrapped under only
//! once every instance that reported recently holds it (docs/STORE.md, "Instances and root key
//! activation").

use super::*;
use crate::backend::InstanceRow;

/// How often an instance with reports enabled renews its report while it unlocks keys
/// ([`Store::with_instance_reports`]).
pub const INSTANCE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// An instance counts as running while its last report is at most this old (five report
/// periods).
pub const DEFAULT_INSTANCE_WINDOW: Duration = Duration::from_secs(300);

/// Reports not renewed for this long are deleted (seconds; a week).
const FORGET_AFTER: i64 = 7 * 86_400;

/// Longest instance label, in bytes.
const LABEL_MAX: usize = 128;

/// This instance's identity in `kluis_instances` and when it last reported.
pub(super) struct Reporter {
    id: String,
    label: String,
    last: Mutex<Option<Instant>>,
}

/// The root key versions an instance reported holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Every version of its root key: a provider that asks a KMS for each unwrap.
    Every,
    /// These versions (a local keyring loaded from its file).
    Versions(Vec<KeyVersion>),
    /// A report that cannot be read (edited in the database): taken as holding nothing.
    Unreadable,
}

/// One instance's last report ([`Store::instances`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceReport {
    /// Random id of the reporting [`Store`] (32 hex digits).
    pub id: String,
    /// The label the application gave it (host, service name).
    pub label: String,
    /// Its root key id (`keyring`, or the KMS key).
    pub root_key_id: String,
    /// Its keyring file's generation (`None` for a KMS).
    pub generation: Option<u64>,
    /// The root key versions it holds.
    pub held: Held,
    /// When it last reported (seconds since the Unix epoch).
    pub seen_at: i64,
}

impl fmt::Display for Held {
    /// `every version`, `v1,v2`, or `an unreadable report`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Every => f.write_str("every version"),
            Self::Versions(vs) => {
                for (i, v) in vs.iter().enumerate() {
                    write!(f, "{}v{v}", if i > 0 { "," } else { "" })?;
                }
                Ok(())
            }
            Self::Unreadable => f.write_str("an unreadable report"),
        }
    }
}

impl InstanceReport {
    /// Does this instance hold root key version `v`?
    pub fn holds(&self, v: KeyVersion) -> bool {
        match &self.held {
            Held::Every => true,
            Held::Versions(vs) => vs.contains(&v),
            Held::Unreadable => false,
        }
    }

    fn describe(&self) -> String {
        let generation = self.generation.map(|g| format!(", generation {g}")).unwrap_or_default();
        format!("{} (id {}{generation}, holds {})", self.label, self.id, self.held)
    }

    fn from_row(r: InstanceRow) -> Self {
        let generation = r.generation.and_then(|g| u64::try_from(g).ok());
        let held = match &r.versions {
            None => Held::Every,
            Some(s) => s
                .split(',')
                .map(|v| v.parse::<u32>().ok().and_then(|v| KeyVersion::new(v).ok()))
                .collect::<Option<Vec<_>>>()
                .filter(|vs| !vs.is_empty())
                .map_or(Held::Unreadable, Held::Versions),
        };
        // A generation that is not a count (negative) makes the report unreadable too.
        let held = if r.generation.is_some() && generation.is_none() { Held::Unreadable } else { held };
        Self { id: r.id, label: r.label, root_key_id: r.root_key_id, generation, held, seen_at: r.seen_at }
    }
}

fn window_secs(window: Duration) -> i64 {
    i64::try_from(window.as_secs()).unwrap_or(i64::MAX)
}

impl<E: Engine> Store<E> {
    /// Makes this store report, as a running instance labelled `label` (a host or service name:
    /// printable, at most 128 bytes, no personal data), the root key versions and keyring
    /// generation its provider holds: at most once every [`INSTANCE_REPORT_EVERY`] while it
    /// unlocks keys (every [`Store::check_rollback`]), and whenever [`Store::report_instance`]
    /// is called (from a timer, so an idle instance stays counted). A new root key version is
    /// activated only when every instance that reported within the window holds it
    /// ([`Store::activate_root_version`]). Administrative tools, which run briefly, leave this
    /// off.
    pub fn with_instance_reports(mut self, label: impl Into<String>) -> Result<Self> {
        let label = label.into();
        if label.is_empty() || label.len() > LABEL_MAX || label.chars().any(char::is_control) {
            return Err(StoreError::Invalid(format!(
                "instance label must be 1 to {LABEL_MAX} bytes without control characters"
            )));
        }
        self.reporter = Some(Reporter { id: random_id()?, label, last: Mutex::new(None) });
        Ok(self)
    }

    /// This instance's id in the reports, if reports are enabled.
    pub fn instance_id(&self) -> Option<&str> {
        self.reporter.as_ref().map(|r| r.id.as_str())
    }

    /// Writes this instance's report now: its root key id, keyring generation and the root key
    /// versions `provider` holds ([`RootKeyProvider::held_versions`]). Refused unless
    /// [`Store::with_instance_reports`] enabled reports.
    pub async fn report_instance(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        let Some(r) = &self.reporter else {
            return Err(StoreError::Invalid(
                "instance reports are not enabled (Store::with_instance_reports)".into(),
            ));
        };
        let generation = provider.generation().map(to_i64).transpose()?;
        let versions = provider
            .held_versions()
            .map(|vs| vs.iter().map(|v| v.get().to_string()).collect::<Vec<_>>().join(","));
        let now = now_unix();
        let row = InstanceRow {
            id: r.id.clone(),
            label: r.label.clone(),
            root_key_id: provider.root_key_id().to_owned(),
            generation,
            versions,
            seen_at: now,
        };
        self.backend.report_instance(&row, now.saturating_sub(FORGET_AFTER)).await?;
        if let Ok(mut last) = r.last.lock() {
            *last = Some(Instant::now());
        }
        Ok(())
    }

    /// [`Store::report_instance`] if reports are enabled and the last one is older than
    /// [`INSTANCE_REPORT_EVERY`].
    pub(super) async fn report_if_due(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        let Some(r) = &self.reporter else { return Ok(()) };
        let due =
            r.last.lock().map(|l| l.is_none_or(|t| t.elapsed() >= INSTANCE_REPORT_EVERY)).unwrap_or(true);
        if due { self.report_instance(provider).await } else { Ok(()) }
    }

    /// The instances that reported within `window`, by id.
    pub async fn instances(&self, window: Duration) -> Result<Vec<InstanceReport>> {
        let since = now_unix().saturating_sub(window_secs(window));
        Ok(self.backend.instances(since).await?.into_iter().map(InstanceReport::from_row).collect())
    }

    /// Activates `provider`'s primary root key version: from now on new domain keys are wrapped
    /// under it (and [`Store::rewrap_domain_keys`] may move every key to it). Refused with
    /// [`StoreError::RootVersionNotHeld`], naming them, while any instance of the same root key
    /// that reported within `window` ([`Store::with_instance_reports`]) does not hold it, so
    /// that no running instance meets a key it cannot open. Records the keyring generation; the
    /// floor ([`KeyringRecord::floor`]) rises to the oldest generation those instances reported.
    /// The keyring must be the newest recorded one. A provider without a generation (a KMS,
    /// which every instance asks) needs no activation: its primary version is returned.
    pub async fn activate_root_version(
        &self,
        provider: &dyn RootKeyProvider,
        window: Duration,
    ) -> Result<KeyVersion> {
        let primary = provider.primary_version().await?;
        let Some(g) = provider.generation() else { return Ok(primary) };
        if let GenerationStatus::DatabaseBehind { keyring, database } =
            self.check_keyring_generation(provider).await?
        {
            return Err(StoreError::Core(kluis_core::Error::DatabaseBehindKeyring { keyring, database }));
        }
        let current = self.seen_record().ok_or(StoreError::MetadataMissing(META_GENERATION))?;
        if g != current.newest {
            return Err(StoreError::Invalid(format!(
                "activate a root key version with the newest keyring file (generation {}; this one is {g})",
                current.newest
            )));
        }
        let lacking: Vec<String> = self
            .instances(window)
            .await?
            .iter()
            .filter(|i| i.root_key_id == provider.root_key_id() && !i.holds(primary))
            .map(InstanceReport::describe)
            .collect();
        if !lacking.is_empty() {
            return Err(StoreError::RootVersionNotHeld { version: primary, instances: lacking });
        }
        let floor = self.new_floor(provider, current.floor, g, window).await?;
        let next = KeyringRecord { newest: g, floor, active: Some(primary) };
        if next != current {
            self.write_record(provider, next).await?;
        }
        tracing::info!(version = primary.get(), floor, "kluis-store root key version active");
        Ok(primary)
    }

    /// New domain keys are wrapped only under the active root key version: refused
    /// ([`StoreError::RootVersionNotActive`]) when this keyring's primary version is another
    /// one. Called after the rollback check, which read the record.
    pub(super) async fn require_active_root(&self, provider: &dyn RootKeyProvider) -> Result<()> {
        if provider.generation().is_none() {
            return Ok(());
        }
        let Some(active) = self.seen_record().and_then(|r| r.active) else { return Ok(()) };
        let primary = provider.primary_version().await?;
        if primary == active { Ok(()) } else { Err(StoreError::RootVersionNotActive { primary, active }) }
    }
}
