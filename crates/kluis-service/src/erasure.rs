//! Erasure certificates: what a shred destroyed, written as an entry of the audit log's hash chain.
//!
//! After a shred has removed a subject's keys, records and catalog entries, destroyed the domain
//! key versions that wrapped those keys and purged the database files, the facade (or the CLI)
//! appends one audit entry with action [`CERTIFICATE_ACTION`] whose `reason` is the certificate as
//! canonical JSON ([`ErasureCertificate::to_json`]). The certificate is therefore covered by the
//! chain like every entry: [`crate::audit::verify`] fails if its bytes change, and
//! [`crate::Service::check_certificate`] ties a certificate kept elsewhere to the entry that holds it.
//! The certificate names the subject id (as the shred's own entry does) and counts and key
//! versions; it never holds a value.

use kluis_core::KeyVersion;
use kluis_store::{LegalOverride, ShredReport};
use serde::{Deserialize, Serialize};

use crate::audit::VerifyReport;
use crate::error::{Error, Result};

/// The audit action of a certificate entry.
pub const CERTIFICATE_ACTION: &str = "erasure_certificate";

/// The format tag of a certificate (docs/SERVICE.md, "Erasure certificates").
pub const CERTIFICATE_FORMAT: &str = "kluis-erasure-certificate:v1";

/// What one shred destroyed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureCertificate {
    /// [`CERTIFICATE_FORMAT`].
    pub format: String,
    /// Tenant.
    pub tenant: String,
    /// Subject id.
    pub subject: String,
    /// When the shred finished, unix milliseconds.
    pub shredded_at_ms: i64,
    /// Records removed.
    pub records_removed: u64,
    /// Document catalog entries removed.
    pub catalog_documents_removed: u64,
    /// Document blobs deleted from the blob store, where the shred deleted them (`None`: left to
    /// the blob store's garbage collection; they cannot be opened, their keys are destroyed).
    pub blobs_deleted: Option<u64>,
    /// The subject's keys destroyed.
    pub subject_keys_destroyed: Vec<KeyVersionRef>,
    /// The domain key versions destroyed after rotating (they wrapped the subject's keys).
    pub domain_key_versions_destroyed: Vec<KeyVersionRef>,
    /// Where and how the database files were purged of the key bytes.
    pub purge: PurgeRef,
    /// The legal override that allowed a shred under retention, if any.
    pub legal_override: Option<OverrideRef>,
    /// Rows of the application's mapped tables whose protected values were cleared (absent when
    /// the schema maps no table in Kluis's database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapped_rows_cleared: Option<u64>,
}

/// A key version of a domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVersionRef {
    /// Domain.
    pub domain: String,
    /// Version (a JSON number, from 1).
    #[serde(with = "version_number")]
    pub version: KeyVersion,
}

/// A [`KeyVersion`] in JSON: its number; 0 is refused.
mod version_number {
    use kluis_core::KeyVersion;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &KeyVersion, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(v.get())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyVersion, D::Error> {
        KeyVersion::new(u32::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The purge that ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRef {
    /// `sqlite`, `postgres` or `mysql`.
    pub engine: String,
    /// What it did.
    pub steps: String,
}

/// A legal override, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRef {
    /// Why.
    pub reason: String,
    /// Who authorised it.
    pub authorised_by: String,
}

impl ErasureCertificate {
    /// The certificate of a shred of `subject` in `tenant` that `report` describes.
    pub fn of_shred(
        tenant: &str,
        subject: &str,
        shredded_at_ms: i64,
        report: &ShredReport,
        blobs_deleted: Option<u64>,
        legal_override: Option<&LegalOverride>,
    ) -> Self {
        let refs = |v: &[(String, KeyVersion)]| {
            v.iter().map(|(d, v)| KeyVersionRef { domain: d.clone(), version: *v }).collect()
        };
        let engine = match report.purge.0 {
            kluis_store::EngineKind::Sqlite => "sqlite",
            kluis_store::EngineKind::Postgres => "postgres",
            kluis_store::EngineKind::MySql => "mysql",
            _ => "other",
        };
        Self {
            format: CERTIFICATE_FORMAT.to_owned(),
            tenant: tenant.to_owned(),
            subject: subject.to_owned(),
            shredded_at_ms,
            records_removed: report.records_removed,
            catalog_documents_removed: report.documents_removed,
            blobs_deleted,
            subject_keys_destroyed: refs(&report.subject_keys_destroyed),
            domain_key_versions_destroyed: refs(&report.destroyed_versions),
            purge: PurgeRef { engine: engine.to_owned(), steps: report.purge.1.to_owned() },
            legal_override: legal_override
                .map(|o| OverrideRef { reason: o.reason.clone(), authorised_by: o.authorised_by.clone() }),
            mapped_rows_cleared: report.app_rows_cleared,
        }
    }

    /// Canonical JSON: the fields in declaration order, no whitespace. This is the `reason` of
    /// the certificate's audit entry, byte for byte.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self)
            .map_err(|e| Error::Invalid { what: "erasure certificate", reason: e.to_string() })
    }

    /// Parses [`Self::to_json`]'s output; anything else (another format tag, unknown or missing
    /// fields) is [`Error::Invalid`].
    pub fn from_json(s: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(s)
            .map_err(|e| Error::Invalid { what: "erasure certificate", reason: e.to_string() })?;
        if c.format != CERTIFICATE_FORMAT {
            return Err(Error::Invalid {
                what: "erasure certificate",
                reason: format!("format {:?}", c.format),
            });
        }
        Ok(c)
    }
}

/// A certificate with the audit entry that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifiedErasure {
    /// The certificate.
    pub certificate: ErasureCertificate,
    /// The entry's sequence number.
    pub audit_seq: i64,
    /// The entry's hash (hex), as the chain holds it.
    pub entry_hash: String,
}

/// What [`crate::Service::check_certificate`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateCheck {
    /// The chain verifies, and its entry at the certificate's sequence number holds exactly this
    /// certificate with this hash.
    Matches,
    /// The audit chain itself does not verify.
    ChainBroken(Box<VerifyReport>),
    /// No entry at that sequence number.
    NoEntry,
    /// The entry there is not this certificate (another action, other bytes or another hash).
    Differs,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// The committed vectors (tests/vectors/erasure_certificate_v1.json, written from the spec in
    /// docs/SERVICE.md, not by this code) parse, and serialise back to the same bytes.
    #[test]
    fn erasure_certificate_vector() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../tests/vectors/erasure_certificate_v1.json")).unwrap();
        let vectors = doc["vectors"].as_array().unwrap();
        assert_eq!(vectors.len(), 3);
        for v in vectors {
            let json = v["json"].as_str().unwrap();
            let c = ErasureCertificate::from_json(json).unwrap();
            assert_eq!(c.to_json().unwrap(), json, "{}", v["name"]);
        }
        let first = ErasureCertificate::from_json(vectors[0]["json"].as_str().unwrap()).unwrap();
        assert_eq!(first.records_removed, 2);
        assert_eq!(first.blobs_deleted, Some(1));
        assert_eq!(
            first.subject_keys_destroyed[1],
            KeyVersionRef { domain: "medical".into(), version: KeyVersion::FIRST }
        );
        assert_eq!(first.legal_override.as_ref().map(|o| o.authorised_by.as_str()), Some("legal.officer"));
        let second = ErasureCertificate::from_json(vectors[1]["json"].as_str().unwrap()).unwrap();
        assert_eq!(second.blobs_deleted, None);
        assert!(second.legal_override.is_none());
        assert_eq!(second.mapped_rows_cleared, None);
        let third = ErasureCertificate::from_json(vectors[2]["json"].as_str().unwrap()).unwrap();
        assert_eq!(third.mapped_rows_cleared, Some(3));
    }

    #[test]
    fn anything_else_is_refused() {
        let good = include_str!("../../../tests/vectors/erasure_certificate_v1.json");
        let doc: serde_json::Value = serde_json::from_str(good).unwrap();
        let json = doc["vectors"][0]["json"].as_str().unwrap();
        for bad in [
            json.replace("kluis-erasure-certificate:v1", "kluis-erasure-certificate:v2"),
            json.replace("\"tenant\":\"acme\",", ""),
            json.replacen('{', "{\"extra\":1,", 1),
            json.replace("\"records_removed\":2", "\"records_removed\":-2"),
            json.replacen("\"version\":1", "\"version\":0", 1),
            json[..json.len() - 1].to_owned(),
        ] {
            assert!(matches!(ErasureCertificate::from_json(&bad), Err(Error::Invalid { .. })), "{bad}");
        }
    }
}
