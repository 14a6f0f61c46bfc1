//! Shared test helpers: the providers under test, moto, the Key Vault stand-in.
#![allow(dead_code)]

pub mod http;
pub mod keyvault;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, Transport};
use kluis_core::keys::{BoxFuture, UnwrapRequest};
use kluis_core::{
    DomainName, Error, KeyMaterial, KeyVersion, ProviderErrorKind, RootKeyProvider, TenantId, WrappedKey,
};
use kluis_kms::{AwsKmsConfig, AwsKmsProvider, AzureKeyVaultConfig, AzureKeyVaultProvider, RetryConfig};

/// Key version `n` (from 1).
pub fn kv(n: u32) -> KeyVersion {
    KeyVersion::new(n).unwrap()
}

pub fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

pub fn domain(s: &str) -> DomainName {
    DomainName::new(s).unwrap()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Retries short enough for tests.
pub fn fast_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 2,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        max_total: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(2),
        attempt_timeout: Duration::from_secs(10),
        concurrency: 8,
    }
}

/// The provider kind a failure should have.
pub fn kind_of(e: &Error) -> Option<ProviderErrorKind> {
    match e {
        Error::Provider { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// A refused unwrap: the opaque decryption error (keyring) or the provider's refusal (KMS).
pub fn is_refusal(e: &Error) -> bool {
    e.is_decrypt() || kind_of(e) == Some(ProviderErrorKind::UnwrapRefused)
}

// ---------------------------------------------------------------- moto (AWS KMS)

pub const REGION: &str = "eu-west-1";

/// The moto server's URL, or `None` (with a `SKIPPED:` line) on a developer machine without it.
/// In CI (`CI=true`) a missing moto is a failure.
pub fn moto_url() -> Option<String> {
    match std::env::var("KLUIS_TEST_MOTO_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("KLUIS_TEST_MOTO_URL is not set and CI=true: start moto with scripts/start-moto.sh");
            }
            println!(
                "SKIPPED: moto (KLUIS_TEST_MOTO_URL is not set; run `eval \"$(bash scripts/start-moto.sh)\"`)"
            );
            None
        }
    }
}

/// An SDK configuration with dummy static credentials (moto does not check them).
pub fn moto_sdk_config() -> aws_config::SdkConfig {
    let creds =
        aws_sdk_kms::config::Credentials::new("AKIAKLUISTEST", "kluis-test-secret", None, None, "kluis-test");
    aws_config::SdkConfig::builder()
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_kms::config::SharedCredentialsProvider::new(creds))
        .behavior_version(aws_config::BehaviorVersion::latest())
        .build()
}

/// A raw KMS client on moto (to create, disable and enable keys).
pub fn moto_client(url: &str) -> aws_sdk_kms::Client {
    let conf = aws_sdk_kms::config::Builder::from(&moto_sdk_config()).endpoint_url(url).build();
    aws_sdk_kms::Client::from_conf(conf)
}

/// Creates a fresh symmetric KMS key on moto; returns its ARN.
pub async fn moto_key(url: &str) -> String {
    let out = moto_client(url).create_key().description("kluis test root key").send().await.unwrap();
    out.key_metadata.unwrap().arn.unwrap()
}

pub fn aws_provider_at(endpoint: &str, arn: &str, retry: RetryConfig) -> AwsKmsProvider {
    let cfg =
        AwsKmsConfig { region: REGION.into(), key_arn: arn.into(), endpoint_url: Some(endpoint.into()) };
    AwsKmsProvider::with_sdk_config(cfg, &moto_sdk_config(), retry)
}

/// A provider on a fresh moto key, or `None` if moto is not available (and not required).
pub async fn aws_provider() -> Option<(AwsKmsProvider, String, String)> {
    let url = moto_url()?;
    let arn = moto_key(&url).await;
    Some((aws_provider_at(&url, &arn, fast_retry()), url, arn))
}

// ---------------------------------------------------------------- Azure Key Vault stand-in

/// A fixed-token credential (the stand-in accepts exactly this token), counting calls.
#[derive(Debug, Default)]
pub struct FixedToken {
    pub calls: AtomicUsize,
    pub scopes: std::sync::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl TokenCredential for FixedToken {
    async fn get_token(
        &self,
        scopes: &[&str],
        _: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.scopes.lock().unwrap().extend(scopes.iter().map(|s| (*s).to_owned()));
        Ok(AccessToken {
            token: Secret::new(keyvault::TOKEN),
            expires_on: azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
        })
    }
}

pub const KV_KEY: &str = "kluis-root";

pub fn azure_provider_for(
    stand_in: &keyvault::StandIn,
    endpoint: Option<String>,
    retry: RetryConfig,
) -> AzureKeyVaultProvider {
    let cfg = AzureKeyVaultConfig {
        vault_host: keyvault::HOST.into(),
        key_name: KV_KEY.into(),
        endpoint_url: Some(endpoint.unwrap_or_else(|| stand_in.endpoint())),
    };
    let opts = ClientOptions {
        transport: Some(Transport::new(Arc::new(stand_in.http_client()))),
        ..Default::default()
    };
    AzureKeyVaultProvider::with_credential(cfg, Arc::new(FixedToken::default()), retry, opts).unwrap()
}

/// A stand-in with one key version (RSA, or AES for `hsm`) and a provider on it.
pub async fn azure_provider(hsm: bool) -> (AzureKeyVaultProvider, keyvault::StandIn) {
    let s = keyvault::StandIn::start().await;
    s.with(|st| st.add_version(KV_KEY, hsm));
    (azure_provider_for(&s, None, fast_retry()), s)
}

// ---------------------------------------------------------------- counting wrapper

/// Counts the calls reaching a provider (to show a warm cache makes none).
#[derive(Debug)]
pub struct Counting<P> {
    pub inner: P,
    pub unwrap_calls: AtomicUsize,
}

impl<P> Counting<P> {
    pub fn new(inner: P) -> Self {
        Self { inner, unwrap_calls: AtomicUsize::new(0) }
    }
    pub fn calls(&self) -> usize {
        self.unwrap_calls.load(Ordering::SeqCst)
    }
}

impl<P: RootKeyProvider> RootKeyProvider for Counting<P> {
    fn root_key_id(&self) -> &str {
        self.inner.root_key_id()
    }
    fn primary_version(&self) -> BoxFuture<'_, kluis_core::Result<KeyVersion>> {
        self.inner.primary_version()
    }
    fn wrap<'a>(
        &'a self,
        aad: &'a [u8],
        key: &'a KeyMaterial,
    ) -> BoxFuture<'a, kluis_core::Result<WrappedKey>> {
        self.inner.wrap(aad, key)
    }
    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, kluis_core::Result<Vec<kluis_core::Result<KeyMaterial>>>> {
        self.unwrap_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap_batch(items)
    }
}
