//! Fuzz `waymark::internal::codec::decode`, the one decoder of payload bytes read from disk (run
//! inputs, journal outputs, event payloads) and, through the child protocol, from children.
//! Properties: never panics, never allocates past the limit, and a successful decode of a
//! canonical type re-encodes to exactly the input bytes (no silent acceptance of junk).
//! Stored payloads are sealed (header + CRC-32): the input is decoded as it is (exercising
//! the header checks) and sealed (exercising the body decoder behind a valid checksum).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};
use waymark::internal::codec::{decode, encode, seal, Format};

/// Shapes like the ones stored by workflows: nested options, vectors, strings, enums.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Shape {
    Unit,
    Num(u64),
    Text(String),
    Pair(i32, Option<Vec<u8>>),
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Record {
    id: u64,
    name: String,
    values: Vec<u64>,
    shape: Shape,
    flag: Option<bool>,
}

const LIMIT: u64 = 64 * 1024;

fn roundtrip<T: serde::de::DeserializeOwned + Serialize>(data: &[u8]) {
    if let Ok(v) = decode::<T>(data, LIMIT) {
        let again = encode(&v, LIMIT).expect("a decoded value re-encodes within the limit");
        assert_eq!(again, data, "decode accepted a non-canonical encoding");
    }
}

fuzz_target!(|raw: &[u8]| {
    let _ = decode::<Record>(raw, LIMIT);
    let sealed = seal(Format::Bincode1Fixint, raw);
    let data = &sealed[..];
    roundtrip::<u64>(data);
    roundtrip::<String>(data);
    roundtrip::<Vec<u64>>(data);
    roundtrip::<(u64, String)>(data);
    roundtrip::<Record>(data);
    let _ = decode::<f64>(data, LIMIT);
    let _ = decode::<Vec<Record>>(data, 1024);
});
