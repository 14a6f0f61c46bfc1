//! AWS KMS root key provider.
//!
//! Wrap = KMS `Encrypt` of the 32-byte domain key under the configured key ARN, with the
//! encryption context `{"kluis-ad": HEX(associated data)}`; unwrap = KMS `Decrypt` with the same
//! context and the key ARN pinned (so a ciphertext of another key is refused, not silently
//! decrypted). KMS authenticates the context (it is the AEAD's associated data): a wrapped key
//! moved to another tenant, domain or version fails to decrypt. The associated data names tenant,
//! domain and version in clear; they are identifiers, not secrets, and appear in CloudTrail, which
//! is what an auditor wants.
//!
//! AWS KMS rotates a key's backing material itself behind the same ARN and every ciphertext names
//! its backing version, so the root key version Kluis records is always 1; a new root is a new
//! ARN (`kluis keys migrate-root`).

use std::fmt;

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use kluis_core::keys::{BoxFuture, UnwrapRequest};
use kluis_core::{Error, KeyMaterial, KeyVersion, ProviderErrorKind, Result, RootKeyProvider, WrappedKey};
use zeroize::Zeroizing;

use crate::RetryConfig;
use crate::config::AwsKmsConfig;
use crate::util::{hex, provider_error, provider_error_from, unwrap_in_chunks};

/// Encryption context key under which the associated data is bound.
pub const CONTEXT_KEY: &str = "kluis-ad";
/// The root key version recorded for AWS KMS wraps (see the module documentation).
pub const AWS_ROOT_VERSION: KeyVersion = KeyVersion::FIRST;
/// KMS limits an encryption context; Kluis's associated data is far below this.
const MAX_AD: usize = 2048;

/// Root keys in AWS KMS.
pub struct AwsKmsProvider {
    client: aws_sdk_kms::Client,
    config: AwsKmsConfig,
    root_key_id: String,
    concurrency: usize,
}

impl fmt::Debug for AwsKmsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsProvider").field("root_key_id", &self.root_key_id).finish()
    }
}

impl AwsKmsProvider {
    /// Connects with the usual AWS credential chain (environment, profile files, web identity,
    /// ECS and EC2 instance metadata). No secret is read from Kluis's configuration.
    pub async fn connect(config: AwsKmsConfig, retry: RetryConfig) -> Self {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .load()
            .await;
        Self::with_sdk_config(config, &sdk, retry)
    }

    /// Builds the provider from an SDK configuration (its credentials, region and HTTP client),
    /// applying Kluis's retry and timeout settings and the endpoint override, if any.
    pub fn with_sdk_config(config: AwsKmsConfig, sdk: &aws_config::SdkConfig, retry: RetryConfig) -> Self {
        let retry_config = aws_sdk_kms::config::retry::RetryConfig::standard()
            .with_max_attempts(retry.max_retries.saturating_add(1))
            .with_initial_backoff(retry.initial_delay)
            .with_max_backoff(retry.max_delay);
        let timeouts = aws_sdk_kms::config::timeout::TimeoutConfig::builder()
            .connect_timeout(retry.connect_timeout)
            .operation_attempt_timeout(retry.attempt_timeout)
            .operation_timeout(retry.max_total)
            .build();
        let mut b = aws_sdk_kms::config::Builder::from(sdk)
            .region(aws_sdk_kms::config::Region::new(config.region.clone()))
            .retry_config(retry_config)
            .timeout_config(timeouts);
        if let Some(ep) = &config.endpoint_url {
            b = b.endpoint_url(ep.clone());
        }
        let client = aws_sdk_kms::Client::from_conf(b.build());
        let root_key_id = config.root_key_id();
        Self { client, config, root_key_id, concurrency: retry.concurrency.max(1) }
    }

    /// The configuration.
    pub fn config(&self) -> &AwsKmsConfig {
        &self.config
    }

    fn context(aad: &[u8]) -> Result<(String, String)> {
        if aad.len() > MAX_AD {
            return Err(Error::Invalid {
                what: "associated data",
                reason: format!("longer than {MAX_AD} bytes"),
            });
        }
        Ok((CONTEXT_KEY.to_owned(), hex(aad)))
    }

    async fn encrypt(&self, aad: &[u8], key: &KeyMaterial) -> Result<Vec<u8>> {
        let (k, v) = Self::context(aad)?;
        let out = self
            .client
            .encrypt()
            .key_id(&self.config.key_arn)
            .plaintext(Blob::new(key.expose_secret().to_vec()))
            .encryption_context(k, v)
            .send()
            .await
            .map_err(|e| self.map_err(e))?;
        let ct =
            out.ciphertext_blob.ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?;
        Ok(ct.into_inner())
    }

    async fn decrypt(&self, aad: &[u8], wrapped: &WrappedKey) -> Result<KeyMaterial> {
        if wrapped.root_key_id != self.root_key_id {
            return Err(Error::UnknownKey { key: format!("root key {:?}", wrapped.root_key_id) });
        }
        if wrapped.root_version != AWS_ROOT_VERSION {
            return Err(Error::UnknownKey {
                key: format!("root key {} v{}", wrapped.root_key_id, wrapped.root_version),
            });
        }
        let (k, v) = Self::context(aad)?;
        let out = self
            .client
            .decrypt()
            .key_id(&self.config.key_arn)
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .encryption_context(k, v)
            .send()
            .await
            .map_err(|e| self.map_err(e))?;
        let pt = Zeroizing::new(
            out.plaintext
                .ok_or_else(|| provider_error(&self.root_key_id, ProviderErrorKind::Other))?
                .into_inner(),
        );
        KeyMaterial::from_slice(&pt)
            .map_err(|_| provider_error(&self.root_key_id, ProviderErrorKind::UnwrapRefused))
    }

    fn map_err<E: ProvideErrorMetadata>(&self, e: SdkError<E, HttpResponse>) -> Error {
        let kind = aws_error_kind(&e);
        tracing::warn!(provider = %self.root_key_id, kind = %kind, "aws kms request failed");
        provider_error_from(&self.root_key_id, kind, DisplayOnly(aws_detail(&e)))
    }
}

/// The kind of an AWS SDK error.
fn aws_error_kind<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> ProviderErrorKind {
    match e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => ProviderErrorKind::Unavailable,
        SdkError::ServiceError(se) => match se.err().code() {
            Some(
                "ThrottlingException" | "Throttling" | "TooManyRequestsException" | "LimitExceededException",
            ) => ProviderErrorKind::Throttled,
            Some(
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "IncompleteSignature"
                | "ExpiredTokenException"
                | "InvalidClientTokenId"
                | "MissingAuthenticationToken",
            ) => ProviderErrorKind::Unauthorized,
            Some(
                "DisabledException"
                | "NotFoundException"
                | "KMSInvalidStateException"
                | "KeyUnavailableException"
                | "InvalidKeyUsageException",
            ) => ProviderErrorKind::KeyUnavailable,
            Some("InvalidCiphertextException" | "IncorrectKeyException") => ProviderErrorKind::UnwrapRefused,
            Some(
                "DependencyTimeoutException"
                | "KMSInternalException"
                | "InternalFailure"
                | "ServiceUnavailable",
            ) => ProviderErrorKind::Unavailable,
            // An error code this build does not know: decide by the HTTP status.
            _ => match se.raw().status().as_u16() {
                401 | 403 => ProviderErrorKind::Unauthorized,
                429 => ProviderErrorKind::Throttled,
                500..=599 => ProviderErrorKind::Unavailable,
                _ => ProviderErrorKind::Other,
            },
        },
        _ => ProviderErrorKind::Other,
    }
}

fn aws_detail<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> String {
    match e {
        SdkError::ServiceError(se) => format!(
            "{}: {}",
            se.err().code().unwrap_or("unknown error"),
            se.err().message().unwrap_or("no message")
        ),
        other => format!("{}", DisplaySdk(other)),
    }
}

struct DisplaySdk<'a, E, R>(&'a SdkError<E, R>);

impl<E, R> fmt::Display for DisplaySdk<'_, E, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SdkError::DispatchFailure(_) => f.write_str("the request could not be sent (network, dns, tls)"),
            SdkError::TimeoutError(_) => f.write_str("the request timed out"),
            SdkError::ConstructionFailure(_) => f.write_str("the request could not be built"),
            SdkError::ResponseError(_) => f.write_str("the response could not be read"),
            _ => f.write_str("request failed"),
        }
    }
}

/// An error source that holds only text (the SDK's error types are not all `Sync`-friendly and
/// their `Debug` output is long).
#[derive(Debug)]
pub(crate) struct DisplayOnly(pub(crate) String);

impl fmt::Display for DisplayOnly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DisplayOnly {}

impl RootKeyProvider for AwsKmsProvider {
    fn root_key_id(&self) -> &str {
        &self.root_key_id
    }

    fn primary_version(&self) -> BoxFuture<'_, Result<KeyVersion>> {
        Box::pin(async { Ok(AWS_ROOT_VERSION) })
    }

    fn wrap<'a>(&'a self, aad: &'a [u8], key: &'a KeyMaterial) -> BoxFuture<'a, Result<WrappedKey>> {
        Box::pin(async move {
            let ciphertext = self.encrypt(aad, key).await?;
            let wrapped = WrappedKey {
                root_key_id: self.root_key_id.clone(),
                root_version: AWS_ROOT_VERSION,
                ciphertext,
            };
            // INVARIANT: nothing is handed back for storing unless it unwraps again now (a key
            // that allows Encrypt but not Decrypt would otherwise lose data).
            let back = self.decrypt(aad, &wrapped).await?;
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
        Box::pin(unwrap_in_chunks(items, self.concurrency, move |i| self.decrypt(i.aad, i.wrapped)))
    }
}
