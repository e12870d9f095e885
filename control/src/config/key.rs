//! The pre-shared group key that authenticates control messages.
//!
//! Format: hex text, at least [`MIN_KEY_LEN`] bytes (64 hex digits); ASCII whitespace
//! anywhere is ignored so the key may be wrapped or end in a newline. Hex, not raw bytes,
//! so the file can be inspected, compared and copied with text tools, and so a truncated
//! paste shows as an odd digit count instead of a silently shorter key.

use std::fmt;
use std::io;
use std::path::Path;

/// Shortest accepted key: HMAC-SHA256 gains nothing beyond its 32-byte output size, and
/// anything shorter weakens it.
pub const MIN_KEY_LEN: usize = 32;

/// The group key bytes. `Debug` does not print them.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupKey(Vec<u8>);

/// Why a key file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read (or its metadata could not be queried).
    #[error("reading the key file: {0}")]
    Io(#[from] io::Error),
    /// The file is readable by group or others.
    #[error("key file mode is {mode:o}: it must not be accessible by group or others (chmod 600)")]
    Permissions {
        /// The file's permission bits.
        mode: u32,
    },
    /// A character that is neither a hex digit nor whitespace.
    #[error("key file byte {offset} is not a hex digit: the key must be hex text")]
    NotHex {
        /// Byte offset of the character in the file.
        offset: usize,
    },
    /// An odd number of hex digits: the last byte is incomplete.
    #[error("key has an odd number of hex digits ({digits}); is it truncated?")]
    OddDigits {
        /// Number of hex digits found.
        digits: usize,
    },
    /// Fewer than [`MIN_KEY_LEN`] bytes.
    #[error("key is {bytes} bytes; at least {MIN_KEY_LEN} are required")]
    TooShort {
        /// Length of the decoded key.
        bytes: usize,
    },
}

impl GroupKey {
    /// Decodes a key from the key-file text format.
    pub fn from_hex(text: &str) -> Result<GroupKey, KeyError> {
        let mut digits = Vec::with_capacity(text.len());
        for (offset, b) in text.bytes().enumerate() {
            if b.is_ascii_whitespace() {
                continue;
            }
            let v = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(KeyError::NotHex { offset }),
            };
            digits.push(v);
        }
        if digits.len() % 2 != 0 {
            return Err(KeyError::OddDigits {
                digits: digits.len(),
            });
        }
        let bytes: Vec<u8> = digits.chunks_exact(2).map(|p| p[0] << 4 | p[1]).collect();
        Self::from_bytes(bytes)
    }

    /// Wraps raw key bytes, enforcing the minimum length.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GroupKey, KeyError> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(KeyError::TooShort { bytes: bytes.len() });
        }
        Ok(GroupKey(bytes))
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupKey({} bytes, redacted)", self.0.len())
    }
}

/// Reads and checks a key file.
pub(crate) fn load(path: &Path) -> Result<GroupKey, KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { mode });
    }
    GroupKey::from_hex(&std::fs::read_to_string(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX64: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn decodes_hex_ignoring_whitespace() {
        let wrapped = format!("{}\n  {}\n", &HEX64[..30], HEX64[30..].to_uppercase());
        let key = GroupKey::from_hex(&wrapped).expect("valid key");
        assert_eq!(key.as_bytes(), (0u8..32).collect::<Vec<_>>().as_slice());
        assert!(!format!("{key:?}").contains("0001"), "Debug leaks the key");
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(matches!(
            GroupKey::from_hex(&HEX64[..62]),
            Err(KeyError::TooShort { bytes: 31 })
        ));
        assert!(matches!(
            GroupKey::from_hex(&HEX64[..63]),
            Err(KeyError::OddDigits { digits: 63 })
        ));
        assert!(matches!(
            GroupKey::from_hex(&format!("{HEX64}zz")),
            Err(KeyError::NotHex { offset: 64 })
        ));
    }

    #[test]
    fn load_checks_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::config::tests::TempDir::new("key");
        let path = dir.path().join("group.key");
        std::fs::write(&path, HEX64).expect("write key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            load(&path),
            Err(KeyError::Permissions { mode: 0o644 })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(load(&path).expect("key loads").as_bytes().len(), 32);
        assert!(matches!(
            load(&dir.path().join("absent")),
            Err(KeyError::Io(_))
        ));
    }
}
