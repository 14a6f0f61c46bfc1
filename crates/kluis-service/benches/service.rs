//! Authorization decision latency (target: under 1 µs per check) and Argon2id hashing time.
//!
//! `cargo bench -p kluis-service --bench service`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, missing_docs)]

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kluis_core::{DomainName, TenantId};
use kluis_service::auth::{Password, PasswordContext, PasswordHasher, PasswordPolicy};
use kluis_service::authz::{
    Action, ActionSet, Authorizer, GrantScope, MemoryRegistry, Policy, Principal, Request, RoleName, Target,
    UserId,
};
use kluis_service::clock::SystemClock;

const CUSTOM: &str = r#"
domains = ["payroll", "pension"]
[[role]]
name = "payroll_clerk"
includes = ["case_manager"]
[[role.grant]]
actions = ["read", "write", "search"]
domains = ["payroll", "pension"]
"#;

fn authz(c: &mut Criterion) {
    let policy = Policy::from_toml(CUSTOM).expect("policy");
    let authz = Authorizer::new(policy, Arc::new(MemoryRegistry::new()), Arc::new(SystemClock));
    let acme = TenantId::new("acme").expect("tenant");
    let globex = TenantId::new("globex").expect("tenant");
    let role = |s: &str| RoleName::new(s).expect("role");
    let user = |s: &str| UserId::new(s).expect("user");
    let doctor = Principal::new(user("dr.jansen"), Some(acme.clone()), [role("company_doctor")]);
    let hr =
        Principal::new(user("p.devries"), Some(acme.clone()), [role("hr_manager"), role("case_manager")]);
    let clerk =
        Principal::new(user("k.bakker"), Some(acme.clone()), [role("payroll_clerk"), role("employee")])
            .with_subject("emp-9");
    let admin = Principal::new(user("admin"), Some(acme.clone()), [role("tenant_admin")]);
    let scope = GrantScope {
        domains: BTreeSet::from([DomainName::general()]),
        actions: ActionSet::of(&[Action::Read]),
    };
    let grant = authz
        .grant_support(&admin, &acme, user("support-anna"), scope, Duration::from_secs(86_400))
        .expect("grant");
    let support = Principal::support(user("support-anna"), grant.id);
    let medical = [DomainName::medical()];
    let general = [DomainName::general()];
    let both = [DomainName::general(), DomainName::medical()];
    let payroll = [DomainName::new("payroll").expect("domain")];
    let rec = Target::record("absence", "r-12345", Some("emp-42"));

    let mut g = c.benchmark_group("authz");
    g.measurement_time(Duration::from_millis(1500)).sample_size(50);
    let req = Request::new(&acme, Action::Read, &medical, rec.clone());
    g.bench_function("allow_doctor_read_medical", |b| {
        b.iter(|| black_box(authz.check(black_box(&doctor), black_box(&req))))
    });
    let req2 = Request::new(&acme, Action::Read, &both, rec.clone());
    g.bench_function("allow_doctor_read_general_and_medical", |b| {
        b.iter(|| black_box(authz.check(black_box(&doctor), black_box(&req2))))
    });
    let req3 = Request::new(&acme, Action::Write, &payroll, rec.clone());
    g.bench_function("allow_custom_role_via_includes", |b| {
        b.iter(|| black_box(authz.check(black_box(&clerk), black_box(&req3))))
    });
    g.bench_function("deny_hr_read_medical", |b| {
        b.iter(|| black_box(authz.check(black_box(&hr), black_box(&req))))
    });
    let req4 = Request::new(&globex, Action::Read, &general, rec.clone());
    g.bench_function("deny_cross_tenant", |b| {
        b.iter(|| black_box(authz.check(black_box(&hr), black_box(&req4))))
    });
    let req5 = Request::new(&acme, Action::Read, &general, rec.clone());
    g.bench_function("allow_support_grant", |b| {
        b.iter(|| black_box(authz.check(black_box(&support), black_box(&req5))))
    });
    g.finish();
}

fn passwords(c: &mut Criterion) {
    let mut g = c.benchmark_group("argon2id");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    let h = PasswordHasher::owasp();
    let pw = Password::new("vlinder kompas regenjas 42");
    let stored = h.hash(&pw).expect("hash");
    g.bench_function("hash_m19456_t2_p1", |b| b.iter(|| black_box(h.hash(black_box(&pw)))));
    g.bench_function("verify_m19456_t2_p1", |b| {
        b.iter(|| black_box(h.verify(black_box(&pw), black_box(&stored))))
    });
    g.finish();

    let mut g = c.benchmark_group("password_policy");
    g.measurement_time(Duration::from_millis(1500)).sample_size(50);
    let ctx = PasswordContext { user_name: "p.devries@acme.nl", tenant: Some("acme"), extra: &[] };
    let nist = PasswordPolicy::nist();
    let _ = nist.check(&pw, &ctx); // load the list outside the measurement
    g.bench_function("nist_check_32_chars", |b| {
        b.iter(|| black_box(nist.check(black_box(&pw), black_box(&ctx))))
    });
    g.finish();
}

criterion_group!(benches, authz, passwords);
criterion_main!(benches);
