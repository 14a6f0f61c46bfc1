//! The one place Kluis draws randomness: the operating system's CSPRNG via `getrandom`.

use crate::error::{Error, Result};

/// Fills `buf` with random bytes.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| Error::Rng)
}

/// A random array.
pub(crate) fn array<const N: usize>() -> Result<[u8; N]> {
    let mut a = [0u8; N];
    fill(&mut a)?;
    Ok(a)
}
