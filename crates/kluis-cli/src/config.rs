//! The data directory, the configuration file in it, and the passphrase.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use kluis_core::{KdfParams, KeyringSecret, Passphrase};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{CliError, Result, io};

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "kluis.toml";
/// Default keyring file name.
pub const KEYRING_FILE: &str = "keyring.kr";
/// Default SQLite file name.
pub const SQLITE_FILE: &str = "kluis.sqlite";
/// Default blob directory name.
pub const BLOB_DIR: &str = "blobs";
/// Default schema file name.
pub const SCHEMA_FILE: &str = "schema.toml";
/// The environment variable holding the passphrase.
pub const PASSPHRASE_ENV: &str = "KLUIS_PASSPHRASE";

/// The schema `kluis init` writes when none is given: employees and absence reports with general
/// and medical fields.
pub const DEFAULT_SCHEMA: &str = r#"# Collections and fields; see docs/STORE.md. Edit before storing data.
[collections.employee.fields]
name            = { type = "text", domain = "general", max_bytes = 200 }
department      = { type = "text", domain = "general", max_bytes = 200 }
employee_number = { type = "text", domain = "general", blind_index = true, max_bytes = 32 }

[collections.absence.fields]
start_date      = { type = "date", domain = "general" }
end_date        = { type = "date", domain = "general" }
work_capacity   = { type = "percentage", domain = "general" }
reported_by     = { type = "text", domain = "general", max_bytes = 200 }
diagnosis       = { type = "text", domain = "medical", max_bytes = 2000 }
doctor_notes    = { type = "text", domain = "medical" }
"#;

/// `kluis.toml`: what `init` chose, so later commands find the same parts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Root key URL (`keyring://PATH`, `aws-kms://...`, `azure-kv://...`); default: the keyring
    /// file in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Database URL; default: the SQLite file in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Blob store: a directory or an Azure container URL; default: `blobs/` in the data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<String>,
}

impl FileConfig {
    /// Reads `DIR/kluis.toml`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        toml::from_str(&text).map_err(|e| CliError::Config { path, reason: one_line(&e.to_string()) })
    }

    /// Writes `DIR/kluis.toml` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CONFIG_FILE);
        let body = toml::to_string(self)
            .map_err(|e| CliError::Config { path: path.clone(), reason: one_line(&e.to_string()) })?;
        let text = format!("# kluis configuration (written by kluis; see docs/CLI.md)\n{body}");
        write_atomic(&path, text.as_bytes())
    }
}

/// Writes a file through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))?;
    Ok(())
}

/// Collapses an error message to one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// PostgreSQL (the URL, which may hold a password: never printed whole).
    Postgres(String),
    /// MariaDB or MySQL.
    MySql(String),
}

impl StoreUrl {
    /// Parses `sqlite:PATH`, `sqlite://PATH`, `postgres://...`, `postgresql://...`, `mysql://...`,
    /// `mariadb://...`. A relative SQLite path is taken relative to `base`.
    pub fn parse(url: &str, base: &Path) -> Result<Self> {
        let lower = url.to_ascii_lowercase();
        if let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
            if rest.is_empty() {
                return Err(CliError::Usage("--store sqlite: needs a file path".into()));
            }
            let p = PathBuf::from(rest);
            return Ok(Self::Sqlite(if p.is_absolute() { p } else { base.join(p) }));
        }
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if lower.starts_with("mysql://") {
            return Ok(Self::MySql(url.to_owned()));
        }
        if let Some(rest) = url.strip_prefix("mariadb://") {
            return Ok(Self::MySql(format!("mysql://{rest}")));
        }
        Err(CliError::Usage(format!(
            "unsupported store url {:?}: expected sqlite:PATH, postgres://... or mysql://...",
            redact_url(url)
        )))
    }

    /// The URL for display, password removed.
    pub fn display(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite:{}", p.display()),
            Self::Postgres(u) | Self::MySql(u) => redact_url(u),
        }
    }
}

/// Removes a password (`user:PASSWORD@`) and any query string from a URL for display.
pub fn redact_url(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or("");
    if let Some((scheme, rest)) = no_query.split_once("://")
        && let Some((cred, host)) = rest.rsplit_once('@')
    {
        let user = cred.split(':').next().unwrap_or("");
        let masked = if cred.contains(':') { format!("{user}:***") } else { user.to_owned() };
        return format!("{scheme}://{masked}@{host}");
    }
    no_query.to_owned()
}

/// Where documents live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobUrl {
    /// A local directory.
    Dir(PathBuf),
    /// An Azure container URL (`https://ACCOUNT.blob.core.windows.net/CONTAINER`, optionally with a
    /// SAS query; the URL is a secret then and never printed whole).
    Azure(String),
}

impl BlobUrl {
    /// Parses a directory path or an `http(s)://` container URL.
    pub fn parse(s: &str, base: &Path) -> Result<Self> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            return Ok(Self::Azure(s.to_owned()));
        }
        if lower.contains("://") {
            return Err(CliError::Usage(format!(
                "unsupported blobs url {:?}: expected a directory or an https:// container url",
                redact_url(s)
            )));
        }
        let p = PathBuf::from(s.strip_prefix("file:").unwrap_or(s));
        Ok(Self::Dir(if p.is_absolute() { p } else { base.join(p) }))
    }

    /// For display (no SAS).
    pub fn display(&self) -> String {
        match self {
            Self::Dir(p) => p.display().to_string(),
            Self::Azure(u) => redact_url(u),
        }
    }
}

/// Everything resolved from the global options and `kluis.toml`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data directory.
    pub data_dir: PathBuf,
    /// The database.
    pub store: StoreUrl,
    /// The blob store.
    pub blobs: BlobUrl,
    /// Root key URL.
    pub root: String,
    /// The schema file.
    pub schema: PathBuf,
    /// JSON output.
    pub json: bool,
}

impl Settings {
    /// Resolves settings for `dir`, with the command-line overrides and `kluis.toml` (if present).
    pub fn resolve(
        dir: &Path,
        file: &FileConfig,
        store: Option<&str>,
        blobs: Option<&str>,
        schema: Option<&Path>,
        json: bool,
    ) -> Result<Self> {
        let store = match store.or(file.store.as_deref()) {
            Some(u) => StoreUrl::parse(u, dir)?,
            None => StoreUrl::Sqlite(dir.join(SQLITE_FILE)),
        };
        let blobs = match blobs.or(file.blobs.as_deref()) {
            Some(u) => BlobUrl::parse(u, dir)?,
            None => BlobUrl::Dir(dir.join(BLOB_DIR)),
        };
        let root = match &file.root {
            Some(r) => resolve_root(r, dir),
            None => format!("keyring://{}", dir.join(KEYRING_FILE).display()),
        };
        let schema = schema.map(Path::to_path_buf).unwrap_or_else(|| dir.join(SCHEMA_FILE));
        Ok(Self { data_dir: dir.to_owned(), store, blobs, root, schema, json })
    }

    /// The keyring file when the root is a local keyring.
    pub fn keyring_path(&self) -> Option<PathBuf> {
        self.root.strip_prefix("keyring://").map(PathBuf::from)
    }
}

/// A relative `keyring://` path is relative to the data directory.
pub fn resolve_root(root: &str, dir: &Path) -> String {
    match root.strip_prefix("keyring://") {
        Some(p) if !Path::new(p).is_absolute() => format!("keyring://{}", dir.join(p).display()),
        _ => root.to_owned(),
    }
}

/// Reads the passphrase from `KLUIS_PASSPHRASE` or prompts for it without echo.
pub fn passphrase(prompt: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::NoPassphrase);
    }
    let first =
        Zeroizing::new(rpassword::prompt_password(prompt).map_err(io("read passphrase from", "/dev/tty"))?);
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("repeat the passphrase: ")
                .map_err(io("read passphrase from", "/dev/tty"))?,
        );
        if *again != *first {
            return Err(CliError::Usage("the passphrases differ".into()));
        }
    }
    Ok(first)
}

/// The keyring secret for a passphrase.
pub fn keyring_secret(pass: &Zeroizing<String>) -> KeyringSecret {
    KeyringSecret::Passphrase(Passphrase::new(pass.as_str().to_owned()), KdfParams::DEFAULT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn urls_are_printed_without_password_or_query() {
        let canary = "S3cr3t-CANARY";
        let u = format!("postgres://kluis:{canary}@db.example:5432/hr?sslmode=require");
        let shown = StoreUrl::parse(&u, Path::new("/d")).unwrap().display();
        assert_eq!(shown, "postgres://kluis:***@db.example:5432/hr");
        let sas = format!("https://acct.blob.core.windows.net/docs?sv=2024&sig={canary}");
        let b = BlobUrl::parse(&sas, Path::new("/d")).unwrap();
        assert!(!b.display().contains(canary));
        assert!(!format!("{}", CliError::Usage(redact_url(&u))).contains(canary));
    }

    #[test]
    fn store_and_blob_urls_parse() {
        let base = Path::new("/data");
        assert_eq!(StoreUrl::parse("sqlite:k.db", base).unwrap(), StoreUrl::Sqlite("/data/k.db".into()));
        assert_eq!(
            StoreUrl::parse("sqlite:///abs/k.db", base).unwrap(),
            StoreUrl::Sqlite("/abs/k.db".into())
        );
        assert!(
            matches!(StoreUrl::parse("mariadb://root@h/test", base).unwrap(), StoreUrl::MySql(u) if u == "mysql://root@h/test")
        );
        assert!(matches!(StoreUrl::parse("oracle://x", base), Err(CliError::Usage(_))));
        assert_eq!(BlobUrl::parse("blobs", base).unwrap(), BlobUrl::Dir("/data/blobs".into()));
        assert!(matches!(BlobUrl::parse("s3://bucket", base), Err(CliError::Usage(_))));
        assert_eq!(resolve_root("keyring://kr.kr", base), "keyring:///data/kr.kr");
        assert_eq!(resolve_root("aws-kms://eu-west-1/arn", base), "aws-kms://eu-west-1/arn");
    }

    #[test]
    fn config_file_round_trips_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let c =
            FileConfig { root: Some("aws-kms://eu-west-1/x".into()), store: None, blobs: Some("b".into()) };
        c.save(dir.path()).unwrap();
        assert_eq!(FileConfig::load(dir.path()).unwrap(), c);
        std::fs::write(dir.path().join(CONFIG_FILE), "rooot = 1\n").unwrap();
        assert!(matches!(FileConfig::load(dir.path()), Err(CliError::Config { .. })));
    }
}
