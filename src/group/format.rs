//! On-disk formats of a consumer group (all little-endian, CRC32C-checked), and
//! their decoders. Every decoder takes untrusted bytes and returns a typed reason
//! ([`FormatError`], or [`SlotError`] for one offsets slot) instead of panicking (fuzzed by `fuzz/fuzz_targets/group_offsets.rs` and `group_membership.rs`).
//!
//! ```text
//! offsets/<p>   128 bytes: two 40-byte slots, at 0 and at 64, written alternately
//!   0 magic       [u8; 8]  b"SHOALOFF"
//!   8 version     u32      1
//!  12 reserved    u32      0
//!  16 generation  u64      1, 2, 3, ... (the slot written is generation % 2)
//!  24 offset      u64      next offset to read
//!  32 crc32c      u32      of bytes 0..32
//!  36 reserved    u32      0
//! A slot of 40 zero bytes is empty. The committed offset is the valid slot with the
//! highest generation; a torn write damages only the slot being written, so the other one
//! (the previous commit) still stands. This is the two-slot codec of [`crate::log::slots`]
//! with one word. The file is empty (0 bytes) until the first commit, which writes all
//! 128 bytes (its slot and zeros) in one write: a 128-byte file with no slot written is
//! damage, not "never committed".
//!
//! members/<id>.lease   magic b"SHOALMBR", version u32 1, id_len u16, label_len u16,
//!                      id, label, crc32c u32 of everything before it
//! owners/<p>.lock      version 2: magic b"SHOALOWN", version u32 2, id_len u16,
//!                      reserved u16 0, owner generation u64, id, crc32c u32 of
//!                      everything before it.
//!                      version 1 (still read, generation 0): magic, version u32 1,
//!                      id_len u16, reserved u16 0, id, crc32c u32
//! members/<id>.beat    4096 bytes (version 1, new with owner files of version 2):
//!   0 magic       [u8; 8]  b"SHOALBEA"
//!   8 version     u32      1
//!  12 reserved    u32      0
//!  16 heartbeat   u64      a counter the member increments on every poll (mapped, atomic)
//!                          rest zero
//! ```
//!
//! Version notes: owner files of version 2 carry the partition's owner generation, which
//! goes up by one each time a member takes the partition (gracefully or by a takeover after
//! the session timeout); `.beat` files are new. A group directory written by an older shoal
//! (version 1 owner files, no `.beat` files) is read as it is: a version 1 owner file has
//! generation 0, and a member without a `.beat` file is live as long as its lease is locked
//! (it is never taken over, as before). Leases and offsets files are unchanged (version 1).
//! Member ids are 1 to 64 bytes of `[0-9-]` (see [`super::Member::id`]); labels are at most
//! [`LABEL_BYTES_MAX`] bytes of UTF-8.

use crate::log::slots::{u16_at, u32_at, u64_at, SlotError, SlotFormat, SLOTS_FILE_BYTES, SLOT_STRIDE};

/// Bytes of an offsets file.
pub const OFFSETS_FILE_BYTES: usize = SLOTS_FILE_BYTES;
/// Bytes of one slot of an offsets file.
pub const OFFSETS_SLOT_BYTES: usize = 40;
/// Where slot `k` starts.
pub const OFFSETS_SLOT_STRIDE: usize = SLOT_STRIDE;
/// Version of the lease, offsets and heartbeat formats.
pub const GROUP_FORMAT_VERSION: u32 = 1;
/// Version of the owner file format written (version 1 is still read).
pub const OWNER_FORMAT_VERSION: u32 = 2;
/// Bytes of a member's heartbeat file.
pub const BEAT_FILE_BYTES: usize = 4096;
/// Where the heartbeat counter sits in a heartbeat file (8-byte aligned).
pub const BEAT_COUNTER_AT: usize = 16;
/// Bytes of a heartbeat file that [`decode_beat`] reads.
pub const BEAT_HEADER_BYTES: usize = 24;
/// Longest label kept in a lease.
pub const LABEL_BYTES_MAX: usize = 1024;
/// Longest member id.
pub const ID_BYTES_MAX: usize = 64;

const OFFSETS_MAGIC: [u8; 8] = *b"SHOALOFF";
const LEASE_MAGIC: [u8; 8] = *b"SHOALMBR";
const OWNER_MAGIC: [u8; 8] = *b"SHOALOWN";
const BEAT_MAGIC: [u8; 8] = *b"SHOALBEA";

/// A committed offset as stored in one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedSlot {
    /// Commit number (the newest slot wins).
    pub generation: u64,
    /// Next offset to read.
    pub offset: u64,
}

/// What the owner file of a partition says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerInfo {
    /// The owner's member id.
    pub id: String,
    /// The partition's owner generation (0 in a version 1 file).
    pub generation: u64,
}

/// What the lease file of a member says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The member's id.
    pub id: String,
    /// Its label (e.g. "pid 123").
    pub label: String,
}

/// Why bytes are not a valid member lease or partition owner file, or not a member id.
/// `what` names the file ("member lease", "partition owner"). A damaged offsets file is a
/// [`SlotError`] (its two-slot format is [`crate::log::slots`]) or, with no slot written,
/// [`FormatError::NoCommit`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Shorter than the fixed header.
    #[error("{what} file is {len} bytes, too short")]
    TooShort {
        /// The file.
        what: &'static str,
        /// Bytes given.
        len: usize,
        /// Bytes of the header.
        need: usize,
    },
    /// The file does not start with its magic.
    #[error("not a shoal {what} file (bad magic)")]
    BadMagic {
        /// The file.
        what: &'static str,
    },
    /// A version this build does not read.
    #[error("{what} file version {found} is not the {supported} this shoal reads")]
    UnsupportedVersion {
        /// The file.
        what: &'static str,
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The length does not match the lengths the header gives.
    #[error("{what} file is {len} bytes, its lengths say {expected}")]
    BadLength {
        /// The file.
        what: &'static str,
        /// Bytes given.
        len: usize,
        /// Bytes the header's lengths add up to.
        expected: usize,
    },
    /// The checksum does not match the bytes.
    #[error("{what} file checksum mismatch")]
    Checksum {
        /// The file.
        what: &'static str,
    },
    /// A reserved field is not zero.
    #[error("{what} file has non-zero reserved bytes")]
    Reserved {
        /// The file.
        what: &'static str,
    },
    /// A lease label longer than [`LABEL_BYTES_MAX`].
    #[error("member lease label is {len} bytes, at most {max}")]
    LabelTooLong {
        /// Bytes of the label.
        len: usize,
        /// [`LABEL_BYTES_MAX`].
        max: usize,
    },
    /// A lease label that is not UTF-8.
    #[error("member lease label is not UTF-8")]
    LabelNotUtf8,
    /// A member id of the wrong length.
    #[error("member id is {len} bytes, expected 1 to {max}")]
    IdLength {
        /// Bytes of the id.
        len: usize,
        /// [`ID_BYTES_MAX`].
        max: usize,
    },
    /// A member id with a character other than `0-9` and `-`.
    #[error("member id has a character other than 0-9 and -")]
    IdCharacter,
    /// A damaged committed-offsets file.
    #[error(transparent)]
    Slots(#[from] SlotError),
    /// A committed-offsets file of full length with neither slot written (both all zero).
    /// shoal never leaves one: the first commit gives the file its length and its slot in
    /// one write. So this is damage (a crash after which the file system kept the file's
    /// length but not its bytes, or bytes zeroed since), and the commits it held are lost;
    /// read as "never committed", it would restart the partition or skip records.
    #[error("{what} file is {len} bytes with no commit in either slot: its bytes were zeroed or lost")]
    NoCommit {
        /// The file.
        what: &'static str,
        /// Bytes of the file.
        len: usize,
    },
}

/// The committed-offsets file: one word, the next offset the group reads.
const OFFSETS_FORMAT: SlotFormat =
    SlotFormat { magic: OFFSETS_MAGIC, version: GROUP_FORMAT_VERSION, words: 1, what: "committed-offsets" };

/// Encodes one offsets slot.
pub fn encode_offsets_slot(generation: u64, offset: u64) -> [u8; OFFSETS_SLOT_BYTES] {
    let mut b = [0u8; OFFSETS_SLOT_BYTES];
    OFFSETS_FORMAT.encode_into(generation, &[offset], &mut b);
    b
}

/// Decodes one slot: `Ok(None)` when empty (all zero).
///
/// # Errors
/// Why the slot is not valid.
pub fn decode_offsets_slot(b: &[u8]) -> Result<Option<CommittedSlot>, SlotError> {
    Ok(OFFSETS_FORMAT.decode_slot(b)?.map(|(generation, w)| CommittedSlot { generation, offset: w[0] }))
}

/// Decodes a whole offsets file: the newest valid slot, `Ok(None)` when nothing was ever
/// committed (an empty file).
///
/// An empty file is the one legitimate state without a commit: a member creates the file
/// empty when it first takes the partition (it is the partition lock, and its inode is what
/// fencing follows, so it exists before anything is committed), and the first commit writes
/// its full length and first slot at once. A full-length file with two empty slots is
/// therefore damage ([`FormatError::NoCommit`]), never "nothing committed".
///
/// # Errors
/// Why the file is not valid: a wrong length, no valid slot while some slot holds bytes,
/// two slots with the same generation, or no slot written at all.
pub fn decode_offsets(bytes: &[u8]) -> Result<Option<CommittedSlot>, FormatError> {
    match OFFSETS_FORMAT.decode_file(bytes)? {
        Some((generation, w)) => Ok(Some(CommittedSlot { generation, offset: w[0] })),
        None if bytes.is_empty() => Ok(None),
        None => Err(FormatError::NoCommit { what: OFFSETS_FORMAT.what, len: bytes.len() }),
    }
}

/// Checks a member id: 1 to [`ID_BYTES_MAX`] bytes of `[0-9-]`.
///
/// # Errors
/// Why it is not an id.
pub fn check_member_id(id: &[u8]) -> Result<(), FormatError> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(FormatError::IdLength { len: id.len(), max: ID_BYTES_MAX });
    }
    if !id.iter().all(|&b| b.is_ascii_digit() || b == b'-') {
        return Err(FormatError::IdCharacter);
    }
    Ok(())
}

/// Encodes a lease file.
pub fn encode_lease(id: &str, label: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + id.len() + label.len() + 4);
    b.extend_from_slice(&LEASE_MAGIC);
    b.extend_from_slice(&GROUP_FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&(id.len() as u16).to_le_bytes());
    b.extend_from_slice(&(label.len() as u16).to_le_bytes());
    b.extend_from_slice(id.as_bytes());
    b.extend_from_slice(label.as_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Bytes of the fixed header of a lease or owner file, with its checksum.
const HEADER_BYTES_MIN: usize = 20;

/// Checks length, magic and version; returns the version found.
fn check_header(bytes: &[u8], magic: &[u8; 8], what: &'static str, newest: u32) -> Result<u32, FormatError> {
    if bytes.len() < HEADER_BYTES_MIN {
        return Err(FormatError::TooShort { what, len: bytes.len(), need: HEADER_BYTES_MIN });
    }
    if bytes[0..8] != *magic {
        return Err(FormatError::BadMagic { what });
    }
    let found = u32_at(bytes, 8);
    if found == 0 || found > newest {
        return Err(FormatError::UnsupportedVersion { what, found, supported: newest });
    }
    Ok(found)
}

fn check_crc(bytes: &[u8], end: usize, what: &'static str) -> Result<(), FormatError> {
    if bytes.len() != end + 4 {
        return Err(FormatError::BadLength { what, len: bytes.len(), expected: end + 4 });
    }
    if crc32c::crc32c(&bytes[..end]) != u32_at(bytes, end) {
        return Err(FormatError::Checksum { what });
    }
    Ok(())
}

/// Decodes a lease file.
///
/// # Errors
/// Why the bytes are not a valid lease.
pub fn decode_lease(bytes: &[u8]) -> Result<LeaseInfo, FormatError> {
    check_header(bytes, &LEASE_MAGIC, "member lease", GROUP_FORMAT_VERSION)?;
    let id_len = u16_at(bytes, 12) as usize;
    let label_len = u16_at(bytes, 14) as usize;
    if label_len > LABEL_BYTES_MAX {
        return Err(FormatError::LabelTooLong { len: label_len, max: LABEL_BYTES_MAX });
    }
    let end = 16 + id_len + label_len;
    check_crc(bytes, end, "member lease")?;
    let id = &bytes[16..16 + id_len];
    check_member_id(id)?;
    let label = std::str::from_utf8(&bytes[16 + id_len..end]).map_err(|_| FormatError::LabelNotUtf8)?;
    // check_member_id allows only ASCII, so this cannot fail.
    let id = std::str::from_utf8(id).map_err(|_| FormatError::IdCharacter)?;
    Ok(LeaseInfo { id: id.to_string(), label: label.to_string() })
}

/// Encodes an owner file (version 2) naming member `id` as owner generation `generation`.
pub fn encode_owner(id: &str, generation: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + id.len() + 4);
    b.extend_from_slice(&OWNER_MAGIC);
    b.extend_from_slice(&OWNER_FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&(id.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&generation.to_le_bytes());
    b.extend_from_slice(id.as_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an owner file (version 1 or 2).
///
/// # Errors
/// Why the bytes are not a valid owner file.
pub fn decode_owner(bytes: &[u8]) -> Result<OwnerInfo, FormatError> {
    const WHAT: &str = "partition owner";
    let version = check_header(bytes, &OWNER_MAGIC, WHAT, OWNER_FORMAT_VERSION)?;
    let id_len = u16_at(bytes, 12) as usize;
    if u16_at(bytes, 14) != 0 {
        return Err(FormatError::Reserved { what: WHAT });
    }
    let (generation, id_at) = if version >= 2 {
        if bytes.len() < 24 {
            return Err(FormatError::TooShort { what: WHAT, len: bytes.len(), need: 28 });
        }
        (u64_at(bytes, 16), 24)
    } else {
        (0, 16)
    };
    let end = id_at + id_len;
    check_crc(bytes, end, WHAT)?;
    let id = &bytes[id_at..end];
    check_member_id(id)?;
    // check_member_id allows only ASCII, so this cannot fail.
    let id = std::str::from_utf8(id).map_err(|_| FormatError::IdCharacter)?.to_string();
    Ok(OwnerInfo { id, generation })
}

/// The first [`BEAT_HEADER_BYTES`] of a fresh heartbeat file (counter 0); the rest of its
/// [`BEAT_FILE_BYTES`] are zero.
pub fn encode_beat_header() -> [u8; BEAT_HEADER_BYTES] {
    let mut b = [0u8; BEAT_HEADER_BYTES];
    b[0..8].copy_from_slice(&BEAT_MAGIC);
    b[8..12].copy_from_slice(&GROUP_FORMAT_VERSION.to_le_bytes());
    b
}

/// Decodes the start of a heartbeat file into its counter.
///
/// # Errors
/// Too short, bad magic, another version, non-zero reserved bytes.
pub fn decode_beat(bytes: &[u8]) -> Result<u64, FormatError> {
    const WHAT: &str = "member heartbeat";
    if bytes.len() < BEAT_HEADER_BYTES {
        return Err(FormatError::TooShort { what: WHAT, len: bytes.len(), need: BEAT_HEADER_BYTES });
    }
    if bytes[0..8] != BEAT_MAGIC {
        return Err(FormatError::BadMagic { what: WHAT });
    }
    let found = u32_at(bytes, 8);
    if found != GROUP_FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion { what: WHAT, found, supported: GROUP_FORMAT_VERSION });
    }
    if u32_at(bytes, 12) != 0 {
        return Err(FormatError::Reserved { what: WHAT });
    }
    Ok(u64_at(bytes, BEAT_COUNTER_AT))
}

/// Cuts `label` to at most [`LABEL_BYTES_MAX`] bytes on a character boundary.
pub fn clamp_label(label: &str) -> &str {
    if label.len() <= LABEL_BYTES_MAX {
        return label;
    }
    let mut end = LABEL_BYTES_MAX;
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    &label[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(slots: [Option<(u64, u64)>; 2]) -> Vec<u8> {
        let mut b = vec![0u8; OFFSETS_FILE_BYTES];
        for (k, s) in slots.iter().enumerate() {
            if let Some((g, o)) = s {
                let at = k * OFFSETS_SLOT_STRIDE;
                b[at..at + OFFSETS_SLOT_BYTES].copy_from_slice(&encode_offsets_slot(*g, *o));
            }
        }
        b
    }

    #[test]
    fn offsets_take_the_newest_valid_slot() {
        assert_eq!(decode_offsets(&[]), Ok(None));
        // Full length with no slot written: damage, not "never committed".
        assert_eq!(
            decode_offsets(&file([None, None])),
            Err(FormatError::NoCommit { what: "committed-offsets", len: OFFSETS_FILE_BYTES })
        );
        assert_eq!(
            decode_offsets(&file([None, None])).unwrap_err().to_string(),
            "committed-offsets file is 128 bytes with no commit in either slot: its bytes were zeroed or lost"
        );
        let f = file([Some((2, 20)), Some((3, 30))]);
        assert_eq!(decode_offsets(&f), Ok(Some(CommittedSlot { generation: 3, offset: 30 })));
        // A torn newest slot: the previous commit stands.
        for i in 0..OFFSETS_SLOT_BYTES {
            let mut torn = f.clone();
            torn[OFFSETS_SLOT_STRIDE + i] ^= 0x40;
            assert_eq!(decode_offsets(&torn), Ok(Some(CommittedSlot { generation: 2, offset: 20 })), "flip {i}");
        }
        // Damage with no valid slot, a wrong length, equal generations: errors.
        let mut bad = file([Some((1, 5)), None]);
        bad[3] ^= 1;
        assert!(decode_offsets(&bad).unwrap_err().to_string().contains("magic"));
        assert!(decode_offsets(&f[..100]).is_err());
        assert!(decode_offsets(&file([Some((4, 1)), Some((4, 2))])).is_err());
    }

    #[test]
    fn leases_and_owners_round_trip_and_reject_damage() {
        let id = "00000000001234567890-42-7";
        let lease = encode_lease(id, "pid 42");
        assert_eq!(decode_lease(&lease), Ok(LeaseInfo { id: id.into(), label: "pid 42".into() }));
        let owner = encode_owner(id, 9);
        assert_eq!(decode_owner(&owner), Ok(OwnerInfo { id: id.to_string(), generation: 9 }));
        for bytes in [&lease, &owner] {
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x10;
                assert!(decode_lease(&bad).is_err() && decode_owner(&bad).is_err(), "flip {i} accepted");
            }
            for n in 0..bytes.len() {
                assert!(decode_lease(&bytes[..n]).is_err() && decode_owner(&bytes[..n]).is_err());
            }
        }
        assert!(decode_owner(&encode_owner("../x", 1)).is_err());
        assert_eq!(decode_owner(&encode_owner("../x", 1)), Err(FormatError::IdCharacter));
        assert_eq!(clamp_label(&"é".repeat(1000)).len(), 1024);
    }

    #[test]
    fn version_1_owner_files_are_read_with_generation_0() {
        // The exact bytes shoal wrote before owner generations existed.
        let id = "00000000001234567890-42-7";
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"SHOALOWN");
        v1.extend_from_slice(&1u32.to_le_bytes());
        v1.extend_from_slice(&(id.len() as u16).to_le_bytes());
        v1.extend_from_slice(&0u16.to_le_bytes());
        v1.extend_from_slice(id.as_bytes());
        let crc = crc32c::crc32c(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_owner(&v1), Ok(OwnerInfo { id: id.to_string(), generation: 0 }));
        let mut v3 = encode_owner(id, 1);
        v3[8] = 3;
        assert!(matches!(decode_owner(&v3), Err(FormatError::UnsupportedVersion { found: 3, supported: 2, .. })));
        // A version 2 header cut before its generation is refused, not read out of bounds.
        for n in 0..28 {
            assert!(decode_owner(&encode_owner("1", 5)[..n]).is_err());
        }
    }

    #[test]
    fn heartbeats_round_trip_and_reject_damage() {
        let mut b = vec![0u8; BEAT_FILE_BYTES];
        b[..BEAT_HEADER_BYTES].copy_from_slice(&encode_beat_header());
        assert_eq!(decode_beat(&b), Ok(0));
        b[BEAT_COUNTER_AT..BEAT_COUNTER_AT + 8].copy_from_slice(&77u64.to_le_bytes());
        assert_eq!(decode_beat(&b), Ok(77));
        for i in 0..16 {
            let mut bad = b.clone();
            bad[i] ^= 0x08;
            assert!(decode_beat(&bad).is_err(), "flip {i}");
        }
        for n in 0..BEAT_HEADER_BYTES {
            assert!(decode_beat(&b[..n]).is_err());
        }
    }

    #[test]
    fn errors_are_typed_and_keep_their_wording() {
        let msg = |e: FormatError| e.to_string();
        assert_eq!(decode_lease(&[0; 5]), Err(FormatError::TooShort { what: "member lease", len: 5, need: 20 }));
        assert_eq!(msg(decode_lease(&[0; 5]).unwrap_err()), "member lease file is 5 bytes, too short");
        assert_eq!(check_member_id(b""), Err(FormatError::IdLength { len: 0, max: ID_BYTES_MAX }));
        assert_eq!(msg(check_member_id(b"7a").unwrap_err()), "member id has a character other than 0-9 and -");
        let mut owner = encode_owner("1-2", 1);
        owner[0] ^= 1;
        assert_eq!(msg(decode_owner(&owner).unwrap_err()), "not a shoal partition owner file (bad magic)");
        let mut lease = encode_lease("1-2", "x");
        lease.push(0);
        assert_eq!(msg(decode_lease(&lease).unwrap_err()), "member lease file is 25 bytes, its lengths say 24");
        assert_eq!(decode_offsets(&[1; 5]).unwrap_err().to_string(), "committed-offsets file is 5 bytes, expected 128");
        assert_eq!(
            msg(decode_offsets(&[1; 5]).unwrap_err()),
            msg(FormatError::Slots(SlotError::FileLength { what: "committed-offsets", len: 5, need: 128 }))
        );
    }
}
