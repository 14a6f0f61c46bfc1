//! Custom roles from a TOML policy file: what they grant, and the validation errors, each
//! naming the line.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use kluis_core::{DomainName, TenantId};
use kluis_service::authz::Error;
use kluis_service::authz::{
    Action, Authorizer, DenyReason, MemoryRegistry, Policy, Principal, Request, RoleName, Target, UserId,
};
use kluis_service::clock::ManualClock;

const GOOD: &str = r#"
domains = ["payroll"]

[[role]]
name = "payroll_clerk"
includes = ["case_manager"]

[[role.grant]]
actions = ["read", "write", "search"]
domains = ["payroll"]

[[role]]
name = "payroll_key_admin"

[[role.grant]]
actions = ["manage_keys"]
domains = ["payroll"]

[[role]]
name = "compliance"
[[role.grant]]
actions = ["read_audit", "manage_keys"]
domains = ["*"]

[[role]]
name = "self_service"
[[role.grant]]
actions = ["read", "write"]
domains = ["payroll"]
own_records_only = true

[[role]]
name = "arbo_nurse"
break_glass = ["medical"]
[[role.grant]]
actions = ["read"]
domains = ["general"]
"#;

fn authz(policy: Policy) -> Authorizer {
    Authorizer::new(policy, Arc::new(MemoryRegistry::new()), Arc::new(ManualClock::new()))
}

fn who(role: &str) -> Principal {
    Principal::new(
        UserId::new("u").unwrap(),
        Some(TenantId::new("acme").unwrap()),
        [RoleName::new(role).unwrap()],
    )
    .with_subject("emp-u")
}

fn allowed(a: &Authorizer, role: &str, action: Action, domain: &str, subject: Option<&str>) -> bool {
    let acme = TenantId::new("acme").unwrap();
    let d = [DomainName::new(domain).unwrap()];
    a.check(&who(role), &Request::new(&acme, action, &d, Target::record("c", "r", subject))).is_allowed()
}

#[test]
fn custom_roles_grant_what_the_file_says() {
    let p = Policy::from_toml(GOOD).unwrap();
    assert!(p.has_domain(&DomainName::new("payroll").unwrap()));
    let a = authz(p);
    // payroll_clerk: own grants plus case_manager's.
    assert!(allowed(&a, "payroll_clerk", Action::Write, "payroll", None));
    assert!(allowed(&a, "payroll_clerk", Action::Search, "general", None));
    assert!(!allowed(&a, "payroll_clerk", Action::Delete, "payroll", None));
    assert!(!allowed(&a, "payroll_clerk", Action::Read, "medical", None));
    // Named-domain key admin.
    assert!(allowed(&a, "payroll_key_admin", Action::ManageKeys, "payroll", None));
    assert!(!allowed(&a, "payroll_key_admin", Action::ManageKeys, "medical", None));
    assert!(!allowed(&a, "payroll_key_admin", Action::Read, "payroll", None));
    // "*" for tenant-level actions.
    assert!(allowed(&a, "compliance", Action::ReadAudit, "medical", None));
    assert!(!allowed(&a, "compliance", Action::Read, "general", None));
    // Own records only.
    assert!(allowed(&a, "self_service", Action::Write, "payroll", Some("emp-u")));
    assert!(!allowed(&a, "self_service", Action::Write, "payroll", Some("emp-v")));
    // Break-glass listed in the file.
    let acme = TenantId::new("acme").unwrap();
    let m = [DomainName::medical()];
    let d = a.check(
        &who("arbo_nurse"),
        &Request::new(&acme, Action::Read, &m, Target::Tenant)
            .with_break_glass("fire drill casualty, check allergies"),
    );
    assert!(d.is_break_glass());
    // Built-in roles are still there, and unknown roles grant nothing.
    assert!(allowed(&a, "company_doctor", Action::Read, "medical", None));
    assert!(!allowed(&a, "no_such_role", Action::Read, "general", None));
    assert_eq!(a.policy().role_names().len(), 7 + 5);
}

#[test]
fn an_empty_file_is_the_builtin_policy() {
    assert_eq!(Policy::from_toml("").unwrap(), Policy::builtin());
}

fn err_at(text: &str) -> (usize, String) {
    match Policy::from_toml(text) {
        Err(Error::Policy { line, reason, .. }) => (line, reason),
        other => panic!("expected a policy error, got {other:?}"),
    }
}

#[test]
fn unknown_action_names_its_line() {
    let (line, reason) = err_at(
        "[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"read\",\n  \"decrypt_all\"]\ndomains = [\"general\"]\n",
    );
    assert_eq!(line, 5, "{reason}");
    assert!(reason.contains("unknown action \"decrypt_all\""), "{reason}");
}

#[test]
fn unknown_domain_names_its_line() {
    let (line, reason) =
        err_at("[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"read\"]\ndomains = [\"payroll\"]\n");
    assert_eq!(line, 5);
    assert!(reason.contains("unknown domain \"payroll\""), "{reason}");
    let (line, _) = err_at("[[role]]\nname = \"x\"\nbreak_glass = [\"psych\"]\n");
    assert_eq!(line, 3);
    let (line, reason) = err_at("domains = [\"Bad Name\"]\n");
    assert_eq!(line, 1);
    assert!(reason.contains("domain name"), "{reason}");
}

#[test]
fn unknown_role_in_includes_names_its_line() {
    let (line, reason) = err_at("[[role]]\nname = \"x\"\nincludes = [\"hr_manager\", \"ghost\"]\n");
    assert_eq!(line, 3);
    assert!(reason.contains("unknown role ghost"), "{reason}");
}

#[test]
fn include_cycle_is_refused() {
    let (line, reason) =
        err_at("[[role]]\nname = \"a\"\nincludes = [\"b\"]\n[[role]]\nname = \"b\"\nincludes = [\"a\"]\n");
    assert!(line == 3 || line == 6, "{line}");
    assert!(reason.contains("cycle"), "{reason}");
}

#[test]
fn unknown_key_and_syntax_errors_name_their_line() {
    let (line, reason) = err_at("[[role]]\nname = \"x\"\nsuperuser = true\n");
    assert_eq!(line, 3, "{reason}");
    let (line, _) =
        err_at("[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"read\"\ndomains = [\"general\"]\n");
    assert!(line >= 4, "{line}");
    let (line, _) = err_at("[[role]]\n[[role.grant]]\nactions = [\"read\"]\ndomains = [\"general\"]\n");
    assert!(line >= 1);
}

#[test]
fn wildcard_for_data_actions_is_refused() {
    let (line, reason) = err_at(
        "[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"manage_keys\", \"read\"]\ndomains = [\"*\"]\n",
    );
    assert_eq!(line, 4);
    assert!(reason.contains("needs named domains"), "{reason}");
}

#[test]
fn builtin_roles_cannot_be_redefined_and_names_are_checked() {
    let (line, reason) = err_at("\n[[role]]\nname = \"employee\"\n");
    assert_eq!(line, 3);
    assert!(reason.contains("built in"), "{reason}");
    let (line, _) = err_at("[[role]]\nname = \"Boss\"\n");
    assert_eq!(line, 2);
    let (line, reason) =
        err_at("[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"read\"]\ndomains = []\n");
    assert_eq!(line, 4, "{reason}");
}

#[test]
fn a_role_defined_twice_is_the_union() {
    let once =
        "[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"read\", \"write\"]\ndomains = [\"general\"]\n";
    let twice = "[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"write\"]\ndomains = [\"general\"]\n[[role]]\nname = \"x\"\n[[role.grant]]\nactions = [\"read\"]\ndomains = [\"general\"]\n";
    assert_eq!(Policy::from_toml(once).unwrap(), Policy::from_toml(twice).unwrap());
}

#[test]
fn custom_roles_never_reach_medical_unless_named() {
    // Medical must be named: a custom role with every data action on general and payroll gets
    // nothing medical.
    let text = "domains = [\"payroll\"]\n[[role]]\nname = \"wide\"\n[[role.grant]]\nactions = [\"read\", \"write\", \"delete\", \"search\", \"export\", \"shred\"]\ndomains = [\"general\", \"payroll\"]\n";
    let a = authz(Policy::from_toml(text).unwrap());
    let acme = TenantId::new("acme").unwrap();
    let m = [DomainName::medical()];
    for action in Action::ALL {
        let d = a.check(&who("wide"), &Request::new(&acme, action, &m, Target::Tenant));
        assert!(!d.is_allowed(), "{action}");
        assert!(
            matches!(
                d.deny_reason(),
                Some(DenyReason::NotPermitted { .. } | DenyReason::ActionNotPermitted(_))
            ) || !action.is_data()
        );
    }
}

#[test]
fn include_depth_is_bounded() {
    let mut text = String::new();
    for i in 0..40 {
        text.push_str(&format!("[[role]]\nname = \"r{i}\"\nincludes = [\"r{}\"]\n", i + 1));
    }
    text.push_str("[[role]]\nname = \"r40\"\n");
    let (_, reason) = err_at(&text);
    assert!(reason.contains("levels deep"), "{reason}");
    // 30 levels are fine.
    let mut text = String::new();
    for i in 0..30 {
        text.push_str(&format!("[[role]]\nname = \"r{i}\"\nincludes = [\"r{}\"]\n", i + 1));
    }
    text.push_str(
        "[[role]]\nname = \"r30\"\n[[role.grant]]\nactions = [\"read\"]\ndomains = [\"general\"]\n",
    );
    let a = authz(Policy::from_toml(&text).unwrap());
    assert!(allowed(&a, "r0", Action::Read, "general", None));
}
