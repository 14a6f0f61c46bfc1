//! A wall clock that tests can control.
//!
//! `kluis_core::keys::Clock` is monotonic (`Instant`), which suits in-process cache lifetimes.
//! The service needs **wall-clock** time instead: support grants, welcome passwords and
//! lockouts outlive a process once they are persisted, and TOTP codes are defined on Unix time.
//! So this module has its own small trait with the same shape.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now.
    fn now(&self) -> SystemTime;
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told (for tests). Never goes backwards unless [`ManualClock::set`]
/// is used.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<SystemTime>,
}

impl ManualClock {
    /// Starts at the current system time.
    pub fn new() -> Self {
        Self::at(SystemTime::now())
    }

    /// Starts at a chosen time.
    pub fn at(t: SystemTime) -> Self {
        Self { now: Mutex::new(t) }
    }

    /// Starts at `secs` seconds after the Unix epoch.
    pub fn at_unix(secs: u64) -> Self {
        Self::at(UNIX_EPOCH + Duration::from_secs(secs))
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        match self.now.lock() {
            Ok(mut n) => *n += d,
            Err(p) => *p.into_inner() += d,
        }
    }

    /// Sets the clock (may go backwards, to test clock skew).
    pub fn set(&self, t: SystemTime) {
        match self.now.lock() {
            Ok(mut n) => *n = t,
            Err(p) => *p.into_inner() = t,
        }
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        match self.now.lock() {
            Ok(n) => *n,
            Err(p) => *p.into_inner(),
        }
    }
}

/// Time elapsed from `earlier` to `later`, zero when `later` is not after `earlier` (a clock set
/// back never yields a negative age).
pub fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}

/// Seconds since the Unix epoch, zero before it.
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
