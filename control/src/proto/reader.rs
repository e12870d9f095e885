//! A bounds-checked cursor over received bytes: every read returns a typed error instead of
//! panicking, which keeps the decoders total.

use super::ProtoError;

pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The next `n` bytes; a shortfall is reported as `err`.
    pub(crate) fn take(&mut self, n: usize, err: ProtoError) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(err);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self, err: ProtoError) -> Result<[u8; N], ProtoError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, err)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        Ok(self.array::<1>(ProtoError::Malformed { field })?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        Ok(u16::from_be_bytes(
            self.array(ProtoError::Malformed { field })?,
        ))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(
            self.array(ProtoError::Malformed { field })?,
        ))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(
            self.array(ProtoError::Malformed { field })?,
        ))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless every byte was consumed: trailing bytes mean a malformed body.
    pub(crate) fn finish(&self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::Malformed {
                field: "trailing bytes",
            })
        }
    }
}
