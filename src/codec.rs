//! Bounded encoding of payloads (bincode).
//!
//! Invariant: every decode of bytes that came from disk or from a child process
//! goes through [`decode`], which enforces a size limit, rejects trailing bytes
//! and returns an error instead of panicking.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Default maximum payload size (inputs, outputs, event payloads): 16 MiB.
pub const PAYLOAD_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The payload is larger than the limit.
    TooLarge {
        /// Its encoded size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// The bytes are not a valid encoding of the expected type.
    Invalid {
        /// The Rust type expected.
        type_name: &'static str,
        /// What the decoder said.
        detail: String,
    },
}

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodecError::TooLarge { size, limit } => {
                write!(
                    f,
                    "payload of {size} bytes is over the limit of {limit} bytes"
                )
            }
            CodecError::Invalid { type_name, detail } => {
                write!(f, "cannot decode {type_name}: {detail}")
            }
        }
    }
}

impl std::error::Error for CodecError {}

fn opts(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Encode `value`, failing if the encoding is over `limit` bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T, limit: u64) -> Result<Vec<u8>, CodecError> {
    opts(limit).serialize(value).map_err(|e| match *e {
        bincode::ErrorKind::SizeLimit => CodecError::TooLarge {
            size: bincode::DefaultOptions::new()
                .with_fixint_encoding()
                .serialized_size(value)
                .unwrap_or(u64::MAX),
            limit,
        },
        other => CodecError::Invalid {
            type_name: std::any::type_name::<T>(),
            detail: other.to_string(),
        },
    })
}

/// Decode a `T` from `bytes`, bounded by `limit` bytes; never panics.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    if bytes.len() as u64 > limit {
        return Err(CodecError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    opts(limit)
        .deserialize(bytes)
        .map_err(|e| CodecError::Invalid {
            type_name: std::any::type_name::<T>(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncation_are_errors() {
        let bytes = encode(&(1u64, String::from("hello")), 1024).unwrap();
        assert!(decode::<(u64, String)>(&bytes[..bytes.len() - 1], 1024).is_err());
        assert!(decode::<(u64, String)>(&[0xff; 40], 1024).is_err());
        assert!(
            decode::<u32>(&bytes, 1024).is_err(),
            "trailing bytes rejected"
        );
        let big = vec![0u8; 2048];
        assert!(matches!(
            encode(&big, 1024),
            Err(CodecError::TooLarge { .. })
        ));
        // A length prefix claiming a huge vector must not allocate it.
        let mut evil = u64::MAX.to_le_bytes().to_vec();
        evil.extend_from_slice(&[1, 2, 3]);
        assert!(decode::<Vec<u8>>(&evil, 1024).is_err());
    }
}
