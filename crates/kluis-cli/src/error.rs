//! Typed errors of the CLI, each mapped to a documented exit code (docs/CLI.md).

use std::path::PathBuf;

use kluis_store::StoreError;

/// Process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// A runtime failure: database, blob store, KMS, file system.
    Failure = 1,
    /// Bad usage: unknown command or option, invalid argument or URL.
    Usage = 2,
    /// The keyring could not be opened: wrong passphrase, corrupt or missing keyring, no passphrase.
    Keyring = 3,
    /// Something named does not exist: data directory, tenant, domain, key version, subject.
    NotFound = 4,
    /// Refused by a rule: key still in use, active version, retention, access denied.
    Refused = 5,
    /// An integrity check failed: tampered rows, audit chain broken, rolled-back keyring.
    Integrity = 6,
    /// The command needs a part of Kluis that is not built yet, or an external tool that is not
    /// installed (`pg_dump`, `mysqldump`, ...).
    NotAvailable = 7,
    /// `restore --verify`: the backup is intact but no longer opens with the current keys, because
    /// the root key version its domain keys are wrapped under was retired after it was taken (the
    /// crypto-shred guarantee working as designed, not damage).
    BackupExpired = 8,
}

impl ExitCode {
    /// The numeric code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Everything a command can fail with. Messages are lower-case, one line, and never hold a
/// secret or a plaintext value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// Invalid usage that clap cannot see (a bad URL, a bad id).
    #[error("{0}")]
    Usage(String),
    /// The data directory does not exist (and the command does not create it).
    #[error("data directory {} does not exist; create it with `kluis init --data-dir {}`", .0.display(), .0.display())]
    NoDataDir(PathBuf),
    /// The data directory exists but was not initialised.
    #[error("data directory {} is not initialised (no kluis.toml); run `kluis init`", .0.display())]
    NotInitialised(PathBuf),
    /// `init` found an initialised directory.
    #[error("data directory {} is already initialised", .0.display())]
    AlreadyInitialised(PathBuf),
    /// No passphrase: `KLUIS_PASSPHRASE` unset and no terminal to prompt on.
    #[error("no passphrase: set KLUIS_PASSPHRASE or run on a terminal to be prompted")]
    NoPassphrase,
    /// The keyring layer failed.
    #[error("keyring: {0}")]
    Keyring(#[from] kluis_keyring::KeyringError),
    /// A root key provider could not be opened.
    #[error("root key provider: {0}")]
    Connect(#[from] kluis_kms::ConnectError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The blob store failed.
    #[error("documents: {0}")]
    Blob(#[from] kluis_blob::BlobError),
    /// A core operation failed.
    #[error("{0}")]
    Core(#[from] kluis_core::Error),
    /// The service layer failed.
    #[error("service: {0}")]
    Service(String),
    /// A database URL could not be connected.
    #[error("cannot connect to database {url}: {reason}")]
    Database {
        /// The URL without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// The configuration file is invalid.
    #[error("configuration {}: {reason}", path.display())]
    Config {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Output could not be written.
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    /// An unknown tenant.
    #[error("unknown tenant {0:?} (no domain keys); add it with `kluis tenant add {0}`")]
    UnknownTenant(String),
    /// An unknown domain of a tenant.
    #[error("tenant {tenant:?} has no domain {domain:?}")]
    UnknownDomain {
        /// Tenant.
        tenant: String,
        /// Domain.
        domain: String,
    },
    /// An unknown domain key version.
    #[error("tenant {tenant:?} has no version {version} of domain {domain:?}")]
    UnknownVersion {
        /// Tenant.
        tenant: String,
        /// Domain.
        domain: String,
        /// Version.
        version: kluis_core::KeyVersion,
    },
    /// An unknown subject.
    #[error("tenant {tenant:?} has no records or documents of subject {subject:?}")]
    UnknownSubject {
        /// Tenant.
        tenant: String,
        /// Subject.
        subject: String,
    },
    /// Import lines that could not be taken; nothing of them was written.
    #[error("{file}: {count} bad line(s), nothing of them was written; first: line {line}: {reason}")]
    BadImport {
        /// The file.
        file: String,
        /// How many bad lines.
        count: usize,
        /// First bad line number (1-based).
        line: usize,
        /// Why.
        reason: String,
    },
    /// The audit chain failed verification.
    #[error("audit log verification failed at entry {entry}: {problem}")]
    AuditBroken {
        /// First bad entry.
        entry: u64,
        /// What is wrong.
        problem: String,
    },
    /// Rows of the collection tables differ from the row log the audit chain covers.
    #[error("rows differ from the audit log: {problems} records ({first}){more}")]
    RowsStale {
        /// How many records.
        problems: usize,
        /// The first, as `tenant/collection/id: finding`.
        first: String,
        /// ", see the lines above" when there are more.
        more: &'static str,
    },
    /// An erasure certificate does not match the audit log.
    #[error("erasure certificate {file}: {problem}")]
    CertificateMismatch {
        /// The certificate file.
        file: String,
        /// What differs.
        problem: String,
    },
    /// `doctor` found problems.
    #[error("doctor found {0} problem(s)")]
    DoctorFailed(usize),
    /// A part of Kluis this command needs is not built yet.
    #[error("{0} is not available yet")]
    NotAvailable(&'static str),
    /// An operation was refused.
    #[error("{0}")]
    Refused(String),
    /// An external program a command needs is not on `PATH`.
    #[error("{tool} is not on PATH; {why}")]
    ToolMissing {
        /// The program.
        tool: &'static str,
        /// What it is needed for, and what to do.
        why: &'static str,
    },
    /// An external program failed.
    #[error("{tool} failed ({status}): {message}")]
    ToolFailed {
        /// The program.
        tool: &'static str,
        /// Its exit status.
        status: String,
        /// The last line of its standard error (passwords are never on its command line).
        message: String,
    },
    /// `restore`: the backup directory does not exist.
    #[error("backup directory {} does not exist", .0.display())]
    NoBackup(PathBuf),
    /// `backup` could not make a consistent backup; nothing usable was left in the target.
    #[error("backup not made: {0}")]
    Backup(String),
    /// `restore --verify`: the backup is damaged, incomplete or altered (a file differs from the
    /// manifest, is missing or unlisted, the manifest is unreadable, the database does not load,
    /// counts differ, the audit chain or a record, key or document fails its check).
    #[error("backup {} is corrupt: {problems} problem(s); first: {first}", path.display())]
    BackupCorrupt {
        /// The backup directory.
        path: PathBuf,
        /// How many problems were found.
        problems: usize,
        /// The first.
        first: String,
    },
    /// `restore --verify`: the backup is intact but its domain keys are wrapped under root key
    /// versions the keyring (or KMS) no longer holds.
    #[error(
        "backup {} no longer opens with the current keys: {keys} domain key version(s) are wrapped under root key version(s) {root_versions}, which the root key provider no longer holds (retired after the backup was taken); its {records} records and {documents} documents stay unreadable. This is the crypto-shred guarantee, not damage",
        path.display()
    )]
    BackupExpired {
        /// The backup directory.
        path: PathBuf,
        /// How many live domain key versions do not unwrap.
        keys: usize,
        /// The missing root versions, comma-separated.
        root_versions: String,
        /// Records in the backup.
        records: u64,
        /// Documents in the backup.
        documents: u64,
    },
}

impl CliError {
    /// The exit code of this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) => ExitCode::Usage,
            Self::NoDataDir(_) | Self::NotInitialised(_) | Self::NoBackup(_) => ExitCode::NotFound,
            Self::AlreadyInitialised(_) | Self::Refused(_) => ExitCode::Refused,
            Self::NoPassphrase | Self::Keyring(_) => ExitCode::Keyring,
            Self::Connect(e) => match e {
                kluis_kms::ConnectError::Config(_) => ExitCode::Usage,
                kluis_kms::ConnectError::Keyring(_) | kluis_kms::ConnectError::KeyringSecretMissing(_) => {
                    ExitCode::Keyring
                }
                _ => ExitCode::Failure,
            },
            Self::Store(e) => store_code(e),
            Self::Blob(_) | Self::Service(_) | Self::Database { .. } | Self::Io { .. } | Self::Output(_) => {
                ExitCode::Failure
            }
            Self::Config { .. } => ExitCode::Usage,
            Self::Core(e) => core_code(e),
            Self::UnknownTenant(_)
            | Self::UnknownDomain { .. }
            | Self::UnknownVersion { .. }
            | Self::UnknownSubject { .. } => ExitCode::NotFound,
            Self::BadImport { .. } => ExitCode::Usage,
            Self::AuditBroken { .. } | Self::RowsStale { .. } | Self::CertificateMismatch { .. } => {
                ExitCode::Integrity
            }
            Self::DoctorFailed(_) => ExitCode::Failure,
            Self::NotAvailable(_) | Self::ToolMissing { .. } => ExitCode::NotAvailable,
            Self::ToolFailed { .. } | Self::Backup(_) => ExitCode::Failure,
            Self::BackupCorrupt { .. } => ExitCode::Integrity,
            Self::BackupExpired { .. } => ExitCode::BackupExpired,
        }
    }
}

fn core_code(e: &kluis_core::Error) -> ExitCode {
    use kluis_core::Error as E;
    match e {
        E::WrongPassphrase | E::KeyringCorrupt(_) | E::KeyringTruncated | E::WeakKdfParams(_) => {
            ExitCode::Keyring
        }
        E::KeyringRollback { .. }
        | E::DatabaseBehindKeyring { .. }
        | E::KeyStateTampered { .. }
        | E::Decrypt => ExitCode::Integrity,
        E::UnknownKey { .. } => ExitCode::NotFound,
        E::KeyDestroyed { .. } | E::KeyNotActive { .. } => ExitCode::Refused,
        E::Invalid { .. } | E::ApiMisuse(_) => ExitCode::Usage,
        _ => ExitCode::Failure,
    }
}

fn store_code(e: &StoreError) -> ExitCode {
    match e {
        StoreError::Core(c) => core_code(c),
        StoreError::KeyInUse { .. }
        | StoreError::ActiveKey { .. }
        | StoreError::RetentionActive { .. }
        | StoreError::RootVersionNotHeld { .. }
        | StoreError::RootVersionNotActive { .. }
        | StoreError::AccessDenied { .. } => ExitCode::Refused,
        StoreError::NotFound { .. } | StoreError::UnknownCollection(_) => ExitCode::NotFound,
        StoreError::Integrity { .. }
        | StoreError::RowIntegrity { .. }
        | StoreError::KeyIntegrity { .. }
        | StoreError::MetadataTampered(_)
        | StoreError::MetadataMissing(_)
        | StoreError::Corrupt { .. } => ExitCode::Integrity,
        StoreError::UnknownField { .. }
        | StoreError::WrongType { .. }
        | StoreError::TooLarge { .. }
        | StoreError::InvalidId { .. }
        | StoreError::Schema(_)
        | StoreError::SchemaToml { .. } => ExitCode::Usage,
        _ => ExitCode::Failure,
    }
}

/// Result with [`CliError`].
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Builds an I/O error for `path`.
pub fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CliError {
    let path = path.into();
    move |source| CliError::Io { op, path, source }
}
