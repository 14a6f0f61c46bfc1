//! Azure Key Vault (and Managed HSM) root key provider.
//!
//! Wrap = Key Vault `wrapKey`, unwrap = `unwrapKey`, under the configured key: RSA-OAEP-256 for
//! vault keys (`RSA`, `RSA-HSM`), AES key wrap (`A256KW`) for Managed HSM keys (`oct-HSM`).
//! Neither algorithm takes associated data, so Kluis binds it itself: the wrapped plaintext is
//! `domain key (32) || SHA-256(label, associated data) (32)` and unwrap compares the second half
//! with the expected hash in constant time. A wrapped key moved to another tenant, domain or
//! version unwraps at Key Vault but is refused here; the key material is never returned.
//!
//! Versions: the Key Vault key version (a 32-hex-digit id) is the root key version. Kluis records
//! it as a number, the version's position (from 1) in the key's versions ordered by creation
//! time (Key Vault never deletes a single version, so positions never change), and keeps the id
//! itself in the wrapped bytes: `0x01 | alg (1 = RSA-OAEP-256, 2 = A256KW) | u8 id length | id |
//! Key Vault ciphertext`. Unwrap always names the exact version that wrapped.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, StatusCode};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, KeyClientGetKeyOptions, KeyClientWrapKeyOptions, KeyOperationParameters, KeyType,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions, ResourceId};
use futures_util::TryStreamExt;
use kluis_core::keys::{BoxFuture, UnwrapRequest};
use kluis_core::{
    Error, KEY_LEN, KeyMaterial, ProviderErrorKind, Result, RootKeyProvider, WrappedKey, ct_eq,
};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::RetryConfig;
use crate::aws::DisplayOnly;
use crate::config::AzureKeyVaultConfig;
use crate::util::{provider_error, provider_error_from, sha256_labelled, unwrap_in_chunks};

const ENVELOPE_VERSION: u8 = 1;
const ALG_RSA_OAEP_256: u8 = 1;
const ALG_A256KW: u8 = 2;
const BIND_LABEL: &[u8] = b"kluis/azure-kv-wrap/v1";
const BOUND_LEN: usize = KEY_LEN + 32;

/// Root keys in Azure Key Vault or Managed HSM.
pub struct AzureKeyVaultProvider {
    client: KeyClient,
    config: AzureKeyVaultConfig,
    root_key_id: String,
    concurrency: usize,
    /// Longest wait for one operation, retries included (the SDK honours any `Retry-After`
    /// without a cap; this bounds it).
    deadline: std::time::Duration,
    /// Key Vault version id → position (root key version), learnt from the versions list.
    versions: Mutex<HashMap<String, u32>>,
}

impl fmt::Debug for AzureKeyVaultProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVaultProvider").field("root_key_id", &self.root_key_id).finish()
    }
}

/// The current (primary) key version as Key Vault reports it.
#[derive(Debug, Clone)]
struct Current {
    id: String,
    alg: u8,
}

impl AzureKeyVaultProvider {
    /// Connects with the usual Entra ID chain: workload identity (when `AZURE_FEDERATED_TOKEN_FILE`
    /// is set, as on AKS), managed identity, then the developer tools (Azure CLI, Azure Developer
    /// CLI). No secret is read from Kluis's configuration.
    pub fn connect(config: AzureKeyVaultConfig, retry: RetryConfig) -> Result<Self> {
        let credential = EntraChain::new().map_err(|e| azure_error(&config.root_key_id(), e))?;
        Self::with_credential(config, Arc::new(credential), retry, ClientOptions::default())
    }

    /// Builds the provider with a chosen credential and client options (transport: tests trust a
    /// test certificate this way). Kluis's retry settings replace `client_options.retry`.
    pub fn with_credential(
        config: AzureKeyVaultConfig,
        credential: Arc<dyn TokenCredential>,
        retry: RetryConfig,
        mut client_options: ClientOptions,
    ) -> Result<Self> {
        let root_key_id = config.root_key_id();
        let exp = ExponentialRetryOptions {
            initial_delay: to_time(retry.initial_delay),
            max_delay: to_time(retry.max_delay),
            max_retries: retry.max_retries,
            max_total_elapsed: to_time(retry.max_total),
        };
        client_options.retry = RetryOptions::exponential(exp);
        let options = KeyClientOptions { client_options, ..Default::default() };
        let client = KeyClient::new(&config.endpoint(), credential, Some(options))
            .map_err(|e| azure_error(&root_key_id, e))?;
        Ok(Self {
            client,
            config,
            root_key_id,
            concurrency: retry.concurrency.max(1),
            deadline: retry.max_total,
            versions: Mutex::new(HashMap::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AzureKeyVaultConfig {
        &self.config
    }

    /// Runs one operation within the deadline.
    async fn bounded<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline, f).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!(provider = %self.root_key_id, "azure key vault gave no answer within the deadline");
                Err(provider_error_from(
                    &self.root_key_id,
                    ProviderErrorKind::Unavailable,
                    DisplayOnly(format!(
                        "no answer within {} s (unreachable, or throttled for longer)",
                        self.deadline.as_secs()
                    )),
                ))
            }
        }
    }

    fn err(&self, e: azure_core::Error) -> Error {
        azure_error(&self.root_key_id, e)
    }

    /// The current version: id, algorithm; refuses a disabled current version.
    async fn current(&self) -> Result<Current> {
        let key = self
            .client
            .get_key(&self.config.key_name, None::<KeyClientGetKeyOptions<'_>>)
            .await
            .map_err(|e| self.err(e))?
            .into_model()
            .map_err(|e| self.err(e))?;
        let enabled = key.attributes.as_ref().and_then(|a| a.enabled).unwrap_or(false);
        let jwk = key.key.ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?;
        let kid = jwk.kid.ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?;
        let id =
            version_of(&kid).ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?;
        if !enabled {
            return Err(provider_error(&self.root_key_id, ProviderErrorKind::KeyUnavailable));
        }
        let alg = match jwk.kty {
            Some(KeyType::Rsa | KeyType::RsaHsm) => ALG_RSA_OAEP_256,
            Some(KeyType::Oct | KeyType::OctHsm) => ALG_A256KW,
            _ => {
                return Err(provider_error_from(
                    &self.root_key_id,
                    ProviderErrorKind::KeyUnavailable,
                    DisplayOnly("the key is neither an rsa nor an aes key".to_owned()),
                ));
            }
        };
        Ok(Current { id, alg })
    }

    /// The position (root key version) of a Key Vault version id.
    async fn position(&self, id: &str) -> Result<u32> {
        if let Some(p) = self.versions.lock().await.get(id) {
            return Ok(*p);
        }
        let mut pager =
            self.client.list_key_properties_versions(&self.config.key_name, None).map_err(|e| self.err(e))?;
        let mut all = Vec::new();
        while let Some(p) = pager.try_next().await.map_err(|e| self.err(e))? {
            let Some(v) = p.kid.as_deref().and_then(version_of) else { continue };
            let created =
                p.attributes.as_ref().and_then(|a| a.created).map(|t| t.unix_timestamp()).unwrap_or(0);
            all.push((created, v));
        }
        all.sort();
        let mut map = self.versions.lock().await;
        map.clear();
        for (i, (_, v)) in all.into_iter().enumerate() {
            let pos = u32::try_from(i + 1).map_err(|_| Error::LimitReached("key vault versions"))?;
            map.insert(v, pos);
        }
        map.get(id)
            .copied()
            .ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::KeyUnavailable))
    }

    fn params(alg: u8, value: Vec<u8>) -> Result<KeyOperationParameters> {
        let algorithm = match alg {
            ALG_RSA_OAEP_256 => EncryptionAlgorithm::RsaOaep256,
            ALG_A256KW => EncryptionAlgorithm::A256Kw,
            _ => return Err(Error::Malformed { what: "azure wrapped key", reason: "unknown algorithm" }),
        };
        Ok(KeyOperationParameters { algorithm: Some(algorithm), value: Some(value), ..Default::default() })
    }

    async fn wrap_inner(&self, aad: &[u8], key: &KeyMaterial) -> Result<WrappedKey> {
        let cur = self.current().await?;
        let position = self.position(&cur.id).await?;
        let mut bound = Zeroizing::new(Vec::with_capacity(BOUND_LEN));
        bound.extend_from_slice(key.expose_secret());
        bound.extend_from_slice(&sha256_labelled(BIND_LABEL, aad));
        let params = Self::params(cur.alg, bound.to_vec())?;
        let opts = KeyClientWrapKeyOptions { key_version: Some(cur.id.clone()), ..Default::default() };
        let res = self
            .client
            .wrap_key(&self.config.key_name, params.try_into().map_err(|e| self.err(e))?, Some(opts))
            .await
            .map_err(|e| self.err(e))?
            .into_model()
            .map_err(|e| self.err(e))?;
        if res.kid.as_deref().and_then(version_of).as_deref() != Some(cur.id.as_str()) {
            return Err(provider_error_from(
                &self.root_key_id,
                ProviderErrorKind::Other,
                DisplayOnly("key vault wrapped under another version than asked".to_owned()),
            ));
        }
        let ct = res.result.ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?;
        let id_len = u8::try_from(cur.id.len()).map_err(|_| Error::LimitReached("key vault version id"))?;
        let mut ciphertext = Vec::with_capacity(3 + cur.id.len() + ct.len());
        ciphertext.push(ENVELOPE_VERSION);
        ciphertext.push(cur.alg);
        ciphertext.push(id_len);
        ciphertext.extend_from_slice(cur.id.as_bytes());
        ciphertext.extend_from_slice(&ct);
        Ok(WrappedKey { root_key_id: self.root_key_id.clone(), root_version: position, ciphertext })
    }

    async fn unwrap_inner(&self, aad: &[u8], w: &WrappedKey) -> Result<KeyMaterial> {
        if w.root_key_id != self.root_key_id {
            return Err(Error::UnknownKey { key: format!("root key {:?}", w.root_key_id) });
        }
        let (alg, id, ct) = parse_envelope(&w.ciphertext)?;
        let params = Self::params(alg, ct.to_vec())?;
        let res = self
            .client
            .unwrap_key(&self.config.key_name, id, params.try_into().map_err(|e| self.err(e))?, None)
            .await
            .map_err(|e| self.err(e))?
            .into_model()
            .map_err(|e| self.err(e))?;
        let bound = Zeroizing::new(
            res.result.ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?,
        );
        let refused = || provider_error(&self.root_key_id, ProviderErrorKind::UnwrapRefused);
        if bound.len() != BOUND_LEN {
            return Err(refused());
        }
        let (k, h) = bound.split_at(KEY_LEN);
        if !ct_eq(h, &sha256_labelled(BIND_LABEL, aad)) {
            return Err(refused());
        }
        KeyMaterial::from_slice(k)
    }
}

fn parse_envelope(b: &[u8]) -> Result<(u8, &str, &[u8])> {
    let bad = |reason| Error::Malformed { what: "azure wrapped key", reason };
    let (&[v, alg, n], rest) = b.split_first_chunk::<3>().ok_or(bad("too short"))?;
    if v != ENVELOPE_VERSION {
        return Err(Error::UnsupportedVersion { what: "azure wrapped key", version: u16::from(v) });
    }
    if rest.len() <= usize::from(n) {
        return Err(bad("too short"));
    }
    let (id, ct) = rest.split_at(usize::from(n));
    let id = std::str::from_utf8(id).map_err(|_| bad("version id is not text"))?;
    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad("bad version id"));
    }
    Ok((alg, id, ct))
}

/// The version id at the end of a key id URL (`https://VAULT/keys/NAME/VERSION`).
fn version_of(kid: &str) -> Option<String> {
    let rid: ResourceId = kid.parse().ok()?;
    rid.version.filter(|v| !v.is_empty())
}

fn to_time(d: std::time::Duration) -> azure_core::time::Duration {
    azure_core::time::Duration::try_from(d).unwrap_or(azure_core::time::Duration::seconds(60))
}

/// Maps an Azure SDK error to a provider error kind.
pub(crate) fn azure_error(provider: &str, e: azure_core::Error) -> Error {
    use azure_core::error::ErrorKind;
    let kind = match e.kind() {
        ErrorKind::HttpResponse { status, error_code, raw_response } => {
            let body_says = |needle: &[u8]| {
                raw_response.as_ref().is_some_and(|r| {
                    let b: &[u8] = r.body();
                    b.windows(needle.len()).any(|w| w == needle)
                })
            };
            // A disabled version, or one whose permitted operations exclude this one, is a key
            // problem, not a credential problem.
            let disabled = matches!(error_code.as_deref(), Some("KeyDisabled" | "KeyOperationForbidden"))
                || body_says(b"KeyDisabled")
                || body_says(b"KeyOperationForbidden");
            match *status {
                StatusCode::Unauthorized => ProviderErrorKind::Unauthorized,
                StatusCode::Forbidden if disabled => ProviderErrorKind::KeyUnavailable,
                StatusCode::Forbidden => ProviderErrorKind::Unauthorized,
                StatusCode::NotFound => ProviderErrorKind::KeyUnavailable,
                StatusCode::TooManyRequests => ProviderErrorKind::Throttled,
                StatusCode::BadRequest => ProviderErrorKind::UnwrapRefused,
                s if u16::from(s) >= 500 => ProviderErrorKind::Unavailable,
                _ => ProviderErrorKind::Other,
            }
        }
        ErrorKind::Io | ErrorKind::Connection => ProviderErrorKind::Unavailable,
        ErrorKind::Credential => ProviderErrorKind::Unauthorized,
        _ => ProviderErrorKind::Other,
    };
    tracing::warn!(provider, kind = %kind, "azure key vault request failed");
    provider_error_from(provider, kind, e)
}

impl RootKeyProvider for AzureKeyVaultProvider {
    fn root_key_id(&self) -> &str {
        &self.root_key_id
    }

    fn primary_version(&self) -> BoxFuture<'_, Result<u32>> {
        Box::pin(async move {
            self.bounded(async {
                let cur = self.current().await?;
                self.position(&cur.id).await
            })
            .await
        })
    }

    fn wrap<'a>(&'a self, aad: &'a [u8], key: &'a KeyMaterial) -> BoxFuture<'a, Result<WrappedKey>> {
        Box::pin(async move {
            let wrapped = self.bounded(self.wrap_inner(aad, key)).await?;
            // INVARIANT: nothing is handed back for storing unless it unwraps again now (a key
            // version that allows wrapKey but not unwrapKey would otherwise lose data).
            let back = self.bounded(self.unwrap_inner(aad, &wrapped)).await?;
            if back != *key {
                return Err(provider_error(&self.root_key_id, ProviderErrorKind::UnwrapRefused));
            }
            Ok(wrapped)
        })
    }

    fn unwrap_batch<'a>(
        &'a self,
        items: &'a [UnwrapRequest<'a>],
    ) -> BoxFuture<'a, Result<Vec<Result<KeyMaterial>>>> {
        Box::pin(unwrap_in_chunks(items, self.concurrency, move |i| {
            self.bounded(self.unwrap_inner(i.aad, i.wrapped))
        }))
    }
}

/// The Entra ID credential chain: the first source that yields a token is kept.
#[derive(Debug)]
struct EntraChain {
    sources: Vec<Arc<dyn TokenCredential>>,
    chosen: std::sync::Mutex<Option<usize>>,
}

impl EntraChain {
    fn new() -> azure_core::Result<Self> {
        let mut sources: Vec<Arc<dyn TokenCredential>> = Vec::new();
        if std::env::var_os("AZURE_FEDERATED_TOKEN_FILE").is_some() {
            sources.push(azure_identity::WorkloadIdentityCredential::new(None)?);
        }
        sources.push(azure_identity::ManagedIdentityCredential::new(None)?);
        sources.push(azure_identity::DeveloperToolsCredential::new(None)?);
        Ok(Self { sources, chosen: std::sync::Mutex::new(None) })
    }
}

#[async_trait::async_trait]
impl TokenCredential for EntraChain {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let chosen = self.chosen.lock().ok().and_then(|c| *c);
        if let Some(src) = chosen.and_then(|i| self.sources.get(i)) {
            return src.get_token(scopes, options).await;
        }
        let mut messages = Vec::new();
        for (i, src) in self.sources.iter().enumerate() {
            match src.get_token(scopes, options.clone()).await {
                Ok(t) => {
                    if let Ok(mut c) = self.chosen.lock() {
                        *c = Some(i);
                    }
                    return Ok(t);
                }
                Err(e) => messages.push(e.to_string()),
            }
        }
        Err(azure_core::Error::with_message(
            azure_core::error::ErrorKind::Credential,
            format!("no entra id credential available: {}", messages.join("; ")),
        ))
    }
}
