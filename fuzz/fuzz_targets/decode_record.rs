//! Record and header decoding over arbitrary bytes, format versions 1 and 2 (records with
//! and without an extension block: key text, event time).
//!
//! The bytes go into an [`AlignedBuf`] and [`Region::decode`] runs at every 8-aligned
//! position (and a few bad ones) with expected offsets and payload limits taken from the
//! input. Nothing may panic or read out of bounds (run under ASan by cargo-fuzz), every
//! answer must agree with the bytes, and every record that decodes must re-encode, through
//! [`Region::write_record_ext`], to exactly the bytes it came from (extension block
//! included). `SegmentHeader::decode`,
//! `Region::read_header` and `Region::load_index` get the same bytes.
//!
//! To reach the record path without guessing CRCs, the input can name positions whose CRC
//! is fixed up before decoding.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use shoal::log::format::{
    align_up, commit_payload_len, record_crc_in_place, record_stride, record_stride_ext, AlignedBuf, Extensions,
    HeaderError, RecordError, SegmentHeader, Slot, COMMIT_BIT, END_OF_SEGMENT, EXTENDED_BIT, EXT_EVENT_TIME,
    EXT_HEADER_BYTES, FORMAT_VERSION, PAYLOAD_BYTES_FORMAT_MAX, RECORD_ALIGN, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES, SEGMENT_HEADER_USED_BYTES,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Expected offsets, used in turn; `None` accepts any offset.
    expected: Vec<Option<u64>>,
    /// Payload limits, used in turn (indexes into `LIMITS` or raw values).
    limits: Vec<u32>,
    /// Positions (in 8-byte words) whose record CRC is fixed before decoding.
    fix_crc_at: Vec<u16>,
    /// Expect the offset stored at the position (so `WrongOffset` does not hide the record).
    expect_stored: bool,
    /// Index entries to load.
    index_probes: Vec<u16>,
    /// The bytes.
    bytes: Vec<u8>,
}

const LIMITS: [usize; 4] = [usize::MAX, PAYLOAD_BYTES_FORMAT_MAX, 0, 64];

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Bytes of the extension block of the record at `at` as its fixed part states them (0
/// without [`EXTENDED_BIT`]); `None` when that part runs past the bytes.
fn ext_bytes_at(bytes: &[u8], at: usize, commit: u32) -> Option<usize> {
    if commit & EXTENDED_BIT == 0 {
        return Some(0);
    }
    let ext = bytes.get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + EXT_HEADER_BYTES)?;
    let key_len = u16::from_le_bytes([ext[2], ext[3]]) as usize;
    Some(EXT_HEADER_BYTES + if ext[0] & EXT_EVENT_TIME != 0 { 8 } else { 0 } + align_up(key_len, RECORD_ALIGN))
}

/// Writes a correct CRC into the record at `at`, when its commit word claims a record whose
/// bytes fit.
fn fix_crc(bytes: &mut [u8], at: usize) {
    if at + RECORD_HEADER_BYTES > bytes.len() {
        return;
    }
    let commit = u32_at(bytes, at);
    if commit & COMMIT_BIT == 0 || commit == END_OF_SEGMENT {
        return;
    }
    let Some(ext) = ext_bytes_at(bytes, at, commit) else { return };
    let stride = record_stride_ext(ext, commit_payload_len(commit));
    if at + stride > bytes.len() {
        return;
    }
    let crc = record_crc_in_place(commit & !COMMIT_BIT, &bytes[at + 8..at + stride]);
    bytes[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|input: Input| {
    let mut bytes = input.bytes;
    bytes.truncate(1 << 16);
    for &w in &input.fix_crc_at {
        fix_crc(&mut bytes, w as usize * RECORD_ALIGN);
    }
    let len = bytes.len();
    let mut buf = AlignedBuf::from_bytes(&bytes);
    let region = buf.region();
    assert_eq!(region.len(), len);

    // Headers: decode of the raw bytes, and through the region.
    let decoded = SegmentHeader::decode(&bytes);
    if let Ok(h) = decoded {
        // The CRC covers all 64 bytes, so a header of the current version that decodes
        // re-encodes to exactly its bytes; one of an older version to the same fields.
        let encoded = h.encode();
        let version = u32_at(&bytes, 8);
        assert!((1..=FORMAT_VERSION).contains(&version));
        if version == FORMAT_VERSION {
            assert_eq!(&encoded[..], &bytes[..SEGMENT_HEADER_USED_BYTES]);
        } else {
            assert_eq!(&encoded[16..], &bytes[16..SEGMENT_HEADER_USED_BYTES]);
        }
        assert!(h.data_start() + RECORD_HEADER_BYTES <= h.segment_bytes as usize);
    }
    let through_region = region.read_header();
    if len >= SEGMENT_HEADER_USED_BYTES {
        assert_eq!(through_region, decoded);
    } else {
        assert_eq!(through_region, Err(HeaderError::Short));
        assert!(decoded.is_err());
    }

    // Index entries: present exactly when in bounds, and equal to the bytes.
    for &i in &input.index_probes {
        let i = i as usize;
        let at = SEGMENT_HEADER_BYTES + i * 8;
        match region.load_index(i) {
            Some(v) => {
                assert!(at + 8 <= len);
                assert_eq!(v, u64_at(&bytes, at));
            }
            None => assert!(at + 8 > len),
        }
    }
    assert!(region.load_index(usize::MAX).is_none());
    assert!(region.load_index(usize::MAX / 8).is_none());

    // Records at every aligned position, plus the misaligned and out-of-range ones.
    let mut k = 0usize;
    let positions = (0..=len + 8).step_by(RECORD_ALIGN).chain([1, 4, 7, usize::MAX - 7, usize::MAX & !7]);
    for position in positions {
        let expected = if input.expect_stored && position.checked_add(16).is_some_and(|e| e <= len) {
            Some(u64_at(&bytes, position + 8))
        } else if input.expected.is_empty() {
            None
        } else {
            input.expected[k % input.expected.len()]
        };
        let payload_max = if input.limits.is_empty() {
            usize::MAX
        } else {
            let raw = input.limits[k % input.limits.len()];
            if (raw as usize) < LIMITS.len() {
                LIMITS[raw as usize]
            } else {
                raw as usize
            }
        };
        k += 1;
        match region.decode(position, expected, payload_max) {
            Ok(Slot::Empty) => assert_eq!(u32_at(&bytes, position), 0),
            Ok(Slot::End) => assert_eq!(u32_at(&bytes, position), END_OF_SEGMENT),
            Ok(Slot::Record(r)) => {
                let commit = u32_at(&bytes, position);
                let plen = r.payload.len();
                let ext = Extensions { event_time_ns: r.event_time_ns, key_bytes: r.key_bytes };
                assert_eq!(commit & EXTENDED_BIT != 0, !ext.is_empty());
                assert_eq!(commit, COMMIT_BIT | (commit & EXTENDED_BIT) | plen as u32);
                assert_eq!(r.position, position);
                assert!(plen <= payload_max);
                let ext_bytes = ext.encoded_bytes();
                assert_eq!(Some(ext_bytes), ext_bytes_at(&bytes, position, commit));
                let stride = record_stride_ext(ext_bytes, plen);
                assert_eq!((r.stride, r.next_position()), (stride, position + stride));
                assert!(r.next_position() <= len);
                if let Some(e) = expected {
                    assert_eq!(r.offset, e);
                }
                let payload_at = position + RECORD_HEADER_BYTES + ext_bytes;
                assert_eq!(r.payload_position(), payload_at);
                assert_eq!(r.payload, &bytes[payload_at..payload_at + plen]);
                if let Some(key) = r.key_bytes {
                    assert!(key.as_ptr() as usize >= r.payload.as_ptr() as usize - ext_bytes + EXT_HEADER_BYTES);
                    assert!(key.as_ptr() as usize + key.len() <= r.payload.as_ptr() as usize);
                }
                // Round trip: encoding the decoded fields gives back the same bytes (the
                // padding after the key text and the payload is written as zeros).
                let mut out = AlignedBuf::zeroed(stride);
                let out_region = out.region();
                // SAFETY: `out` is ours alone, zeroed and exactly one record long; the key
                // text decoded is at most u16::MAX bytes.
                let c = unsafe {
                    out_region.write_record_ext(0, r.offset, r.timestamp_ns, r.key, &ext, plen, |b| {
                        b.copy_from_slice(r.payload)
                    })
                };
                assert_eq!(c, commit);
                assert!(out_region.publish(0, c));
                match out_region.decode(0, Some(r.offset), plen) {
                    Ok(Slot::Record(again)) => {
                        assert_eq!((again.offset, again.timestamp_ns, again.key), (r.offset, r.timestamp_ns, r.key));
                        assert_eq!((again.event_time_ns, again.key_bytes), (r.event_time_ns, r.key_bytes));
                        assert_eq!(again.payload, r.payload);
                    }
                    other => panic!("re-encoded record does not decode: {other:?}"),
                }
                let encoded = out.as_mut_bytes();
                let fixed = RECORD_HEADER_BYTES
                    + if ext.is_empty() { 0 } else { EXT_HEADER_BYTES + if r.event_time_ns.is_some() { 8 } else { 0 } };
                let key_len = r.key_bytes.map_or(0, <[u8]>::len);
                // The checksum covers the padding too, which a writer fills with zeros: a
                // record whose nonzero padding got a valid checksum (`fix_crc_at`) decodes,
                // and re-encodes with zero padding under another checksum. Its other header
                // bytes must still match.
                let padding_zero = bytes[position + fixed + key_len..payload_at].iter().all(|&b| b == 0)
                    && bytes[payload_at + plen..position + stride].iter().all(|&b| b == 0);
                if padding_zero {
                    assert_eq!(&encoded[..fixed], &bytes[position..position + fixed]);
                } else {
                    assert_eq!(&encoded[..4], &bytes[position..position + 4]);
                    assert_eq!(&encoded[8..fixed], &bytes[position + 8..position + fixed]);
                }
                assert_eq!(&encoded[fixed..fixed + key_len], &bytes[position + fixed..position + fixed + key_len]);
                assert!(encoded[fixed + key_len..payload_at - position].iter().all(|&b| b == 0));
                assert_eq!(&encoded[payload_at - position..][..plen], r.payload);
                assert!(encoded[payload_at - position + plen..].iter().all(|&b| b == 0));
            }
            Err(RecordError::BadPosition) => {
                assert!(position % RECORD_ALIGN != 0 || position.checked_add(4).is_none_or(|e| e > len));
            }
            Err(RecordError::BadCommitWord(c)) => {
                assert_eq!(c, u32_at(&bytes, position));
                assert!(c & COMMIT_BIT == 0 && c != 0);
            }
            Err(RecordError::TooLong { payload_len }) => assert!(payload_len as usize > payload_max),
            Err(RecordError::LengthPastEnd { payload_len }) => {
                let commit = u32_at(&bytes, position);
                match ext_bytes_at(&bytes, position, commit) {
                    Some(ext) => assert!(position + record_stride_ext(ext, payload_len as usize) > len),
                    None => assert!(commit & EXTENDED_BIT != 0),
                }
                assert!(commit & EXTENDED_BIT != 0 || position + record_stride(payload_len as usize) > len);
            }
            Err(RecordError::BadChecksum) => {}
            Err(RecordError::BadExtension) => assert!(u32_at(&bytes, position) & EXTENDED_BIT != 0),
            Err(RecordError::WrongOffset { expected: e, found }) => {
                assert_eq!(Some(e), expected);
                assert_ne!(e, found);
                assert_eq!(found, u64_at(&bytes, position + 8));
            }
        }
    }
    drop(buf);
});
