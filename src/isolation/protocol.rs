//! The pipe protocol between the engine and a step child: length-prefixed frames.
//!
//! A frame is the 4-byte magic `WMK1`, a little-endian `u32` body length, and a body sealed
//! by `codec` (its header and checksum, then bincode).
//! Invariants: every decode is bounded (the length is checked against a limit before any
//! buffer grows to it), a wrong magic or an undecodable body is a [`ProtocolError`], and
//! nothing here panics on bytes that came from another process.

use crate::codec::{self, CodecError};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{Read, Write};

/// Frame magic: guards against a child that writes something else on the protocol pipe.
pub const MAGIC: [u8; 4] = *b"WMK1";
/// Bytes before a frame's body.
pub const HEADER_BYTES: usize = 8;
/// Room for everything in a frame besides the payload (names, numbers, enum tags).
pub const FRAME_OVERHEAD_BYTES: u64 = 64 * 1024;
/// Protocol version exchanged in the handshake.
pub const VERSION: u32 = 1;

/// Engine to child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Handshake: answer with [`Response::Hello`].
    Hello,
    /// Run one step on encoded input.
    Run {
        step: String,
        run_id: i64,
        seq: i64,
        attempt: u32,
        timeout_ms: Option<u64>,
        payload_limit: u64,
        input: Vec<u8>,
    },
}

/// Child to engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// Handshake answer: the protocol version and every step this child can run.
    Hello {
        version: u32,
        pid: u32,
        steps: Vec<String>,
    },
    /// The step returned this encoded output.
    Ok(Vec<u8>),
    /// The step returned its own error.
    Err { message: String, permanent: bool },
    /// The step panicked (and unwound) with this message.
    Panic(String),
    /// The step's output is over the payload limit.
    OutputTooLarge { size: u64, limit: u64 },
    /// The input did not decode as the step's input type (or another codec failure).
    Codec(String),
    /// The child has no step of this name registered.
    UnknownStep(String),
    /// A `log` record made by the step (any thread of the child) while it ran; it does not
    /// end the exchange. `level` is `log::Level as u8` (1 = error .. 5 = trace).
    Log {
        level: u8,
        target: String,
        message: String,
    },
}

/// Longest message of a [`Response::Log`] record the child sends (longer ones are cut).
pub const LOG_MESSAGE_BYTES_MAX: usize = 8 * 1024;

/// Why bytes from the other side are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    /// The frame does not start with the magic: the peer wrote something else.
    BadMagic([u8; 4]),
    /// The announced body is over the limit.
    TooLarge { size: u64, limit: u64 },
    /// The stream ended inside a frame.
    Truncated { have: usize },
    /// The body does not decode.
    Invalid(String),
    /// Reading or writing the pipe failed.
    Io(String),
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtocolError::BadMagic(m) => {
                write!(f, "not a waymark frame (starts with bytes {m:02x?})")
            }
            ProtocolError::TooLarge { size, limit } => {
                write!(
                    f,
                    "frame of {size} bytes is over the limit of {limit} bytes"
                )
            }
            ProtocolError::Truncated { have } => {
                write!(f, "stream ended inside a frame after {have} bytes")
            }
            ProtocolError::Invalid(d) => write!(f, "undecodable frame: {d}"),
            ProtocolError::Io(d) => write!(f, "pipe error: {d}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Encode `msg` as one frame whose body is at most `limit` bytes.
pub fn encode_frame<T: Serialize>(msg: &T, limit: u64) -> Result<Vec<u8>, CodecError> {
    // The body is a sealed payload (codec header included): at most `limit` bytes in all.
    let body_max = limit.min(u32::MAX as u64);
    let body = codec::encode(msg, body_max.saturating_sub(codec::HEADER_BYTES as u64))?;
    let mut frame = Vec::with_capacity(HEADER_BYTES + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length announced by the frame header at the start of `buf` (`None` while the
/// header is incomplete); checks the magic and the limit.
fn header_len(buf: &[u8], limit: u64) -> Result<Option<usize>, ProtocolError> {
    let have = buf.len().min(4);
    if buf[..have] != MAGIC[..have] {
        let mut m = [0u8; 4];
        m[..have].copy_from_slice(&buf[..have]);
        return Err(ProtocolError::BadMagic(m));
    }
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&buf[4..8]);
    let len = u32::from_le_bytes(len) as u64;
    if len > limit {
        return Err(ProtocolError::TooLarge { size: len, limit });
    }
    Ok(Some(len as usize))
}

/// Incremental, bounded frame decoder for non-blocking reads.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    limit: u64,
}

impl FrameReader {
    /// A reader accepting frame bodies of at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        FrameReader {
            buf: Vec::new(),
            limit,
        }
    }

    /// Bytes buffered so far.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    fn body_len(&self) -> Result<Option<usize>, ProtocolError> {
        header_len(&self.buf, self.limit)
    }

    /// Append bytes read from the pipe. Fails as soon as they cannot start a valid frame.
    /// Several frames may be buffered (log records ahead of a response): each header is
    /// checked as soon as it is complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.buf.extend_from_slice(bytes);
        let mut at = 0usize;
        while at < self.buf.len() {
            let len = header_len(&self.buf[at..], self.limit)?;
            match len {
                Some(len) if self.buf.len() - at >= HEADER_BYTES + len => {
                    at += HEADER_BYTES + len;
                }
                _ => break,
            }
        }
        Ok(())
    }

    /// Decode the frame if it is complete.
    pub fn take<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let Some(len) = self.body_len()? else {
            return Ok(None);
        };
        if self.buf.len() < HEADER_BYTES + len {
            return Ok(None);
        }
        let msg = codec::decode::<T>(&self.buf[HEADER_BYTES..HEADER_BYTES + len], self.limit)
            .map_err(|e| ProtocolError::Invalid(e.to_string()))?;
        self.buf.drain(..HEADER_BYTES + len);
        Ok(Some(msg))
    }
}

/// Blocking read of one frame. `Ok(None)` on a clean end of stream before any byte.
pub fn read_frame<T: DeserializeOwned>(
    r: &mut impl Read,
    limit: u64,
) -> Result<Option<T>, ProtocolError> {
    let mut header = [0u8; HEADER_BYTES];
    let mut have = 0;
    while have < HEADER_BYTES {
        match r.read(&mut header[have..]) {
            Ok(0) if have == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Truncated { have }),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProtocolError::Io(e.to_string())),
        }
    }
    let mut reader = FrameReader::new(limit);
    reader.push(&header)?;
    let len = reader.body_len()?.unwrap_or(0);
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .map_err(|_| ProtocolError::Truncated { have: HEADER_BYTES })?;
    reader.push(&body)?;
    reader
        .take()?
        .ok_or(ProtocolError::Truncated { have: HEADER_BYTES })
        .map(Some)
}

/// Write one frame and flush.
pub fn write_frame<T: Serialize>(
    w: &mut impl Write,
    msg: &T,
    limit: u64,
) -> Result<(), ProtocolError> {
    let frame = encode_frame(msg, limit).map_err(|e| ProtocolError::Invalid(e.to_string()))?;
    w.write_all(&frame)
        .and_then(|_| w.flush())
        .map_err(|e| ProtocolError::Io(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let frame = encode_frame(&Response::Ok(vec![1, 2, 3]), 1024).unwrap();
        let mut r = FrameReader::new(1024);
        for b in &frame[..frame.len() - 1] {
            r.push(std::slice::from_ref(b)).unwrap();
            assert!(r.take::<Response>().unwrap().is_none());
        }
        r.push(&frame[frame.len() - 1..]).unwrap();
        assert!(matches!(r.take::<Response>().unwrap(), Some(Response::Ok(v)) if v == [1, 2, 3]));

        let mut g = FrameReader::new(1024);
        assert!(matches!(g.push(b"hello"), Err(ProtocolError::BadMagic(_))));
        let mut big = FrameReader::new(1024);
        let mut hdr = MAGIC.to_vec();
        hdr.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            big.push(&hdr),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut bad = FrameReader::new(1024);
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(&[0xff, 0xff, 0xff]);
        bad.push(&f).unwrap();
        assert!(matches!(
            bad.take::<Response>(),
            Err(ProtocolError::Invalid(_))
        ));
        let mut cursor = std::io::Cursor::new(frame[..5].to_vec());
        assert!(read_frame::<Response>(&mut cursor, 1024).is_err());
        let mut empty = std::io::Cursor::new(Vec::new());
        assert!(read_frame::<Response>(&mut empty, 1024).unwrap().is_none());
    }
}
