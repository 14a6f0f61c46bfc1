//! The one place Kluis draws randomness: the operating system's CSPRNG via `getrandom`.
//!
//! - Secret values (keys) come straight from the OS on every call: [`fill`], [`array`].
//! - Public values (the salts and document nonces written in clear into every ciphertext) come
//!   from [`public_array`]: a per-thread buffer refilled from the OS 4 KiB at a time, which saves a
//!   system call per sealed value (about 0.4 µs, see BENCHMARKS.md). The buffer is discarded when
//!   the process id changes, so a forked child never reuses its parent's bytes (a repeated salt
//!   would repeat a one-time key). Bytes are handed out once and wiped from the buffer as they go.

use std::cell::RefCell;

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

const POOL: usize = 4096;

struct Pool {
    pid: u32,
    bytes: [u8; POOL],
    pos: usize,
}

thread_local! {
    static PUBLIC_POOL: RefCell<Pool> = const { RefCell::new(Pool { pid: 0, bytes: [0u8; POOL], pos: POOL }) };
}

/// A random array for a value that is published in clear (salt, nonce). `N` is at most 4096.
pub(crate) fn public_array<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    if N > POOL {
        fill(&mut out)?;
        return Ok(out);
    }
    let pid = std::process::id();
    PUBLIC_POOL.with(|cell| {
        let mut pool = cell.try_borrow_mut().map_err(|_| Error::Rng)?;
        // INVARIANT: bytes before `pos` were handed out (and wiped) or are stale; a new process
        // (after fork) starts with an empty pool.
        if pool.pid != pid || POOL - pool.pos < N {
            fill(&mut pool.bytes)?;
            pool.pid = pid;
            pool.pos = 0;
        }
        let start = pool.pos;
        let src = pool.bytes.get_mut(start..start + N).ok_or_else(|| Error::Rng)?;
        out.copy_from_slice(src);
        src.fill(0);
        pool.pos = start + N;
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_values_never_repeat_across_refills() {
        let mut seen = std::collections::HashSet::new();
        // 10,000 salts span about 60 pool refills.
        for _ in 0..10_000 {
            assert!(seen.insert(public_array::<24>().unwrap()));
        }
        let big: [u8; 5000] = public_array().unwrap();
        assert!(big.iter().any(|&b| b != 0));
    }
}
