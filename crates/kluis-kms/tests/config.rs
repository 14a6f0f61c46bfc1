//! Root key URLs: parsed into a provider configuration, typed errors for bad ones; opening a
//! `keyring://` URL.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assertion is the report"
)]

use kluis_core::{KeyMaterial, KeyringSecret, RootKeyProvider};
use kluis_kms::{AnyProvider, ConfigError, ConnectError, ProviderConfig, RetryConfig};

const ARN: &str = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";

#[test]
fn good_urls_parse() {
    let aws = ProviderConfig::parse(&format!("aws-kms://eu-west-1/{ARN}")).unwrap();
    let ProviderConfig::AwsKms(c) = &aws else { panic!("{aws:?}") };
    assert_eq!((c.region.as_str(), c.key_arn.as_str(), c.endpoint_url.as_deref()), ("eu-west-1", ARN, None));
    assert_eq!(aws.to_string(), format!("aws-kms://eu-west-1/{ARN}"));
    assert_eq!(c.root_key_id(), aws.to_string());

    let kv = ProviderConfig::parse("azure-kv://hr-prod-kv/kluis-root").unwrap();
    let ProviderConfig::AzureKeyVault(c) = &kv else { panic!("{kv:?}") };
    assert_eq!(c.vault_host, "hr-prod-kv.vault.azure.net");
    assert_eq!(c.endpoint(), "https://hr-prod-kv.vault.azure.net");
    assert!(!c.is_managed_hsm());
    assert_eq!(kv.to_string(), "azure-kv://hr-prod-kv.vault.azure.net/kluis-root");
    // The canonical form parses to the same thing.
    assert_eq!(ProviderConfig::parse(&kv.to_string()).unwrap(), kv);

    let hsm = ProviderConfig::parse("azure-kv://hr-hsm.managedhsm.azure.net/root").unwrap();
    let ProviderConfig::AzureKeyVault(c) = &hsm else { panic!("{hsm:?}") };
    assert!(c.is_managed_hsm());

    assert_eq!(
        ProviderConfig::parse("keyring:///etc/kluis/keyring").unwrap(),
        ProviderConfig::Keyring { path: "/etc/kluis/keyring".into() }
    );
    assert_eq!(
        "KEYRING://k".parse::<ProviderConfig>().unwrap(),
        ProviderConfig::Keyring { path: "k".into() }
    );
}

#[test]
fn bad_urls_are_typed_errors() {
    use ConfigError as E;
    type Check = fn(&ConfigError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("", |e| matches!(e, E::Empty)),
        ("   ", |e| matches!(e, E::Empty)),
        ("no-scheme", |e| matches!(e, E::UnknownScheme(_))),
        ("gcp-kms://x/y", |e| matches!(e, E::UnknownScheme(_))),
        ("keyring://", |e| matches!(e, E::Missing { part: "keyring path", .. })),
        ("aws-kms://eu-west-1", |e| matches!(e, E::Missing { part: "key arn", .. })),
        ("aws-kms://eu-west-1/", |e| matches!(e, E::Missing { part: "key arn", .. })),
        ("aws-kms:///arn", |e| matches!(e, E::Missing { part: "region", .. })),
        ("aws-kms://EU_WEST/x", |e| matches!(e, E::Invalid { part: "region", .. })),
        ("aws-kms://eu-west-1/1234abcd-12ab", |e| matches!(e, E::Invalid { part: "key arn", .. })),
        (
            "aws-kms://eu-west-1/arn:aws:kms:eu-central-1:123456789012:key/1234abcd",
            |e| matches!(e, E::Invalid { part: "key arn", reason, .. } if reason.contains("region")),
        ),
        (
            "aws-kms://eu-west-1/arn:aws:kms:eu-west-1:123456789012:alias/kluis",
            |e| matches!(e, E::Invalid { part: "key arn", reason, .. } if reason.contains("alias")),
        ),
        ("aws-kms://eu-west-1/arn:aws:kms:eu-west-1:12345:key/abc", |e| {
            matches!(e, E::Invalid { part: "key arn", .. })
        }),
        ("aws-kms://eu-west-1/arn:aws:s3:eu-west-1:123456789012:key/abc", |e| matches!(e, E::Invalid { .. })),
        ("azure-kv://vault", |e| matches!(e, E::Missing { part: "key name", .. })),
        ("azure-kv:///key", |e| matches!(e, E::Missing { part: "vault", .. })),
        ("azure-kv://ab/key", |e| matches!(e, E::Invalid { part: "vault", .. })),
        ("azure-kv://bad_vault!/key", |e| matches!(e, E::Invalid { part: "vault", .. })),
        ("azure-kv://vault1/key/0123456789abcdef", |e| matches!(e, E::Invalid { part: "key name", .. })),
        ("azure-kv://vault1/key?version=1", |e| matches!(e, E::Invalid { part: "url", .. })),
        ("azure-kv://vault1/ke y", |e| matches!(e, E::Invalid { part: "url", .. })),
    ];
    for (url, ok) in cases {
        let e = ProviderConfig::parse(url).unwrap_err();
        assert!(ok(&e), "{url:?}: {e:?}");
        let msg = e.to_string();
        assert!(msg.chars().next().is_some_and(|c| c.is_lowercase()), "lower-case message: {msg}");
    }
}

#[tokio::test]
async fn keyring_url_opens_the_keyring_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyring");
    let raw = KeyMaterial::generate().unwrap();
    let secret = || KeyringSecret::RawKey(KeyMaterial::from_slice(raw.expose_secret()).unwrap());
    kluis_keyring::KeyringFile::create(&path, secret()).unwrap();
    let url = format!("keyring://{}", path.display());
    let p = AnyProvider::connect(&url, Some(secret()), RetryConfig::default()).await.unwrap();
    assert_eq!(p.root_key_id(), "keyring");
    assert_eq!(p.primary_version().await.unwrap(), kluis_core::KeyVersion::FIRST);
    assert!(matches!(p, AnyProvider::Keyring(_)));
    // No secret: a clear error, not a panic.
    let e = AnyProvider::connect(&url, None, RetryConfig::default()).await.unwrap_err();
    assert!(matches!(e, ConnectError::KeyringSecretMissing(_)), "{e:?}");
    // Wrong key file: the keyring's own typed error.
    let wrong = KeyringSecret::RawKey(KeyMaterial::generate().unwrap());
    let e = AnyProvider::connect(&url, Some(wrong), RetryConfig::default()).await.unwrap_err();
    assert!(matches!(e, ConnectError::Keyring(_)), "{e:?}");
    // Missing file.
    let e =
        AnyProvider::connect("keyring:///nonexistent/kluis/keyring", Some(secret()), RetryConfig::default())
            .await
            .unwrap_err();
    assert!(matches!(e, ConnectError::Keyring(_)), "{e:?}");
    let e = AnyProvider::connect("s3://bucket", None, RetryConfig::default()).await.unwrap_err();
    assert!(matches!(e, ConnectError::Config(ConfigError::UnknownScheme(_))), "{e:?}");
}

#[tokio::test]
async fn cloud_urls_open_with_the_platform_credential_chain_and_no_network_call() {
    // Construction reads no secret from the URL and makes no network call (credentials are
    // fetched on first use from Entra ID / the AWS chain).
    let p =
        AnyProvider::connect("azure-kv://hr-prod-kv/kluis-root", None, RetryConfig::default()).await.unwrap();
    assert_eq!(p.root_key_id(), "azure-kv://hr-prod-kv.vault.azure.net/kluis-root");
    assert!(matches!(p, AnyProvider::AzureKeyVault(_)));
    let url = format!("aws-kms://eu-west-1/{ARN}");
    let p = AnyProvider::connect(&url, None, RetryConfig::default()).await.unwrap();
    assert_eq!(p.root_key_id(), url);
    assert!(format!("{p:?}").contains("AwsKmsProvider"));
}
