//! Unit tests of the unwrap cache's memory hygiene: where cached keys live, and when expired ones
//! leave. (A child module of `keys`, so it can look at the table itself.)

use std::future::Future;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use super::*;
use crate::keyring::LocalKeyring;

/// Runs a future that is ready at once (the local keyring never waits).
fn ready<T>(f: impl Future<Output = T>) -> T {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the local keyring answers at once"),
    }
}

/// `n` domain keys wrapped by one keyring: (aad, wrapped).
fn wrapped(ring: &LocalKeyring, n: u32) -> Vec<(Vec<u8>, WrappedKey)> {
    let (t, d) = (TenantId::new("acme").unwrap(), DomainName::medical());
    (1..=n)
        .map(|v| {
            let aad = domain_key_ad(&t, &d, KeyVersion::new(v).unwrap()).unwrap();
            let w = ready(ring.wrap(&aad, &KeyMaterial::generate().unwrap())).unwrap();
            (aad, w)
        })
        .collect()
}

fn cache(clock: Arc<ManualClock>) -> (CachingProvider<LocalKeyring>, Vec<(Vec<u8>, WrappedKey)>) {
    let ring = LocalKeyring::generate(0).unwrap();
    let keys = wrapped(&ring, 600);
    let config = CacheConfig { ttl: Duration::from_secs(60), max_entries: 10_000 };
    (CachingProvider::with_clock(ring, config, clock), keys)
}

fn unwrap_all(c: &CachingProvider<LocalKeyring>, keys: &[(Vec<u8>, WrappedKey)]) {
    let reqs: Vec<UnwrapRequest<'_>> =
        keys.iter().map(|(aad, w)| UnwrapRequest { aad, wrapped: w }).collect();
    for r in ready(c.unwrap_batch(&reqs)).unwrap() {
        r.unwrap();
    }
}

fn id(keys: &[(Vec<u8>, WrappedKey)], i: usize) -> [u8; 32] {
    let (aad, w) = &keys[i];
    CachingProvider::<LocalKeyring>::cache_key(&UnwrapRequest { aad, wrapped: w })
}

/// How many entries the table holds, expired or not.
fn held(c: &CachingProvider<LocalKeyring>) -> usize {
    c.entries.lock().unwrap().len()
}

#[test]
fn cached_key_bytes_stay_put_when_the_table_grows() {
    let (c, keys) = cache(Arc::new(ManualClock::new()));
    unwrap_all(&c, &keys[..1]);
    let first = id(&keys, 0);
    let at = c.entries.lock().unwrap()[&first].key.expose_secret().as_ptr();
    // 600 keys make the table grow several times; growth moves every entry.
    unwrap_all(&c, &keys[1..]);
    assert_eq!(held(&c), 600);
    let now = c.entries.lock().unwrap()[&first].key.expose_secret().as_ptr();
    assert_eq!(now, at, "table growth copied a cached key");
}

#[test]
fn an_expired_key_leaves_the_cache_on_every_access() {
    type Access = fn(&CachingProvider<LocalKeyring>, &[(Vec<u8>, WrappedKey)]);
    let accesses: [(&str, Access); 4] = [
        ("len", |c, _| assert_eq!(c.len(), 0)),
        ("is_empty", |c, _| assert!(c.is_empty())),
        ("debug", |c, _| assert!(format!("{c:?}").contains("entries: 0"))),
        // An unwrap of another key: only that one is held afterwards.
        ("unwrap_batch", |c, keys| unwrap_all(c, &keys[1..2])),
    ];
    for (name, access) in accesses {
        let clock = Arc::new(ManualClock::new());
        let (c, keys) = cache(clock.clone());
        unwrap_all(&c, &keys[..1]);
        assert_eq!(held(&c), 1);
        clock.advance(Duration::from_secs(61));
        access(&c, &keys);
        let table = c.entries.lock().unwrap();
        assert!(!table.contains_key(&id(&keys, 0)), "{name}: the expired key is still held");
    }
}

#[test]
fn sweep_expired_drops_exactly_the_expired_keys() {
    let clock = Arc::new(ManualClock::new());
    let (c, keys) = cache(clock.clone());
    unwrap_all(&c, &keys[..2]);
    clock.advance(Duration::from_secs(30));
    unwrap_all(&c, &keys[2..3]);
    assert_eq!(c.sweep_expired(), 0);
    clock.advance(Duration::from_secs(31));
    assert_eq!(c.sweep_expired(), 2);
    assert_eq!(held(&c), 1);
    assert!(c.entries.lock().unwrap().contains_key(&id(&keys, 2)));
    clock.advance(Duration::from_secs(30));
    assert_eq!(c.sweep_expired(), 1);
    assert_eq!(held(&c), 0);
}

#[test]
fn seal_fields_seals_as_one_by_one_with_a_salt_per_value() {
    let t = TenantId::new("acme").unwrap();
    let (g, m) = (DomainName::general(), DomainName::medical());
    let set = |d: &DomainName| {
        DomainKeySet::from_keys(
            t.clone(),
            d.clone(),
            vec![(KeyVersion::FIRST, KeyState::Active, KeyMaterial::generate().unwrap())],
            Suite::default(),
            Backend::preferred(),
        )
        .unwrap()
    };
    let (gs, ms) = (set(&g), set(&m));
    let (_, gk) = gs.new_subject_key("emp-1", KeyVersion::FIRST).unwrap();
    let (_, mk) = ms.new_subject_key("emp-1", KeyVersion::FIRST).unwrap();
    // 40 values over two subject keys: more than one draw (16 values each).
    let names: Vec<String> = (0..40).map(|i| format!("f{i}")).collect();
    let plain: Vec<Vec<u8>> = (0..40).map(|i| format!("value {i}").into_bytes()).collect();
    let ctx = |i: usize| Context {
        tenant: &t,
        domain: if i.is_multiple_of(3) { &m } else { &g },
        collection: "c",
        field: &names[i],
        record: "r1",
    };
    let values: Vec<FieldToSeal<'_>> = (0..40_usize)
        .map(|i| FieldToSeal {
            key: if i.is_multiple_of(3) { &mk } else { &gk },
            context: ctx(i),
            plaintext: &plain[i],
        })
        .collect();
    let sealed = seal_fields(&values).unwrap();
    assert_eq!(sealed.len(), 40);
    let mut salts = std::collections::HashSet::new();
    for (i, s) in sealed.iter().enumerate() {
        let key = if i.is_multiple_of(3) { &mk } else { &gk };
        assert_eq!(key.open(&ctx(i), s).unwrap().expose_secret(), plain[i].as_slice());
        assert!(salts.insert(s[8..32].to_vec()), "salt repeated at {i}");
        // Bound to its own context: another field's does not open it.
        assert!(key.open(&ctx((i + 3) % 40), s).is_err());
    }
    // A context of another domain than its key is refused, and nothing is sealed.
    let bad = [FieldToSeal { key: &gk, context: ctx(0), plaintext: b"x" }];
    assert!(seal_fields(&bad).is_err());
    assert!(seal_fields(&[]).unwrap().is_empty());
}
