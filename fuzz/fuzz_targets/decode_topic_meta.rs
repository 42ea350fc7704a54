//! Topic `meta` decoding over arbitrary bytes.
//!
//! The bytes go to `shoal::bus::decode_meta` as they are, and again with their last four
//! bytes replaced by the CRC32C of the bytes before them (a `SHOALTOP` magic and a version
//! put in front when the input asks), so that the checks past the checksum are reached.
//! Nothing may panic, and every answer must agree with the bytes: a version 1 file is 40
//! bytes and has no schema, a version 2 file is 56 bytes plus the schema's name, whose name
//! is the bytes at 52, 1 to 256 of them, with an alignment that is a power of two.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::bus::{decode_meta, TopicMeta, SCHEMA_NAME_BYTES_MAX};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Put `SHOALTOP` and this version (1 or 2 as `version % 3`) in front of `bytes`.
    header: Option<u8>,
    bytes: Vec<u8>,
}

fn check(bytes: &[u8], meta: &TopicMeta) {
    assert_eq!(&bytes[..8], b"SHOALTOP");
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    assert!((1..=4096).contains(&meta.partitions), "{meta:?}");
    assert_eq!(meta.partitions, u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")));
    match (&meta.schema, version) {
        (None, 1) => assert_eq!(bytes.len(), 40),
        (Some(schema), 2) => {
            assert_eq!(bytes.len(), 56 + schema.name.len());
            assert!((1..=SCHEMA_NAME_BYTES_MAX).contains(&schema.name.len()));
            assert_eq!(&bytes[52..52 + schema.name.len()], schema.name.as_bytes());
            assert!(schema.align.is_power_of_two());
        }
        other => panic!("version {version} decoded as {other:?}"),
    }
}

fuzz_target!(|input: Input| {
    let mut bytes = Vec::new();
    if let Some(version) = input.header {
        bytes.extend_from_slice(b"SHOALTOP");
        bytes.extend_from_slice(&u32::from(version % 3).to_le_bytes());
    }
    bytes.extend_from_slice(&input.bytes);
    if let Ok(meta) = decode_meta(&bytes) {
        check(&bytes, &meta);
    }
    if bytes.len() >= 4 {
        let body = bytes.len() - 4;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(meta) = decode_meta(&bytes) {
            check(&bytes, &meta);
        }
    }
});
