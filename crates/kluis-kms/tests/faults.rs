//! Fault tests: KMS unreachable, throttled, credentials revoked (401/403), key version disabled,
//! a version that may wrap but not unwrap: typed errors, nothing returned for storing under a key
//! that cannot be unwrapped later, no key served after its cache lifetime, errors never cached.
//! Plus what the Azure SDK sends (the bearer challenge) and root key version rotation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assertion is the report"
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::http::{Handler, Response, serve};
use common::*;
use kluis_core::keys::{
    CacheConfig, CachingProvider, ManualClock, domain_key_ad, new_domain_key, unwrap_one,
};
use kluis_core::{DomainKeySet, ProviderErrorKind as K, RootKeyProvider};
use serde_json::json;

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ------------------------------------------------------------------------------ Azure

#[tokio::test]
async fn azure_sdk_answers_the_bearer_challenge_and_sends_no_body_before_it() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, key) = new_domain_key(&p, &t, &d, kv(1)).await.unwrap();
    assert_eq!(
        unwrap_one(&p, &domain_key_ad(&t, &d, kv(1)).unwrap(), rec.wrapped.as_ref().unwrap()).await.unwrap(),
        key
    );
    s.with(|st| {
        assert!(st.violations.is_empty(), "{:?}", st.violations);
        let first = &st.log[0];
        assert!(!first.authorized && first.status == 401, "first request is the unauthenticated challenge");
        assert!(st.log[1..].iter().all(|e| e.authorized), "every later request carries the token");
        assert!(st.count("POST", "/wrapkey") == 1 && st.count("POST", "/unwrapkey") >= 2);
    });
}

#[tokio::test]
async fn azure_throttled_request_waits_for_retry_after_then_succeeds() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, key) = new_domain_key(&p, &t, &d, kv(1)).await.unwrap();
    s.with(|st| {
        st.throttle = 1;
        st.retry_after = "1".into();
    });
    let aad = domain_key_ad(&t, &d, kv(1)).unwrap();
    assert_eq!(unwrap_one(&p, &aad, rec.wrapped.as_ref().unwrap()).await.unwrap(), key);
    s.with(|st| {
        let i = st.log.iter().position(|e| e.status == 429).unwrap();
        let waited = st.log[i + 1].at - st.log[i].at;
        assert!(waited >= Duration::from_millis(950), "Retry-After: 1 honoured, waited {waited:?}");
        assert_eq!(st.log[i + 1].status, 200);
    });
}

#[tokio::test]
async fn azure_throttled_past_the_retries_is_a_typed_error() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, _) = new_domain_key(&p, &t, &d, kv(1)).await.unwrap();
    s.with(|st| {
        st.throttle = 1000;
        st.retry_after = "0".into();
    });
    let aad = domain_key_ad(&t, &d, kv(1)).unwrap();
    let e = unwrap_one(&p, &aad, rec.wrapped.as_ref().unwrap()).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::Throttled), "{e:?}");
    let attempts = s.with(|st| st.log.iter().filter(|e| e.status == 429).count());
    assert_eq!(attempts, 3, "first attempt and fast_retry()'s two retries");
    // Wraps too: nothing is handed back for storing.
    assert_eq!(kind_of(&new_domain_key(&p, &t, &d, kv(2)).await.unwrap_err()), Some(K::Throttled));
}

#[tokio::test]
async fn azure_long_retry_after_is_bounded_by_the_deadline() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, _) = new_domain_key(&p, &t, &d, kv(1)).await.unwrap();
    let short = kluis_kms::RetryConfig { max_total: Duration::from_millis(1500), ..fast_retry() };
    let p = azure_provider_for(&s, None, short);
    s.with(|st| {
        st.throttle = 1000;
        st.retry_after = "3600".into();
    });
    let started = std::time::Instant::now();
    let e = unwrap_one(&p, &domain_key_ad(&t, &d, kv(1)).unwrap(), rec.wrapped.as_ref().unwrap())
        .await
        .unwrap_err();
    assert_eq!(kind_of(&e), Some(K::Unavailable), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "an hour's Retry-After must not block");
}

#[tokio::test]
async fn azure_server_errors_are_retried() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, key) = new_domain_key(&p, &t, &d, kv(1)).await.unwrap();
    s.with(|st| {
        st.throttle = 2;
        st.throttle_status = 503;
    });
    let aad = domain_key_ad(&t, &d, kv(1)).unwrap();
    assert_eq!(unwrap_one(&p, &aad, rec.wrapped.as_ref().unwrap()).await.unwrap(), key);
    s.with(|st| {
        st.throttle = 1000;
        st.throttle_status = 500;
    });
    let e = unwrap_one(&p, &aad, rec.wrapped.as_ref().unwrap()).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::Unavailable), "{e:?}");
}

#[tokio::test]
async fn azure_credentials_revoked_are_typed_never_cached_and_no_key_outlives_the_cache() {
    for status in [401u16, 403] {
        let (p, s) = azure_provider(false).await;
        let clock = Arc::new(ManualClock::new());
        let cache = CachingProvider::with_clock(
            p,
            CacheConfig { ttl: Duration::from_secs(60), max_entries: 10 },
            clock.clone(),
        );
        let (t, d) = (tenant("acme"), domain("medical"));
        let (rec, _) = new_domain_key(&cache, &t, &d, kv(1)).await.unwrap();
        let recs = vec![rec];
        DomainKeySet::unwrap(&cache, &recs).await.unwrap();
        s.with(|st| st.revoked = Some(status));
        // Within its lifetime the cached key is still served (no KMS call)...
        DomainKeySet::unwrap(&cache, &recs).await.unwrap();
        // ...a new domain key cannot be made (nothing to store)...
        let e = new_domain_key(&cache, &t, &d, kv(2)).await.unwrap_err();
        assert_eq!(kind_of(&e), Some(K::Unauthorized), "{status}: {e:?}");
        // ...and after the lifetime the key is gone: a typed error, not a stale key.
        clock.advance(Duration::from_secs(61));
        let e = DomainKeySet::unwrap(&cache, &recs).await.unwrap_err();
        assert_eq!(kind_of(&e), Some(K::Unauthorized), "{status}: {e:?}");
        assert!(e.to_string().contains("credentials refused"), "{e}");
        assert!(!format!("{e:?}").contains(common::keyvault::TOKEN), "no bearer token in errors");
        assert!(cache.is_empty());
        // The failure is not cached: when access is restored, it works at once.
        s.with(|st| st.revoked = None);
        DomainKeySet::unwrap(&cache, &recs).await.unwrap();
        let unauthorized_attempts = s.with(|st| st.log.iter().filter(|e| e.status == status).count());
        assert!(unauthorized_attempts >= 2, "{status}: refusals are not retried for ever");
    }
}

#[tokio::test]
async fn azure_disabled_key_version_refuses_wraps_and_unwraps_typed() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, _) = new_domain_key(&p, &t, &d, kv(1)).await.unwrap();
    let v1 = s.with(|st| st.latest_id(KV_KEY));
    s.with(|st| st.version_mut(KV_KEY, &v1).enabled = false);
    let wraps_before = s.with(|st| st.count("POST", "/wrapkey"));
    let e = new_domain_key(&p, &t, &d, kv(2)).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::KeyUnavailable), "{e:?}");
    assert_eq!(s.with(|st| st.count("POST", "/wrapkey")), wraps_before, "no wrap under a disabled version");
    let e = DomainKeySet::unwrap(&p, std::slice::from_ref(&rec)).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::KeyUnavailable), "{e:?}");
    s.with(|st| st.version_mut(KV_KEY, &v1).enabled = true);
    DomainKeySet::unwrap(&p, &[rec]).await.unwrap();
}

#[tokio::test]
async fn azure_version_that_cannot_unwrap_gets_nothing_written_under_it() {
    let (p, s) = azure_provider(false).await;
    let v1 = s.with(|st| st.latest_id(KV_KEY));
    s.with(|st| st.version_mut(KV_KEY, &v1).unwrap_allowed = false);
    let (t, d) = (tenant("acme"), domain("medical"));
    let e = new_domain_key(&p, &t, &d, kv(1)).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::KeyUnavailable), "{e:?}");
    // Key Vault did wrap; the provider's check refused to hand that wrap back for storing.
    assert_eq!(s.with(|st| st.count("POST", "/wrapkey")), 1);
}

#[tokio::test]
async fn azure_unreachable_is_a_typed_error() {
    let s = common::keyvault::StandIn::start().await;
    let p = azure_provider_for(
        &s,
        Some(format!("https://{}:{}", common::keyvault::HOST, closed_port())),
        fast_retry(),
    );
    let (t, d) = (tenant("acme"), domain("medical"));
    let e = new_domain_key(&p, &t, &d, kv(1)).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::Unavailable), "{e:?}");
}

#[tokio::test]
async fn azure_key_vault_version_is_the_root_version_and_rotation_rewraps() {
    let (p, s) = azure_provider(false).await;
    let (t, d) = (tenant("acme"), domain("medical"));
    let mut recs = vec![new_domain_key(&p, &t, &d, kv(1)).await.unwrap().0];
    for _ in 2..=3 {
        let set = DomainKeySet::unwrap(&p, &recs).await.unwrap();
        kluis_core::keys::rotate_domain_key(&p, &set, &mut recs).await.unwrap();
    }
    let old = DomainKeySet::unwrap(&p, &recs).await.unwrap();
    assert_eq!(p.primary_version().await.unwrap(), kv(1));
    assert!(recs.iter().all(|r| r.wrapped.as_ref().unwrap().root_version == kv(1)));
    // Rotate the key in Key Vault: a new version becomes current.
    s.with(|st| st.add_version(KV_KEY, false));
    assert_eq!(p.primary_version().await.unwrap(), kv(2));
    // Old wraps name their version and still unwrap.
    DomainKeySet::unwrap(&p, &recs).await.unwrap();
    let (r4, _) = new_domain_key(&p, &t, &d, kv(4)).await.unwrap();
    assert_eq!(r4.wrapped.as_ref().unwrap().root_version, kv(2));
    // Rewrap everything onto version 2; a second run does nothing.
    let mut stored = recs.clone();
    let report = kluis_kms::migrate_root(&p, &p, &recs, |r| {
        let slot = stored.iter_mut().find(|s| s.version == r.version).unwrap();
        *slot = r.clone();
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!((report.rewrapped, report.already_done), (3, 0));
    let again = kluis_kms::migrate_root(&p, &p, &stored, |_| panic!("nothing to do")).await.unwrap();
    assert_eq!((again.rewrapped, again.already_done), (0, 3));
    assert!(stored.iter().all(|r| r.wrapped.as_ref().unwrap().root_version == kv(2)));
    // Same keys: data sealed before opens after.
    let ctx = kluis_core::Context { tenant: &t, domain: &d, collection: "c", field: "f", record: "r" };
    let sealed = old.seal(&ctx, b"x").unwrap();
    let new = DomainKeySet::unwrap(&p, &stored).await.unwrap();
    assert_eq!(new.open(&ctx, &sealed).unwrap().expose_secret(), b"x");
}

// ------------------------------------------------------------------------------ AWS (moto)

#[tokio::test]
async fn aws_wrong_encryption_context_is_refused() {
    let Some((p, url, arn)) = aws_provider().await else { return };
    let (t, d) = (tenant("acme"), domain("medical"));
    let (rec, _) = new_domain_key(&p, &t, &d, kv(1)).await.unwrap();
    let w = rec.wrapped.unwrap();
    // Through the provider: another tenant's context.
    let e = unwrap_one(&p, &domain_key_ad(&tenant("globex"), &d, kv(1)).unwrap(), &w).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::UnwrapRefused), "{e:?}");
    // Straight at KMS: no context, or a different one, is refused by KMS itself.
    let raw = moto_client(&url);
    let blob = aws_sdk_kms::primitives::Blob::new(w.ciphertext.clone());
    let none = raw.decrypt().key_id(&arn).ciphertext_blob(blob.clone()).send().await;
    assert!(none.is_err(), "decrypt without the encryption context must fail");
    let other = raw
        .decrypt()
        .key_id(&arn)
        .ciphertext_blob(blob)
        .encryption_context("kluis-ad", "00")
        .send()
        .await
        .unwrap_err();
    assert_eq!(aws_sdk_kms::error::ProvideErrorMetadata::code(&other), Some("InvalidCiphertextException"));
}

// A disabled AWS key is tested through the fault server below (`DisabledException` →
// `KeyUnavailable`, one attempt, nothing returned to store). moto 5.1.22 cannot show it: it
// records `DisableKey` and `ScheduleKeyDeletion` (DescribeKey says `Disabled` / `PendingDeletion`)
// but still answers Encrypt and Decrypt under such a key (checked with boto3 against moto_server).

#[tokio::test]
async fn aws_unreachable_is_a_typed_error() {
    let arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    let p = aws_provider_at(&format!("http://127.0.0.1:{}", closed_port()), arn, fast_retry());
    let e = new_domain_key(&p, &tenant("acme"), &domain("medical"), kv(1)).await.unwrap_err();
    assert_eq!(kind_of(&e), Some(K::Unavailable), "{e:?}");
}

/// KMS error answers moto cannot give (it neither throttles nor checks credentials), from a plain
/// HTTP server speaking the AWS JSON 1.1 error format.
async fn aws_fault_server(
    status: u16,
    error_type: &'static str,
) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    let handler: Handler = Arc::new(move |req| {
        assert_eq!(req.headers.get("x-amz-target").map(String::as_str), Some("TrentService.Encrypt"));
        assert!(req.headers.get("authorization").is_some_and(|a| a.starts_with("AWS4-HMAC-SHA256")));
        h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut r = Response::json(status, json!({"__type": error_type, "message": "injected"}));
        r.headers = vec![
            ("content-type".into(), "application/x-amz-json-1.1".into()),
            ("x-amzn-requestid".into(), "00000000-0000-0000-0000-000000000000".into()),
        ];
        r
    });
    let addr = serve(handler, None).await;
    (format!("http://{addr}"), hits)
}

#[tokio::test]
async fn aws_throttling_credentials_refused_and_server_errors_are_typed() {
    let arn = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000";
    for (status, ty, kind, attempts) in [
        (400, "ThrottlingException", K::Throttled, 3),
        (400, "UnrecognizedClientException", K::Unauthorized, 1),
        (400, "AccessDeniedException", K::Unauthorized, 1),
        (403, "ExpiredTokenException", K::Unauthorized, 1),
        (400, "DisabledException", K::KeyUnavailable, 1),
        (500, "KMSInternalException", K::Unavailable, 3),
        (403, "SomeFutureAuthException", K::Unauthorized, 1),
        (503, "SomeFutureOutageException", K::Unavailable, 3),
    ] {
        let (url, hits) = aws_fault_server(status, ty).await;
        let p = aws_provider_at(&url, arn, fast_retry());
        let e = new_domain_key(&p, &tenant("acme"), &domain("medical"), kv(1)).await.unwrap_err();
        assert_eq!(kind_of(&e), Some(kind), "{ty}: {e:?}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), attempts, "{ty}: attempts");
    }
}
