//! A file of two checksummed slots written alternately, so that a torn write damages only
//! the slot being written and the previous record still stands. The consumer groups'
//! committed offsets ([`crate::group::format`]) and the bridge's stored positions share it.
//!
//! Slot layout (little-endian, the version is the caller's):
//!
//! ```text
//!  0  magic       [u8; 8]
//!  8  version     u32
//! 12  reserved    u32  0
//! 16  generation  u64  1, 2, 3, ... (the slot written is generation % 2)
//! 24  words       u64 x `words`
//!  .  crc32c      u32  of every byte before it
//!  .  reserved    u32  0
//! ```
//! Slots sit at bytes 0 and [`SLOT_STRIDE`] of a [`SLOTS_FILE_BYTES`]-byte file. A slot of
//! zero bytes is empty. The record of a file is its valid slot with the highest generation.
//! Every decoder takes untrusted bytes and returns a [`SlotError`] instead of panicking.

/// The most u64 words a slot carries.
pub const SLOT_WORDS_MAX: usize = 3;
/// Distance between the two slots of a file.
pub const SLOT_STRIDE: usize = 64;
/// Bytes of a two-slot file.
pub const SLOTS_FILE_BYTES: usize = 2 * SLOT_STRIDE;

/// One decoded slot: its generation and its words (unused ones zero).
pub type SlotRecord = (u64, [u64; SLOT_WORDS_MAX]);

/// Why bytes are not a valid slot or two-slot file. `what` names what the file holds
/// (for example "committed-offsets").
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SlotError {
    /// A slot of the wrong length.
    #[error("{what} slot is {len} bytes, expected {need}")]
    SlotLength {
        /// What the file holds.
        what: &'static str,
        /// Bytes given.
        len: usize,
        /// Bytes of a slot.
        need: usize,
    },
    /// A file of the wrong length.
    #[error("{what} file is {len} bytes, expected {need}")]
    FileLength {
        /// What the file holds.
        what: &'static str,
        /// Bytes given.
        len: usize,
        /// Bytes of a file.
        need: usize,
    },
    /// The slot does not start with the format's magic.
    #[error("not a shoal {what} slot (bad magic)")]
    BadMagic {
        /// What the file holds.
        what: &'static str,
    },
    /// A version this build does not read.
    #[error("{what} version {found} is not the {supported} this shoal reads")]
    UnsupportedVersion {
        /// What the file holds.
        what: &'static str,
        /// The version in the slot.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The checksum does not match the bytes.
    #[error("{what} slot checksum mismatch")]
    Checksum {
        /// What the file holds.
        what: &'static str,
    },
    /// A reserved field is not zero.
    #[error("{what} slot has non-zero reserved bytes")]
    Reserved {
        /// What the file holds.
        what: &'static str,
    },
    /// A slot with generation 0 (generations start at 1).
    #[error("{what} slot has generation 0")]
    ZeroGeneration {
        /// What the file holds.
        what: &'static str,
    },
    /// Both slots are valid with the same generation.
    #[error("both {what} slots claim generation {generation}")]
    SameGeneration {
        /// What the file holds.
        what: &'static str,
        /// The generation both claim.
        generation: u64,
    },
}

/// The layout of one two-slot file format (see the module docs).
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

// Little-endian readers at a position the caller has bounds-checked; shared with the
// group's file decoders.

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

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
    pub fn decode_slot(&self, b: &[u8]) -> Result<Option<SlotRecord>, SlotError> {
        let what = self.what;
        let need = self.slot_bytes();
        if b.len() != need {
            return Err(SlotError::SlotLength { what, len: b.len(), need });
        }
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        if b[0..8] != self.magic {
            return Err(SlotError::BadMagic { what });
        }
        let found = u32_at(b, 8);
        if found != self.version {
            return Err(SlotError::UnsupportedVersion { what, found, supported: self.version });
        }
        let at = 24 + 8 * self.words;
        if crc32c::crc32c(&b[..at]) != u32_at(b, at) {
            return Err(SlotError::Checksum { what });
        }
        if u32_at(b, 12) != 0 || u32_at(b, at + 4) != 0 {
            return Err(SlotError::Reserved { what });
        }
        let generation = u64_at(b, 16);
        if generation == 0 {
            return Err(SlotError::ZeroGeneration { what });
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
    pub fn decode_file(&self, bytes: &[u8]) -> Result<Option<SlotRecord>, SlotError> {
        let what = self.what;
        if bytes.is_empty() {
            return Ok(None);
        }
        if bytes.len() != SLOTS_FILE_BYTES {
            return Err(SlotError::FileLength { what, len: bytes.len(), need: SLOTS_FILE_BYTES });
        }
        let mut best: Option<SlotRecord> = None;
        let mut damage = None;
        for k in 0..2 {
            let at = k * SLOT_STRIDE;
            match self.decode_slot(&bytes[at..at + self.slot_bytes()]) {
                Ok(Some(s)) => {
                    if best.is_some_and(|b| b.0 == s.0) {
                        return Err(SlotError::SameGeneration { what, generation: s.0 });
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

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: SlotFormat = SlotFormat { magic: *b"SHOALTST", version: 1, words: 2, what: "test" };

    fn file(slots: [Option<(u64, u64, u64)>; 2]) -> Vec<u8> {
        let mut b = vec![0u8; SLOTS_FILE_BYTES];
        for (k, s) in slots.iter().enumerate() {
            if let Some((g, x, y)) = s {
                let at = k * SLOT_STRIDE;
                TWO.encode_into(*g, &[*x, *y], &mut b[at..at + TWO.slot_bytes()]);
            }
        }
        b
    }

    #[test]
    fn files_take_the_newest_valid_slot() {
        assert_eq!(TWO.decode_file(&[]), Ok(None));
        assert_eq!(TWO.decode_file(&file([None, None])), Ok(None));
        let f = file([Some((2, 20, 21)), Some((3, 30, 31))]);
        assert_eq!(TWO.decode_file(&f), Ok(Some((3, [30, 31, 0]))));
        // A torn newest slot: the previous record stands.
        for i in 0..TWO.slot_bytes() {
            let mut torn = f.clone();
            torn[SLOT_STRIDE + i] ^= 0x40;
            assert_eq!(TWO.decode_file(&torn), Ok(Some((2, [20, 21, 0]))), "flip {i}");
        }
    }

    #[test]
    fn damage_is_named() {
        let mut bad = file([Some((1, 5, 6)), None]);
        bad[3] ^= 1;
        assert_eq!(TWO.decode_file(&bad), Err(SlotError::BadMagic { what: "test" }));
        assert_eq!(TWO.decode_file(&bad).unwrap_err().to_string(), "not a shoal test slot (bad magic)");
        let f = file([Some((1, 5, 6)), None]);
        assert_eq!(TWO.decode_file(&f[..100]), Err(SlotError::FileLength { what: "test", len: 100, need: 128 }));
        assert_eq!(
            TWO.decode_file(&file([Some((4, 1, 1)), Some((4, 2, 2))])),
            Err(SlotError::SameGeneration { what: "test", generation: 4 })
        );
        assert_eq!(TWO.decode_slot(&f[..10]), Err(SlotError::SlotLength { what: "test", len: 10, need: 48 }));
        let mut newer = f.clone();
        newer[8] = 2;
        assert_eq!(
            TWO.decode_slot(&newer[..48]),
            Err(SlotError::UnsupportedVersion { what: "test", found: 2, supported: 1 })
        );
        let mut flipped = f.clone();
        flipped[30] ^= 1;
        assert_eq!(TWO.decode_slot(&flipped[..48]), Err(SlotError::Checksum { what: "test" }));
        let mut zero = vec![0u8; 48];
        TWO.encode_into(0, &[1, 2], &mut zero);
        assert_eq!(TWO.decode_slot(&zero), Err(SlotError::ZeroGeneration { what: "test" }));
    }
}
