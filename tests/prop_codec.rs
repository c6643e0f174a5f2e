//! CI-sized property test over the decoders of bytes from disk (the same properties as the
//! cargo-fuzz target fuzz/fuzz_targets/codec_decode.rs): `codec::decode` never panics on
//! arbitrary, truncated or bit-flipped bytes, accepts only canonical encodings (a decoded
//! value re-encodes to the same bytes), enforces its size limit, and round-trips values.
//! Stored payloads are sealed (header + CRC-32): arbitrary bodies are sealed before they are
//! decoded so the body decoder is still exercised, and one flipped bit anywhere in a sealed
//! payload is always an error (the checksum), never another value.

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use waymark::internal::codec::{decode, encode, open, seal, CodecError, Format, HEADER_BYTES};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
enum Shape {
    Unit,
    Num(u64),
    Text(String),
    Pair(i32, Option<Vec<u8>>),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Record {
    id: u64,
    name: String,
    values: Vec<u64>,
    shape: Shape,
    flag: Option<bool>,
}

const LIMIT: u64 = 64 * 1024;

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Unit),
        any::<u64>().prop_map(Shape::Num),
        ".{0,20}".prop_map(Shape::Text),
        (
            any::<i32>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))
        )
            .prop_map(|(a, b)| Shape::Pair(a, b)),
    ]
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        ".{0,24}",
        proptest::collection::vec(any::<u64>(), 0..12),
        shape(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(|(id, name, values, shape, flag)| Record {
            id,
            name,
            values,
            shape,
            flag,
        })
}

fn canonical<T: serde::de::DeserializeOwned + Serialize>(data: &[u8]) -> Result<(), TestCaseError> {
    // Unsealed bytes never decode (a header version and a CRC-32 they do not have), unless
    // by the 2^-32 chance of a matching checksum; then they must be canonical too.
    if let Ok(v) = decode::<T>(data, LIMIT) {
        let again = encode(&v, LIMIT).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, data.to_vec());
    }
    let data = &seal(Format::Bincode1Fixint, data)[..];
    if let Ok(v) = decode::<T>(data, LIMIT) {
        let again = encode(&v, LIMIT).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(again, data.to_vec());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_only_canonical_bytes_decode(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        canonical::<u64>(&data)?;
        canonical::<String>(&data)?;
        canonical::<Vec<u64>>(&data)?;
        canonical::<(u64, String)>(&data)?;
        canonical::<Record>(&data)?;
        let _ = decode::<Vec<Record>>(&data, 1024);
    }

    #[test]
    fn records_round_trip_and_damage_is_an_error_or_another_value(r in record(), cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let bytes = encode(&r, LIMIT).unwrap();
        prop_assert_eq!(decode::<Record>(&bytes, LIMIT).unwrap(), r.clone());
        // Every strict prefix is an error (fixed-width ints, length-prefixed data).
        let n = cut.index(bytes.len());
        prop_assert!(decode::<Record>(&bytes[..n], LIMIT).is_err());
        // One flipped bit in the sealed payload: always an error (CRC-32 detects every
        // single-bit error), never another record.
        let mut flipped = bytes.clone();
        let b = bit.index(flipped.len() * 8);
        flipped[b / 8] ^= 1 << (b % 8);
        let err = decode::<Record>(&flipped, LIMIT).unwrap_err();
        prop_assert!(
            matches!(err, CodecError::Checksum { .. } | CodecError::UnknownFormat { .. }),
            "bit {}: {}", b, err
        );
        // One flipped bit in the body, resealed (damage before the checksum was computed):
        // an error or some record, never a panic; if a record, canonical.
        let mut body = bytes[HEADER_BYTES..].to_vec();
        let b = bit.index(body.len() * 8);
        body[b / 8] ^= 1 << (b % 8);
        canonical::<Record>(&body)?;
        prop_assert_eq!(open(&bytes).unwrap(), (Format::Bincode1Fixint, &bytes[HEADER_BYTES..]));
        // Trailing junk is refused.
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(decode::<Record>(&longer, LIMIT).is_err());
    }

    #[test]
    fn the_size_limit_is_enforced_without_allocating(len in 0u64..u64::MAX, limit in 16u64..4096) {
        // A length prefix claiming `len` elements, followed by a few bytes.
        let mut evil = len.to_le_bytes().to_vec();
        evil.extend_from_slice(&[7u8; 8]);
        let r = decode::<Vec<u64>>(&seal(Format::Bincode1Fixint, &evil), limit);
        if len != 1 {
            prop_assert!(r.is_err());
        }
        let big = seal(Format::Bincode1Fixint, &vec![0u8; limit as usize + 1]);
        let too_large = matches!(decode::<Vec<u8>>(&big, limit), Err(CodecError::TooLarge { .. }));
        prop_assert!(too_large);
    }
}
