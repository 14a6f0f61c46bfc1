//! Brute-force throttling of logins, per account and per source (an IP address or another
//! identifier the application chooses), on a [`Clock`] that tests control.
//!
//! - **Account:** the first `account_free_failures` consecutive failures cost nothing; each
//!   further one locks the account for `account_base_lock`, doubling up to `account_max_lock`.
//!   After `account_hard_limit` consecutive failures (NIST: at most 100) the account stays locked
//!   until [`Throttle::unlock_account`]. A success resets the count. Locks are temporary so an
//!   attacker cannot lock a user out for long by guessing.
//! - **Source:** more than `source_max_failures` failures within `source_window` block the source
//!   until the window ends, whatever account it tries (password spraying).
//!
//! Memory is bounded: at most `max_tracked` accounts and sources each; stale entries go first.
//!
//! Keys are normalised so trivial variations do not buy fresh attempts: account names are
//! trimmed and lower-cased (`Piet` and `piet ` are one account), and an IPv6 source counts as its
//! /64 network (one customer line usually holds a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::{Clock, since};

/// Limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ThrottleConfig {
    /// Consecutive failures before the first lock (default 5).
    pub account_free_failures: u32,
    /// First lock (default 1 minute).
    pub account_base_lock: Duration,
    /// Longest temporary lock (default 1 hour).
    pub account_max_lock: Duration,
    /// Consecutive failures after which the account stays locked until unlocked (default 100).
    pub account_hard_limit: u32,
    /// Failures allowed per source in one window (default 50).
    pub source_max_failures: u32,
    /// The source window (default 15 minutes).
    pub source_window: Duration,
    /// Entries kept per map (default 100,000).
    pub max_tracked: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            account_free_failures: 5,
            account_base_lock: Duration::from_secs(60),
            account_max_lock: Duration::from_secs(3600),
            account_hard_limit: 100,
            source_max_failures: 50,
            source_window: Duration::from_secs(15 * 60),
            max_tracked: 100_000,
        }
    }
}

/// Why a login attempt may not go ahead now.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Throttled {
    /// The account is locked for a while.
    #[error("too many failed logins for this account: try again in {} seconds", retry_after.as_secs().max(1))]
    Account {
        /// How long.
        retry_after: Duration,
    },
    /// The account is locked until an administrator unlocks it.
    #[error("this account is locked after too many failed logins: an administrator must unlock it")]
    AccountDisabled,
    /// The source is blocked for a while.
    #[error("too many failed logins from this source: try again in {} seconds", retry_after.as_secs().max(1))]
    Source {
        /// How long.
        retry_after: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct AccountState {
    failures: u32,
    locked_until: Option<SystemTime>,
    last: SystemTime,
}

#[derive(Debug, Clone, Copy)]
struct SourceState {
    window_start: SystemTime,
    failures: u32,
}

#[derive(Debug, Default)]
struct State {
    accounts: HashMap<String, AccountState>,
    sources: HashMap<String, SourceState>,
}

/// Throttles login attempts. Call [`Throttle::check`] before verifying a password, then
/// [`Throttle::record_failure`] or [`Throttle::record_success`].
#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl Throttle {
    /// A throttle with the given limits and clock.
    pub fn new(config: ThrottleConfig, clock: Arc<dyn Clock>) -> Self {
        Self { config, clock, state: Mutex::new(State::default()) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// May an attempt for `account` from `source` go ahead now?
    pub fn check(&self, account: &str, source: &str) -> Result<(), Throttled> {
        let (account, source) = (account_key(account), source_key(source));
        let now = self.clock.now();
        let st = self.state();
        if let Some(s) = st.sources.get(&source) {
            let end = s.window_start + self.config.source_window;
            if now < end && s.failures >= self.config.source_max_failures {
                return Err(Throttled::Source { retry_after: since(end, now) });
            }
        }
        if let Some(a) = st.accounts.get(&account) {
            if a.failures >= self.config.account_hard_limit {
                return Err(Throttled::AccountDisabled);
            }
            if let Some(until) = a.locked_until
                && now < until
            {
                return Err(Throttled::Account { retry_after: since(until, now) });
            }
        }
        Ok(())
    }

    /// Records a failed attempt.
    pub fn record_failure(&self, account: &str, source: &str) {
        let (account, source) = (account_key(account), source_key(source));
        let now = self.clock.now();
        let cfg = self.config;
        let mut st = self.state();
        if st.accounts.len() >= cfg.max_tracked && !st.accounts.contains_key(&account) {
            prune_accounts(&mut st.accounts, now, cfg);
        }
        let a =
            st.accounts.entry(account).or_insert(AccountState { failures: 0, locked_until: None, last: now });
        a.failures = a.failures.saturating_add(1);
        a.last = now;
        if a.failures > cfg.account_free_failures {
            let doublings = (a.failures - cfg.account_free_failures - 1).min(20);
            let lock = cfg.account_base_lock.saturating_mul(1u32 << doublings).min(cfg.account_max_lock);
            a.locked_until = Some(now + lock);
        }
        if st.sources.len() >= cfg.max_tracked && !st.sources.contains_key(&source) {
            prune_sources(&mut st.sources, now, cfg);
        }
        let s = st.sources.entry(source).or_insert(SourceState { window_start: now, failures: 0 });
        if since(now, s.window_start) >= cfg.source_window {
            *s = SourceState { window_start: now, failures: 0 };
        }
        s.failures = s.failures.saturating_add(1);
    }

    /// Records a successful attempt: the account's failure count starts again. (The source's
    /// count does not: one good password must not hide a spray.)
    pub fn record_success(&self, account: &str, _source: &str) {
        self.state().accounts.remove(&account_key(account));
    }

    /// An administrator unlocks an account.
    pub fn unlock_account(&self, account: &str) {
        self.state().accounts.remove(&account_key(account));
    }

    /// Consecutive failures recorded for an account.
    pub fn failures(&self, account: &str) -> u32 {
        self.state().accounts.get(&account_key(account)).map_or(0, |a| a.failures)
    }
}

fn account_key(account: &str) -> String {
    account.trim().to_lowercase()
}

fn source_key(source: &str) -> String {
    match source.trim().parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => source.trim().to_owned(),
    }
}

fn prune_accounts(m: &mut HashMap<String, AccountState>, now: SystemTime, cfg: ThrottleConfig) {
    // Drop entries that no longer lock anything and have been quiet for the longest lock.
    m.retain(|_, a| {
        a.failures >= cfg.account_hard_limit
            || a.locked_until.is_some_and(|u| now < u)
            || since(now, a.last) < cfg.account_max_lock
    });
    if m.len() >= cfg.max_tracked {
        // Still full: drop the tenth quiet the longest (never a disabled account), so the next
        // pruning is far away and a flood costs amortised constant time per failure.
        let mut ages: Vec<(SystemTime, String)> = m
            .iter()
            .filter(|(_, a)| a.failures < cfg.account_hard_limit)
            .map(|(k, a)| (a.last, k.clone()))
            .collect();
        ages.sort();
        for (_, k) in ages.into_iter().take((cfg.max_tracked / 10).max(1)) {
            m.remove(&k);
        }
    }
}

fn prune_sources(m: &mut HashMap<String, SourceState>, now: SystemTime, cfg: ThrottleConfig) {
    m.retain(|_, s| since(now, s.window_start) < cfg.source_window);
    if m.len() >= cfg.max_tracked {
        let mut ages: Vec<(SystemTime, String)> =
            m.iter().map(|(k, s)| (s.window_start, k.clone())).collect();
        ages.sort();
        for (_, k) in ages.into_iter().take((cfg.max_tracked / 10).max(1)) {
            m.remove(&k);
        }
    }
}
