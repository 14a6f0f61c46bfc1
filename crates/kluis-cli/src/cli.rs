//! Command-line syntax (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// kluis: the admin tool of Kluis (encrypted HR records and documents).
///
/// The passphrase of the local keyring comes from KLUIS_PASSPHRASE or a prompt without echo;
/// it is never a command-line argument. Exit codes: 0 ok, 1 runtime failure, 2 usage,
/// 3 keyring (wrong passphrase, corrupt or missing keyring), 4 not found, 5 refused,
/// 6 integrity check failed, 7 not available (a part not built or a tool not installed),
/// 8 backup older than a root key retirement (docs/CLI.md).
#[derive(Debug, Parser)]
#[command(name = "kluis", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// Global options.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options of every command.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Data directory: kluis.toml, keyring.kr, schema.toml, and by default kluis.sqlite and blobs/.
    #[arg(long, global = true, env = "KLUIS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite:PATH, postgres://..., mysql://... (overrides kluis.toml).
    #[arg(long, global = true, value_name = "URL")]
    pub store: Option<String>,
    /// Documents: a directory or an Azure container URL (overrides kluis.toml).
    #[arg(long, global = true, value_name = "URL")]
    pub blobs: Option<String>,
    /// Machine-readable JSON output (no progress bars).
    #[arg(long, global = true)]
    pub json: bool,
    /// Who runs the command, for the audit log (default: $USER).
    #[arg(long, global = true, value_name = "NAME")]
    pub actor: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data directory: keyring, schema file, database tables, blob directory.
    Init(InitArgs),
    /// Show the configuration, tenants and key versions at a glance.
    Status,
    /// Check configuration, keyring, database, blob store and key states; say what to fix.
    Doctor,
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Domain and root keys.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Move every record and document of a domain off older key versions (resumable).
    Reencrypt(ReencryptArgs),
    /// Seal the plaintext columns of a mapped application table into its protected columns, in
    /// place and online, then clear the plaintext (resumable; --dry-run shows the plan).
    EncryptColumns(EncryptColumnsArgs),
    /// Seal a mapped application table's values of a domain again under the newest keys after a
    /// rotation (resumable; several may run at once on PostgreSQL and MariaDB).
    ReencryptColumns(ReencryptColumnsArgs),
    /// Crypto-shred a data subject (honours retention).
    Shred(ShredArgs),
    /// Make an anonymised copy for a test environment in a new data directory (medical data left
    /// out, personal fields pseudonymised, new keys; the new keyring's passphrase comes from
    /// KLUIS_TARGET_PASSPHRASE).
    Anonymise(AnonymiseArgs),
    /// Import records from a JSONL file (resumable: already imported ids are skipped).
    Import(ImportArgs),
    /// Export a subject's records and documents as one age-encrypted package (access and portability requests).
    Export(ExportArgs),
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Access management.
    #[command(subcommand)]
    Access(AccessCmd),
    /// Back up the database and documents into a new directory with a manifest (never the keyring).
    Backup(BackupArgs),
    /// Check a backup: restore it into a scratch location and verify it with the current keys.
    Restore(RestoreArgs),
    /// The main story end to end on a fresh temporary data directory (fixed demo passphrase).
    Demo,
    /// The schema: the columns to add to the application's own tables it maps.
    #[command(subcommand)]
    Schema(SchemaCmd),
}

/// `kluis schema ...`.
#[derive(Debug, Subcommand)]
pub enum SchemaCmd {
    /// Print the columns (and indexes) to add to the application's own tables that the schema
    /// maps (`[tables.*]`), for the application's own migrations. Needs no keyring.
    Sql(SchemaSqlArgs),
}

/// `kluis schema sql`.
#[derive(Debug, Args)]
pub struct SchemaSqlArgs {
    /// SQL dialect.
    #[arg(long, value_enum)]
    pub engine: SqlEngine,
    /// Schema TOML (default: schema.toml of the data directory).
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
}

/// The dialects `kluis schema sql` writes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SqlEngine {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MariaDB and MySQL.
    Mysql,
    /// SQL Server and Azure SQL (not tested here: no SQL Server runs on the test machine).
    Mssql,
}

/// `kluis init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Schema TOML to copy into the data directory (default: employees and absence reports).
    #[arg(long, value_name = "FILE")]
    pub schema: Option<PathBuf>,
    /// Root key URL to use instead of a new local keyring (aws-kms://..., azure-kv://...).
    #[arg(long, value_name = "URL")]
    pub root: Option<String>,
}

/// `kluis tenant ...`.
#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create the domain keys of a tenant (every domain of the schema).
    Add {
        /// Tenant id.
        tenant: String,
    },
    /// List tenants.
    List,
}

/// `kluis keys ...`.
#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Keys per tenant and domain: version, state, and what still uses each version.
    List {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// New active version of a domain key; older versions become decrypt-only.
    Rotate(TenantDomain),
    /// Destroy a decrypt-only version (refused while anything uses it).
    Retire {
        /// Tenant and domain.
        #[command(flatten)]
        td: TenantDomain,
        /// The version to destroy (from 1).
        #[arg(long)]
        version: kluis_core::KeyVersion,
    },
    /// New root key version, activated once every running instance holds it; then every domain
    /// key rewrapped in one transaction. While an instance lacks it, the version stays staged in
    /// the keyring file: give the instances that file and run this again.
    RotateRoot {
        /// Instances that reported within this many seconds count as running.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        window: u64,
    },
    /// The running instances' reports: the root key versions and keyring generation each holds.
    Instances {
        /// Instances that reported within this many seconds.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=604_800))]
        window: u64,
    },
    /// Move the root key to another provider (keyring://PATH, aws-kms://..., azure-kv://...).
    MigrateRoot {
        /// Target root key URL.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Upgrade a database written before key state tags: tag every untagged key set, rewrap
    /// unsigned Azure RSA wraps, record the keyring generation. Trusts the key rows as they are:
    /// check `kluis keys list` first.
    Adopt,
    /// Record the keyring's generation in the database after checking why the database was
    /// behind it (an older database restored, or a keyring change not recorded).
    RecordGeneration,
}

/// `--tenant T --domain D`.
#[derive(Debug, Args, Clone)]
pub struct TenantDomain {
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Domain (general, medical, ...).
    #[arg(long)]
    pub domain: String,
}

/// `kluis reencrypt`.
#[derive(Debug, Args)]
pub struct ReencryptArgs {
    /// Tenant and domain.
    #[command(flatten)]
    pub td: TenantDomain,
    /// Subjects (and documents) per step; each subject is one transaction.
    #[arg(long, default_value_t = 50)]
    pub batch: usize,
}

/// `kluis encrypt-columns`.
#[derive(Debug, Args)]
pub struct EncryptColumnsArgs {
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// The table mapping of the schema (`[tables.NAME]`).
    #[arg(long)]
    pub table: String,
    /// Batch size and lease.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Only show what is left to do.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not rewrite the table afterwards (its files may then keep old row versions with
    /// plaintext: docs/APP_TABLES.md).
    #[arg(long)]
    pub no_purge: bool,
}

/// `kluis reencrypt-columns`.
#[derive(Debug, Args)]
pub struct ReencryptColumnsArgs {
    /// Tenant and domain.
    #[command(flatten)]
    pub td: TenantDomain,
    /// The table mapping of the schema (`[tables.NAME]`).
    #[arg(long)]
    pub table: String,
    /// Batch size and lease.
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Only show what is left to do.
    #[arg(long)]
    pub dry_run: bool,
}

/// The batches of a worker over a mapped table.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Rows per batch; each batch is one transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: u32,
    /// Seconds the database waits for this worker inside a batch before it ends the batch and
    /// releases its rows to other workers (PostgreSQL and MariaDB).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub lease: u64,
}

/// `kluis shred`.
#[derive(Debug, Args)]
pub struct ShredArgs {
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Subject id.
    #[arg(long)]
    pub subject: String,
    /// Reason for shredding before retention ends (recorded in clear: no personal data).
    #[arg(long, requires = "authorised_by")]
    pub legal_override_reason: Option<String>,
    /// Who authorised the override.
    #[arg(long, requires = "legal_override_reason")]
    pub authorised_by: Option<String>,
    /// Also write the erasure certificate (JSON) to this new file. It is created before the
    /// shred starts, so a path that cannot be created stops the command with nothing shredded.
    #[arg(long, value_name = "FILE")]
    pub certificate: Option<PathBuf>,
}

/// `kluis anonymise`.
#[derive(Debug, Args)]
pub struct AnonymiseArgs {
    /// The new data directory (must not exist or be empty).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The copy's database, if not a SQLite file in DIR (postgres://... or mysql://...).
    #[arg(long, value_name = "URL")]
    pub to_store: Option<String>,
    /// Leave this domain out too (repeatable; medical is always left out).
    #[arg(long, value_name = "DOMAIN")]
    pub drop_domain: Vec<String>,
}

/// `kluis import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Collection of the schema.
    #[arg(long)]
    pub collection: String,
    /// Records per transaction.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// JSONL file: one object per line with "id", "subject" and field values.
    pub file: PathBuf,
}

/// `kluis export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Subject id.
    #[arg(long)]
    pub subject: String,
    /// Write the package to this new file (mode 0600; never over an existing one) instead of
    /// standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Encrypt for this age X25519 recipient (age1...); repeatable.
    #[arg(long = "recipient", value_name = "AGE_RECIPIENT", conflicts_with = "passphrase_env")]
    pub recipients: Vec<String>,
    /// Encrypt with the passphrase in this environment variable (age scrypt).
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Only these domains (repeatable or comma-separated); the others are withheld and listed in
    /// the manifest. Default: every domain of the tenant.
    #[arg(long = "domains", value_name = "DOMAIN", value_delimiter = ',')]
    pub domains: Vec<String>,
}

/// `kluis backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The backup directory: created if missing, refused unless empty.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
}

/// `kluis restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Restore into a scratch location and verify (the only mode built: restoring over the live
    /// data is done by hand, docs/CLI.md).
    #[arg(long)]
    pub verify: bool,
    /// The backup directory (made by `kluis backup`).
    #[arg(value_name = "FROM")]
    pub from: PathBuf,
}

/// `kluis audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain (and checkpoints) of the audit log.
    Verify {
        /// A checkpoint kept elsewhere (kluis-audit-checkpoint:v1:SEQ:HASH): also detects a
        /// truncated or rewritten log.
        #[arg(long, value_name = "CHECKPOINT")]
        against: Option<String>,
    },
    /// Write the erasure certificates of a tenant (of one subject, with --subject) as JSON.
    Certificates {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Only this subject's.
        #[arg(long)]
        subject: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Check an erasure certificate file against the audit log: the chain verifies and holds
    /// exactly this certificate at its sequence number.
    CheckCertificate {
        /// A file written by `kluis shred --certificate` (one certificate).
        file: PathBuf,
    },
    /// Write the audit log (all of it, or one tenant's entries).
    Export {
        /// Output format.
        #[arg(long, value_enum, default_value_t = AuditFormat::Jsonl)]
        format: AuditFormat,
        /// Only this tenant's entries. The export is itself audited first, as an entry of that
        /// tenant (which the export then holds).
        #[arg(long)]
        tenant: Option<String>,
        /// Write to this file instead of standard output.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

/// Audit export formats.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AuditFormat {
    /// One JSON object per line.
    Jsonl,
}

/// `kluis access ...`.
#[derive(Debug, Subcommand)]
pub enum AccessCmd {
    /// Who holds which role and support grant, and their last use; break-glass accesses.
    Review {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
    },
    /// Records that a user holds a role in a tenant (listed by the review).
    Assign {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// The user.
        #[arg(long)]
        user: String,
        /// The role.
        #[arg(long)]
        role: String,
    },
    /// Grants a named support user time-limited access to named domains.
    Grant {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// The support user.
        #[arg(long)]
        user: String,
        /// A domain the grant opens (repeat for more; medical only if named).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// An action the grant allows (repeat for more).
        #[arg(long = "action", default_values_t = [String::from("read")])]
        actions: Vec<String>,
        /// Days until it ends (at most 90); it is disabled after 31 days unused.
        #[arg(long, default_value_t = 7)]
        days: u64,
    },
    /// Revokes a support grant.
    Revoke {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// The grant id (sg_...).
        #[arg(long)]
        grant: String,
    },
}
