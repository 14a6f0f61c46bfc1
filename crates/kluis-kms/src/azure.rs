//! Azure Key Vault (and Managed HSM) root key provider.
//!
//! Wrap = Key Vault `wrapKey`, unwrap = `unwrapKey`, under the configured key: RSA-OAEP-256 for
//! vault keys (`RSA`, `RSA-HSM`), AES key wrap (`A256KW`) for Managed HSM keys (`oct-HSM`).
//! Neither algorithm takes associated data, so Kluis binds it itself: the wrapped plaintext is
//! `domain key (32) || SHA-256(label, associated data) (32)` and unwrap compares the second half
//! with the expected hash in constant time. A wrapped key moved to another tenant, domain or
//! version unwraps at Key Vault but is refused here; the key material is never returned.
//!
//! RSA-OAEP encrypts under the key's **public** half, so anyone who can read it (keys/get) could
//! build a wrapped key for a key of their choosing. RSA wraps are therefore **signed**: after
//! `wrapKey`, Kluis has Key Vault sign (`sign`, PS256, same key version) the SHA-256 of
//! `"kluis/azure-kv-wrap/v2" || u8 id length || version id || SHA-256(label, aad) || ciphertext`,
//! and unwrap verifies that signature locally with the version's public key (fetched once per
//! version and kept) before it asks Key Vault to unwrap. A row built from the public key alone
//! has no valid signature and is refused ([`ProviderErrorKind::UnwrapRefused`]; the store reports
//! it as a key integrity error naming the row). AES key wrap needs no signature: only the HSM can
//! wrap under its key.
//!
//! Versions: the Key Vault key version (a 32-hex-digit id) is the root key version. Kluis records
//! it as a number, the version's position (from 1) in the key's versions ordered by creation
//! time (Key Vault never deletes a single version, so positions never change), and keeps the id
//! itself in the wrapped bytes (docs/KMS.md):
//! - RSA, envelope 2: `0x02 | 0x01 | u8 id length | id | u16 ciphertext length | ciphertext |
//!   signature` (the signature runs to the end);
//! - AES key wrap, envelope 1: `0x01 | 0x02 | u8 id length | id | Key Vault ciphertext`.
//!
//! Envelope 1 with the RSA algorithm (written by Kluis 0.1, unsigned) is refused by unwrap; it
//! opens only through [`RootKeyProvider::unwrap_legacy`] in `kluis keys adopt`, which rewraps it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::http::{ClientOptions, ExponentialRetryOptions, RetryOptions, StatusCode};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, KeyClientGetKeyOptions, KeyClientSignOptions, KeyClientWrapKeyOptions,
    KeyOperationParameters, KeyType, SignParameters, SignatureAlgorithm,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions, ResourceId};
use futures_util::TryStreamExt;
use kluis_core::keys::{BoxFuture, UnwrapRequest};
use kluis_core::{
    Error, KEY_LEN, KeyMaterial, KeyVersion, ProviderErrorKind, Result, RootKeyProvider, WrappedKey, ct_eq,
};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::RetryConfig;
use crate::aws::DisplayOnly;
use crate::config::AzureKeyVaultConfig;
use crate::util::{provider_error, provider_error_from, sha256_labelled, unwrap_in_chunks};

/// Envelope 1: unsigned (A256KW; RSA only as the legacy form).
const ENVELOPE_V1: u8 = 1;
/// Envelope 2: RSA-OAEP-256 with a Key Vault signature.
const ENVELOPE_V2: u8 = 2;
const ALG_RSA_OAEP_256: u8 = 1;
const ALG_A256KW: u8 = 2;
const BIND_LABEL: &[u8] = b"kluis/azure-kv-wrap/v1";
const SIGN_LABEL: &[u8] = b"kluis/azure-kv-wrap/v2";
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
    versions: Mutex<HashMap<String, KeyVersion>>,
    /// Key Vault version id → RSA public key (modulus, exponent), for verifying wrap signatures.
    public_keys: Mutex<HashMap<String, Arc<RsaPublic>>>,
}

impl fmt::Debug for AzureKeyVaultProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVaultProvider").field("root_key_id", &self.root_key_id).finish()
    }
}

/// An RSA public key as Key Vault's JWK gives it: big-endian modulus and exponent.
type RsaPublic = (Vec<u8>, Vec<u8>);

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
            public_keys: Mutex::new(HashMap::new()),
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
    async fn position(&self, id: &str) -> Result<KeyVersion> {
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
            let pos = u32::try_from(i + 1)
                .ok()
                .and_then(|p| KeyVersion::new(p).ok())
                .ok_or(Error::LimitReached("key vault versions"))?;
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
        let ciphertext = if cur.alg == ALG_RSA_OAEP_256 {
            let ct_len = u16::try_from(ct.len()).map_err(|_| Error::LimitReached("key vault ciphertext"))?;
            let sig = self.sign(&cur.id, &signed_digest(&cur.id, aad, &ct)).await?;
            let mut out = Vec::with_capacity(5 + cur.id.len() + ct.len() + sig.len());
            out.extend_from_slice(&[ENVELOPE_V2, cur.alg, id_len]);
            out.extend_from_slice(cur.id.as_bytes());
            out.extend_from_slice(&ct_len.to_be_bytes());
            out.extend_from_slice(&ct);
            out.extend_from_slice(&sig);
            out
        } else {
            let mut out = Vec::with_capacity(3 + cur.id.len() + ct.len());
            out.extend_from_slice(&[ENVELOPE_V1, cur.alg, id_len]);
            out.extend_from_slice(cur.id.as_bytes());
            out.extend_from_slice(&ct);
            out
        };
        Ok(WrappedKey { root_key_id: self.root_key_id.clone(), root_version: position, ciphertext })
    }

    /// Key Vault signs `digest` (PS256) with version `id` of the key.
    async fn sign(&self, id: &str, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let params =
            SignParameters { algorithm: Some(SignatureAlgorithm::Ps256), value: Some(digest.to_vec()) };
        let opts = KeyClientSignOptions { key_version: Some(id.to_owned()), ..Default::default() };
        let res = self
            .client
            .sign(&self.config.key_name, params.try_into().map_err(|e| self.err(e))?, Some(opts))
            .await
            .map_err(|e| self.err(e))?
            .into_model()
            .map_err(|e| self.err(e))?;
        res.result.ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))
    }

    /// The RSA public key of version `id` (fetched once, then kept: a version's key never changes).
    async fn public_key(&self, id: &str) -> Result<Arc<RsaPublic>> {
        if let Some(k) = self.public_keys.lock().await.get(id) {
            return Ok(k.clone());
        }
        let opts = KeyClientGetKeyOptions { key_version: Some(id.to_owned()), ..Default::default() };
        let key = self
            .client
            .get_key(&self.config.key_name, Some(opts))
            .await
            .map_err(|e| self.err(e))?
            .into_model()
            .map_err(|e| self.err(e))?;
        let jwk = key.key.ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?;
        if jwk.kid.as_deref().and_then(version_of).as_deref() != Some(id) {
            return Err(provider_error_from(
                &self.root_key_id,
                ProviderErrorKind::Other,
                DisplayOnly("key vault answered with another key version than asked".to_owned()),
            ));
        }
        let (Some(n), Some(e)) = (jwk.n, jwk.e) else {
            return Err(provider_error_from(
                &self.root_key_id,
                ProviderErrorKind::UnwrapRefused,
                DisplayOnly("the key version that signed the wrap is not an rsa key".to_owned()),
            ));
        };
        let k = Arc::new((n, e));
        self.public_keys.lock().await.insert(id.to_owned(), k.clone());
        Ok(k)
    }

    /// Verifies an envelope-2 signature with the version's public key.
    async fn verify_signature(&self, id: &str, aad: &[u8], ct: &[u8], sig: &[u8]) -> Result<()> {
        let key = self.public_key(id).await?;
        let msg = signed_message(id, aad, ct);
        let public = ring::signature::RsaPublicKeyComponents { n: &key.0, e: &key.1 };
        public.verify(&ring::signature::RSA_PSS_2048_8192_SHA256, &msg, sig).map_err(|_| {
            tracing::warn!(provider = %self.root_key_id, "azure wrapped key: signature does not verify (forged or altered)");
            provider_error_from(
                &self.root_key_id,
                ProviderErrorKind::UnwrapRefused,
                DisplayOnly("the wrapped key's signature does not verify: the row was forged or altered".to_owned()),
            )
        })
    }

    async fn unwrap_inner(&self, aad: &[u8], w: &WrappedKey, allow_legacy: bool) -> Result<KeyMaterial> {
        if w.root_key_id != self.root_key_id {
            return Err(Error::UnknownKey { key: format!("root key {:?}", w.root_key_id) });
        }
        let env = parse_envelope(&w.ciphertext)?;
        match (env.alg, env.signature) {
            (ALG_RSA_OAEP_256, Some(sig)) => self.verify_signature(env.id, aad, env.ct, sig).await?,
            (ALG_RSA_OAEP_256, None) if allow_legacy => {}
            (ALG_RSA_OAEP_256, None) => {
                return Err(provider_error_from(
                    &self.root_key_id,
                    ProviderErrorKind::UnwrapRefused,
                    DisplayOnly(
                        "unsigned rsa wrap (envelope 1, forgeable with the public key): refused; `kluis keys adopt` rewraps rows an operator has checked".to_owned(),
                    ),
                ));
            }
            _ => {}
        }
        let (alg, id, ct) = (env.alg, env.id, env.ct);
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

/// A parsed wrapped-key envelope.
struct Envelope<'a> {
    alg: u8,
    id: &'a str,
    ct: &'a [u8],
    /// Envelope 2 only.
    signature: Option<&'a [u8]>,
}

fn parse_envelope(b: &[u8]) -> Result<Envelope<'_>> {
    let bad = |reason| Error::Malformed { what: "azure wrapped key", reason };
    let (&[v, alg, n], rest) = b.split_first_chunk::<3>().ok_or(bad("too short"))?;
    if v != ENVELOPE_V1 && v != ENVELOPE_V2 {
        return Err(Error::UnsupportedVersion { what: "azure wrapped key", version: u16::from(v) });
    }
    if alg != ALG_RSA_OAEP_256 && alg != ALG_A256KW {
        return Err(bad("unknown algorithm"));
    }
    if rest.len() <= usize::from(n) {
        return Err(bad("too short"));
    }
    let (id, rest) = rest.split_at(usize::from(n));
    let id = std::str::from_utf8(id).map_err(|_| bad("version id is not text"))?;
    if id.is_empty() || !id.bytes().all(|c| c.is_ascii_alphanumeric()) {
        return Err(bad("bad version id"));
    }
    if v == ENVELOPE_V1 {
        return Ok(Envelope { alg, id, ct: rest, signature: None });
    }
    if alg != ALG_RSA_OAEP_256 {
        return Err(bad("envelope 2 is for rsa keys only"));
    }
    let (len, rest) = rest.split_first_chunk::<2>().ok_or(bad("too short"))?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len == 0 || rest.len() <= len {
        return Err(bad("too short"));
    }
    let (ct, signature) = rest.split_at(len);
    Ok(Envelope { alg, id, ct, signature: Some(signature) })
}

/// What Key Vault signs for an RSA wrap: binds the version id, the associated data and the
/// ciphertext.
fn signed_message(id: &str, aad: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_LABEL.len() + 1 + id.len() + 32 + ct.len());
    m.extend_from_slice(SIGN_LABEL);
    // The id is at most 255 bytes (parse_envelope and wrap_inner check it).
    m.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(id.as_bytes());
    m.extend_from_slice(&sha256_labelled(BIND_LABEL, aad));
    m.extend_from_slice(ct);
    m
}

/// SHA-256 of [`signed_message`]: the digest Key Vault's PS256 signs.
fn signed_digest(id: &str, aad: &[u8], ct: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(signed_message(id, aad, ct)).into()
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

    fn primary_version(&self) -> BoxFuture<'_, Result<KeyVersion>> {
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
            let back = self.bounded(self.unwrap_inner(aad, &wrapped, false)).await?;
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
            self.bounded(self.unwrap_inner(i.aad, i.wrapped, false))
        }))
    }

    fn is_legacy(&self, wrapped: &WrappedKey) -> bool {
        wrapped.root_key_id == self.root_key_id
            && parse_envelope(&wrapped.ciphertext)
                .is_ok_and(|e| e.alg == ALG_RSA_OAEP_256 && e.signature.is_none())
    }

    fn unwrap_legacy<'a>(
        &'a self,
        aad: &'a [u8],
        wrapped: &'a WrappedKey,
    ) -> BoxFuture<'a, Result<KeyMaterial>> {
        Box::pin(async move {
            tracing::warn!(provider = %self.root_key_id, "azure key vault: unwrapping an unsigned legacy rsa wrap for adoption");
            self.bounded(self.unwrap_inner(aad, wrapped, true)).await
        })
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
