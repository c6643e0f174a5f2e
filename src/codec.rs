//! Bounded encoding of stored payloads: a small header, then the body (bincode or JSON).
//!
//! Every payload waymark stores in a BLOB column (run inputs and outputs, journal entry
//! outputs, event payloads, schedule inputs) is *sealed*:
//!
//! ```text
//! byte 0     header version (1)
//! byte 1     body format: 1 = bincode 1.3 (fixint, little-endian), 2 = JSON
//! bytes 2..6 CRC-32 (IEEE) of bytes 0..2 and the body, little-endian
//! bytes 6..  body
//! ```
//!
//! The format tag lets a successor of bincode be adopted by a migration that re-seals old
//! rows, not by a rewrite; the checksum makes a flipped bit in a stored payload a
//! [`CodecError::Checksum`] instead of a silently different value. CRC-32 detects every
//! single-bit and double-bit error and every burst up to 32 bits in a body of any size we
//! allow, which is what bit rot looks like; a hash such as xxHash only makes detection
//! likely. Rows written before the header existed (schema version 4 and older) are sealed
//! by migration 5 (`store/schema.rs`), so a decode never has to guess whether bytes are old.
//!
//! Invariants: bincode is reachable only through this module; every decode of bytes that
//! came from disk or from a child process goes through [`decode`] (or [`decode_json`]),
//! which verifies the header and checksum, enforces a size limit, rejects trailing bytes
//! and returns an error instead of panicking.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};

/// Default maximum payload size (inputs, outputs, event payloads): 16 MiB.
pub const PAYLOAD_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Bytes of the header in front of every sealed payload.
pub const HEADER_BYTES: usize = 6;

/// The header layout this build writes (byte 0).
const HEADER_VERSION: u8 = 1;

/// How the body of a sealed payload is encoded (byte 1 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// bincode 1.3 with fixed-size integers, little-endian (waymark's typed payloads).
    Bincode1Fixint,
    /// JSON (event payloads, which other languages and the CLI send).
    Json,
}

impl Format {
    /// The tag stored in the header.
    pub const fn tag(self) -> u8 {
        match self {
            Format::Bincode1Fixint => 1,
            Format::Json => 2,
        }
    }

    fn from_tag(tag: u8) -> Option<Format> {
        match tag {
            1 => Some(Format::Bincode1Fixint),
            2 => Some(Format::Json),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Bincode1Fixint => "bincode 1.3",
            Format::Json => "JSON",
        })
    }
}

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
    /// Shorter than the header: not a sealed payload (or cut short).
    Truncated {
        /// Bytes present.
        size: u64,
    },
    /// The header names a header version or body format this build does not know.
    UnknownFormat {
        /// The header's version byte.
        header_version: u8,
        /// The header's format byte.
        format: u8,
    },
    /// The body is in another known format than the caller expects.
    WrongFormat {
        /// The format the caller decodes.
        expected: Format,
        /// The format the header names.
        found: Format,
    },
    /// The checksum stored in the header does not match the bytes: they changed on disk
    /// (or on the way) after they were written.
    Checksum {
        /// The CRC-32 in the header.
        stored: u32,
        /// The CRC-32 of the bytes read.
        computed: u32,
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
            CodecError::Truncated { size } => write!(
                f,
                "payload of {size} bytes is shorter than its {HEADER_BYTES}-byte header"
            ),
            CodecError::UnknownFormat {
                header_version,
                format,
            } => write!(
                f,
                "unknown payload format (header version {header_version}, format {format})"
            ),
            CodecError::WrongFormat { expected, found } => {
                write!(f, "payload is {found} where {expected} is expected")
            }
            CodecError::Checksum { stored, computed } => write!(
                f,
                "checksum mismatch (stored {stored:08x}, computed {computed:08x}): the payload changed after it was written"
            ),
        }
    }
}

impl std::error::Error for CodecError {}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(body);
    h.finalize()
}

/// Put the header (version, `format`, checksum) in front of `body`.
pub fn seal(format: Format, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + body.len());
    out.extend_from_slice(&[HEADER_VERSION, format.tag()]);
    let crc = checksum(&out, body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Verify the header of a sealed payload; returns its format and body. Never panics.
pub fn open(bytes: &[u8]) -> Result<(Format, &[u8]), CodecError> {
    if bytes.len() < HEADER_BYTES {
        return Err(CodecError::Truncated {
            size: bytes.len() as u64,
        });
    }
    let (header, body) = bytes.split_at(HEADER_BYTES);
    let format = match (header[0], Format::from_tag(header[1])) {
        (HEADER_VERSION, Some(format)) => format,
        (v, _) => {
            return Err(CodecError::UnknownFormat {
                header_version: v,
                format: header[1],
            })
        }
    };
    let stored = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    let computed = checksum(&header[..2], body);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok((format, body))
}

/// The body of a sealed payload of `format`, bounded by `limit` bytes.
fn open_as(bytes: &[u8], expected: Format, limit: u64) -> Result<&[u8], CodecError> {
    if bytes.len() as u64 > limit.saturating_add(HEADER_BYTES as u64) {
        return Err(CodecError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    let (found, body) = open(bytes)?;
    if found != expected {
        return Err(CodecError::WrongFormat { expected, found });
    }
    Ok(body)
}

fn opts(limit: u64) -> impl Options {
    bincode::DefaultOptions::new()
        .with_limit(limit)
        .with_fixint_encoding()
        .reject_trailing_bytes()
}

/// Encode `value` (bincode) and seal it, failing if the body is over `limit` bytes.
pub fn encode<T: Serialize + ?Sized>(value: &T, limit: u64) -> Result<Vec<u8>, CodecError> {
    let body = opts(limit).serialize(value).map_err(|e| match *e {
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
    })?;
    Ok(seal(Format::Bincode1Fixint, &body))
}

/// Encode an `i64` (a timer's wake-up time, a child's run id) and seal it; cannot fail.
pub fn encode_i64(value: i64) -> Vec<u8> {
    // bincode fixint of an i64 is its 8 little-endian bytes.
    seal(Format::Bincode1Fixint, &value.to_le_bytes())
}

/// Decode a `T` from sealed bincode `bytes` (body bounded by `limit` bytes); never panics.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    let body = open_as(bytes, Format::Bincode1Fixint, limit)?;
    opts(limit)
        .deserialize(body)
        .map_err(|e| CodecError::Invalid {
            type_name: std::any::type_name::<T>(),
            detail: e.to_string(),
        })
}

/// Encode `value` as JSON and seal it, failing if the body is over `limit` bytes.
pub fn encode_json<T: Serialize + ?Sized>(value: &T, limit: u64) -> Result<Vec<u8>, CodecError> {
    let body = serde_json::to_vec(value).map_err(|e| CodecError::Invalid {
        type_name: std::any::type_name::<T>(),
        detail: e.to_string(),
    })?;
    if body.len() as u64 > limit {
        return Err(CodecError::TooLarge {
            size: body.len() as u64,
            limit,
        });
    }
    Ok(seal(Format::Json, &body))
}

/// Decode a `T` from a sealed JSON payload (body bounded by `limit` bytes); never panics.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8], limit: u64) -> Result<T, CodecError> {
    let body = open_as(bytes, Format::Json, limit)?;
    serde_json::from_slice(body).map_err(|e| CodecError::Invalid {
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
        assert!(decode::<Vec<u8>>(&seal(Format::Bincode1Fixint, &evil), 1024).is_err());
    }

    #[test]
    fn header_round_trip_and_layout() {
        let bytes = encode(&0x0102_0304_0506_0708u64, 1024).unwrap();
        assert_eq!(bytes.len(), HEADER_BYTES + 8);
        assert_eq!(&bytes[..2], &[1, 1], "header version 1, bincode");
        assert_eq!(
            &bytes[HEADER_BYTES..],
            &0x0102_0304_0506_0708u64.to_le_bytes()
        );
        assert_eq!(decode::<u64>(&bytes, 1024), Ok(0x0102_0304_0506_0708));
        let json = encode_json(&serde_json::json!({"a": 1}), 1024).unwrap();
        assert_eq!(&json[..2], &[1, 2], "header version 1, JSON");
        assert_eq!(&json[HEADER_BYTES..], br#"{"a":1}"#);
        assert_eq!(
            decode_json::<serde_json::Value>(&json, 1024).unwrap(),
            serde_json::json!({"a": 1})
        );
        // Each decoder wants its own format.
        assert!(matches!(
            decode::<u64>(&json, 1024),
            Err(CodecError::WrongFormat { .. })
        ));
        assert!(matches!(
            decode_json::<u64>(&bytes, 1024),
            Err(CodecError::WrongFormat { .. })
        ));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let bytes = encode(&(7u64, String::from("payload")), 1024).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let err = decode::<(u64, String)>(&bad, 1024).unwrap_err();
            assert!(
                matches!(
                    err,
                    CodecError::Checksum { .. } | CodecError::UnknownFormat { .. }
                ),
                "bit {bit}: {err}"
            );
        }
    }

    #[test]
    fn truncated_headers_and_unknown_formats_are_typed_errors() {
        let bytes = encode(&1u8, 1024).unwrap();
        for len in 0..HEADER_BYTES {
            assert_eq!(
                decode::<u8>(&bytes[..len], 1024),
                Err(CodecError::Truncated { size: len as u64 })
            );
        }
        // A body cut after an intact header fails the checksum.
        assert!(matches!(
            decode::<u8>(&bytes[..HEADER_BYTES], 1024),
            Err(CodecError::Checksum { .. })
        ));
        let mut future = bytes.clone();
        future[1] = 9;
        assert_eq!(
            decode::<u8>(&future, 1024),
            Err(CodecError::UnknownFormat {
                header_version: 1,
                format: 9
            })
        );
        let mut v2 = bytes;
        v2[0] = 2;
        assert!(matches!(
            decode::<u8>(&v2, 1024),
            Err(CodecError::UnknownFormat {
                header_version: 2,
                ..
            })
        ));
    }

    #[test]
    fn legacy_bodies_sealed_by_the_migration_decode() {
        // What schema version 4 stored: bare bincode. Migration 5 seals it in place.
        let legacy = 42u64.to_le_bytes();
        assert!(
            decode::<u64>(&legacy, 1024).is_err(),
            "a bare body is refused"
        );
        assert_eq!(
            decode::<u64>(&seal(Format::Bincode1Fixint, &legacy), 1024),
            Ok(42)
        );
    }
}
