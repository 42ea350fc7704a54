//! Member lease and partition owner file decoding over arbitrary bytes.
//!
//! [`decode_lease`], [`decode_owner`] and [`decode_beat`] must never panic; whatever the first
//! two accept must carry a valid member id (digits and '-', so it can never name a path outside the group) and
//! re-encode to exactly the bytes it came from. The input can also build a well-formed file
//! from its own id and label and damage it, so the accepting paths are reached.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::group::format::{
    check_member_id, decode_beat, decode_lease, decode_owner, encode_lease, encode_owner, LABEL_BYTES_MAX,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Build a file from `id` and `label` instead of using `bytes` raw.
    build: Option<(bool, String, String)>,
    /// Bytes to flip afterwards: (position, mask).
    flips: Vec<(u16, u8)>,
    /// Cut to this many bytes afterwards.
    cut: Option<u16>,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut bytes = input.bytes;
    bytes.truncate(8192);
    if let Some((owner, id, label)) = &input.build {
        if id.len() <= u16::MAX as usize && label.len() <= LABEL_BYTES_MAX {
            bytes = if *owner { encode_owner(id, label.len() as u64) } else { encode_lease(id, label) };
        }
    }
    for &(at, mask) in input.flips.iter().take(8) {
        if let Some(b) = bytes.get_mut(at as usize) {
            *b ^= mask;
        }
    }
    if let Some(cut) = input.cut {
        bytes.truncate(cut as usize);
    }
    // Every refusal is a typed error whose message says what is wrong.
    match decode_lease(&bytes) {
        Ok(lease) => {
            assert!(check_member_id(lease.id.as_bytes()).is_ok());
            assert!(!lease.id.contains('/') && !lease.id.contains('.'));
            assert!(lease.label.len() <= LABEL_BYTES_MAX);
            assert_eq!(encode_lease(&lease.id, &lease.label), bytes);
        }
        Err(why) => assert!(!why.to_string().is_empty()),
    }
    match decode_owner(&bytes) {
        Ok(owner) => {
            assert!(check_member_id(owner.id.as_bytes()).is_ok());
            // Version 2 files re-encode to the same bytes; version 1 files (still read)
            // carry no generation.
            if bytes[8..12] == 2u32.to_le_bytes() {
                assert_eq!(encode_owner(&owner.id, owner.generation), bytes);
            } else {
                assert_eq!(owner.generation, 0);
            }
        }
        Err(why) => assert!(!why.to_string().is_empty()),
    }
    // A heartbeat file: any bytes give a counter or a typed refusal.
    match decode_beat(&bytes) {
        Ok(counter) => assert_eq!(bytes[16..24], counter.to_le_bytes()),
        Err(why) => assert!(!why.to_string().is_empty()),
    }
});
