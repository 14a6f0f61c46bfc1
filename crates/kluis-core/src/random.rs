//! The one place Kluis draws randomness: the operating system's CSPRNG via `getrandom`.
//!
//! - Secret values (keys) come straight from the OS on every call: [`fill`], [`array`].
//! - Public values that must be unique (the salt of every sealed value, and so the GCM nonce `r`
//!   and every epoch; document nonces) come from [`public_array`], one OS call per value, or
//!   for the values one call seals together (the cells of a record, `keys::seal_fields`) from
//!   one [`fill`] made by that call for them alone (`seal::Fresh`). There is deliberately **no
//!   buffer of randomness in user space** between calls: a buffer, like any process state, is
//!   copied by a VM snapshot, a checkpoint/restore or a `fork`, and two copies would hand out the
//!   same bytes to different values. Bytes drawn from the OS after the copy differ in each copy
//!   as long as the OS's generator does (Linux reseeds it when a VM is cloned, through the VM
//!   generation id); bytes drawn by a call before a copy made during it go to the same inputs in
//!   every copy. docs/FORMAT.md §5.2 states the bound this gives; BENCHMARKS.md the cost (one
//!   system call per value: 220 ns against 102 ns for the former 4 KiB pool, +0.2 µs per
//!   100-byte seal+open).

use crate::error::{Error, Result};

/// Fills `buf` with random bytes from the OS.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Rng)
}

/// A random array from the OS (for secrets).
pub(crate) fn array<const N: usize>() -> Result<[u8; N]> {
    let mut a = [0u8; N];
    fill(&mut a)?;
    Ok(a)
}

/// A random array for a value that is published in clear and must be unique (salt, nonce):
/// drawn from the OS by this call, never from bytes drawn earlier.
pub(crate) fn public_array<const N: usize>() -> Result<[u8; N]> {
    array()
}

/// This process's id: sealing starts a new epoch when it changes (after `fork`). Tests can
/// pretend to be a forked child.
pub(crate) fn process_id() -> u32 {
    #[cfg(test)]
    if let Some(p) = FAKE_PID.with(std::cell::Cell::get) {
        return p;
    }
    std::process::id()
}

#[cfg(test)]
thread_local! {
    static FAKE_PID: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
pub(crate) fn set_fake_pid(pid: Option<u32>) {
    FAKE_PID.with(|c| c.set(pid));
}

/// What a VM snapshot copies of this module's per-thread state: nothing. There is no buffer of
/// randomness to replay (tests use this to play a clone: see `seal.rs`).
#[cfg(test)]
pub(crate) struct ThreadState;

#[cfg(test)]
pub(crate) fn snapshot_thread_state() -> ThreadState {
    ThreadState
}

#[cfg(test)]
pub(crate) fn restore_thread_state(_: &ThreadState) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloned_thread_never_replays_public_values() {
        let _ = public_array::<24>().unwrap();
        // A VM snapshot (or a restored checkpoint) copies this thread's state into two processes
        // with the same pid: each continuation must draw its own bytes.
        let snap = snapshot_thread_state();
        let a: Vec<[u8; 24]> = (0..200).map(|_| public_array().unwrap()).collect();
        restore_thread_state(&snap);
        let b: Vec<[u8; 24]> = (0..200).map(|_| public_array().unwrap()).collect();
        let seen: std::collections::HashSet<_> = a.iter().collect();
        assert!(b.iter().all(|v| !seen.contains(v)), "a clone replayed a public value");
    }

    #[test]
    fn public_values_never_repeat() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(public_array::<24>().unwrap()));
        }
        let big: [u8; 5000] = public_array().unwrap();
        assert!(big.iter().any(|&b| b != 0));
    }
}
