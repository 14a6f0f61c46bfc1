//! Byte-level reading and writing helpers shared by every format in this crate.
//!
//! Every parser in Kluis reads through [`Reader`], which never indexes out of bounds: a short input
//! is reported as [`Error::Malformed`] with the name of the structure being parsed.

use crate::error::Error;

/// A cursor over untrusted bytes. All reads are bounds-checked.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, pos: 0, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).ok_or_else(|| Error::malformed(self.what, "length overflow"))?;
        let out = self.buf.get(self.pos..end).ok_or_else(|| Error::malformed(self.what, "too short"))?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let s = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// A byte string prefixed with its length as a big-endian u16.
    pub(crate) fn bytes16(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    /// A byte string prefixed with its length as a big-endian u32.
    pub(crate) fn bytes32(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::try_from(self.u32()?).map_err(|_| Error::malformed(self.what, "length overflow"))?;
        self.take(n)
    }

    /// A UTF-8 string prefixed with its length as a big-endian u16.
    pub(crate) fn str16(&mut self) -> Result<&'a str, Error> {
        let b = self.bytes16()?;
        core::str::from_utf8(b).map_err(|_| Error::malformed(self.what, "invalid utf-8"))
    }

    pub(crate) fn finish(&self) -> Result<(), Error> {
        if self.remaining() == 0 { Ok(()) } else { Err(Error::malformed(self.what, "trailing bytes")) }
    }
}

/// Appends a length-prefixed (u16, big-endian) byte string. Fails if longer than `u16::MAX`.
pub(crate) fn put_bytes16(out: &mut Vec<u8>, what: &'static str, b: &[u8]) -> Result<(), Error> {
    let n = u16::try_from(b.len()).map_err(|_| Error::invalid(what, "longer than 65535 bytes"))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

/// Appends a length-prefixed (u32, big-endian) byte string.
pub(crate) fn put_bytes32(out: &mut Vec<u8>, what: &'static str, b: &[u8]) -> Result<(), Error> {
    let n = u32::try_from(b.len()).map_err(|_| Error::invalid(what, "longer than 4 GiB"))?;
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}
