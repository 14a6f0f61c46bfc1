//! Authorization: the built-in role matrix, tenant isolation, guessed ids, proofs, break-glass,
//! support grants and the access review.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kluis_core::{Context, DomainName, TenantId};
use kluis_service::authz::{
    AccessRegistry, Action, ActionSet, Authorizer, Basis, BreakGlassEvent, Decision, DenyReason, GrantId,
    GrantScope, GrantStatus, Holding, MemoryRegistry, Policy, Principal, Request, RoleAssignment, RoleName,
    SupportGrant, Target, UserId,
};
use kluis_service::clock::{Clock, ManualClock};

const DAY: Duration = Duration::from_secs(86_400);

fn t(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}
fn u(s: &str) -> UserId {
    UserId::new(s).unwrap()
}
fn r(s: &str) -> RoleName {
    RoleName::new(s).unwrap()
}
fn general() -> DomainName {
    DomainName::general()
}
fn medical() -> DomainName {
    DomainName::medical()
}

struct Fixture {
    authz: Authorizer,
    clock: Arc<ManualClock>,
    registry: Arc<MemoryRegistry>,
}

fn fixture() -> Fixture {
    let clock = Arc::new(ManualClock::at_unix(1_800_000_000));
    let registry = Arc::new(MemoryRegistry::new());
    let authz = Authorizer::new(Policy::builtin(), registry.clone(), clock.clone());
    Fixture { authz, clock, registry }
}

fn user_with(role: &str, tenant: &str) -> Principal {
    Principal::new(u(&format!("user-{role}")), Some(t(tenant)), [r(role)]).with_subject(format!("emp-{role}"))
}

/// The expected answer of the built-in policy for a request on someone else's record.
fn expected(role: &str, domain: &str, action: Action) -> bool {
    use Action::*;
    let data_all = [Read, Write, Delete, Search, Export, Shred];
    match role {
        "hr_manager" => domain == "general" && data_all.contains(&action),
        "employee" => false, // only own records
        "company_doctor" => (domain == "general" || domain == "medical") && data_all.contains(&action),
        "case_manager" => domain == "general" && [Read, Write, Search].contains(&action),
        "key_admin" => action == ManageKeys,
        "auditor" => action == ReadAudit,
        "tenant_admin" => action == ManageAccess,
        other => panic!("no expectation for {other}"),
    }
}

/// Every built-in role x domain x action, on another employee's record: allowed exactly as the
/// table says; every denial has the reason naming the action and domain.
#[test]
fn builtin_role_domain_action_matrix() {
    let f = fixture();
    let acme = t("acme");
    let mut allowed = 0;
    let mut denied = 0;
    for role in Policy::builtin_role_names() {
        let p = user_with(role, "acme");
        for domain in [general(), medical()] {
            for action in Action::ALL {
                let domains = [domain.clone()];
                let target = Target::record("absence", "rec-1", Some("emp-someone-else"));
                let d = f.authz.check(&p, &Request::new(&acme, action, &domains, target));
                let want = expected(role, domain.as_str(), action);
                assert_eq!(d.is_allowed(), want, "{role} {action} {domain}: {d:?}");
                if want {
                    allowed += 1;
                    assert!(!d.is_break_glass());
                    let proof = d.into_proof().unwrap();
                    assert_eq!(proof.action(), action);
                    assert_eq!(proof.tenant(), &acme);
                    assert!(proof.covers(&acme, &domain, "absence", "rec-1"));
                } else {
                    denied += 1;
                    let reason = d.deny_reason().unwrap().clone();
                    let want_reason = if role == "employee"
                        && domain == general()
                        && matches!(action, Action::Read | Action::Export)
                    {
                        DenyReason::OwnRecordsOnly { action, domain: domain.clone() }
                    } else {
                        DenyReason::NotPermitted { action, domain: domain.clone() }
                    };
                    assert_eq!(reason, want_reason, "{role} {action} {domain}");
                    assert!(!reason.to_string().is_empty());
                }
            }
        }
    }
    assert_eq!(allowed + denied, 7 * 2 * 9);
    assert!(allowed > 20 && denied > 60, "allowed {allowed} denied {denied}");
}

/// The employee role covers the employee's own records in general, and nothing medical.
#[test]
fn employee_reads_and_exports_only_own_general_records() {
    let f = fixture();
    let acme = t("acme");
    let p = Principal::new(u("jan"), Some(acme.clone()), [r("employee")]).with_subject("emp-jan");
    let g = [general()];
    let own = Target::record("contract", "c-1", Some("emp-jan"));
    for a in [Action::Read, Action::Export] {
        assert!(f.authz.check(&p, &Request::new(&acme, a, &g, own.clone())).is_allowed(), "{a}");
    }
    for a in [Action::Write, Action::Delete, Action::Search, Action::Shred] {
        assert!(!f.authz.check(&p, &Request::new(&acme, a, &g, own.clone())).is_allowed(), "{a}");
    }
    let m = [medical()];
    let d = f.authz.check(&p, &Request::new(&acme, Action::Read, &m, own.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::NotPermitted { action: Action::Read, domain: medical() }));
    // A guessed id of a colleague's record: the store reports the colleague as subject.
    let guessed = Target::record("contract", "c-2", Some("emp-piet"));
    let d = f.authz.check(&p, &Request::new(&acme, Action::Read, &g, guessed));
    assert_eq!(
        d.deny_reason(),
        Some(&DenyReason::OwnRecordsOnly { action: Action::Read, domain: general() })
    );
    // A record with no subject is nobody's own record.
    let d =
        f.authz.check(&p, &Request::new(&acme, Action::Read, &g, Target::record("contract", "c-3", None)));
    assert!(!d.is_allowed());
    // Without a linked subject, own-records roles give nothing.
    let unlinked = Principal::new(u("jan"), Some(acme.clone()), [r("employee")]);
    assert!(!f.authz.check(&unlinked, &Request::new(&acme, Action::Read, &g, own)).is_allowed());
}

/// Every role, action and domain, against data of another tenant: denied as cross-tenant, also
/// with a record id copied from that tenant, and for a principal with every role at once.
#[test]
fn cross_tenant_requests_are_denied_for_every_role_action_domain() {
    let f = fixture();
    let globex = t("globex");
    let mut everything = Policy::builtin_role_names().map(r).to_vec();
    everything.reverse();
    let all_roles = Principal::new(u("root-ish"), Some(t("acme")), everything).with_subject("emp-x");
    let mut principals: Vec<Principal> =
        Policy::builtin_role_names().iter().map(|r| user_with(r, "acme")).collect();
    principals.push(all_roles);
    for p in &principals {
        for domains in [vec![general()], vec![medical()], vec![general(), medical()], vec![]] {
            for action in Action::ALL {
                // The record id "emp-x/c-9" was copied from globex: the store says it is globex's.
                for target in [
                    Target::record("contract", "c-9", Some("emp-x")),
                    Target::collection("contract", None),
                    Target::Tenant,
                ] {
                    let d = f.authz.check(p, &Request::new(&globex, action, &domains, target.clone()));
                    assert_eq!(d.deny_reason(), Some(&DenyReason::CrossTenant), "{p:?} {action}");
                    let d = f.authz.check(
                        p,
                        &Request::new(&globex, action, &domains, target)
                            .with_break_glass("patient collapsed at work, need allergies"),
                    );
                    assert_eq!(d.deny_reason(), Some(&DenyReason::CrossTenant));
                }
            }
        }
    }
}

#[test]
fn principal_without_tenant_is_denied() {
    let f = fixture();
    let acme = t("acme");
    let p = Principal::new(u("drifter"), None, [r("company_doctor")]);
    let d = f.authz.check(&p, &Request::new(&acme, Action::Read, &[general()], Target::Tenant));
    assert_eq!(d.deny_reason(), Some(&DenyReason::NoTenant));
}

/// A proof is bound to its tenant, domains, collection and record: it does not cover a record id
/// guessed or copied into another tenant, another record, another domain or another collection.
#[test]
fn proof_is_bound_to_tenant_domain_and_record() {
    let f = fixture();
    let acme = t("acme");
    let globex = t("globex");
    let doctor = user_with("company_doctor", "acme");
    let m = [medical()];
    let proof = f
        .authz
        .check(
            &doctor,
            &Request::new(&acme, Action::Read, &m, Target::record("absence", "r-1", Some("emp-1"))),
        )
        .into_proof()
        .unwrap();
    assert!(proof.covers(&acme, &medical(), "absence", "r-1"));
    assert!(!proof.covers(&globex, &medical(), "absence", "r-1"), "copied id in another tenant");
    assert!(!proof.covers(&acme, &medical(), "absence", "r-2"), "another record");
    assert!(!proof.covers(&acme, &general(), "absence", "r-1"), "another domain");
    assert!(!proof.covers(&acme, &medical(), "contract", "r-1"), "another collection");
    let ctx = Context {
        tenant: &acme,
        domain: &medical(),
        collection: "absence",
        field: "diagnosis",
        record: "r-1",
    };
    assert!(proof.covers_context(&ctx));
    let ctx = Context { tenant: &globex, ..ctx };
    assert!(!proof.covers_context(&ctx));
    assert!(proof.covers_subject(&acme, &medical(), "absence", "r-1", Some("emp-1")));
    assert!(!proof.covers_subject(&acme, &medical(), "absence", "r-1", Some("emp-2")));

    // A collection proof limited to a subject covers that subject's records only.
    let emp = Principal::new(u("jan"), Some(acme.clone()), [r("employee")]).with_subject("emp-jan");
    let g = [general()];
    let proof = f
        .authz
        .check(
            &emp,
            &Request::new(&acme, Action::Export, &g, Target::collection("contract", Some("emp-jan"))),
        )
        .into_proof()
        .unwrap();
    assert!(
        !proof.covers(&acme, &general(), "contract", "c-1"),
        "subject-limited proof needs covers_subject"
    );
    assert!(proof.covers_subject(&acme, &general(), "contract", "c-1", Some("emp-jan")));
    assert!(!proof.covers_subject(&acme, &general(), "contract", "c-2", Some("emp-piet")));
}

#[test]
fn every_domain_of_a_request_must_be_allowed() {
    let f = fixture();
    let acme = t("acme");
    let both = [medical(), general()];
    let target = Target::record("absence", "r-1", None);
    let hr = user_with("hr_manager", "acme");
    let d = f.authz.check(&hr, &Request::new(&acme, Action::Read, &both, target.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::NotPermitted { action: Action::Read, domain: medical() }));
    let doc = user_with("company_doctor", "acme");
    let d = f.authz.check(&doc, &Request::new(&acme, Action::Read, &both, target));
    assert_eq!(d.basis(), Some(&Basis::Roles(vec![r("company_doctor")])));
    let proof = d.into_proof().unwrap();
    assert_eq!(proof.domains(), &[general(), medical()]);
}

#[test]
fn unknown_domain_and_missing_domain_are_denied() {
    let f = fixture();
    let acme = t("acme");
    let doc = user_with("company_doctor", "acme");
    let pay = [DomainName::new("payroll").unwrap()];
    let d = f.authz.check(&doc, &Request::new(&acme, Action::Read, &pay, Target::Tenant));
    assert_eq!(d.deny_reason(), Some(&DenyReason::UnknownDomain(pay[0].clone())));
    let d = f.authz.check(&doc, &Request::new(&acme, Action::Read, &[], Target::Tenant));
    assert_eq!(d.deny_reason(), Some(&DenyReason::NoDomain));
    // Tenant-level actions may name no domain (all of them).
    let ka = user_with("key_admin", "acme");
    assert!(f.authz.check(&ka, &Request::new(&acme, Action::ManageKeys, &[], Target::Tenant)).is_allowed());
    let d = f.authz.check(&doc, &Request::new(&acme, Action::ManageKeys, &[], Target::Tenant));
    assert_eq!(d.deny_reason(), Some(&DenyReason::ActionNotPermitted(Action::ManageKeys)));
}

#[test]
fn role_order_and_duplicates_do_not_matter() {
    let f = fixture();
    let acme = t("acme");
    let a = Principal::new(u("x"), Some(acme.clone()), [r("hr_manager"), r("case_manager"), r("hr_manager")]);
    let b = Principal::new(u("x"), Some(acme.clone()), [r("case_manager"), r("hr_manager")]);
    assert_eq!(a, b);
    let g = [general()];
    let d = f.authz.check(&a, &Request::new(&acme, Action::Read, &g, Target::Tenant));
    assert_eq!(d.basis(), Some(&Basis::Roles(vec![r("case_manager")])));
}

#[test]
fn break_glass_needs_a_role_that_allows_it_a_reason_and_a_read() {
    let f = fixture();
    let acme = t("acme");
    let m = [medical()];
    let target = Target::record("absence", "r-7", Some("emp-7"));
    let case = user_with("case_manager", "acme");
    let reason = "employee collapsed at work; ambulance asks for known conditions";

    // Without a reason: a plain denial.
    let d = f.authz.check(&case, &Request::new(&acme, Action::Read, &m, target.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::NotPermitted { action: Action::Read, domain: medical() }));
    // Too short a reason.
    let d = f
        .authz
        .check(&case, &Request::new(&acme, Action::Read, &m, target.clone()).with_break_glass("   urgent  "));
    assert_eq!(d.deny_reason(), Some(&DenyReason::BreakGlassReason));
    let long = "x".repeat(1001);
    let d =
        f.authz.check(&case, &Request::new(&acme, Action::Read, &m, target.clone()).with_break_glass(&long));
    assert_eq!(d.deny_reason(), Some(&DenyReason::BreakGlassReason));
    // Only reads.
    for a in [Action::Write, Action::Delete, Action::Export, Action::Search, Action::Shred] {
        let d = f.authz.check(&case, &Request::new(&acme, a, &m, target.clone()).with_break_glass(reason));
        assert_eq!(d.deny_reason(), Some(&DenyReason::BreakGlassReadOnly), "{a}");
    }
    // Roles without break-glass into medical.
    for role in ["hr_manager", "employee", "key_admin", "auditor", "tenant_admin"] {
        let p = user_with(role, "acme");
        let d = f
            .authz
            .check(&p, &Request::new(&acme, Action::Read, &m, target.clone()).with_break_glass(reason));
        assert_eq!(d.deny_reason(), Some(&DenyReason::BreakGlassNotAllowed(medical())), "{role}");
    }
    assert!(f.authz.access_review(&user_with("tenant_admin", "acme"), &acme).unwrap().break_glass.is_empty());

    // Allowed: flagged, with the reason, and listed for review.
    f.clock.advance(Duration::from_secs(5));
    let d =
        f.authz.check(&case, &Request::new(&acme, Action::Read, &m, target.clone()).with_break_glass(reason));
    assert!(d.is_allowed() && d.is_break_glass(), "{d:?}");
    assert_eq!(
        d.basis(),
        Some(&Basis::BreakGlass {
            roles: vec![r("case_manager")],
            domains: vec![medical()],
            reason: reason.to_owned()
        })
    );
    let proof = d.into_proof().unwrap();
    assert!(proof.is_break_glass());
    assert!(proof.covers(&acme, &medical(), "absence", "r-7"));
    let review = f.authz.access_review(&user_with("auditor", "acme"), &acme).unwrap();
    assert_eq!(
        review.break_glass,
        vec![BreakGlassEvent {
            tenant: acme.clone(),
            user: u("user-case_manager"),
            roles: vec![r("case_manager")],
            domains: vec![medical()],
            collection: Some("absence".into()),
            record: Some("r-7".into()),
            reason: reason.to_owned(),
            at: f.clock.now(),
        }]
    );
    // A mixed request: general by role, medical by break-glass.
    let both = [general(), medical()];
    let d = f.authz.check(&case, &Request::new(&acme, Action::Read, &both, target).with_break_glass(reason));
    assert!(d.is_break_glass());
    assert_eq!(d.into_proof().unwrap().domains(), &[general(), medical()]);
}

fn admin() -> Principal {
    Principal::new(u("admin"), Some(t("acme")), [r("tenant_admin")])
}

fn general_read_scope() -> GrantScope {
    GrantScope {
        domains: BTreeSet::from([general()]),
        actions: ActionSet::of(&[Action::Read, Action::Search]),
    }
}

#[test]
fn support_grant_is_granted_by_an_admin_scoped_and_recorded() {
    let f = fixture();
    let acme = t("acme");
    let g = [general()];
    // Only a tenant admin of this tenant may grant.
    let hr = user_with("hr_manager", "acme");
    assert!(matches!(
        f.authz.grant_support(&hr, &acme, u("support-anna"), general_read_scope(), 7 * DAY),
        Err(kluis_service::authz::Error::NotPermitted(_))
    ));
    let foreign_admin = Principal::new(u("admin"), Some(t("globex")), [r("tenant_admin")]);
    assert!(
        f.authz
            .grant_support(&foreign_admin, &acme, u("support-anna"), general_read_scope(), 7 * DAY)
            .is_err()
    );
    assert!(
        f.authz.grant_support(&admin(), &acme, u("support-anna"), general_read_scope(), 91 * DAY).is_err()
    );
    assert!(
        f.authz
            .grant_support(&admin(), &acme, u("support-anna"), general_read_scope(), Duration::ZERO)
            .is_err()
    );
    let empty = GrantScope { domains: BTreeSet::new(), actions: ActionSet::of(&[Action::Read]) };
    assert!(f.authz.grant_support(&admin(), &acme, u("support-anna"), empty, DAY).is_err());
    let escalate =
        GrantScope { domains: BTreeSet::from([general()]), actions: ActionSet::of(&[Action::ManageAccess]) };
    assert!(f.authz.grant_support(&admin(), &acme, u("support-anna"), escalate, DAY).is_err());
    let grant =
        f.authz.grant_support(&admin(), &acme, u("support-anna"), general_read_scope(), 7 * DAY).unwrap();
    assert_eq!(grant.status, GrantStatus::Active);

    let anna = Principal::support(u("support-anna"), grant.id.clone());
    let target = Target::record("contract", "c-1", None);
    f.clock.advance(Duration::from_secs(60));
    let d = f.authz.check(&anna, &Request::new(&acme, Action::Read, &g, target.clone()));
    assert_eq!(d.basis(), Some(&Basis::SupportGrant(grant.id.clone())));
    assert_eq!(d.into_proof().unwrap().support_grant(), Some(&grant.id));
    let stored = f.registry.grant(&acme, &grant.id).unwrap().unwrap();
    assert_eq!((stored.uses, stored.last_used), (1, Some(f.clock.now())));

    // Out of scope: action, domain.
    let d = f.authz.check(&anna, &Request::new(&acme, Action::Write, &g, target.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantOutOfScope { action: Action::Write, domain: None }));
    let m = [medical()];
    let d = f.authz.check(&anna, &Request::new(&acme, Action::Read, &m, target.clone()));
    assert_eq!(
        d.deny_reason(),
        Some(&DenyReason::GrantOutOfScope { action: Action::Read, domain: Some(medical()) })
    );
    // "Every domain" is beyond a grant's named domains.
    let d = f.authz.check(&anna, &Request::new(&acme, Action::Read, &[], Target::Tenant));
    assert!(!d.is_allowed());
    // Another tenant: the grant is not there.
    let globex = t("globex");
    let d = f.authz.check(&anna, &Request::new(&globex, Action::Read, &g, target.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantUnknown));
    // Another support user presenting Anna's grant id.
    let bob = Principal::support(u("support-bob"), grant.id.clone());
    let d = f.authz.check(&bob, &Request::new(&acme, Action::Read, &g, target.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantOtherUser));
    // A guessed grant id.
    let guess = Principal::support(u("support-anna"), GrantId::generate().unwrap());
    let d = f.authz.check(&guess, &Request::new(&acme, Action::Read, &g, target.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantUnknown));
    // Expired after 7 days.
    f.clock.advance(7 * DAY);
    let d = f.authz.check(&anna, &Request::new(&acme, Action::Read, &g, target));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantExpired));
    // Denials are not uses.
    assert_eq!(f.registry.grant(&acme, &grant.id).unwrap().unwrap().uses, 1);
}

#[test]
fn support_grant_is_disabled_after_31_days_unused() {
    let f = fixture();
    let acme = t("acme");
    let g = [general()];
    let target = Target::collection("contract", None);
    let grant =
        f.authz.grant_support(&admin(), &acme, u("support-anna"), general_read_scope(), 90 * DAY).unwrap();
    let anna = Principal::support(u("support-anna"), grant.id.clone());
    // Used on day 20, then 31 days later (exactly at the limit): the idle clock starts again.
    f.clock.advance(20 * DAY);
    assert!(f.authz.check(&anna, &Request::new(&acme, Action::Search, &g, target.clone())).is_allowed());
    f.clock.advance(31 * DAY);
    assert!(f.authz.check(&anna, &Request::new(&acme, Action::Search, &g, target.clone())).is_allowed());
    // 31 days and a second unused: disabled, and stays disabled.
    f.clock.advance(31 * DAY + Duration::from_secs(1));
    let d = f.authz.check(&anna, &Request::new(&acme, Action::Search, &g, target.clone()));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantIdle));
    assert!(matches!(
        f.registry.grant(&acme, &grant.id).unwrap().unwrap().status,
        GrantStatus::DisabledIdle { .. }
    ));
    f.clock.advance(Duration::from_secs(1));
    let d = f.authz.check(&anna, &Request::new(&acme, Action::Search, &g, target));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantIdle));
}

#[test]
fn sweep_disables_idle_grants_and_revoke_stops_a_grant() {
    let f = fixture();
    let acme = t("acme");
    let a =
        f.authz.grant_support(&admin(), &acme, u("support-anna"), general_read_scope(), 60 * DAY).unwrap();
    let b = f.authz.grant_support(&admin(), &acme, u("support-bob"), general_read_scope(), 60 * DAY).unwrap();
    f.clock.advance(20 * DAY);
    let g = [general()];
    let bob = Principal::support(u("support-bob"), b.id.clone());
    assert!(f.authz.check(&bob, &Request::new(&acme, Action::Read, &g, Target::Tenant)).is_allowed());
    f.clock.advance(12 * DAY);
    assert_eq!(f.authz.sweep_idle_grants(&acme).unwrap(), vec![a.id.clone()]);
    // Revoke Bob's.
    assert!(f.authz.revoke_support(&user_with("hr_manager", "acme"), &acme, &b.id).is_err());
    f.authz.revoke_support(&admin(), &acme, &b.id).unwrap();
    let d = f.authz.check(&bob, &Request::new(&acme, Action::Read, &g, Target::Tenant));
    assert_eq!(d.deny_reason(), Some(&DenyReason::GrantRevoked));
    assert!(matches!(
        f.authz.revoke_support(&admin(), &acme, &GrantId::generate().unwrap()),
        Err(kluis_service::authz::Error::UnknownGrant(_))
    ));
}

#[test]
fn access_review_lists_roles_and_grants_with_last_use() {
    let f = fixture();
    let acme = t("acme");
    let start = f.clock.now();
    f.authz.assign_role(&admin(), &acme, u("piet"), r("hr_manager")).unwrap();
    f.authz.assign_role(&admin(), &acme, u("piet"), r("case_manager")).unwrap();
    f.authz.assign_role(&admin(), &acme, u("dr.jansen"), r("company_doctor")).unwrap();
    assert!(f.authz.assign_role(&admin(), &acme, u("x"), r("no_such_role")).is_err());
    assert!(f.authz.assign_role(&user_with("hr_manager", "acme"), &acme, u("x"), r("auditor")).is_err());
    let grant =
        f.authz.grant_support(&admin(), &acme, u("support-anna"), general_read_scope(), 7 * DAY).unwrap();

    // Piet works an hour later; the doctor never.
    f.clock.advance(Duration::from_secs(3600));
    let piet = f.authz.principal(&acme, &u("piet")).unwrap();
    assert_eq!(piet.roles(), &[r("case_manager"), r("hr_manager")]);
    let g = [general()];
    assert!(
        f.authz
            .check(&piet, &Request::new(&acme, Action::Write, &g, Target::record("contract", "c", None)))
            .is_allowed()
    );
    let used_at = f.clock.now();

    // Only tenant admins and auditors may see the review.
    assert!(f.authz.access_review(&user_with("hr_manager", "acme"), &acme).is_err());
    assert!(f.authz.access_review(&user_with("auditor", "globex"), &acme).is_err());
    let review = f.authz.access_review(&admin(), &acme).unwrap();
    let lines: Vec<(String, String, Option<std::time::SystemTime>)> = review
        .entries
        .iter()
        .map(|e| {
            let what = match &e.holding {
                Holding::Role(r) => r.to_string(),
                Holding::SupportGrant { id, .. } => id.to_string(),
                _ => unreachable!(),
            };
            (e.user.to_string(), what, e.last_used)
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("dr.jansen".into(), "company_doctor".into(), None),
            ("piet".into(), "case_manager".into(), Some(used_at)),
            ("piet".into(), "hr_manager".into(), Some(used_at)),
            ("support-anna".into(), grant.id.to_string(), None),
        ]
    );
    assert!(review.entries.iter().all(|e| e.since == start && e.granted_by == u("admin")));

    assert!(f.authz.revoke_role(&admin(), &acme, &u("piet"), &r("hr_manager")).unwrap());
    assert!(!f.authz.revoke_role(&admin(), &acme, &u("piet"), &r("hr_manager")).unwrap());
    assert_eq!(f.authz.principal(&acme, &u("piet")).unwrap().roles(), &[r("case_manager")]);
}

/// A registry that always fails: every decision that needs it denies (fail closed).
#[derive(Debug)]
struct Broken;

impl AccessRegistry for Broken {
    fn insert_grant(&self, _: SupportGrant) -> kluis_service::authz::Result<()> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn grant(&self, _: &TenantId, _: &GrantId) -> kluis_service::authz::Result<Option<SupportGrant>> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn grants(&self, _: &TenantId) -> kluis_service::authz::Result<Vec<SupportGrant>> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn update_grant(&self, _: &SupportGrant) -> kluis_service::authz::Result<()> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn assign_role(&self, _: RoleAssignment) -> kluis_service::authz::Result<()> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn remove_role(&self, _: &TenantId, _: &UserId, _: &RoleName) -> kluis_service::authz::Result<bool> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn assignments(&self, _: &TenantId) -> kluis_service::authz::Result<Vec<RoleAssignment>> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn touch_user(
        &self,
        _: &TenantId,
        _: &UserId,
        _: std::time::SystemTime,
    ) -> kluis_service::authz::Result<()> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn last_seen(
        &self,
        _: &TenantId,
        _: &UserId,
    ) -> kluis_service::authz::Result<Option<std::time::SystemTime>> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn record_break_glass(&self, _: BreakGlassEvent) -> kluis_service::authz::Result<()> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
    fn break_glass_events(&self, _: &TenantId) -> kluis_service::authz::Result<Vec<BreakGlassEvent>> {
        Err(kluis_service::authz::Error::Registry("down".into()))
    }
}

#[test]
fn registry_failure_denies() {
    let authz = Authorizer::new(Policy::builtin(), Arc::new(Broken), Arc::new(ManualClock::new()));
    let acme = t("acme");
    let g = [general()];
    let doc = user_with("company_doctor", "acme");
    let d = authz.check(&doc, &Request::new(&acme, Action::Read, &g, Target::Tenant));
    assert_eq!(d.deny_reason(), Some(&DenyReason::RegistryUnavailable));
    let m = [medical()];
    let case = user_with("case_manager", "acme");
    let d = authz.check(
        &case,
        &Request::new(&acme, Action::Read, &m, Target::Tenant).with_break_glass("a long enough reason"),
    );
    assert_eq!(d.deny_reason(), Some(&DenyReason::RegistryUnavailable));
    let anna = Principal::support(u("anna"), GrantId::generate().unwrap());
    let d = authz.check(&anna, &Request::new(&acme, Action::Read, &g, Target::Tenant));
    assert_eq!(d.deny_reason(), Some(&DenyReason::RegistryUnavailable));
}

#[test]
fn names_are_validated_and_deny_is_an_error() {
    assert!(UserId::new("").is_err());
    assert!(UserId::new("a b").is_err());
    assert!(RoleName::new("HR").is_err());
    assert!(GrantId::parse("sg_xyz").is_err());
    let id = GrantId::generate().unwrap();
    assert_eq!(GrantId::parse(id.as_str()).unwrap(), id);
    let f = fixture();
    let acme = t("acme");
    let d = f.authz.check(
        &user_with("auditor", "acme"),
        &Request::new(&acme, Action::Read, &[general()], Target::Tenant),
    );
    let err = d.into_proof().unwrap_err();
    assert_eq!(err.to_string(), "access denied: no role of the principal grants read on domain general");
    assert!(matches!(
        f.authz.check(
            &user_with("auditor", "acme"),
            &Request::new(&acme, Action::ReadAudit, &[], Target::Tenant)
        ),
        Decision::Allow(_)
    ));
}

#[test]
fn allowed_domains_lists_what_roles_open_so_the_store_can_withhold_the_rest() {
    let f = fixture();
    let acme = t("acme");
    let rec = Target::record("absence", "r", Some("emp-hr_manager"));
    assert_eq!(
        f.authz.allowed_domains(&user_with("hr_manager", "acme"), &acme, Action::Read, &rec),
        vec![general()]
    );
    assert_eq!(
        f.authz.allowed_domains(&user_with("company_doctor", "acme"), &acme, Action::Read, &rec),
        vec![general(), medical()]
    );
    assert!(f.authz.allowed_domains(&user_with("auditor", "acme"), &acme, Action::Read, &rec).is_empty());
    assert!(
        f.authz.allowed_domains(&user_with("company_doctor", "globex"), &acme, Action::Read, &rec).is_empty()
    );
    let emp = user_with("employee", "acme");
    assert!(f.authz.allowed_domains(&emp, &acme, Action::Read, &rec).is_empty());
    let own = Target::record("absence", "r", Some("emp-employee"));
    assert_eq!(f.authz.allowed_domains(&emp, &acme, Action::Read, &own), vec![general()]);
}

#[test]
fn only_revealing_actions_open_and_only_write_seals() {
    let f = fixture();
    let acme = t("acme");
    let m = [medical()];
    let ctx = Context {
        tenant: &acme,
        domain: &medical(),
        collection: "absence",
        field: "diagnosis",
        record: "r-1",
    };
    let target = || Target::record("absence", "r-1", None);
    let ka = user_with("key_admin", "acme");
    let keys =
        f.authz.check(&ka, &Request::new(&acme, Action::ManageKeys, &m, target())).into_proof().unwrap();
    assert!(keys.covers_context(&ctx), "bound to the context");
    assert!(!keys.allows_open(&ctx), "but a key proof opens no data");
    assert!(!keys.allows_write(&ctx));
    let doc = user_with("company_doctor", "acme");
    for action in [Action::Read, Action::Search, Action::Export] {
        let p = f.authz.check(&doc, &Request::new(&acme, action, &m, target())).into_proof().unwrap();
        assert!(p.allows_open(&ctx) && !p.allows_write(&ctx), "{action}");
    }
    let w = f.authz.check(&doc, &Request::new(&acme, Action::Write, &m, target())).into_proof().unwrap();
    assert!(w.allows_write(&ctx) && !w.allows_open(&ctx));
    for action in [Action::Delete, Action::Shred] {
        let p = f.authz.check(&doc, &Request::new(&acme, action, &m, target())).into_proof().unwrap();
        assert!(!p.allows_open(&ctx) && !p.allows_write(&ctx), "{action}");
    }
}
