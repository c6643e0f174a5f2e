//! CI-sized property test over the child protocol decoders (the same properties as
//! fuzz/fuzz_targets/child_frame.rs): bytes from a step child, fed in arbitrary chunks, never
//! panic the engine, never grow its buffer past one frame, are refused with a typed error when
//! they are not a frame, and valid frames round-trip whatever the chunking.

use proptest::prelude::*;
use waymark::internal::isolation::protocol::{
    encode_frame, read_frame, FrameReader, ProtocolError, Response, HEADER_BYTES,
};

const LIMIT: u64 = 4096;

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512).prop_map(Response::Ok),
        (".{0,64}", any::<bool>())
            .prop_map(|(message, permanent)| Response::Err { message, permanent }),
        ".{0,64}".prop_map(Response::Panic),
        (any::<u64>(), any::<u64>())
            .prop_map(|(size, limit)| Response::OutputTooLarge { size, limit }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_in_any_chunks_never_panic_or_overgrow(bytes in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        let mut reader = FrameReader::new(LIMIT);
        for piece in bytes.chunks(chunk) {
            if reader.push(piece).is_err() {
                break;
            }
            prop_assert!(reader.buffered() <= HEADER_BYTES + LIMIT as usize);
            if reader.take::<Response>().is_err() {
                break;
            }
        }
        let mut stream = &bytes[..];
        let _ = read_frame::<Response>(&mut stream, LIMIT);
    }

    #[test]
    fn valid_frames_round_trip_in_any_chunking(msg in response(), chunk in 1usize..64) {
        let frame = encode_frame(&msg, LIMIT).unwrap();
        let mut reader = FrameReader::new(LIMIT);
        let mut got = None;
        for piece in frame.chunks(chunk) {
            reader.push(piece).unwrap();
            if let Some(m) = reader.take::<Response>().unwrap() {
                got = Some(m);
            }
        }
        let got = got.expect("a complete frame decodes");
        prop_assert_eq!(encode_frame(&got, LIMIT).unwrap(), frame.clone());
        let mut stream = &frame[..];
        prop_assert!(read_frame::<Response>(&mut stream, LIMIT).unwrap().is_some());
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_buffering(len in (LIMIT + 1)..u32::MAX as u64) {
        let mut header = b"WMK1".to_vec();
        header.extend_from_slice(&(len as u32).to_le_bytes());
        let mut reader = FrameReader::new(LIMIT);
        let refused = matches!(reader.push(&header), Err(ProtocolError::TooLarge { .. }));
        prop_assert!(refused);
        let mut stream = &header[..];
        let refused = matches!(read_frame::<Response>(&mut stream, LIMIT), Err(ProtocolError::TooLarge { .. }));
        prop_assert!(refused);
    }

    #[test]
    fn truncated_frames_are_typed_errors(msg in response(), cut in 1usize..64) {
        let frame = encode_frame(&msg, LIMIT).unwrap();
        let keep = frame.len().saturating_sub(cut).max(1);
        let mut stream = &frame[..keep];
        let truncated = matches!(read_frame::<Response>(&mut stream, LIMIT), Err(ProtocolError::Truncated { .. }));
        prop_assert!(truncated);
    }
}
