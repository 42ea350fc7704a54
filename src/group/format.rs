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
pub const OFFSETS_FILE_BYTES: usize = SLOTS_FILE_BYTES;
/// Bytes of one slot of an offsets file.
pub const OFFSETS_SLOT_BYTES: usize = 40;
/// Where slot `k` starts.
pub const OFFSETS_SLOT_STRIDE: usize = SLOT_STRIDE;
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

/// A file of two checksummed slots written alternately, so that a torn write damages only
/// the slot being written and the previous record still stands. The committed offsets here
/// and the bridge's import positions share it. Slot layout (little-endian):
///
/// ```text
///  0  magic       [u8; 8]
///  8  version     u32
/// 12  reserved    u32  0
/// 16  generation  u64  1, 2, 3, ... (the slot written is generation % 2)
/// 24  words       u64 x `words`
///  .  crc32c      u32  of every byte before it
///  .  reserved    u32  0
/// ```
/// Slots sit at bytes 0 and [`SLOT_STRIDE`] of a [`SLOTS_FILE_BYTES`]-byte file.
#[derive(Clone, Copy, Debug)]
pub struct SlotFormat {
    /// The first 8 bytes of a slot.
    pub magic: [u8; 8],
    /// The format version written and read.
    pub version: u32,
    /// u64 words after the generation (1 to [`SLOT_WORDS_MAX`]).
    pub words: usize,
    /// What the file holds, for error messages ("committed-offsets").
    pub what: &'static str,
}

/// The most u64 words a slot carries.
pub const SLOT_WORDS_MAX: usize = 3;
/// Distance between the two slots of a file.
pub const SLOT_STRIDE: usize = 64;
/// Bytes of a two-slot file.
pub const SLOTS_FILE_BYTES: usize = 2 * SLOT_STRIDE;

/// One decoded slot: its generation and its words (unused ones zero).
pub type SlotRecord = (u64, [u64; SLOT_WORDS_MAX]);

impl SlotFormat {
    /// Bytes of one slot.
    pub const fn slot_bytes(&self) -> usize {
        24 + 8 * self.words + 8
    }

    /// Writes one slot into `b` (exactly [`SlotFormat::slot_bytes`] long).
    pub fn encode_into(&self, generation: u64, words: &[u64], b: &mut [u8]) {
        debug_assert!(words.len() == self.words && b.len() == self.slot_bytes());
        b.fill(0);
        b[0..8].copy_from_slice(&self.magic);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[16..24].copy_from_slice(&generation.to_le_bytes());
        for (i, w) in words.iter().enumerate() {
            b[24 + 8 * i..32 + 8 * i].copy_from_slice(&w.to_le_bytes());
        }
        let at = 24 + 8 * self.words;
        let crc = crc32c::crc32c(&b[..at]);
        b[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes one slot: `Ok(None)` when empty (all zero).
    ///
    /// # Errors
    /// Why the slot is not valid.
    pub fn decode_slot(&self, b: &[u8]) -> Result<Option<SlotRecord>, String> {
        let what = self.what;
        let bytes = self.slot_bytes();
        if b.len() != bytes {
            return Err(format!("{what} slot is {} bytes, expected {bytes}", b.len()));
        }
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[0..8] != self.magic {
            return Err(format!("not a shoal {what} slot (bad magic)"));
        }
        let version = u32_at(b, 8);
        if version != self.version {
            return Err(format!("{what} version {version} is not the {} this shoal reads", self.version));
        }
        let at = 24 + 8 * self.words;
        if crc32c::crc32c(&b[..at]) != u32_at(b, at) {
            return Err(format!("{what} slot checksum mismatch"));
        }
        if u32_at(b, 12) != 0 || u32_at(b, at + 4) != 0 {
            return Err(format!("{what} slot has non-zero reserved bytes"));
        }
        let generation = u64_at(b, 16);
        if generation == 0 {
            return Err(format!("{what} slot has generation 0"));
        }
        let mut words = [0u64; SLOT_WORDS_MAX];
        for (i, w) in words.iter_mut().enumerate().take(self.words) {
            *w = u64_at(b, 24 + 8 * i);
        }
        Ok(Some((generation, words)))
    }

    /// Decodes a whole file: the newest valid slot, `Ok(None)` when nothing was ever
    /// written (an empty file, or two empty slots).
    ///
    /// # Errors
    /// Why the file is not valid: a wrong length, no valid slot while some slot holds bytes,
    /// or two slots with the same generation.
    pub fn decode_file(&self, bytes: &[u8]) -> Result<Option<SlotRecord>, String> {
        let what = self.what;
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() != SLOTS_FILE_BYTES {
            return Err(format!("{what} file is {} bytes, expected {SLOTS_FILE_BYTES}", bytes.len()));
        }
        let mut best: Option<SlotRecord> = None;
        let mut damage = None;
        for k in 0..2 {
            let at = k * SLOT_STRIDE;
            match self.decode_slot(&bytes[at..at + self.slot_bytes()]) {
                Ok(Some(s)) => {
                    if best.is_some_and(|b| b.0 == s.0) {
                        return Err(format!("both {what} slots claim generation {}", s.0));
                    }
                    if best.is_none_or(|b| b.0 < s.0) {
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
pub fn decode_offsets_slot(b: &[u8]) -> Result<Option<CommittedSlot>, String> {
    Ok(OFFSETS_FORMAT.decode_slot(b)?.map(|(generation, w)| CommittedSlot { generation, offset: w[0] }))
}

/// Decodes a whole offsets file: the newest valid slot, `Ok(None)` when nothing was ever
/// committed (an empty file, or two empty slots).
///
/// # Errors
/// Why the file is not valid: a wrong length, no valid slot while some slot holds bytes,
/// or two slots with the same generation.
pub fn decode_offsets(bytes: &[u8]) -> Result<Option<CommittedSlot>, String> {
    Ok(OFFSETS_FORMAT.decode_file(bytes)?.map(|(generation, w)| CommittedSlot { generation, offset: w[0] }))
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
