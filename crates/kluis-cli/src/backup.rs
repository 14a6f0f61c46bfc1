//! `kluis backup --to DIR` and `kluis restore --verify FROM` (docs/CLI.md, "Backup and verified
//! restore").
//!
//! A backup directory holds:
//!
//! ```text
//! DIR/
//!   manifest.json            format, engine, counts, and every other file with its size and SHA-256
//!   schema.toml              the data directory's schema (no secret)
//!   database/kluis.sqlite    SQLite: `VACUUM INTO` through the store's pool (a consistent copy)
//!   database/kluis.pgdump    PostgreSQL: `pg_dump --format=custom` in the snapshot the counts were read in
//!   database/kluis.mysql.sql MariaDB/MySQL: `mysqldump --single-transaction --hex-blob`
//!   blobs/<object name>      every document object the snapshot's catalog names, as stored (ciphertext)
//! ```
//!
//! Never the keyring file, `kluis.toml` (it may hold a database password) or any root key: the
//! backup is useless without the root key, which is kept (and retired) apart.
//!
//! `restore --verify` never touches the live data: it loads the backup into a scratch location
//! (a temporary directory; for PostgreSQL and MariaDB also a new database `kluis_verify_<hex>` on
//! the configured server, dropped at the end) and checks it there.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use kluis_blob::catalog::Documents;
use kluis_blob::{BlobBackend, BlobError, DocumentVault, LocalDir, ObjectName, Upload};
use kluis_core::{RootKeyProvider, TenantId};
use kluis_service::AdminEvent;
use kluis_store::{Access, Engine, EngineKind, Sqlite, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::cli::RestoreArgs;
use crate::config::{self, StoreUrl};
use crate::env::{Env, load_schema};
use crate::error::{CliError, Result, io};
use crate::out::Report;

/// The manifest's file name.
pub const MANIFEST: &str = "manifest.json";
/// The manifest format this version writes and reads.
pub const FORMAT: &str = "kluis-backup/1";
/// The schema file inside a backup.
pub const SCHEMA: &str = "schema.toml";
const SQLITE_DB: &str = "database/kluis.sqlite";
const PG_DUMP: &str = "database/kluis.pgdump";
const MYSQL_DUMP: &str = "database/kluis.mysql.sql";
/// Bytes read from the blob store per request.
const CHUNK: u64 = 4 << 20;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// Unix seconds when the snapshot was taken.
    pub created_at: i64,
    /// `sqlite`, `postgres` or `mysql`.
    pub engine: String,
    /// The database file or dump, relative to the backup directory.
    pub database: String,
    /// What the snapshot holds.
    pub counts: Counts,
    /// Every file of the backup but the manifest, sorted by path.
    pub files: Vec<FileEntry>,
}

/// Counts read from the database snapshot itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    /// Records (rows of every collection table, plus legacy records not moved yet).
    pub records: u64,
    /// Documents in the catalog (each has one object under `blobs/`).
    pub documents: u64,
    /// Audit entries (the head's sequence number).
    pub audit_entries: u64,
    /// The audit head as `kluis-audit-checkpoint:v1:SEQ:HASH`, if there is an entry.
    pub audit_head: Option<String>,
}

/// One file of the backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the backup directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

/// A catalog row, as read from a snapshot.
#[derive(Debug, Clone)]
struct CatalogDoc {
    tenant: String,
    document_id: String,
    object_name: String,
}

/// What the raw read of a snapshot gives.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    counts: Counts,
    documents: Vec<CatalogDoc>,
}

fn engine_name(e: EngineKind) -> &'static str {
    match e {
        EngineKind::Sqlite => "sqlite",
        EngineKind::Postgres => "postgres",
        EngineKind::MySql => "mysql",
        _ => "unknown",
    }
}

fn sql(e: sqlx::Error) -> CliError {
    CliError::Store(StoreError::Database(e))
}

fn checkpoint_text(seq: i64, hash: &[u8]) -> Option<String> {
    (seq > 0).then(|| {
        kluis_service::audit::Checkpoint { seq: seq.unsigned_abs(), hash: hex::encode(hash) }.to_text()
    })
}

// The same SQL on the three engines, on one connection (inside the caller's snapshot where the
// engine has one). `$text` is how the engine hands out the ASCII id columns (MariaDB: binary
// collation, so bytes).
macro_rules! read_snapshot {
    ($name:ident, $conn:ty, $text:ty) => {
        async fn $name(conn: &mut $conn) -> Result<Snapshot> {
            let tables: Vec<$text> =
                sqlx::query_scalar("SELECT table_name FROM kluis_tables ORDER BY collection")
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(sql)?;
            let mut records = 0u64;
            for t in tables.into_iter().map(text) {
                if t.is_empty() || !t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_') {
                    return Err(CliError::Backup(format!("kluis_tables names an invalid table {t:?}")));
                }
                let q = format!("SELECT COUNT(*) FROM {t}");
                let n: i64 = sqlx::query_scalar(&q).fetch_one(&mut *conn).await.map_err(sql)?;
                records += n.unsigned_abs();
            }
            let legacy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kluis_records")
                .fetch_one(&mut *conn)
                .await
                .map_err(sql)?;
            records += legacy.unsigned_abs();
            let docs: Vec<($text, $text, $text)> = sqlx::query_as(
                "SELECT tenant, document_id, object_name FROM kluis_documents ORDER BY tenant, document_id",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(sql)?;
            let head: Option<(i64, Vec<u8>)> =
                sqlx::query_as("SELECT seq, hash FROM kluis_audit_head WHERE id = 1")
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(sql)?;
            let (seq, hash) = head.unwrap_or((0, Vec::new()));
            Ok(Snapshot {
                counts: Counts {
                    records,
                    documents: docs.len() as u64,
                    audit_entries: seq.unsigned_abs(),
                    audit_head: checkpoint_text(seq, &hash),
                },
                documents: docs
                    .into_iter()
                    .map(|(tenant, document_id, object_name)| CatalogDoc {
                        tenant: text(tenant),
                        document_id: text(document_id),
                        object_name: text(object_name),
                    })
                    .collect(),
            })
        }
    };
}

/// An id column as text.
trait Text {
    fn into_text(self) -> String;
}

impl Text for String {
    fn into_text(self) -> String {
        self
    }
}

impl Text for Vec<u8> {
    fn into_text(self) -> String {
        String::from_utf8_lossy(&self).into_owned()
    }
}

fn text(t: impl Text) -> String {
    t.into_text()
}

read_snapshot!(read_sqlite, sqlx::SqliteConnection, String);
read_snapshot!(read_postgres, sqlx::PgConnection, String);
read_snapshot!(read_mysql, sqlx::MySqlConnection, Vec<u8>);

// ------------------------------------------------------------------ files

#[cfg(unix)]
fn private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

#[cfg(not(unix))]
fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)
}

fn new_private_file(path: &Path) -> Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path).map_err(io("create", path))
}

fn make_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io("chmod", path))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// `fsync` of a file or directory (opened read-only).
fn sync_path(path: &Path) -> Result<()> {
    std::fs::File::open(path).and_then(|f| f.sync_all()).map_err(io("sync", path))
}

/// SHA-256 (hex) and size of a file.
fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(io("read", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        let Some(part) = buf.get(..n) else { break };
        if n == 0 {
            break;
        }
        h.update(part);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// A manifest path: relative, `/`-separated, only normal components.
fn safe_rel(p: &str) -> Option<PathBuf> {
    if p.is_empty() || p.starts_with('/') || p.contains('\\') {
        return None;
    }
    let path = PathBuf::from(p);
    path.components().all(|c| matches!(c, Component::Normal(_))).then_some(path)
}

/// Every entry under `dir` as relative `/`-separated paths; anything but a regular file or a
/// directory is reported as a problem.
fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>, problems: &mut Vec<String>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(io("read directory", dir))?;
    for e in rd {
        let e = e.map_err(io("read directory", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        let ft = e.file_type().map_err(io("stat", e.path()))?;
        if ft.is_dir() {
            walk(&e.path(), &rel, out, problems)?;
        } else if ft.is_file() {
            out.insert(rel);
        } else {
            problems.push(format!("{rel}: not a regular file"));
        }
    }
    Ok(())
}

/// The target directory of a backup, removed again (or emptied, if it existed) unless the backup
/// completes.
struct Target {
    dir: PathBuf,
    created: bool,
    done: bool,
}

impl Target {
    fn prepare(dir: &Path) -> Result<Self> {
        let created = match std::fs::read_dir(dir) {
            Ok(mut rd) => {
                if rd.next().is_some() {
                    return Err(CliError::Refused(format!(
                        "backup target {} is not empty: give a new or empty directory",
                        dir.display()
                    )));
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                private_dir(dir).map_err(io("create directory", dir))?;
                true
            }
            Err(e) => return Err(CliError::Io { op: "open directory", path: dir.to_owned(), source: e }),
        };
        let t = Self { dir: dir.to_owned(), created, done: false };
        for sub in ["database", "blobs"] {
            let p = dir.join(sub);
            private_dir(&p).map_err(io("create directory", &p))?;
        }
        Ok(t)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.created {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
    }
}

// ------------------------------------------------------------------ external tools

/// The program `name` on `PATH`.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        }
        #[cfg(not(unix))]
        {
            p.is_file()
        }
    })
}

fn tool(name: &'static str, why: &'static str) -> Result<PathBuf> {
    find_tool(name).ok_or(CliError::ToolMissing { tool: name, why })
}

async fn run_tool(name: &'static str, cmd: &mut tokio::process::Command) -> Result<()> {
    cmd.kill_on_drop(true).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let out = cmd.output().await.map_err(|e| CliError::ToolFailed {
        tool: name,
        status: "not started".into(),
        message: config::one_line(&e.to_string()),
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
    Err(CliError::ToolFailed { tool: name, status: out.status.to_string(), message: config::one_line(last) })
}

/// A server URL split for the client tools: the URL without its password (for `--dbname`), the
/// password (for `PGPASSWORD` / `MYSQL_PWD`: never on a command line), host, port, user, database.
#[derive(Clone)]
struct ServerUrl {
    url: url::Url,
    password: Option<String>,
}

impl std::fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerUrl").field("url", &self.url.as_str()).finish_non_exhaustive()
    }
}

impl ServerUrl {
    fn parse(u: &str) -> Result<Self> {
        let mut url = url::Url::parse(u)
            .map_err(|e| CliError::Usage(format!("database url {}: {e}", config::redact_url(u))))?;
        let password = url.password().map(percent_decode);
        let _ = url.set_password(None);
        Ok(Self { url, password })
    }

    fn host(&self) -> String {
        self.url.host_str().unwrap_or("localhost").to_owned()
    }

    fn user(&self) -> String {
        percent_decode(self.url.username())
    }

    fn database(&self) -> String {
        percent_decode(self.url.path().trim_start_matches('/'))
    }

    fn with_database(&self, db: &str) -> Self {
        let mut s = self.clone();
        s.url.set_path(&format!("/{db}"));
        s
    }

    /// The full URL, password included, for sqlx.
    fn connect_url(&self) -> String {
        let mut u = self.url.clone();
        if let Some(p) = &self.password {
            let _ = u.set_password(Some(&percent_encode(p)));
        }
        u.to_string()
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1), b.get(i + 2))
            && let Ok(v) = u8::from_str_radix(&format!("{}{}", *h as char, *l as char), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                (c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

fn pg_command(tool_path: &Path, server: &ServerUrl) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(tool_path);
    if let Some(p) = &server.password {
        c.env("PGPASSWORD", p);
    }
    c
}

fn mysql_command(tool_path: &Path, server: &ServerUrl) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(tool_path);
    c.arg(format!("--host={}", server.host()))
        .arg(format!("--port={}", server.url.port().unwrap_or(3306)))
        .arg(format!("--user={}", server.user()));
    // The password goes in the environment, never on the command line (`ps` shows that).
    match &server.password {
        Some(p) => c.env("MYSQL_PWD", p),
        None => c.env_remove("MYSQL_PWD"),
    };
    c
}

// ------------------------------------------------------------------ backup

/// `kluis backup --to DIR`.
pub async fn backup<B: Engine, O: BlobBackend + Clone>(env: &Env<B, O>, to: &Path) -> Result<Report> {
    // Tools first: a missing one fails before anything is written.
    let tool_path = match B::KIND {
        EngineKind::Sqlite => None,
        EngineKind::Postgres => Some(tool(
            "pg_dump",
            "it makes the PostgreSQL snapshot: install the PostgreSQL client tools (the server's major version or newer), or make the dump by hand (docs/CLI.md)",
        )?),
        EngineKind::MySql => Some(tool(
            "mysqldump",
            "it makes the MariaDB/MySQL snapshot: install the MariaDB client tools, or make the dump by hand (docs/CLI.md)",
        )?),
        _ => return Err(CliError::NotAvailable("backup of this database engine")),
    };
    let mut target = Target::prepare(to)?;
    let db_rel = match B::KIND {
        EngineKind::Sqlite => SQLITE_DB,
        EngineKind::Postgres => PG_DUMP,
        _ => MYSQL_DUMP,
    };
    let db_path = target.dir.join(db_rel);
    let created_at = kluis_keyring::unix_now();
    // Created empty with mode 0600 first: SQLite (`VACUUM INTO` takes an empty file), pg_dump and
    // mysqldump write into it and keep the mode.
    drop(new_private_file(&db_path)?);
    let snap = snapshot_database(env, &db_path, tool_path.as_deref()).await?;
    make_private(&db_path)?;
    // The schema file (no secret).
    let schema_path = target.dir.join(SCHEMA);
    let schema_text = std::fs::read(&env.settings.schema).map_err(io("read", &env.settings.schema))?;
    new_private_file(&schema_path)?.write_all(&schema_text).map_err(io("write", &schema_path))?;
    // Every object the snapshot's catalog names, as stored.
    let mut files: Vec<FileEntry> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut blob_bytes = 0u64;
    for d in &snap.documents {
        if !seen.insert(d.object_name.clone()) {
            continue;
        }
        let name = ObjectName::parse(&d.object_name)?;
        let rel = format!("blobs/{}", name.as_str());
        let (sha256, size) = copy_object(&env.blobs, &name, &target.dir.join(&rel)).await?;
        blob_bytes += size;
        files.push(FileEntry { path: rel, size, sha256 });
    }
    for rel in [db_rel, SCHEMA] {
        let (sha256, size) = hash_file(&target.dir.join(rel))?;
        files.push(FileEntry { path: rel.to_owned(), size, sha256 });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    // On disk before the manifest says they are.
    for rel in [db_rel, SCHEMA] {
        sync_path(&target.dir.join(rel))?;
    }
    let db_size = files.iter().find(|f| f.path == db_rel).map_or(0, |f| f.size);
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        created_at,
        engine: engine_name(B::KIND).to_owned(),
        database: db_rel.to_owned(),
        counts: snap.counts.clone(),
        files,
    };
    // The manifest last: a directory without one is not a backup.
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CliError::Backup(e.to_string()))?;
    let tmp = target.dir.join(".manifest.json.tmp");
    let mut f = new_private_file(&tmp)?;
    f.write_all(&text).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    std::fs::rename(&tmp, target.dir.join(MANIFEST)).map_err(io("rename", &tmp))?;
    for d in [target.dir.join("database"), target.dir.join("blobs"), target.dir.clone()] {
        sync_path(&d)?;
    }
    target.done = true;
    let c = &manifest.counts;
    let mut r = Report::new(json!({
        "to": to, "engine": manifest.engine, "files": manifest.files.len() + 1,
        "database_bytes": db_size, "document_bytes": blob_bytes, "counts": c,
    }));
    r.line(format!("backup written to {}", to.display()));
    r.line(format!("  database:  {} ({}, {db_size} bytes)", db_rel, manifest.engine));
    r.line(format!("  documents: {} objects ({blob_bytes} bytes)", c.documents));
    r.line(format!("  records:   {}", c.records));
    r.line(format!(
        "  audit:     {} entries{}",
        c.audit_entries,
        c.audit_head.as_ref().map(|h| format!(", head {h}")).unwrap_or_default()
    ));
    r.line(format!("  manifest:  {MANIFEST} ({} files with SHA-256)", manifest.files.len()));
    r.line("the keyring and root key are not in the backup: keep them apart, and check the backup with `kluis restore --verify`");
    Ok(r)
}

/// Copies one object into `path`; returns its SHA-256 and size.
async fn copy_object<O: BlobBackend>(blobs: &O, name: &ObjectName, path: &Path) -> Result<(String, u64)> {
    let len = match blobs.len(name).await {
        Ok(n) => n,
        Err(BlobError::NotFound) => {
            return Err(CliError::Backup(format!(
                "document object {} named by the catalog is not in the blob store (deleted since the snapshot by a shred, re-encryption or delete; or lost): run the backup again",
                name.as_str()
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let mut f = new_private_file(path)?;
    let mut h = Sha256::new();
    let mut buf = Vec::new();
    let mut off = 0u64;
    while off < len {
        let end = off.saturating_add(CHUNK).min(len);
        buf.clear();
        blobs.read_range(name, off, end, &mut buf).await?;
        h.update(&buf);
        f.write_all(&buf).map_err(io("write", path))?;
        off = end;
    }
    f.sync_all().map_err(io("sync", path))?;
    Ok((hex::encode(h.finalize()), len))
}

/// Writes the database snapshot to `path` and reads the counts and catalog from that same
/// snapshot.
async fn snapshot_database<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    path: &Path,
    tool_path: Option<&Path>,
) -> Result<Snapshot> {
    let any: &dyn std::any::Any = env.store.pool();
    if let Some(b) = any.downcast_ref::<sqlx::SqlitePool>() {
        let p = path.to_str().ok_or_else(|| CliError::Usage(format!("{}: not UTF-8", path.display())))?;
        // Online and consistent: one read transaction of the live database, written to a new file.
        sqlx::query("VACUUM INTO ?").bind(p).execute(b).await.map_err(sql)?;
        return read_sqlite_file(path).await;
    }
    let tool_path = tool_path.ok_or(CliError::NotAvailable("the dump tool"))?;
    if let Some(b) = any.downcast_ref::<sqlx::PgPool>() {
        let StoreUrl::Postgres(u) = &env.settings.store else {
            return Err(CliError::Usage("the store is not a PostgreSQL url".into()));
        };
        let server = ServerUrl::parse(u)?;
        // Counts and catalog in a repeatable-read snapshot that pg_dump then dumps.
        let mut tx = b.begin().await.map_err(sql)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(sql)?;
        let snapshot_id: String =
            sqlx::query_scalar("SELECT pg_export_snapshot()").fetch_one(&mut *tx).await.map_err(sql)?;
        let snap = read_postgres(&mut tx).await?;
        let mut cmd = pg_command(tool_path, &server);
        cmd.arg("--format=custom")
            .arg("--no-owner")
            .arg("--no-privileges")
            .arg(format!("--snapshot={snapshot_id}"))
            .arg("--file")
            .arg(path)
            .arg(format!("--dbname={}", server.url));
        run_tool("pg_dump", &mut cmd).await?;
        tx.commit().await.map_err(sql)?;
        return Ok(snap);
    }
    if let Some(b) = any.downcast_ref::<sqlx::MySqlPool>() {
        let StoreUrl::MySql(u) = &env.settings.store else {
            return Err(CliError::Usage("the store is not a MariaDB/MySQL url".into()));
        };
        let server = ServerUrl::parse(u)?;
        // mysqldump takes its own consistent snapshot (--single-transaction); the counts are read
        // in one before and one after it, and the dump is made again if they differ.
        for _ in 0..3 {
            let before = mysql_consistent_read(b).await?;
            let mut cmd = mysql_command(tool_path, &server);
            cmd.arg("--single-transaction")
                .arg("--hex-blob")
                .arg("--no-tablespaces")
                .arg("--skip-dump-date")
                .arg(format!("--result-file={}", path.display()))
                .arg(server.database());
            run_tool("mysqldump", &mut cmd).await?;
            let after = mysql_consistent_read(b).await?;
            if before.counts == after.counts {
                return Ok(after);
            }
        }
        return Err(CliError::Backup(
            "the database kept changing during three dumps (counts before and after differ); run it again at a quieter moment".into(),
        ));
    }
    Err(CliError::NotAvailable("backup of this store backend"))
}

async fn mysql_consistent_read(pool: &sqlx::MySqlPool) -> Result<Snapshot> {
    let mut c = pool.acquire().await.map_err(sql)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *c).await.map_err(sql)?;
    sqlx::query("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .execute(&mut *c)
        .await
        .map_err(sql)?;
    let snap = read_mysql(&mut c).await;
    sqlx::query("COMMIT").execute(&mut *c).await.map_err(sql)?;
    snap
}

/// Opens a SQLite snapshot file on its own (rollback journal: no `-wal` left beside it) and reads
/// it.
async fn read_sqlite_file(path: &Path) -> Result<Snapshot> {
    use sqlx::ConnectOptions;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
    let mut c = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Delete)
        .connect()
        .await
        .map_err(sql)?;
    let snap = read_sqlite(&mut c).await;
    sqlx::Connection::close(c).await.map_err(sql)?;
    snap
}

// ------------------------------------------------------------------ restore --verify

/// Problems found while verifying; the first few are printed.
#[derive(Debug, Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, p: impl Into<String>) {
        self.0.push(p.into());
    }

    /// An error for what was found so far (printed, at most 50 lines, on standard error).
    fn check(&mut self, from: &Path) -> Result<()> {
        let found = std::mem::take(&mut self.0);
        let Some(first) = found.first().cloned() else { return Ok(()) };
        for p in found.iter().take(50) {
            eprintln!("backup problem: {p}");
        }
        Err(CliError::BackupCorrupt { path: from.to_owned(), problems: found.len(), first })
    }
}

/// Reads and checks the manifest and every file against it.
fn check_files(from: &Path) -> Result<Manifest> {
    let mut problems = Problems::default();
    let mpath = from.join(MANIFEST);
    let text = match std::fs::read(&mpath) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(corrupt(from, format!("{MANIFEST} is missing (not a backup, or an unfinished one)")));
        }
        Err(e) => return Err(CliError::Io { op: "read", path: mpath, source: e }),
    };
    let manifest: Manifest = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            return Err(corrupt(
                from,
                format!("{MANIFEST} does not parse: {}", config::one_line(&e.to_string())),
            ));
        }
    };
    if manifest.format != FORMAT {
        problems.add(format!("{MANIFEST}: format {:?}, this kluis reads {FORMAT:?}", manifest.format));
    }
    let want_db = match manifest.engine.as_str() {
        "sqlite" => SQLITE_DB,
        "postgres" => PG_DUMP,
        "mysql" => MYSQL_DUMP,
        other => {
            problems.add(format!("{MANIFEST}: unknown engine {other:?}"));
            ""
        }
    };
    if !want_db.is_empty() && manifest.database != want_db {
        problems.add(format!("{MANIFEST}: database {:?}, expected {want_db:?}", manifest.database));
    }
    let mut present = BTreeSet::new();
    walk(from, "", &mut present, &mut problems.0)?;
    present.remove(MANIFEST);
    let mut listed = BTreeSet::new();
    let mut objects = 0u64;
    for f in &manifest.files {
        let Some(rel) = safe_rel(&f.path) else {
            problems.add(format!("{MANIFEST}: unsafe path {:?}", f.path));
            continue;
        };
        if !listed.insert(f.path.clone()) {
            problems.add(format!("{MANIFEST}: {} listed twice", f.path));
            continue;
        }
        if let Some(name) = f.path.strip_prefix("blobs/") {
            objects += 1;
            if ObjectName::parse(name).is_err() {
                problems.add(format!("{}: not an object name", f.path));
            }
        } else if f.path != manifest.database && f.path != SCHEMA {
            problems.add(format!("{MANIFEST}: unexpected file {}", f.path));
        }
        if !present.contains(&f.path) {
            problems.add(format!("{}: missing", f.path));
            continue;
        }
        let (sha, size) = hash_file(&from.join(rel))?;
        if size != f.size {
            problems.add(format!(
                "{}: {size} bytes, the manifest says {} (truncated or replaced)",
                f.path, f.size
            ));
        } else if sha != f.sha256 {
            problems.add(format!("{}: SHA-256 differs from the manifest (altered)", f.path));
        }
    }
    for p in present.difference(&listed) {
        problems.add(format!("{p}: not in the manifest"));
    }
    for need in [manifest.database.as_str(), SCHEMA] {
        if !need.is_empty() && !listed.contains(need) {
            problems.add(format!("{MANIFEST}: does not list {need}"));
        }
    }
    if objects != manifest.counts.documents {
        problems.add(format!(
            "{MANIFEST}: {objects} objects listed, counts say {} documents",
            manifest.counts.documents
        ));
    }
    problems.check(from)?;
    Ok(manifest)
}

/// `kluis restore --verify FROM`.
pub async fn restore<B: Engine, O: BlobBackend + Clone>(
    env: &Env<B, O>,
    actor: &str,
    args: &RestoreArgs,
) -> Result<Report> {
    if !args.verify {
        return Err(CliError::NotAvailable(
            "restore without --verify (restoring over the live data is done by hand, docs/CLI.md)",
        ));
    }
    let from = &args.from;
    if !from.is_dir() {
        return Err(CliError::NoBackup(from.clone()));
    }
    let manifest = check_files(from)?;
    let scratch = tempfile::Builder::new()
        .prefix("kluis-verify-")
        .tempdir()
        .map_err(io("create scratch directory in", std::env::temp_dir()))?;
    let schema = load_schema(&from.join(SCHEMA)).map_err(|e| corrupt(from, format!("{SCHEMA}: {e}")))?;
    let provider = env.provider().await?;
    // The check opens every record and document of the backup with this keyring: the live audit
    // log records it before anything is opened (no entry, no check).
    env.audit_admin(
        actor,
        AdminEvent::Other {
            action: "restore_verify".into(),
            tenant: None,
            detail: format!(
                "{} backup taken at {} ({} records, {} documents)",
                manifest.engine, manifest.created_at, manifest.counts.records, manifest.counts.documents
            ),
        },
    )
    .await?;
    let summary = match manifest.engine.as_str() {
        "sqlite" => {
            let db = scratch.path().join("kluis.sqlite");
            std::fs::copy(from.join(SQLITE_DB), &db).map_err(io("copy into scratch", &db))?;
            let snap = match read_sqlite_file(&db).await {
                Ok(s) => s,
                Err(e) => return Err(corrupt(from, format!("{SQLITE_DB} does not open: {e}"))),
            };
            let backend = Sqlite::open(&db)
                .await
                .map_err(|e| corrupt(from, format!("{SQLITE_DB} does not open: {e}")))?;
            let store = Arc::new(Store::new(backend, schema));
            let r = verify_store(from, &manifest, snap, Arc::clone(&store), scratch.path(), provider).await;
            store.pool().close().await;
            r?
        }
        "postgres" => {
            let any: &dyn std::any::Any = env.store.pool();
            let (Some(live), StoreUrl::Postgres(u)) =
                (any.downcast_ref::<sqlx::PgPool>(), &env.settings.store)
            else {
                return Err(CliError::Usage(
                    "a PostgreSQL backup is verified on a PostgreSQL server: give --store postgres://... (a server where kluis may create and drop a scratch database)".into(),
                ));
            };
            let restore_tool = tool(
                "pg_restore",
                "it loads the PostgreSQL dump into the scratch database: install the PostgreSQL client tools",
            )?;
            let server = ServerUrl::parse(u)?;
            let db = scratch_name()?;
            sqlx::query(&format!("CREATE DATABASE {db}")).execute(live).await.map_err(sql)?;
            let scratch_url = server.with_database(&db);
            let r = async {
                let mut cmd = pg_command(&restore_tool, &scratch_url);
                cmd.arg("--no-owner")
                    .arg("--no-privileges")
                    .arg("--exit-on-error")
                    .arg(format!("--dbname={}", scratch_url.url))
                    .arg(from.join(PG_DUMP));
                run_tool("pg_restore", &mut cmd)
                    .await
                    .map_err(|e| corrupt(from, format!("{PG_DUMP} does not load: {e}")))?;
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(4)
                    .connect(&scratch_url.connect_url())
                    .await
                    .map_err(sql)?;
                let snap = {
                    let mut c = pool.acquire().await.map_err(sql)?;
                    read_postgres(&mut c).await.map_err(|e| corrupt(from, format!("{PG_DUMP}: {e}")))?
                };
                let store = Arc::new(Store::new(pool.clone(), schema));
                let r = verify_store(from, &manifest, snap, store, scratch.path(), provider).await;
                pool.close().await;
                r
            }
            .await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")).execute(live).await;
            r?
        }
        "mysql" => {
            let any: &dyn std::any::Any = env.store.pool();
            let (Some(live), StoreUrl::MySql(u)) =
                (any.downcast_ref::<sqlx::MySqlPool>(), &env.settings.store)
            else {
                return Err(CliError::Usage(
                    "a MariaDB/MySQL backup is verified on a MariaDB/MySQL server: give --store mysql://... (a server where kluis may create and drop a scratch database)".into(),
                ));
            };
            let client = tool(
                "mysql",
                "it loads the MariaDB/MySQL dump into the scratch database: install the MariaDB client tools",
            )?;
            let server = ServerUrl::parse(u)?;
            let db = scratch_name()?;
            sqlx::query(&format!("CREATE DATABASE {db}")).execute(live).await.map_err(sql)?;
            let scratch_url = server.with_database(&db);
            let r = async {
                let dump_path = from.join(MYSQL_DUMP);
                let dump = std::fs::File::open(&dump_path).map_err(io("read", &dump_path))?;
                let mut cmd = mysql_command(&client, &scratch_url);
                cmd.arg("--binary-mode").arg(&db).stdin(dump);
                run_tool("mysql", &mut cmd)
                    .await
                    .map_err(|e| corrupt(from, format!("{MYSQL_DUMP} does not load: {e}")))?;
                let pool = sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(4)
                    .connect(&scratch_url.connect_url())
                    .await
                    .map_err(sql)?;
                let snap = {
                    let mut c = pool.acquire().await.map_err(sql)?;
                    read_mysql(&mut c).await.map_err(|e| corrupt(from, format!("{MYSQL_DUMP}: {e}")))?
                };
                let store = Arc::new(Store::new(pool.clone(), schema));
                let r = verify_store(from, &manifest, snap, store, scratch.path(), provider).await;
                pool.close().await;
                r
            }
            .await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db}")).execute(live).await;
            r?
        }
        other => return Err(corrupt(from, format!("unknown engine {other:?}"))),
    };
    drop(scratch);
    Ok(summary.report(from, &manifest))
}

fn corrupt(from: &Path, first: String) -> CliError {
    CliError::BackupCorrupt { path: from.to_owned(), problems: 1, first }
}

fn scratch_name() -> Result<String> {
    let n = ObjectName::random()?;
    let hex = n.as_str().get(..12).unwrap_or("0");
    Ok(format!("kluis_verify_{hex}"))
}

/// What a successful verification found.
#[derive(Debug, Default)]
struct Summary {
    tenants: usize,
    records: u64,
    documents: u64,
    document_bytes: u64,
    audit_entries: u64,
    generation: String,
}

impl Summary {
    fn report(&self, from: &Path, m: &Manifest) -> Report {
        let bytes: u64 = m.files.iter().map(|f| f.size).sum();
        let mut r = Report::new(json!({
            "ok": true, "backup": from, "engine": m.engine, "created_at": m.created_at,
            "files": m.files.len(), "bytes": bytes, "tenants": self.tenants, "records": self.records,
            "documents": self.documents, "audit_entries": self.audit_entries,
            "audit_head": m.counts.audit_head, "keyring_generation": self.generation,
        }));
        r.line(format!(
            "backup {} verified in a scratch copy ({}); the live data was not touched",
            from.display(),
            m.engine
        ));
        r.line(format!("  files:     {} match the manifest ({bytes} bytes)", m.files.len()));
        r.line(format!(
            "  records:   {} of {} open ({} tenant(s))",
            self.records, m.counts.records, self.tenants
        ));
        r.line(format!(
            "  documents: {} of {} open, catalog and objects match ({} bytes of content)",
            self.documents, m.counts.documents, self.document_bytes
        ));
        r.line(format!(
            "  audit:     chain verified, {} entries{}",
            self.audit_entries,
            m.counts.audit_head.as_ref().map(|h| format!(", head {h}")).unwrap_or_default()
        ));
        r.line(format!("  keyring:   {}", self.generation));
        r
    }
}

/// Counts the bytes written into it.
#[derive(Debug, Default)]
struct CountingSink(u64);

impl tokio::io::AsyncWrite for CountingSink {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0 += buf.len() as u64;
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// Copies the backup's objects into a scratch blob directory through the blob API.
async fn restore_blobs(from: &Path, m: &Manifest, dir: &LocalDir) -> Result<()> {
    for f in m.files.iter().filter(|f| f.path.starts_with("blobs/")) {
        let Some(name) = f.path.strip_prefix("blobs/") else { continue };
        let name = ObjectName::parse(name)?;
        let path = from.join(&f.path);
        let mut src = std::fs::File::open(&path).map_err(io("read", &path))?;
        let mut up = dir.begin(&name).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).map_err(io("read", &path))?;
            let Some(part) = buf.get(..n) else { break };
            if n == 0 {
                break;
            }
            up.append(part).await?;
        }
        up.commit().await?;
    }
    Ok(())
}

/// Checks a restored scratch store: counts, audit chain, keys, every record and document, the
/// catalog against the objects.
async fn verify_store<S: Engine>(
    from: &Path,
    m: &Manifest,
    snap: Snapshot,
    store: Arc<Store<S>>,
    scratch: &Path,
    provider: &dyn RootKeyProvider,
) -> Result<Summary> {
    let mut problems = Problems::default();
    if snap.counts != m.counts {
        problems.add(format!(
            "the restored database holds {} records, {} documents, {} audit entries (head {}); the manifest says {}, {}, {} (head {})",
            snap.counts.records,
            snap.counts.documents,
            snap.counts.audit_entries,
            snap.counts.audit_head.as_deref().unwrap_or("none"),
            m.counts.records,
            m.counts.documents,
            m.counts.audit_entries,
            m.counts.audit_head.as_deref().unwrap_or("none"),
        ));
    }
    problems.check(from)?;
    store.migrate().await.map_err(|e| corrupt(from, format!("migrations on the restored database: {e}")))?;
    // Blobs into the scratch blob directory; the catalog must name exactly these objects.
    let blob_dir = scratch.join("blobs");
    private_dir(&blob_dir).map_err(io("create directory", &blob_dir))?;
    let blobs = LocalDir::open(&blob_dir).await?;
    restore_blobs(from, m, &blobs).await?;
    let stored: BTreeSet<String> = blobs.list().await?.iter().map(|o| o.as_str().to_owned()).collect();
    let catalog: BTreeSet<String> = snap.documents.iter().map(|d| d.object_name.clone()).collect();
    for o in catalog.difference(&stored) {
        problems.add(format!("catalog document object {o} is not in the backup's blobs"));
    }
    for o in stored.difference(&catalog) {
        problems.add(format!("blobs/{o} is in no catalog row"));
    }
    // The audit chain, against the head the manifest recorded.
    let rep = match m.counts.audit_head.as_deref() {
        Some(h) => {
            let cp = kluis_service::audit::Checkpoint::parse(h)
                .map_err(|e| corrupt(from, format!("{MANIFEST}: audit head: {e}")))?;
            kluis_service::audit::verify_against(&store, &cp).await
        }
        None => kluis_service::audit::verify(&store).await,
    }
    .map_err(|e| corrupt(from, format!("audit chain: {e}")))?;
    if let Some(bad) = rep.first_bad {
        problems
            .add(format!("audit chain broken at entry {bad}: {}", rep.problem.clone().unwrap_or_default()));
    }
    if let Some(rows) = &rep.rows {
        if let Some(p) = &rows.log_problem {
            problems.add(format!("row log: {p}"));
        }
        for p in &rows.problems {
            problems.add(format!("{}/{}/{}: {}", p.tenant, p.collection, p.record, p.finding.describe()));
        }
    }
    problems.check(from)?;
    // Keys: every live domain key version must unwrap with the current root. A version whose
    // root key version is gone means a backup older than a root retirement: not damage.
    let mut missing_roots = BTreeSet::new();
    let mut retired = 0usize;
    for rec in store.all_domain_key_records().await? {
        let Some(w) = &rec.wrapped else { continue };
        let aad = kluis_core::keys::domain_key_ad(&rec.tenant, &rec.domain, rec.version)?;
        match kluis_core::keys::unwrap_one(provider, &aad, w).await {
            Ok(_) => {}
            Err(kluis_core::Error::UnknownKey { .. }) => {
                retired += 1;
                missing_roots.insert(w.root_version);
            }
            Err(e) => problems.add(format!(
                "domain key {}/{} v{} does not unwrap: {}",
                rec.tenant,
                rec.domain,
                rec.version,
                config::one_line(&e.to_string())
            )),
        }
    }
    problems.check(from)?;
    if retired > 0 {
        return Err(CliError::BackupExpired {
            path: from.to_owned(),
            keys: retired,
            root_versions: missing_roots.iter().map(|v| format!("v{v}")).collect::<Vec<_>>().join(", "),
            records: m.counts.records,
            documents: m.counts.documents,
        });
    }
    // The keyring generation: a backup older than the last keyring change is behind it (as a real
    // restore would be until `kluis keys record-generation`); recorded in the scratch copy only.
    let generation = match store.check_keyring_generation(provider).await? {
        kluis_core::keys::GenerationStatus::InSync => "in sync with the backup".to_owned(),
        kluis_core::keys::GenerationStatus::DatabaseBehind { keyring, database } => {
            store.record_keyring_generation(provider).await?;
            format!(
                "the backup recorded generation {database}, the keyring is at {keyring} (a keyring change since the backup); after a real restore run `kluis keys record-generation`"
            )
        }
    };
    // Every record and document opens.
    let docs = Documents::new(Arc::clone(&store), DocumentVault::new(blobs));
    let mut by_tenant: BTreeMap<String, Vec<&CatalogDoc>> = BTreeMap::new();
    for d in &snap.documents {
        by_tenant.entry(d.tenant.clone()).or_default().push(d);
    }
    let tenants = store.tenants().await?;
    let mut summary =
        Summary { tenants: tenants.len(), audit_entries: rep.entries, generation, ..Summary::default() };
    for t in &tenants {
        let access = match admin_access(&store, provider, t).await {
            Ok(a) => a,
            Err(e) => {
                problems.add(format!("tenant {t}: keys: {}", config::one_line(&e.to_string())));
                continue;
            }
        };
        for c in store.schema().collections() {
            let mut after: Option<String> = None;
            loop {
                match store.list(&access, &c.name, None, after.as_deref(), 1000).await {
                    Ok(page) => {
                        summary.records += page.records.len() as u64;
                        match page.next {
                            Some(n) => after = Some(n),
                            None => break,
                        }
                    }
                    Err(e) => {
                        problems.add(format!("{t}/{}: {}", c.name, config::one_line(&e.to_string())));
                        break;
                    }
                }
            }
        }
        for d in by_tenant.remove(t.as_str()).unwrap_or_default() {
            let mut sink = CountingSink::default();
            match docs.get(&access, &d.document_id, &mut sink).await {
                Ok(_) => {
                    summary.documents += 1;
                    summary.document_bytes += sink.0;
                }
                Err(e) => problems.add(format!(
                    "{t}: document {}: {}",
                    d.document_id,
                    config::one_line(&e.to_string())
                )),
            }
        }
    }
    for (t, ds) in by_tenant {
        problems.add(format!("{} catalog documents of {t:?}, a tenant without domain keys", ds.len()));
    }
    if summary.records != m.counts.records {
        problems.add(format!(
            "{} records opened, the backup holds {} (a collection table outside schema.toml?)",
            summary.records, m.counts.records
        ));
    }
    problems.check(from)?;
    Ok(summary)
}

/// Every domain of a tenant, as [`Env::admin_access`] builds it (moving legacy rows of the scratch
/// copy first).
async fn admin_access<S: Engine>(
    store: &Store<S>,
    provider: &dyn RootKeyProvider,
    tenant: &TenantId,
) -> Result<Access> {
    let domains = store.tenant_domains(tenant).await?;
    Ok(store.admin_access(provider, tenant, &domains).await?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn manifest_paths_must_stay_inside() {
        assert!(safe_rel("blobs/00ff").is_some());
        assert!(safe_rel("database/kluis.sqlite").is_some());
        for bad in ["", "/etc/passwd", "../x", "blobs/../../x", "a\\b", "./x"] {
            assert!(safe_rel(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn server_urls_keep_the_password_off_the_command_line() {
        let s = ServerUrl::parse("postgres://kluis:p%40ss%20w@db.example:5433/hr?sslmode=require").unwrap();
        assert_eq!(s.password.as_deref(), Some("p@ss w"));
        assert!(!s.url.as_str().contains("p%40ss"), "{}", s.url);
        assert_eq!(s.user(), "kluis");
        assert_eq!(s.database(), "hr");
        assert_eq!(s.url.port(), Some(5433));
        let t = s.with_database("kluis_verify_ab");
        assert_eq!(t.database(), "kluis_verify_ab");
        assert!(t.connect_url().contains("p%40ss%20w@"));
        assert!(!format!("{s:?}").contains("ss w"));
    }
}
