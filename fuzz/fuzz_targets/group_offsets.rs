//! Committed-offsets decoding over arbitrary bytes.
//!
//! [`decode_offsets`] and [`decode_offsets_slot`] must never panic, and every answer must
//! agree with the bytes: an accepted file names a slot that decodes on its own, with the
//! highest generation of the valid slots, and re-encodes to exactly its bytes. To reach
//! the accepting paths without guessing CRCs, the input can ask for valid slots to be
//! written over the bytes (then damaged at chosen positions).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::group::format::{
    decode_offsets, decode_offsets_slot, encode_offsets_slot, OFFSETS_FILE_BYTES, OFFSETS_SLOT_BYTES,
    OFFSETS_SLOT_STRIDE,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Valid slots to write: (slot 0 or 1, generation, offset).
    slots: Vec<(bool, u64, u64)>,
    /// Bytes to flip after writing: (position, mask).
    flips: Vec<(u8, u8)>,
    /// Pad or cut the file to the format's length first.
    fit: bool,
    bytes: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let mut bytes = input.bytes;
    bytes.truncate(4096);
    if input.fit {
        bytes.resize(OFFSETS_FILE_BYTES, 0);
    }
    if bytes.len() == OFFSETS_FILE_BYTES {
        for &(second, generation, offset) in input.slots.iter().take(4) {
            let at = if second { OFFSETS_SLOT_STRIDE } else { 0 };
            bytes[at..at + OFFSETS_SLOT_BYTES].copy_from_slice(&encode_offsets_slot(generation, offset));
        }
    }
    for &(at, mask) in input.flips.iter().take(8) {
        if let Some(b) = bytes.get_mut(at as usize) {
            *b ^= mask;
        }
    }
    let slot =
        |k: usize| decode_offsets_slot(&bytes[k * OFFSETS_SLOT_STRIDE..k * OFFSETS_SLOT_STRIDE + OFFSETS_SLOT_BYTES]);
    match decode_offsets(&bytes) {
        Ok(None) => {
            assert!(bytes.is_empty() || (slot(0) == Ok(None) && slot(1) == Ok(None)));
        }
        Ok(Some(c)) => {
            assert_eq!(bytes.len(), OFFSETS_FILE_BYTES);
            assert!(c.generation > 0);
            let valid: Vec<_> = [slot(0), slot(1)].into_iter().filter_map(|s| s.ok().flatten()).collect();
            assert!(valid.contains(&c));
            assert!(valid.iter().all(|v| v.generation <= c.generation));
            let k = if slot(0) == Ok(Some(c)) { 0 } else { 1 };
            let at = k * OFFSETS_SLOT_STRIDE;
            assert_eq!(&encode_offsets_slot(c.generation, c.offset)[..], &bytes[at..at + OFFSETS_SLOT_BYTES]);
        }
        Err(why) => assert!(!why.to_string().is_empty()),
    }
    // Any slice given to the slot decoder: no panic, and a wrong length is refused.
    for len in [0, 1, OFFSETS_SLOT_BYTES - 1, OFFSETS_SLOT_BYTES, OFFSETS_SLOT_BYTES + 1] {
        if let Some(b) = bytes.get(..len) {
            let r = decode_offsets_slot(b);
            if len != OFFSETS_SLOT_BYTES {
                assert!(r.is_err());
            }
        }
    }
});
