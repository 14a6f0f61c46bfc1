//! Names and small value types of the authorization model.

use std::fmt;
use std::sync::Arc;

use kluis_core::{DomainName, TenantId};

use crate::error::{Error, Result};

fn check_name(what: &'static str, s: &str, max: usize, allowed: impl Fn(char) -> bool) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(what, "must not be empty"));
    }
    if s.len() > max {
        return Err(Error::invalid(what, format!("longer than {max} bytes")));
    }
    if let Some(c) = s.chars().find(|c| !allowed(*c)) {
        return Err(Error::invalid(what, format!("character {c:?} is not allowed")));
    }
    Ok(())
}

/// A user id as the host application knows it: 1 to 256 bytes, no control characters or spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(Arc<str>);

impl UserId {
    /// Validates and wraps a user id.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check_name("user id", &s, 256, |c| !c.is_control() && !c.is_whitespace())?;
        Ok(Self(s.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A role name: 1 to 64 bytes of lower-case ASCII letters, digits, `_` and `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(Arc<str>);

impl RoleName {
    /// `hr_manager`: general read, write, delete, search, export and shred.
    pub const HR_MANAGER: &'static str = "hr_manager";
    /// `employee`: reads and exports their own general records.
    pub const EMPLOYEE: &'static str = "employee";
    /// `company_doctor`: all data actions on medical and general.
    pub const COMPANY_DOCTOR: &'static str = "company_doctor";
    /// `case_manager`: general read, write and search.
    pub const CASE_MANAGER: &'static str = "case_manager";
    /// `key_admin`: manages keys of every domain; no data.
    pub const KEY_ADMIN: &'static str = "key_admin";
    /// `auditor`: reads the audit log; no data.
    pub const AUDITOR: &'static str = "auditor";
    /// `tenant_admin`: manages role assignments and support grants; no data.
    pub const TENANT_ADMIN: &'static str = "tenant_admin";

    /// Validates and wraps a role name.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        check_name("role name", &s, 64, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-')
        })?;
        Ok(Self(s.into()))
    }

    pub(crate) fn from_static(s: &'static str) -> Self {
        Self(s.into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a principal wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Action {
    /// Read (decrypt) values or documents.
    Read,
    /// Create or change values or documents.
    Write,
    /// Delete records or documents.
    Delete,
    /// Search through blind indexes (and decrypt the hits).
    Search,
    /// Export or copy data out of the system (data portability, reports).
    Export,
    /// Crypto-shred a subject (destroy their subject key).
    Shred,
    /// Rotate, disable or destroy domain keys.
    ManageKeys,
    /// Read the audit log.
    ReadAudit,
    /// Assign roles and grant support access in a tenant.
    ManageAccess,
}

impl Action {
    /// Every action, in a fixed order.
    pub const ALL: [Action; 9] = [
        Action::Read,
        Action::Write,
        Action::Delete,
        Action::Search,
        Action::Export,
        Action::Shred,
        Action::ManageKeys,
        Action::ReadAudit,
        Action::ManageAccess,
    ];

    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Search => "search",
            Action::Export => "export",
            Action::Shred => "shred",
            Action::ManageKeys => "manage_keys",
            Action::ReadAudit => "read_audit",
            Action::ManageAccess => "manage_access",
        }
    }

    /// Parses a policy-file name.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Does this action touch data values (as opposed to keys, the audit log or access rights)?
    pub fn is_data(self) -> bool {
        !matches!(self, Action::ManageKeys | Action::ReadAudit | Action::ManageAccess)
    }

    /// Does this action reveal plaintext to the caller?
    pub fn reveals_plaintext(self) -> bool {
        matches!(self, Action::Read | Action::Search | Action::Export)
    }

    pub(crate) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ActionSet(u16);

impl ActionSet {
    /// No action.
    pub const EMPTY: ActionSet = ActionSet(0);

    /// The set of the given actions.
    pub fn of(actions: &[Action]) -> Self {
        let mut s = Self::EMPTY;
        for a in actions {
            s.insert(*a);
        }
        s
    }

    /// Adds an action.
    pub fn insert(&mut self, a: Action) {
        self.0 |= a.bit();
    }

    /// Is `a` in the set?
    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    /// Union.
    pub fn union(self, other: ActionSet) -> ActionSet {
        ActionSet(self.0 | other.0)
    }

    /// Is the set empty?
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The actions, in [`Action::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl fmt::Display for ActionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for a in self.iter() {
            if !first {
                f.write_str(",")?;
            }
            f.write_str(a.as_str())?;
            first = false;
        }
        Ok(())
    }
}

/// The id of a support access grant (`sg_` and 32 hex digits, random).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantId(Arc<str>);

impl GrantId {
    /// A fresh random id.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; 16];
        crate::error::random_fill(&mut b)?;
        let mut s = String::with_capacity(35);
        s.push_str("sg_");
        for x in b {
            s.push_str(&format!("{x:02x}"));
        }
        Ok(Self(s.into()))
    }

    /// Parses an id (as stored by a persisted registry).
    pub fn parse(s: &str) -> Result<Self> {
        let ok = s.len() == 35
            && s.starts_with("sg_")
            && s.bytes().skip(3).all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(Error::invalid("grant id", "must be sg_ and 32 lower-case hex digits"))
        }
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GrantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who is asking: a user of at most one tenant, with roles, or a support user acting under a
/// support grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    user: UserId,
    tenant: Option<TenantId>,
    roles: Vec<RoleName>,
    subject: Option<String>,
    support_grant: Option<GrantId>,
}

impl Principal {
    /// A tenant user with roles. Roles are kept sorted and without duplicates, so their order
    /// never changes a decision.
    pub fn new(user: UserId, tenant: Option<TenantId>, roles: impl IntoIterator<Item = RoleName>) -> Self {
        let mut roles: Vec<RoleName> = roles.into_iter().collect();
        roles.sort();
        roles.dedup();
        Self { user, tenant, roles, subject: None, support_grant: None }
    }

    /// A support user (no tenant, no roles) acting under a support grant.
    pub fn support(user: UserId, grant: GrantId) -> Self {
        Self { user, tenant: None, roles: Vec::new(), subject: None, support_grant: Some(grant) }
    }

    /// Links the user to their own data subject (the employee record about them), for roles
    /// that cover only the user's own records (`employee`).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Adds a support grant to use when the roles do not allow.
    pub fn with_support_grant(mut self, grant: GrantId) -> Self {
        self.support_grant = Some(grant);
        self
    }

    /// The user.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The user's tenant, if any.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// The roles, sorted.
    pub fn roles(&self) -> &[RoleName] {
        &self.roles
    }

    /// The user's own data subject, if linked.
    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The support grant, if any.
    pub fn support_grant(&self) -> Option<&GrantId> {
        self.support_grant.as_ref()
    }
}

/// What the action is aimed at. Names are shared (`Arc<str>`), so the proof an allow carries
/// copies no strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One record of a collection, optionally about a data subject (an employee).
    Record {
        /// Collection (table).
        collection: Arc<str>,
        /// Record id.
        record: Arc<str>,
        /// The data subject the record is about, as the store recorded it.
        subject: Option<Arc<str>>,
    },
    /// A whole collection (a search, a listing, an export), optionally limited to one subject.
    Collection {
        /// Collection (table).
        collection: Arc<str>,
        /// Limit to this subject's records.
        subject: Option<Arc<str>>,
    },
    /// The tenant as a whole (keys, audit log, access rights).
    Tenant,
}

impl Target {
    /// One record.
    pub fn record(collection: &str, record: &str, subject: Option<&str>) -> Self {
        Target::Record {
            collection: collection.into(),
            record: record.into(),
            subject: subject.map(Arc::from),
        }
    }

    /// A collection.
    pub fn collection(collection: &str, subject: Option<&str>) -> Self {
        Target::Collection { collection: collection.into(), subject: subject.map(Arc::from) }
    }

    /// The collection, if the target names one.
    pub fn collection_name(&self) -> Option<&str> {
        match self {
            Target::Record { collection, .. } | Target::Collection { collection, .. } => Some(collection),
            Target::Tenant => None,
        }
    }

    /// The record, if the target names one.
    pub fn record_id(&self) -> Option<&str> {
        match self {
            Target::Record { record, .. } => Some(record),
            _ => None,
        }
    }

    /// The subject the target is limited to, if any.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Target::Record { subject, .. } | Target::Collection { subject, .. } => subject.as_deref(),
            Target::Tenant => None,
        }
    }
}

/// One authorization question.
///
/// `tenant` is the tenant that **owns the data**, as the store recorded it (the row's tenant
/// column, the blob's tenant prefix), never a value taken from the user's input. A record id
/// guessed or copied from another tenant therefore arrives here with that other tenant, and is
/// denied.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    /// The tenant that owns the data.
    pub tenant: &'a TenantId,
    /// The action.
    pub action: Action,
    /// The domains touched (for example `general` and `medical` for a record with fields in
    /// both). Every one must be allowed.
    pub domains: &'a [DomainName],
    /// What the action is aimed at.
    pub target: Target,
    /// A stated reason for emergency ("break-glass") access to a domain the roles lack.
    pub break_glass: Option<&'a str>,
}

impl<'a> Request<'a> {
    /// A request without break-glass.
    pub fn new(tenant: &'a TenantId, action: Action, domains: &'a [DomainName], target: Target) -> Self {
        Self { tenant, action, domains, target, break_glass: None }
    }

    /// The same request with a break-glass reason.
    pub fn with_break_glass(mut self, reason: &'a str) -> Self {
        self.break_glass = Some(reason);
        self
    }
}
