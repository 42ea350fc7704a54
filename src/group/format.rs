//! On-disk formats of a consumer group (all little-endian, CRC32C-checked, version 1), and
//! their decoders. Every decoder takes untrusted bytes and returns a reason instead of
//! panicking (fuzzed by `fuzz/fuzz_targets/group_offsets.rs` and `group_membership.rs`).
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
//! (the previous commit) still stands.
//!
//! members/<id>.lease   magic b"SHOALMBR", version u32 1, id_len u16, label_len u16,
//!                      id, label, crc32c u32 of everything before it
//! owners/<p>.lock      magic b"SHOALOWN", version u32 1, id_len u16, reserved u16 0,
//!                      id, crc32c u32 of everything before it
//! ```
//! Member ids are 1 to 64 bytes of `[0-9-]` (see [`super::Member::id`]); labels are at most
//! [`LABEL_BYTES_MAX`] bytes of UTF-8.

/// Bytes of an offsets file.
pub const OFFSETS_FILE_BYTES: usize = 128;
/// Bytes of one slot of an offsets file.
pub const OFFSETS_SLOT_BYTES: usize = 40;
/// Where slot `k` starts.
pub const OFFSETS_SLOT_STRIDE: usize = 64;
/// Version of every group file format.
pub const GROUP_FORMAT_VERSION: u32 = 1;
/// Longest label kept in a lease.
pub const LABEL_BYTES_MAX: usize = 1024;
/// Longest member id.
pub const ID_BYTES_MAX: usize = 64;

const OFFSETS_MAGIC: [u8; 8] = *b"SHOALOFF";
const LEASE_MAGIC: [u8; 8] = *b"SHOALMBR";
const OWNER_MAGIC: [u8; 8] = *b"SHOALOWN";

/// A committed offset as stored in one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommittedSlot {
    /// Commit number (the newest slot wins).
    pub generation: u64,
    /// Next offset to read.
    pub offset: u64,
}

/// What the lease file of a member says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The member's id.
    pub id: String,
    /// Its label (e.g. "pid 123").
    pub label: String,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Encodes one offsets slot.
pub fn encode_offsets_slot(generation: u64, offset: u64) -> [u8; OFFSETS_SLOT_BYTES] {
    let mut b = [0u8; OFFSETS_SLOT_BYTES];
    b[0..8].copy_from_slice(&OFFSETS_MAGIC);
    b[8..12].copy_from_slice(&GROUP_FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&generation.to_le_bytes());
    b[24..32].copy_from_slice(&offset.to_le_bytes());
    let crc = crc32c::crc32c(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes one slot: `Ok(None)` when empty (all zero).
///
/// # Errors
/// Why the slot is not valid.
pub fn decode_offsets_slot(b: &[u8]) -> Result<Option<CommittedSlot>, String> {
    if b.len() != OFFSETS_SLOT_BYTES {
        return Err(format!("offsets slot is {} bytes, expected {OFFSETS_SLOT_BYTES}", b.len()));
    }
    if b.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    if b[0..8] != OFFSETS_MAGIC {
        return Err("not a shoal committed-offsets slot (bad magic)".into());
    }
    let version = u32_at(b, 8);
    if version != GROUP_FORMAT_VERSION {
        return Err(format!("committed-offsets version {version} is not the {GROUP_FORMAT_VERSION} this shoal reads"));
    }
    if crc32c::crc32c(&b[..32]) != u32_at(b, 32) {
        return Err("committed-offsets slot checksum mismatch".into());
    }
    if u32_at(b, 12) != 0 || u32_at(b, 36) != 0 {
        return Err("committed-offsets slot has non-zero reserved bytes".into());
    }
    let generation = u64_at(b, 16);
    if generation == 0 {
        return Err("committed-offsets slot has generation 0".into());
    }
    Ok(Some(CommittedSlot { generation, offset: u64_at(b, 24) }))
}

/// Decodes a whole offsets file: the newest valid slot, `Ok(None)` when nothing was ever
/// committed (an empty file, or two empty slots).
///
/// # Errors
/// Why the file is not valid: a wrong length, no valid slot while some slot holds bytes,
/// or two slots with the same generation.
pub fn decode_offsets(bytes: &[u8]) -> Result<Option<CommittedSlot>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() != OFFSETS_FILE_BYTES {
        return Err(format!("committed-offsets file is {} bytes, expected {OFFSETS_FILE_BYTES}", bytes.len()));
    }
    let slots = [0, 1].map(|k| {
        let at = k * OFFSETS_SLOT_STRIDE;
        decode_offsets_slot(&bytes[at..at + OFFSETS_SLOT_BYTES])
    });
    let mut best: Option<CommittedSlot> = None;
    let mut damage = None;
    for slot in slots {
        match slot {
            Ok(Some(s)) => {
                if best.is_some_and(|b| b.generation == s.generation) {
                    return Err(format!("both committed-offsets slots claim generation {}", s.generation));
                }
                if best.is_none_or(|b| b.generation < s.generation) {
                    best = Some(s);
                }
            }
            Ok(None) => {}
            Err(why) => damage = Some(why),
        }
    }
    match (best, damage) {
        (Some(b), _) => Ok(Some(b)),
        (None, Some(why)) => Err(why),
        (None, None) => Ok(None),
    }
}

/// Checks a member id: 1 to [`ID_BYTES_MAX`] bytes of `[0-9-]`.
///
/// # Errors
/// Why it is not an id.
pub fn check_member_id(id: &[u8]) -> Result<(), String> {
    if id.is_empty() || id.len() > ID_BYTES_MAX {
        return Err(format!("member id is {} bytes, expected 1 to {ID_BYTES_MAX}", id.len()));
    }
    if !id.iter().all(|&b| b.is_ascii_digit() || b == b'-') {
        return Err("member id has a character other than 0-9 and -".into());
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

fn check_header(bytes: &[u8], magic: &[u8; 8], what: &str) -> Result<(), String> {
    if bytes.len() < 20 {
        return Err(format!("{what} file is {} bytes, too short", bytes.len()));
    }
    if bytes[0..8] != *magic {
        return Err(format!("not a shoal {what} file (bad magic)"));
    }
    let version = u32_at(bytes, 8);
    if version != GROUP_FORMAT_VERSION {
        return Err(format!("{what} file version {version} is not the {GROUP_FORMAT_VERSION} this shoal reads"));
    }
    Ok(())
}

fn check_crc(bytes: &[u8], end: usize, what: &str) -> Result<(), String> {
    if bytes.len() != end + 4 {
        return Err(format!("{what} file is {} bytes, its lengths say {}", bytes.len(), end + 4));
    }
    if crc32c::crc32c(&bytes[..end]) != u32_at(bytes, end) {
        return Err(format!("{what} file checksum mismatch"));
    }
    Ok(())
}

/// Decodes a lease file.
///
/// # Errors
/// Why the bytes are not a valid lease.
pub fn decode_lease(bytes: &[u8]) -> Result<LeaseInfo, String> {
    check_header(bytes, &LEASE_MAGIC, "member lease")?;
    let id_len = u16_at(bytes, 12) as usize;
    let label_len = u16_at(bytes, 14) as usize;
    if label_len > LABEL_BYTES_MAX {
        return Err(format!("member lease label is {label_len} bytes, at most {LABEL_BYTES_MAX}"));
    }
    let end = 16 + id_len + label_len;
    check_crc(bytes, end, "member lease")?;
    let id = &bytes[16..16 + id_len];
    check_member_id(id)?;
    let label = std::str::from_utf8(&bytes[16 + id_len..end]).map_err(|_| "member lease label is not UTF-8")?;
    // check_member_id allows only ASCII, so this cannot fail.
    let id = std::str::from_utf8(id).map_err(|_| "member id is not UTF-8")?;
    Ok(LeaseInfo { id: id.to_string(), label: label.to_string() })
}

/// Encodes an owner file.
pub fn encode_owner(id: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(16 + id.len() + 4);
    b.extend_from_slice(&OWNER_MAGIC);
    b.extend_from_slice(&GROUP_FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&(id.len() as u16).to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(id.as_bytes());
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes an owner file into the owner's id.
///
/// # Errors
/// Why the bytes are not a valid owner file.
pub fn decode_owner(bytes: &[u8]) -> Result<String, String> {
    check_header(bytes, &OWNER_MAGIC, "partition owner")?;
    let id_len = u16_at(bytes, 12) as usize;
    if u16_at(bytes, 14) != 0 {
        return Err("partition owner file has non-zero reserved bytes".into());
    }
    let end = 16 + id_len;
    check_crc(bytes, end, "partition owner")?;
    let id = &bytes[16..end];
    check_member_id(id)?;
    Ok(std::str::from_utf8(id).map_err(|_| "member id is not UTF-8")?.to_string())
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
        assert_eq!(decode_offsets(&file([None, None])), Ok(None));
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
        assert!(decode_offsets(&bad).unwrap_err().contains("magic"));
        assert!(decode_offsets(&f[..100]).is_err());
        assert!(decode_offsets(&file([Some((4, 1)), Some((4, 2))])).is_err());
    }

    #[test]
    fn leases_and_owners_round_trip_and_reject_damage() {
        let id = "00000000001234567890-42-7";
        let lease = encode_lease(id, "pid 42");
        assert_eq!(decode_lease(&lease), Ok(LeaseInfo { id: id.into(), label: "pid 42".into() }));
        let owner = encode_owner(id);
        assert_eq!(decode_owner(&owner), Ok(id.to_string()));
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
        assert!(decode_owner(&encode_owner("../x")).is_err());
        assert_eq!(clamp_label(&"é".repeat(1000)).len(), 1024);
    }
}
