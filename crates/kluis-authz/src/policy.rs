//! Roles and what they grant: the built-in HR roles and custom roles from a TOML policy file.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kluis_core::DomainName;
use serde::Deserialize;
use toml::Spanned;

use super::types::{Action, ActionSet, RoleName};
use crate::error::{Error, Result};

/// What one role grants, flattened (includes resolved).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RoleDef {
    /// Per domain: actions on every record of the tenant.
    pub(crate) tenant_wide: BTreeMap<DomainName, ActionSet>,
    /// Per domain: actions only on the principal's own records.
    pub(crate) own_only: BTreeMap<DomainName, ActionSet>,
    /// Tenant-level actions on every domain (`manage_keys`, `read_audit`, `manage_access`).
    pub(crate) any_domain: ActionSet,
    /// Domains this role may read in an emergency with a stated reason.
    pub(crate) break_glass: BTreeSet<DomainName>,
}

/// How a role covers one (domain, action).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Coverage {
    /// Not at all.
    None,
    /// Only the principal's own records.
    OwnOnly,
    /// Every record of the tenant.
    TenantWide,
}

impl RoleDef {
    pub(crate) fn coverage(&self, domain: &DomainName, action: Action) -> Coverage {
        if self.any_domain.contains(action)
            || self.tenant_wide.get(domain).is_some_and(|s| s.contains(action))
        {
            Coverage::TenantWide
        } else if self.own_only.get(domain).is_some_and(|s| s.contains(action)) {
            Coverage::OwnOnly
        } else {
            Coverage::None
        }
    }

    fn merge(&mut self, other: &RoleDef) {
        for (d, s) in &other.tenant_wide {
            let e = self.tenant_wide.entry(d.clone()).or_default();
            *e = e.union(*s);
        }
        for (d, s) in &other.own_only {
            let e = self.own_only.entry(d.clone()).or_default();
            *e = e.union(*s);
        }
        self.any_domain = self.any_domain.union(other.any_domain);
        self.break_glass.extend(other.break_glass.iter().cloned());
    }

    fn grant(&mut self, domain: DomainName, actions: &[Action], own_only: bool) {
        let map = if own_only { &mut self.own_only } else { &mut self.tenant_wide };
        let e = map.entry(domain).or_default();
        *e = e.union(ActionSet::of(actions));
    }
}

/// The roles a decision is made from, and the domains that exist. Immutable once built.
///
/// # Policy file format
///
/// ```toml
/// # Custom domains must be declared; `general` and `medical` are built in.
/// domains = ["payroll"]
///
/// [[role]]
/// name = "payroll_clerk"
/// includes = ["case_manager"]        # optional: every grant of these roles too
/// break_glass = []                   # optional: domains readable in an emergency, with a reason
///
/// [[role.grant]]
/// actions = ["read", "write", "search"]
/// domains = ["payroll"]
/// own_records_only = false           # optional, default false
/// ```
///
/// Validation when loading, each error naming the line: unknown keys, an unknown action, an
/// undeclared domain, an unknown included role, a cycle of includes, a role named like a
/// built-in role, and `"*"` (every domain) for a data action (`"*"` is only for `manage_keys`,
/// `read_audit` and `manage_access`: medical access is always named).
///
/// Entries are a set: the same role defined twice is the union of both, and the order of roles,
/// grants, actions and domains changes no decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    domains: BTreeSet<DomainName>,
    roles: HashMap<RoleName, RoleDef>,
}

const DATA_ALL: [Action; 6] =
    [Action::Read, Action::Write, Action::Delete, Action::Search, Action::Export, Action::Shred];

impl Policy {
    /// The built-in roles only, on the domains `general` and `medical`:
    ///
    /// | role | grants |
    /// | --- | --- |
    /// | `hr_manager` | general: read, write, delete, search, export, shred (no break-glass: an employer may not process medical data) |
    /// | `employee` | general: read, export, own records only |
    /// | `company_doctor` | medical and general: read, write, delete, search, export, shred |
    /// | `case_manager` | general: read, write, search; break-glass read of medical |
    /// | `key_admin` | manage_keys on every domain; no data |
    /// | `auditor` | read_audit on every domain; no data |
    /// | `tenant_admin` | manage_access (role assignments, support grants); no data |
    pub fn builtin() -> Self {
        let general = DomainName::general();
        let medical = DomainName::medical();
        let mut roles = HashMap::new();

        let mut hr = RoleDef::default();
        hr.grant(general.clone(), &DATA_ALL, false);
        roles.insert(RoleName::from_static(RoleName::HR_MANAGER), hr);

        let mut employee = RoleDef::default();
        employee.grant(general.clone(), &[Action::Read, Action::Export], true);
        roles.insert(RoleName::from_static(RoleName::EMPLOYEE), employee);

        let mut doctor = RoleDef::default();
        doctor.grant(general.clone(), &DATA_ALL, false);
        doctor.grant(medical.clone(), &DATA_ALL, false);
        roles.insert(RoleName::from_static(RoleName::COMPANY_DOCTOR), doctor);

        let mut case = RoleDef::default();
        case.grant(general.clone(), &[Action::Read, Action::Write, Action::Search], false);
        case.break_glass.insert(medical.clone());
        roles.insert(RoleName::from_static(RoleName::CASE_MANAGER), case);

        let key_admin = RoleDef { any_domain: ActionSet::of(&[Action::ManageKeys]), ..RoleDef::default() };
        roles.insert(RoleName::from_static(RoleName::KEY_ADMIN), key_admin);

        let auditor = RoleDef { any_domain: ActionSet::of(&[Action::ReadAudit]), ..RoleDef::default() };
        roles.insert(RoleName::from_static(RoleName::AUDITOR), auditor);

        let admin = RoleDef { any_domain: ActionSet::of(&[Action::ManageAccess]), ..RoleDef::default() };
        roles.insert(RoleName::from_static(RoleName::TENANT_ADMIN), admin);

        Self { domains: [general, medical].into_iter().collect(), roles }
    }

    /// The names of the built-in roles.
    pub fn builtin_role_names() -> [&'static str; 7] {
        [
            RoleName::HR_MANAGER,
            RoleName::EMPLOYEE,
            RoleName::COMPANY_DOCTOR,
            RoleName::CASE_MANAGER,
            RoleName::KEY_ADMIN,
            RoleName::AUDITOR,
            RoleName::TENANT_ADMIN,
        ]
    }

    /// The built-in roles plus the custom roles and domains of a TOML policy file (format in the
    /// [type documentation](Policy)). Every validation error names its line.
    pub fn from_toml(text: &str) -> Result<Self> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            Error::Policy { line, column, reason: first_line(e.message()) }
        })?;
        let mut policy = Self::builtin();
        let at = |span: std::ops::Range<usize>, reason: String| {
            let (line, column) = line_col(text, span.start);
            Error::Policy { line, column, reason }
        };

        for d in &file.domains {
            let name = DomainName::new(d.get_ref().as_str()).map_err(|e| at(d.span(), e.to_string()))?;
            policy.domains.insert(name);
        }

        // Pass 1: each custom role's own grants (merged over duplicate definitions).
        let mut own: BTreeMap<RoleName, RoleDef> = BTreeMap::new();
        let mut includes: BTreeMap<RoleName, Vec<(RoleName, std::ops::Range<usize>)>> = BTreeMap::new();
        for role in &file.role {
            let name = RoleName::new(role.name.get_ref().as_str())
                .map_err(|e| at(role.name.span(), e.to_string()))?;
            if Self::builtin_role_names().contains(&name.as_str()) {
                return Err(at(role.name.span(), format!("role {name} is built in and cannot be redefined")));
            }
            let def = own.entry(name.clone()).or_default();
            for d in &role.break_glass {
                let dom = policy.domain(d)?.ok_or_else(|| at(d.span(), undeclared(d.get_ref())))?;
                def.break_glass.insert(dom);
            }
            for g in &role.grant {
                let mut actions = Vec::with_capacity(g.actions.len());
                for a in &g.actions {
                    let act = Action::parse(a.get_ref()).ok_or_else(|| {
                        at(a.span(), format!("unknown action {:?} (known: {})", a.get_ref(), known_actions()))
                    })?;
                    actions.push((act, a.span()));
                }
                if g.domains.is_empty() {
                    return Err(at(
                        g.actions.first().map(|a| a.span()).unwrap_or(role.name.span()),
                        "a grant must name at least one domain".into(),
                    ));
                }
                for d in &g.domains {
                    if d.get_ref() == "*" {
                        if let Some((act, span)) = actions.iter().find(|(a, _)| a.is_data()) {
                            return Err(at(
                                span.clone(),
                                format!(
                                    "action {act} needs named domains: \"*\" is only for manage_keys, read_audit and manage_access"
                                ),
                            ));
                        }
                        if g.own_records_only {
                            return Err(at(d.span(), "\"*\" cannot be limited to own records".into()));
                        }
                        for (act, _) in &actions {
                            def.any_domain.insert(*act);
                        }
                        continue;
                    }
                    let dom = policy.domain(d)?.ok_or_else(|| at(d.span(), undeclared(d.get_ref())))?;
                    let acts: Vec<Action> = actions.iter().map(|(a, _)| *a).collect();
                    def.grant(dom, &acts, g.own_records_only);
                }
            }
            let inc = includes.entry(name).or_default();
            for i in &role.includes {
                let iname = RoleName::new(i.get_ref().as_str()).map_err(|e| at(i.span(), e.to_string()))?;
                inc.push((iname, i.span()));
            }
        }

        // Pass 2: check includes name known roles, then flatten (with cycle detection).
        for incs in includes.values() {
            for (i, span) in incs {
                if !own.contains_key(i) && !policy.roles.contains_key(i) {
                    return Err(at(span.clone(), format!("unknown role {i} in includes")));
                }
            }
        }
        let mut done: BTreeMap<RoleName, RoleDef> = BTreeMap::new();
        for name in own.keys() {
            let mut stack = Vec::new();
            flatten(name, &own, &includes, &policy.roles, &mut done, &mut stack, text)?;
        }
        policy.roles.extend(done);
        Ok(policy)
    }

    fn domain(&self, d: &Spanned<String>) -> Result<Option<DomainName>> {
        match DomainName::new(d.get_ref().as_str()) {
            Ok(n) if self.domains.contains(&n) => Ok(Some(n)),
            _ => Ok(None),
        }
    }

    /// Is this domain known to the policy?
    pub fn has_domain(&self, d: &DomainName) -> bool {
        self.domains.contains(d)
    }

    /// The known domains, sorted.
    pub fn domains(&self) -> impl Iterator<Item = &DomainName> {
        self.domains.iter()
    }

    /// Is this role defined?
    pub fn has_role(&self, r: &RoleName) -> bool {
        self.roles.contains_key(r)
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<&RoleName> {
        let mut v: Vec<&RoleName> = self.roles.keys().collect();
        v.sort();
        v
    }

    /// The actions a role grants on a domain for every record of the tenant (tenant-level actions
    /// included), or `None` for an unknown role.
    pub fn role_actions(&self, role: &RoleName, domain: &DomainName) -> Option<ActionSet> {
        self.roles
            .get(role)
            .map(|r| r.any_domain.union(r.tenant_wide.get(domain).copied().unwrap_or_default()))
    }

    pub(crate) fn role(&self, r: &RoleName) -> Option<&RoleDef> {
        self.roles.get(r)
    }
}

/// How deep `includes` may nest (bounds the work and the recursion of loading).
const MAX_INCLUDE_DEPTH: usize = 32;

fn undeclared(d: &str) -> String {
    format!(
        "unknown domain {d:?}: declare it in the top-level domains list (general and medical are built in)"
    )
}

fn known_actions() -> String {
    Action::ALL.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
}

fn flatten(
    name: &RoleName,
    own: &BTreeMap<RoleName, RoleDef>,
    includes: &BTreeMap<RoleName, Vec<(RoleName, std::ops::Range<usize>)>>,
    builtin: &HashMap<RoleName, RoleDef>,
    done: &mut BTreeMap<RoleName, RoleDef>,
    stack: &mut Vec<RoleName>,
    text: &str,
) -> Result<RoleDef> {
    if let Some(d) = done.get(name) {
        return Ok(d.clone());
    }
    if let Some(b) = builtin.get(name) {
        return Ok(b.clone());
    }
    let mut def = own.get(name).cloned().unwrap_or_default();
    stack.push(name.clone());
    for (inc, span) in includes.get(name).map(Vec::as_slice).unwrap_or_default() {
        if stack.len() > MAX_INCLUDE_DEPTH {
            let (line, column) = line_col(text, span.start);
            return Err(Error::Policy {
                line,
                column,
                reason: format!("roles include each other more than {MAX_INCLUDE_DEPTH} levels deep"),
            });
        }
        if stack.contains(inc) {
            let (line, column) = line_col(text, span.start);
            return Err(Error::Policy {
                line,
                column,
                reason: format!("roles include each other in a cycle through {inc}"),
            });
        }
        let sub = flatten(inc, own, includes, builtin, done, stack, text)?;
        def.merge(&sub);
    }
    stack.pop();
    done.insert(name.clone(), def.clone());
    Ok(def)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim().to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    domains: Vec<Spanned<String>>,
    #[serde(default)]
    role: Vec<RoleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    name: Spanned<String>,
    #[serde(default)]
    includes: Vec<Spanned<String>>,
    #[serde(default)]
    break_glass: Vec<Spanned<String>>,
    #[serde(default)]
    grant: Vec<GrantEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantEntry {
    actions: Vec<Spanned<String>>,
    domains: Vec<Spanned<String>>,
    #[serde(default)]
    own_records_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
