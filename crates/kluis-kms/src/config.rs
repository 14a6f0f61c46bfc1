//! Provider configuration by URL: `keyring://PATH`, `aws-kms://REGION/KEY-ARN`,
//! `azure-kv://VAULT/KEY`.
//!
//! A URL names *where* the root key is; it never carries a secret. Credentials come from the
//! platform's usual chain (Entra ID for Azure, the AWS credential chain for AWS) and a keyring's
//! passphrase or key file is supplied separately.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A URL that does not name a root key provider Kluis knows, or names it badly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL is empty.
    #[error("empty root key url")]
    Empty,
    /// No `SCHEME://` prefix, or a scheme Kluis does not know.
    #[error("unknown root key url scheme {0:?}: expected keyring://, aws-kms:// or azure-kv://")]
    UnknownScheme(String),
    /// A required part of the URL is missing.
    #[error("root key url {url:?} has no {part}")]
    Missing {
        /// The URL (it holds no secret).
        url: String,
        /// Which part.
        part: &'static str,
    },
    /// A part of the URL is not valid.
    #[error("root key url {url:?}: invalid {part}: {reason}")]
    Invalid {
        /// The URL.
        url: String,
        /// Which part.
        part: &'static str,
        /// Why.
        reason: &'static str,
    },
}

/// Where the AWS KMS root key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsKmsConfig {
    /// AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// The key ARN (`arn:aws:kms:REGION:ACCOUNT:key/ID`), as given in the URL. In tests against
    /// an emulator any key id the emulator accepts.
    pub key_arn: String,
    /// Endpoint override (tests, VPC endpoints). `None`: the SDK's regional endpoint.
    pub endpoint_url: Option<String>,
}

impl AwsKmsConfig {
    /// The stable root key id stored with every wrapped key: `aws-kms://REGION/KEY-ARN`.
    pub fn root_key_id(&self) -> String {
        format!("aws-kms://{}/{}", self.region, self.key_arn)
    }
}

/// Where the Azure Key Vault (or Managed HSM) root key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureKeyVaultConfig {
    /// The vault's host name, e.g. `myvault.vault.azure.net` or `myhsm.managedhsm.azure.net`.
    pub vault_host: String,
    /// The key's name.
    pub key_name: String,
    /// Endpoint override, e.g. `https://myvault.vault.azure.net:8443` (tests). `None`:
    /// `https://VAULT_HOST`.
    pub endpoint_url: Option<String>,
}

impl AzureKeyVaultConfig {
    /// The stable root key id stored with every wrapped key: `azure-kv://VAULT_HOST/KEY`.
    pub fn root_key_id(&self) -> String {
        format!("azure-kv://{}/{}", self.vault_host, self.key_name)
    }

    /// The vault URL the SDK talks to.
    pub fn endpoint(&self) -> String {
        self.endpoint_url.clone().unwrap_or_else(|| format!("https://{}", self.vault_host))
    }

    /// Is this a Managed HSM (AES key wrap) rather than a vault (RSA-OAEP-256)?
    pub fn is_managed_hsm(&self) -> bool {
        self.vault_host.ends_with(".managedhsm.azure.net")
    }
}

/// A parsed root key URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProviderConfig {
    /// `keyring://PATH`: the local keyring file (`keyring:///abs/path` or `keyring://rel/path`).
    Keyring {
        /// The keyring file.
        path: PathBuf,
    },
    /// `aws-kms://REGION/KEY-ARN`.
    AwsKms(AwsKmsConfig),
    /// `azure-kv://VAULT/KEY`: VAULT is a vault name (`myvault` → `myvault.vault.azure.net`) or a
    /// full host name (`myhsm.managedhsm.azure.net` for a Managed HSM).
    AzureKeyVault(AzureKeyVaultConfig),
}

impl fmt::Display for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keyring { path } => write!(f, "keyring://{}", path.display()),
            Self::AwsKms(c) => f.write_str(&c.root_key_id()),
            Self::AzureKeyVault(c) => f.write_str(&c.root_key_id()),
        }
    }
}

impl FromStr for ProviderConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Self::parse(s)
    }
}

fn invalid(url: &str, part: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::Invalid { url: url.to_owned(), part, reason }
}

fn missing(url: &str, part: &'static str) -> ConfigError {
    ConfigError::Missing { url: url.to_owned(), part }
}

impl ProviderConfig {
    /// Parses a root key URL.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        if url.is_empty() {
            return Err(ConfigError::Empty);
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(ConfigError::UnknownScheme(url.chars().take(32).collect()));
        };
        if rest.contains(['?', '#']) {
            return Err(invalid(url, "url", "query strings and fragments are not accepted"));
        }
        if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(url, "url", "white space or control characters"));
        }
        match scheme.to_ascii_lowercase().as_str() {
            "keyring" => {
                if rest.is_empty() {
                    return Err(missing(url, "keyring path"));
                }
                Ok(Self::Keyring { path: PathBuf::from(rest) })
            }
            "aws-kms" => {
                let (region, arn) = rest.split_once('/').ok_or_else(|| missing(url, "key arn"))?;
                check_region(url, region)?;
                check_arn(url, region, arn)?;
                Ok(Self::AwsKms(AwsKmsConfig {
                    region: region.to_owned(),
                    key_arn: arn.to_owned(),
                    endpoint_url: None,
                }))
            }
            "azure-kv" => {
                let (vault, key) = rest.split_once('/').ok_or_else(|| missing(url, "key name"))?;
                let vault_host = vault_host(url, vault)?;
                check_key_name(url, key)?;
                Ok(Self::AzureKeyVault(AzureKeyVaultConfig {
                    vault_host,
                    key_name: key.to_owned(),
                    endpoint_url: None,
                }))
            }
            _ => Err(ConfigError::UnknownScheme(scheme.chars().take(32).collect())),
        }
    }
}

fn check_region(url: &str, region: &str) -> Result<(), ConfigError> {
    if region.is_empty() {
        return Err(missing(url, "region"));
    }
    let ok = region.len() <= 32
        && region.split('-').count() >= 3
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if !ok {
        return Err(invalid(url, "region", "expected an aws region such as eu-west-1"));
    }
    Ok(())
}

fn check_arn(url: &str, region: &str, arn: &str) -> Result<(), ConfigError> {
    if arn.is_empty() {
        return Err(missing(url, "key arn"));
    }
    // arn:PARTITION:kms:REGION:ACCOUNT:key/ID (an alias ARN is refused: an alias can be re-pointed
    // at another key, and the root key id must stay the same key).
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, arn_region, account, resource] = parts.as_slice() else {
        return Err(invalid(url, "key arn", "expected arn:aws:kms:REGION:ACCOUNT:key/ID"));
    };
    if *prefix != "arn" || !partition.starts_with("aws") || *service != "kms" {
        return Err(invalid(url, "key arn", "expected arn:aws:kms:REGION:ACCOUNT:key/ID"));
    }
    if *arn_region != region {
        return Err(invalid(url, "key arn", "the arn's region differs from the url's region"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(url, "key arn", "the account id must be 12 digits"));
    }
    let Some(id) = resource.strip_prefix("key/") else {
        return Err(invalid(url, "key arn", "must name a key (key/ID), not an alias"));
    };
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(url, "key arn", "bad key id"));
    }
    Ok(())
}

fn vault_host(url: &str, vault: &str) -> Result<String, ConfigError> {
    if vault.is_empty() {
        return Err(missing(url, "vault"));
    }
    let host =
        if vault.contains('.') { vault.to_ascii_lowercase() } else { format!("{vault}.vault.azure.net") };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok) {
        return Err(invalid(url, "vault", "expected a vault name or host name"));
    }
    if !vault.contains('.') && !(3..=24).contains(&vault.len()) {
        return Err(invalid(url, "vault", "a vault name has 3 to 24 characters"));
    }
    Ok(host)
}

fn check_key_name(url: &str, key: &str) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(missing(url, "key name"));
    }
    if key.len() > 127 || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(invalid(
            url,
            "key name",
            "1 to 127 letters, digits and dashes (name the key, not a version)",
        ));
    }
    Ok(())
}
