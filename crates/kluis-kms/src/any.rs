//! A provider chosen at run time from a URL.

use std::fmt;

use kluis_core::keys::{BoxFuture, UnwrapRequest};
use kluis_core::{KeyMaterial, KeyVersion, KeyringSecret, LocalKeyring, Result, RootKeyProvider, WrappedKey};

use crate::RetryConfig;
use crate::aws::AwsKmsProvider;
use crate::azure::AzureKeyVaultProvider;
use crate::config::{ConfigError, ProviderConfig};

/// Why a provider could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `keyring://` URL was given without the keyring's passphrase or key file.
    #[error("the keyring at {0} needs its passphrase or key file")]
    KeyringSecretMissing(String),
    /// The keyring file could not be opened.
    #[error(transparent)]
    Keyring(#[from] kluis_keyring::KeyringError),
    /// The provider could not be set up.
    #[error(transparent)]
    Provider(#[from] kluis_core::Error),
}

/// Any root key provider Kluis knows.
#[non_exhaustive]
pub enum AnyProvider {
    /// The local keyring.
    Keyring(LocalKeyring),
    /// AWS KMS.
    AwsKms(Box<AwsKmsProvider>),
    /// Azure Key Vault or Managed HSM.
    AzureKeyVault(Box<AzureKeyVaultProvider>),
}

impl fmt::Debug for AnyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Keyring(p) => p.fmt(f),
            Self::AwsKms(p) => p.fmt(f),
            Self::AzureKeyVault(p) => p.fmt(f),
        }
    }
}

impl AnyProvider {
    /// Opens the provider a URL names. `keyring_secret` unlocks a `keyring://` URL and is ignored
    /// otherwise; cloud providers take their credentials from the platform's chain.
    pub async fn connect(
        url: &str,
        keyring_secret: Option<KeyringSecret>,
        retry: RetryConfig,
    ) -> Result<Self, ConnectError> {
        Self::connect_config(ProviderConfig::parse(url)?, keyring_secret, retry).await
    }

    /// As [`AnyProvider::connect`] with a parsed configuration.
    pub async fn connect_config(
        config: ProviderConfig,
        keyring_secret: Option<KeyringSecret>,
        retry: RetryConfig,
    ) -> Result<Self, ConnectError> {
        match config {
            ProviderConfig::Keyring { path } => {
                let secret = keyring_secret
                    .ok_or_else(|| ConnectError::KeyringSecretMissing(path.display().to_string()))?;
                let file = kluis_keyring::KeyringFile::open(&path, secret)?;
                Ok(Self::Keyring(file.into_keyring()))
            }
            ProviderConfig::AwsKms(c) => Ok(Self::AwsKms(Box::new(AwsKmsProvider::connect(c, retry).await))),
            ProviderConfig::AzureKeyVault(c) => {
                Ok(Self::AzureKeyVault(Box::new(AzureKeyVaultProvider::connect(c, retry)?)))
            }
        }
    }

    fn inner(&self) -> &dyn RootKeyProvider {
        match self {
            Self::Keyring(p) => p,
            Self::AwsKms(p) => p.as_ref(),
            Self::AzureKeyVault(p) => p.as_ref(),
        }
    }
}

impl RootKeyProvider for AnyProvider {
    fn root_key_id(&self) -> &str {
        self.inner().root_key_id()
    }

    fn primary_version(&self) -> BoxFuture<'_, Result<KeyVersion>> {
        self.inner().primary_version()
    }

    fn wrap<'a>(&'a self, aad: &'a [u8], key: &'a KeyMaterial) -> BoxFuture<'a, Result<WrappedKey>> {
        self.inner().wrap(aad, key)
    }

    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, Result<Vec<Result<KeyMaterial>>>> {
        self.inner().unwrap_batch(items)
    }

    fn generation(&self) -> Option<u64> {
        self.inner().generation()
    }

    fn held_versions(&self) -> Option<Vec<KeyVersion>> {
        self.inner().held_versions()
    }

    fn is_legacy(&self, wrapped: &kluis_core::WrappedKey) -> bool {
        self.inner().is_legacy(wrapped)
    }

    fn unwrap_legacy<'a>(
        &'a self,
        aad: &'a [u8],
        wrapped: &'a kluis_core::WrappedKey,
    ) -> kluis_core::keys::BoxFuture<'a, kluis_core::Result<kluis_core::KeyMaterial>> {
        self.inner().unwrap_legacy(aad, wrapped)
    }
}
