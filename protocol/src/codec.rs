//! Bounds-checked little-endian encoding helpers shared by every format in this crate.
//!
//! Decoding never panics and never allocates more than the input holds: every length
//! is checked against the bytes that remain before it is used.

use bytes::{BufMut, Bytes};

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the structure did.
    #[error("truncated input: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Offset at which more bytes were needed.
        offset: usize,
        /// How many more.
        needed: usize,
    },
    /// The stored checksum does not match the bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum found in the input.
        stored: u32,
        /// Checksum of the bytes it covers.
        computed: u32,
    },
    /// The format marker or a tag byte is not one this version knows.
    #[error("unknown format: {0}")]
    Format(&'static str),
    /// Bytes were left over after the structure ended.
    #[error("{0} trailing bytes after the structure")]
    Trailing(usize),
}

/// Reads fixed-width little-endian values and length-prefixed byte strings from a
/// [`Bytes`], returning zero-copy slices of it.
#[derive(Debug)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// Starts reading `buf` from its first byte.
    pub fn new(buf: Bytes) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Offset of the next byte to read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Takes the next `n` bytes without copying.
    pub fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let out = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    /// Reads a little-endian u16.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads a byte string prefixed by a u16 length.
    pub fn bytes16(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    /// Reads a byte string prefixed by a u32 length.
    pub fn bytes32(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// Fails if any byte is left.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

/// `n` in decimal ASCII digits, written into `digits` without allocating: the
/// numbers the text formats write (RESP lengths, `Cache-Status` parameters).
#[inline]
pub fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// Writes a byte string prefixed by a u16 length.
///
/// # Panics
/// If `b` is longer than `u16::MAX`; callers enforce the limits (keys, tags) before
/// encoding, so this is an invariant of the caller, never reachable from input.
pub fn put_bytes16(out: &mut impl BufMut, b: &[u8]) {
    let n = u16::try_from(b.len()).expect("caller enforces u16-sized field limit");
    out.put_u16_le(n);
    out.put_slice(b);
}

/// Writes a byte string prefixed by a u32 length.
///
/// # Panics
/// If `b` is 4 GiB or longer; the node's value limit is far below that.
pub fn put_bytes32(out: &mut impl BufMut, b: &[u8]) {
    let n = u32::try_from(b.len()).expect("caller enforces u32-sized field limit");
    out.put_u32_le(n);
    out.put_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_instead_of_panicking() {
        let mut r = Reader::new(Bytes::from_static(&[5, 0, 1, 2]));
        assert_eq!(
            r.bytes16(),
            Err(DecodeError::Truncated {
                offset: 2,
                needed: 3
            })
        );
    }

    #[test]
    fn round_trip_of_length_prefixed_fields() {
        let mut out = Vec::new();
        put_bytes16(&mut out, b"abc");
        put_bytes32(&mut out, b"");
        out.put_u64_le(7);
        let mut r = Reader::new(out.into());
        assert_eq!(&r.bytes16().unwrap()[..], b"abc");
        assert!(r.bytes32().unwrap().is_empty());
        assert_eq!(r.u64().unwrap(), 7);
        r.finish().unwrap();
    }
}
