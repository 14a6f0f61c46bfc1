//! Session idle lock: a session unused for 20 minutes (configurable) locks, and stays locked
//! until the user authenticates again. An optional absolute limit ends it regardless of use.

use std::time::{Duration, SystemTime};

use crate::clock::since;

/// Session limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionPolicy {
    /// Idle time after which the session locks (default 20 minutes).
    pub idle_timeout: Duration,
    /// Total lifetime, whatever the use (default 12 hours; `None` for none).
    pub absolute_timeout: Option<Duration>,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(20 * 60),
            absolute_timeout: Some(Duration::from_secs(12 * 3600)),
        }
    }
}

impl SessionPolicy {
    /// The default with another idle timeout.
    pub fn with_idle_timeout(idle: Duration) -> Self {
        Self { idle_timeout: idle, ..Self::default() }
    }
}

/// Why a session may not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionLocked {
    /// Idle too long: the user must authenticate again to unlock.
    #[error("the session is locked after inactivity: sign in again")]
    Idle,
    /// Past its total lifetime: start a new session.
    #[error("the session has ended: sign in again")]
    Expired,
}

/// The state of one session (persist it with the session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    started_at: SystemTime,
    last_activity: SystemTime,
    locked: bool,
}

impl Session {
    /// A session that starts now (after a successful login).
    pub fn start(now: SystemTime) -> Self {
        Self { started_at: now, last_activity: now, locked: false }
    }

    /// Restores a persisted session.
    pub fn from_parts(started_at: SystemTime, last_activity: SystemTime, locked: bool) -> Self {
        Self { started_at, last_activity, locked }
    }

    /// When it started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }
    /// Last activity.
    pub fn last_activity(&self) -> SystemTime {
        self.last_activity
    }

    /// The state at `now`, without changing it.
    pub fn status(&self, policy: &SessionPolicy, now: SystemTime) -> Result<(), SessionLocked> {
        if policy.absolute_timeout.is_some_and(|max| since(now, self.started_at) >= max) {
            return Err(SessionLocked::Expired);
        }
        if self.locked || since(now, self.last_activity) >= policy.idle_timeout {
            return Err(SessionLocked::Idle);
        }
        Ok(())
    }

    /// Records activity at `now`, or reports the lock (and keeps the session locked).
    pub fn touch(&mut self, policy: &SessionPolicy, now: SystemTime) -> Result<(), SessionLocked> {
        match self.status(policy, now) {
            Ok(()) => {
                self.last_activity = self.last_activity.max(now);
                Ok(())
            }
            Err(e) => {
                self.locked = true;
                Err(e)
            }
        }
    }

    /// Unlocks after the user authenticated again (not possible past the absolute limit).
    pub fn unlock(&mut self, policy: &SessionPolicy, now: SystemTime) -> Result<(), SessionLocked> {
        if policy.absolute_timeout.is_some_and(|max| since(now, self.started_at) >= max) {
            return Err(SessionLocked::Expired);
        }
        self.locked = false;
        self.last_activity = now;
        Ok(())
    }
}
