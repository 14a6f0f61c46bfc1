//! Property tests: no non-medical role combination ever gets a medical read, search or export;
//! shuffling or duplicating policy entries changes no decision.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use kluis_core::{DomainName, TenantId};
use kluis_service::authz::{
    Action, Authorizer, MemoryRegistry, Policy, Principal, Request, RoleName, Target, UserId,
};
use kluis_service::clock::ManualClock;
use proptest::prelude::*;

const NON_MEDICAL_BUILTIN: [&str; 6] =
    ["hr_manager", "employee", "case_manager", "key_admin", "auditor", "tenant_admin"];
const REVEALING: [Action; 3] = [Action::Read, Action::Search, Action::Export];

fn authz(policy: Policy) -> Authorizer {
    Authorizer::new(policy, Arc::new(MemoryRegistry::new()), Arc::new(ManualClock::at_unix(1_700_000_000)))
}

fn target(kind: u8, subject: Option<&str>) -> Target {
    match kind % 3 {
        0 => Target::record("absence", "r-1", subject),
        1 => Target::collection("absence", subject),
        _ => Target::Tenant,
    }
}

fn subject(i: u8) -> Option<&'static str> {
    match i % 3 {
        0 => None,
        1 => Some("emp-me"),
        _ => Some("emp-other"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any combination of the built-in non-medical roles: a medical read, search or export is
    /// denied; with a break-glass reason only a flagged read can be allowed.
    #[test]
    fn builtin_non_medical_roles_never_read_medical(
        roles in proptest::sample::subsequence(NON_MEDICAL_BUILTIN.to_vec(), 0..=6),
        action in proptest::sample::select(REVEALING.to_vec()),
        with_general in any::<bool>(),
        kind in any::<u8>(),
        subj in any::<u8>(),
        reason in proptest::option::of("[a-z ]{0,40}"),
    ) {
        let a = authz(Policy::builtin());
        let acme = TenantId::new("acme").unwrap();
        let p = Principal::new(UserId::new("u").unwrap(), Some(acme.clone()), roles.iter().map(|r| RoleName::new(*r).unwrap()))
            .with_subject("emp-me");
        let domains = if with_general { vec![DomainName::general(), DomainName::medical()] } else { vec![DomainName::medical()] };
        let req = Request::new(&acme, action, &domains, target(kind, subject(subj)));
        prop_assert!(!a.check(&p, &req).is_allowed());
        if let Some(reason) = reason.as_deref() {
            let d = a.check(&p, &req.clone().with_break_glass(reason));
            if d.is_allowed() {
                prop_assert!(d.is_break_glass());
                prop_assert_eq!(action, Action::Read);
            }
        }
    }

    /// Custom policies whose grants and break-glass lists never name medical: no role
    /// combination reaches medical with any action but the tenant-level ones, even with a reason.
    #[test]
    fn custom_non_medical_roles_never_read_medical(
        entries in proptest::collection::vec(entry(&["general", "payroll"]), 0..8),
        pick in proptest::collection::vec(0usize..4, 0..4),
        action in proptest::sample::select(REVEALING.to_vec()),
        kind in any::<u8>(),
        subj in any::<u8>(),
    ) {
        let text = render(&entries, false);
        let policy = Policy::from_toml(&text).unwrap();
        let a = authz(policy);
        let acme = TenantId::new("acme").unwrap();
        let mut names: Vec<String> = pick.iter().map(|i| format!("role{i}")).collect();
        names.push("hr_manager".into());
        let p = Principal::new(UserId::new("u").unwrap(), Some(acme.clone()), names.iter().map(|n| RoleName::new(n.clone()).unwrap()))
            .with_subject("emp-me");
        let m = [DomainName::medical()];
        let req = Request::new(&acme, action, &m, target(kind, subject(subj)));
        prop_assert!(!a.check(&p, &req).is_allowed());
        let d = a.check(&p, &req.clone().with_break_glass("an emergency reason here"));
        prop_assert!(!d.is_allowed() || (d.is_break_glass() && action == Action::Read));
    }

}

proptest! {
    // Each case checks about 5,000 decisions on two policies.
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The same entries in another order, with some duplicated and with actions and domains
    /// listed in another order, give the same policy and the same decisions.
    #[test]
    fn shuffling_or_duplicating_entries_changes_no_decision(
        entries in proptest::collection::vec(entry(&["general", "medical", "payroll"]), 1..8),
        keys in proptest::collection::vec(any::<u32>(), 16),
        dups in proptest::collection::vec(any::<bool>(), 8),
    ) {
        let mut shuffled: Vec<(u32, Entry)> = entries.iter().cloned().enumerate()
            .map(|(i, e)| (keys.get(i).copied().unwrap_or(0), e)).collect();
        for (i, e) in entries.iter().enumerate() {
            if dups.get(i).copied().unwrap_or(false) {
                shuffled.push((keys.get(i + 8).copied().unwrap_or(0), e.clone()));
            }
        }
        shuffled.sort_by_key(|(k, _)| *k);
        let shuffled: Vec<Entry> = shuffled.into_iter().map(|(_, e)| e).collect();
        let p1 = Policy::from_toml(&render(&entries, false)).unwrap();
        let p2 = Policy::from_toml(&render(&shuffled, true)).unwrap();
        prop_assert_eq!(&p1, &p2);
        let (a1, a2) = (authz(p1), authz(p2));
        let acme = TenantId::new("acme").unwrap();
        let domains = ["general", "medical", "payroll"].map(|d| DomainName::new(d).unwrap());
        for r1 in 0..4 {
            for r2 in 0..4 {
                let roles = [RoleName::new(format!("role{r1}")).unwrap(), RoleName::new(format!("role{r2}")).unwrap()];
                let p = Principal::new(UserId::new("u").unwrap(), Some(acme.clone()), roles).with_subject("emp-me");
                for d in &domains {
                    for action in Action::ALL {
                        for s in 0..3u8 {
                            let ds = [d.clone()];
                            let req = Request::new(&acme, action, &ds, target(0, subject(s)));
                            let (x, y) = (a1.check(&p, &req), a2.check(&p, &req));
                            prop_assert_eq!(x.is_allowed(), y.is_allowed());
                            prop_assert_eq!(x.deny_reason(), y.deny_reason());
                            prop_assert_eq!(x.basis(), y.basis());
                            let req = req.with_break_glass("an emergency reason here");
                            let (x, y) = (a1.check(&p, &req), a2.check(&p, &req));
                            prop_assert_eq!(x.deny_reason(), y.deny_reason());
                            prop_assert_eq!(x.basis(), y.basis());
                        }
                    }
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    role: usize,
    actions: Vec<&'static str>,
    domains: Vec<&'static str>,
    own: bool,
    break_glass: Vec<&'static str>,
}

const DATA: [&str; 6] = ["read", "write", "delete", "search", "export", "shred"];

fn entry(domains: &'static [&'static str]) -> impl Strategy<Value = Entry> {
    (
        0usize..4,
        proptest::sample::subsequence(DATA.to_vec(), 1..=6),
        proptest::sample::subsequence(domains.to_vec(), 1..=domains.len()),
        any::<bool>(),
        proptest::sample::subsequence(domains.to_vec(), 0..=domains.len()),
    )
        .prop_map(|(role, actions, domains, own, break_glass)| Entry {
            role,
            actions,
            domains,
            own,
            break_glass,
        })
}

fn list(v: &[&str], reverse: bool) -> String {
    let mut v: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
    if reverse {
        v.reverse();
    }
    v.join(", ")
}

fn render(entries: &[Entry], reverse: bool) -> String {
    let mut s = String::from("domains = [\"payroll\"]\n");
    // Every role exists even without entries, so principals can name them.
    for i in 0..4 {
        s.push_str(&format!("[[role]]\nname = \"role{i}\"\n"));
    }
    for e in entries {
        s.push_str(&format!(
            "[[role]]\nname = \"role{}\"\nbreak_glass = [{}]\n[[role.grant]]\nactions = [{}]\ndomains = [{}]\nown_records_only = {}\n",
            e.role,
            list(&e.break_glass, reverse),
            list(&e.actions, reverse),
            list(&e.domains, reverse),
            e.own
        ));
    }
    s
}
