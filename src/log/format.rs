//! The on-disk format of a shoal log, **format version 2** (reads version 1).
//!
//! This file is the single description of the format; the code that writes and reads it is
//! below. Every integer is little-endian. Changing any layout here means bumping
//! [`FORMAT_VERSION`]; a reader refuses a segment whose version is newer than its own.
//!
//! # Directory
//! A log is a directory holding:
//! - `LOCK`: an empty file; the appender holds an exclusive `flock(2)` on it.
//! - `HEAD`: a 4 KiB control page shared by all processes (see `head.rs`): the durable
//!   watermark (a plain word for tailers, and two checksummed copies that recovery trusts, so
//!   one damaged byte cannot move it) and a futex word that tailers sleep on. Losing it loses
//!   no record, only the knowledge of which damage is a torn tail and which is corruption.
//! - `REPAIR`: present only while a repair cuts the log (or after one was killed): a 48-byte
//!   checksummed journal naming the cut (see `scan.rs`), written and synced before anything is
//!   changed; a later repair or open finishes that cut.
//! - `{seq:020}.seg`: segment files, `seq` counting up from 0. A segment is created under a
//!   temporary name `.{seq:020}.{pid}-{n}.seg.tmp`, preallocated, given its header, synced and only then
//!   renamed, so a segment file that exists always has a complete header.
//!
//! # Segment file (`segment_bytes` long, a multiple of 4096)
//! ```text
//! [0, 4096)                  segment header (64 bytes used, the rest zero)
//! [4096, data_start)         sparse index: index_entries x u64
//! [data_start, segment_bytes) records, back to back, each 8-byte aligned
//! ```
//!
//! Segment header:
//! ```text
//!  0  magic            [u8; 8]  b"SHOALSEG"
//!  8  version          u32      FORMAT_VERSION
//! 12  header_crc       u32      CRC32C of bytes 0..64 with this field taken as zero
//! 16  seq              u64      the file's sequence number (equals the name)
//! 24  base_offset      u64      offset of the first record; u64::MAX while the segment is
//!                               prepared but not yet in use
//! 32  segment_bytes    u64      the file's length
//! 40  index_entries    u32      capacity of the index
//! 44  index_interval   u32      bytes of records between two index entries
//! 48  created_ns       u64      wall clock when the file was prepared
//! 56  activated_ns     u64      wall clock when the first record went in (0 while prepared)
//! ```
//!
//! Index entry (u64, 0 = empty): `(offset - base_offset) << 32 | position`, where position is
//! the byte position of a record in the file. Entries are appended in increasing order, one
//! each time the records pass another `index_interval` bytes. The index is a hint: a reader
//! verifies the record an entry points at and falls back to scanning.
//!
//! Record (a 32-byte header, the optional extension block, then the payload, padded with
//! zeros to a multiple of 8):
//! ```text
//!  0  commit        u32  0 = nothing here yet; COMMIT_BIT | [EXTENDED_BIT] | payload_len =
//!                        a record; END_OF_SEGMENT = the segment is sealed, records go on in
//!                        the next
//!  4  crc           u32  checksum of bytes 8..stride (the rest of this header, the extension
//!                        block, the payload and its zero padding) seeded with the commit
//!                        word less COMMIT_BIT (payload_len, and EXTENDED_BIT when set):
//!                        CRC32C in three interleaved lanes, see `record_crc_in_place`
//!  8  offset        u64  the record's offset
//! 16  timestamp_ns  u64  append time: the log's wall clock at append, ns since the Unix
//!                        epoch, non-decreasing within a log (the appender stores
//!                        max(previous, now))
//! 24  key           u64  routing key (partitioning, compaction); 0 when none was given; with
//!                        key text, the FNV-1a hash of the text (`key_hash`)
//! 32  extensions    only when EXTENDED_BIT is set, see below
//!  .  payload       payload_len bytes, then zeros up to the next multiple of 8
//! ```
//! Extension block (version 2; present only when the commit word has [`EXTENDED_BIT`], so a
//! record without key text or event time is laid out exactly as in version 1 and costs
//! nothing more to write or read):
//! ```text
//!  0  ext_flags     u8   EXT_EVENT_TIME (1): an event time follows; EXT_KEY_BYTES (2): key
//!                        bytes follow; every other bit 0
//!  1  reserved      u8   0
//!  2  key_len       u16  bytes of key text (0 unless EXT_KEY_BYTES; at most KEY_BYTES_MAX)
//!  4  reserved      u32  0
//!  8  event_time_ns u64  only with EXT_EVENT_TIME: the producer's event time, ns since the
//!                        Unix epoch (any value: shoal does not order by it)
//!  .  key bytes     key_len bytes, then zeros up to the next multiple of 8 (only with
//!                        EXT_KEY_BYTES)
//! ```
//! The payload therefore stays 8-byte aligned and contiguous, and the key bytes are one
//! contiguous slice too. payload_len has 30 bits in version 2 (a segment is at most 1 GiB);
//! in a version 1 segment EXTENDED_BIT is never set by a valid record (its length would run
//! past the end of any segment), so one decoder reads both versions: a version 1 record is a
//! version 2 record without extensions. The appender writes into version 2 segments only:
//! a version 1 segment found at the tail on open is sealed and the log goes on in a new one.
//! What recovers a sealed segment's end when its end marker is lost: the next segment's
//! `base_offset` (in its checksummed header) is the offset after the last record, and the
//! records themselves (checksummed, offsets included) lead to the position; so a lost marker,
//! or a file cut right after its last record, is written back without losing a record. These
//! additions (the `HEAD` copies, the journal) use space that was reserved or files that were
//! not there: they came with version 1, and files of older builds open unchanged.
//!
//! The commit word is stored last, with `Release` ordering; a reader loads it with `Acquire`
//! and only then reads the rest, so no reader in this or another process sees a partial record.
//! After a crash the checksum (which covers the offset, so stale bytes from an older record never
//! pass as the expected one) decides whether a record reached the disk whole.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHOALSEG";
/// The format version this build writes, and the newest it reads (it reads every older one:
/// version 1 lacks only the extension block).
pub const FORMAT_VERSION: u32 = 2;
/// Bytes reserved for the segment header (one page).
pub const SEGMENT_HEADER_BYTES: usize = 4096;
/// Bytes of the header fields that are used and covered by the header CRC.
pub const SEGMENT_HEADER_USED_BYTES: usize = 64;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Alignment of every record and payload.
pub const RECORD_ALIGN: usize = 8;
/// Set in the commit word of every record.
pub const COMMIT_BIT: u32 = 1 << 31;
/// Set in the commit word of a record that has an extension block (format version 2).
pub const EXTENDED_BIT: u32 = 1 << 30;
/// The commit word that seals a segment.
pub const END_OF_SEGMENT: u32 = u32::MAX;
/// The largest payload the format can describe (the commit word's low 30 bits).
pub const PAYLOAD_BYTES_FORMAT_MAX: usize = (EXTENDED_BIT - 1) as usize;
/// Extension flag: the record carries a producer's event time.
pub const EXT_EVENT_TIME: u8 = 1;
/// Extension flag: the record carries its key's bytes (the key text).
pub const EXT_KEY_BYTES: u8 = 2;
/// The longest key text a record can carry, in bytes.
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;
/// Bytes of the fixed part of an extension block.
pub const EXT_HEADER_BYTES: usize = 8;

/// The routing key of a key text: 64-bit FNV-1a of its bytes. Records appended with key
/// text store this as their `u64` key, so partitioning by key is the same with or without
/// the text (`shoal::bus::key_hash` is this function).
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The optional parts of a record stored in its extension block: the event time and the
/// key text. Both `None` is a record without an extension block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions<'a> {
    /// The producer's event time, ns since the Unix epoch.
    pub event_time_ns: Option<u64>,
    /// The key's bytes (at most [`KEY_BYTES_MAX`]).
    pub key_bytes: Option<&'a [u8]>,
}

impl Extensions<'_> {
    /// True when there is nothing to store (no extension block).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.event_time_ns.is_none() && self.key_bytes.is_none()
    }

    /// Bytes of the extension block (0 when empty).
    #[inline]
    pub fn encoded_bytes(&self) -> usize {
        if self.is_empty() {
            return 0;
        }
        EXT_HEADER_BYTES
            + if self.event_time_ns.is_some() { 8 } else { 0 }
            + self.key_bytes.map_or(0, |k| align_up(k.len(), RECORD_ALIGN))
    }
}
/// `base_offset` of a segment that is prepared but holds no record yet.
pub const BASE_OFFSET_UNSET: u64 = u64::MAX;
/// Page size assumed by the layout.
pub const PAGE_BYTES: usize = 4096;

/// Rounds `n` up to a multiple of `align` (a power of two).
#[inline]
pub const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// Bytes a record with `payload_len` bytes of payload takes in a segment.
#[inline]
pub const fn record_stride(payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + align_up(payload_len, RECORD_ALIGN)
}

/// Bytes a record with an extension block of `ext_bytes` (see
/// [`Extensions::encoded_bytes`]) and `payload_len` bytes of payload takes in a segment.
#[inline]
pub const fn record_stride_ext(ext_bytes: usize, payload_len: usize) -> usize {
    RECORD_HEADER_BYTES + ext_bytes + align_up(payload_len, RECORD_ALIGN)
}

/// The payload length a record's commit word states (without the flag bits).
#[inline]
pub const fn commit_payload_len(commit: u32) -> usize {
    (commit & !(COMMIT_BIT | EXTENDED_BIT)) as usize
}

/// The checksum stored in a record, computed from its parts (for tools and tests; the
/// appender uses [`record_crc_in_place`]).
pub fn record_crc(payload_len: u32, header_tail: &[u8; 24], payload: &[u8]) -> u32 {
    let mut bytes = Vec::with_capacity(24 + align_up(payload.len(), RECORD_ALIGN));
    bytes.extend_from_slice(header_tail);
    bytes.extend_from_slice(payload);
    bytes.resize(24 + align_up(payload.len(), RECORD_ALIGN), 0);
    record_crc_in_place(payload_len, &bytes)
}

/// The checksum of a record laid out in memory: `bytes` runs from the record's byte 8 to its
/// stride (the header's offset, timestamp and key, the payload, its zero padding), so its
/// length is a multiple of 8.
///
/// It is CRC32C (the Castagnoli polynomial, the `crc32` instruction of SSE 4.2) computed in
/// three interleaved lanes of 8-byte words, word `i` going to lane `i % 3`, each lane seeded
/// differently from `payload_len`; the three lane values are then folded by one more CRC32C,
/// each as a zero-extended 64-bit word.
/// A plain CRC32C runs one dependent `crc32` instruction per word (3 cycles each), which made
/// it most of the cost of appending a 100-byte record; three lanes run in parallel. Damage
/// confined to one lane changes that lane's CRC (a CRC32C detects every burst of up to 32
/// bits), and the fold detects any change of its 24-byte input confined to 32 bits; other
/// damage passes with probability about 2^-32, as with any 32-bit check. This is written
/// here because the `crc32c` crate offers only the serial form below 768 bytes.
#[inline]
pub fn record_crc_in_place(payload_len: u32, bytes: &[u8]) -> u32 {
    debug_assert!(bytes.len() % 8 == 0);
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE 4.2 (checked just above).
            return unsafe { lanes_sse42(payload_len, bytes) };
        }
    }
    lanes_portable(payload_len, bytes)
}

const LANE_SEEDS: [u32; 3] = [0x9E37_79B9, 0x85EB_CA6B, 0xC2B2_AE35];

#[inline]
fn lane_seed(payload_len: u32, lane: usize) -> u32 {
    payload_len ^ LANE_SEEDS[lane]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn lanes_sse42(payload_len: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::_mm_crc32_u64;
    let word = |i: usize| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let words = bytes.len() / 8;
    let mut lane =
        [lane_seed(payload_len, 0) as u64, lane_seed(payload_len, 1) as u64, lane_seed(payload_len, 2) as u64];
    let mut i = 0;
    while i + 3 <= words {
        lane[0] = _mm_crc32_u64(lane[0], word(i));
        lane[1] = _mm_crc32_u64(lane[1], word(i + 1));
        lane[2] = _mm_crc32_u64(lane[2], word(i + 2));
        i += 3;
    }
    let mut l = 0;
    while i < words {
        lane[l] = _mm_crc32_u64(lane[l], word(i));
        i += 1;
        l += 1;
    }
    // Each lane goes into the fold as a whole 64-bit word: packing two 32-bit lanes into one
    // word lets damage that straddles the last words of two lanes cancel out (a CRC's zero
    // tail shift equals its data shift), so a torn tail of repeated bytes passed the check.
    let folded = _mm_crc32_u64(!payload_len as u64, lane[0]);
    let folded = _mm_crc32_u64(folded, lane[1]);
    !(_mm_crc32_u64(folded, lane[2]) as u32)
}

/// The same function without SSE 4.2, through the `crc32c` crate (which pre- and
/// post-inverts: `raw(s, b) = !crc32c_append(!s, b)`).
fn lanes_portable(payload_len: u32, bytes: &[u8]) -> u32 {
    let raw = |state: u32, data: &[u8]| !crc32c::crc32c_append(!state, data);
    let mut lane = [lane_seed(payload_len, 0), lane_seed(payload_len, 1), lane_seed(payload_len, 2)];
    for (i, word) in bytes.chunks_exact(8).enumerate() {
        lane[i % 3] = raw(lane[i % 3], word);
    }
    let mut fold = [0u8; 24];
    fold[0..4].copy_from_slice(&lane[0].to_le_bytes());
    fold[8..12].copy_from_slice(&lane[1].to_le_bytes());
    fold[16..20].copy_from_slice(&lane[2].to_le_bytes());
    !raw(!payload_len, &fold)
}

/// The decoded header of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number of the segment file.
    pub seq: u64,
    /// Offset of its first record, or [`BASE_OFFSET_UNSET`].
    pub base_offset: u64,
    /// Length of the file.
    pub segment_bytes: u64,
    /// Capacity of the index, in entries.
    pub index_entries: u32,
    /// Bytes of records between index entries.
    pub index_interval: u32,
    /// When the file was prepared.
    pub created_ns: u64,
    /// When its first record went in (0 while prepared).
    pub activated_ns: u64,
}

/// Why bytes are not a valid segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Short,
    /// The magic is not `SHOALSEG`: not a shoal segment.
    BadMagic,
    /// Written by a newer shoal (the header passes this build's checksum).
    NewerVersion(u32),
    /// A version newer than this build's whose header fails this build's checksum: a newer
    /// format, or a damaged header.
    NewerOrDamaged(u32),
    /// Version 0 or otherwise impossible.
    BadVersion(u32),
    /// The header's checksum does not match.
    BadChecksum,
    /// Fields that contradict each other or the format (reason given).
    Inconsistent(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Short => write!(f, "shorter than a segment header"),
            HeaderError::BadMagic => write!(f, "does not start with the shoal segment magic"),
            HeaderError::NewerVersion(v) => {
                write!(f, "format version {v} is newer than the {FORMAT_VERSION} this build reads")
            }
            HeaderError::NewerOrDamaged(v) => write!(
                f,
                "format version {v} is newer than the {FORMAT_VERSION} this build reads, or the header is damaged (its checksum does not match); `shoal verify` from a shoal that reads version {v} tells which"
            ),
            HeaderError::BadVersion(v) => write!(f, "format version {v} is invalid"),
            HeaderError::BadChecksum => write!(f, "segment header checksum mismatch"),
            HeaderError::Inconsistent(why) => write!(f, "segment header is inconsistent: {why}"),
        }
    }
}

impl SegmentHeader {
    /// Offset in the file where the index starts.
    pub const fn index_start(&self) -> usize {
        SEGMENT_HEADER_BYTES
    }

    /// Offset in the file where records start.
    pub const fn data_start(&self) -> usize {
        data_start(self.index_entries)
    }

    /// Encodes the header into its 64 bytes, checksum included.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_USED_BYTES] {
        let mut b = [0u8; SEGMENT_HEADER_USED_BYTES];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.base_offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.segment_bytes.to_le_bytes());
        b[40..44].copy_from_slice(&self.index_entries.to_le_bytes());
        b[44..48].copy_from_slice(&self.index_interval.to_le_bytes());
        b[48..56].copy_from_slice(&self.created_ns.to_le_bytes());
        b[56..64].copy_from_slice(&self.activated_ns.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and validates a header from the first bytes of a file.
    ///
    /// # Errors
    /// [`HeaderError`] says what is wrong; nothing here panics, whatever the bytes.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
        if bytes.len() < 8 {
            return Err(HeaderError::Short);
        }
        if bytes[0..8] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if bytes.len() < SEGMENT_HEADER_USED_BYTES {
            return Err(HeaderError::Short);
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        let version = u32_at(8);
        let mut copy = [0u8; SEGMENT_HEADER_USED_BYTES];
        copy.copy_from_slice(&bytes[..SEGMENT_HEADER_USED_BYTES]);
        copy[12..16].fill(0);
        let checksum_ok = crc32c::crc32c(&copy) == u32_at(12);
        // The checksum before the version: one flipped bit in the version field is damage,
        // not a newer format. A newer format may checksum its header differently, so a
        // higher version with a mismatch stays undecided rather than called damaged.
        if version > FORMAT_VERSION {
            return Err(if checksum_ok {
                HeaderError::NewerVersion(version)
            } else {
                HeaderError::NewerOrDamaged(version)
            });
        }
        if !checksum_ok {
            return Err(HeaderError::BadChecksum);
        }
        if version == 0 {
            return Err(HeaderError::BadVersion(version));
        }
        let header = SegmentHeader {
            seq: u64_at(16),
            base_offset: u64_at(24),
            segment_bytes: u64_at(32),
            index_entries: u32_at(40),
            index_interval: u32_at(44),
            created_ns: u64_at(48),
            activated_ns: u64_at(56),
        };
        header.check()?;
        Ok(header)
    }

    /// Checks the fields against the format's limits.
    fn check(&self) -> Result<(), HeaderError> {
        let seg = self.segment_bytes;
        if seg % PAGE_BYTES as u64 != 0 {
            return Err(HeaderError::Inconsistent("segment size is not a multiple of 4096"));
        }
        if seg > SEGMENT_BYTES_FORMAT_MAX as u64 {
            return Err(HeaderError::Inconsistent("segment size exceeds 1 GiB"));
        }
        if self.index_interval == 0 || self.index_interval % RECORD_ALIGN as u32 != 0 {
            return Err(HeaderError::Inconsistent("index interval is not a multiple of 8"));
        }
        let data = data_start(self.index_entries) as u64;
        if data + RECORD_HEADER_BYTES as u64 > seg {
            return Err(HeaderError::Inconsistent("no room for records after the index"));
        }
        Ok(())
    }
}

/// The largest segment the format allows (positions in index entries are u32, and io_uring
/// sync ranges are u32 lengths).
pub const SEGMENT_BYTES_FORMAT_MAX: usize = 1 << 30;

/// Where records start in a segment with `index_entries` index slots.
pub const fn data_start(index_entries: u32) -> usize {
    align_up(SEGMENT_HEADER_BYTES + index_entries as usize * 8, PAGE_BYTES)
}

/// Index capacity for a segment size and interval.
pub(crate) fn index_entries_for(segment_bytes: u64, index_interval: u32) -> u32 {
    let data = segment_bytes.saturating_sub(SEGMENT_HEADER_BYTES as u64);
    // Each entry also takes 8 bytes of the segment; the estimate is close enough.
    ((data / (index_interval as u64 + 8)).max(1)).min(u32::MAX as u64 / 2) as u32
}

/// Packs an index entry.
#[inline]
pub const fn index_entry(relative_offset: u32, position: u32) -> u64 {
    ((relative_offset as u64) << 32) | position as u64
}

/// Unpacks an index entry into (relative offset, position).
#[inline]
pub const fn index_entry_parts(entry: u64) -> (u32, u32) {
    ((entry >> 32) as u32, entry as u32)
}

/// A view of one segment's bytes that may be shared with writers in this and other
/// processes.
///
/// Only committed records are ever read through a reference; the commit word and index
/// entries are read with atomic loads. All accessors check bounds, so any bytes (a damaged
/// file, a hostile process) give an error or `None`, never a panic or an out-of-bounds read.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a Region is a pointer into a shared mapping whose concurrent access follows the
// commit protocol above (atomics for words that change, immutable bytes once committed); it
// carries no thread-affine state.
unsafe impl Send for Region {}
// SAFETY: as for Send; every shared access goes through atomics or committed (immutable) bytes.
unsafe impl Sync for Region {}

/// What is found at a position of a segment.
#[derive(Clone, Copy, Debug)]
pub enum Slot<'a> {
    /// Nothing written here yet (commit word 0).
    Empty,
    /// The segment was sealed here; records go on in the next segment.
    End,
    /// A whole, checksummed record.
    Record(RecordView<'a>),
}

/// Why the bytes at a position are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The position is not 8-byte aligned or not inside the data area.
    BadPosition,
    /// The commit word is neither 0, a record, nor the end marker.
    BadCommitWord(u32),
    /// The record's length runs past the end of the segment.
    LengthPastEnd {
        /// Payload length claimed by the commit word.
        payload_len: u32,
    },
    /// The record is longer than the log allows.
    TooLong {
        /// Payload length claimed by the commit word.
        payload_len: u32,
    },
    /// The checksum does not match: a torn write or damaged bytes.
    BadChecksum,
    /// The extension block has unknown flags, non-zero reserved bytes or a key length that
    /// runs past the end of the segment.
    BadExtension,
    /// A whole record, but not the offset expected here.
    WrongOffset {
        /// Offset expected at this position.
        expected: u64,
        /// Offset found.
        found: u64,
    },
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::BadPosition => write!(f, "record position is misaligned or out of range"),
            RecordError::BadCommitWord(w) => write!(f, "invalid commit word {w:#010x}"),
            RecordError::LengthPastEnd { payload_len } => {
                write!(f, "record length {payload_len} runs past the end of the segment")
            }
            RecordError::TooLong { payload_len } => {
                write!(f, "record length {payload_len} exceeds the log's maximum")
            }
            RecordError::BadChecksum => write!(f, "checksum mismatch (torn or damaged record)"),
            RecordError::BadExtension => write!(f, "invalid extension block (torn or damaged record)"),
            RecordError::WrongOffset { expected, found } => {
                write!(f, "record holds offset {found} where offset {expected} belongs")
            }
        }
    }
}

/// A committed record inside a [`Region`].
#[derive(Clone, Copy, Debug)]
pub struct RecordView<'a> {
    /// Byte position of the record header in the segment.
    pub position: usize,
    /// Offset stored in the record.
    pub offset: u64,
    /// Timestamp stored in the record.
    pub timestamp_ns: u64,
    /// Key stored in the record.
    pub key: u64,
    /// The payload, borrowed from the mapping.
    pub payload: &'a [u8],
    /// The producer's event time, when the record carries one.
    pub event_time_ns: Option<u64>,
    /// The key's bytes, when the record carries them, borrowed from the mapping.
    pub key_bytes: Option<&'a [u8]>,
    /// Bytes the record takes in the segment.
    pub stride: usize,
}

impl<'a> RecordView<'a> {
    /// Position of the next record.
    #[inline]
    pub fn next_position(&self) -> usize {
        self.position + self.stride
    }

    /// The key's bytes, when the record carries them.
    #[inline]
    pub fn key_bytes(&self) -> Option<&'a [u8]> {
        self.key_bytes
    }

    /// Byte position of the payload in the segment.
    #[inline]
    pub fn payload_position(&self) -> usize {
        self.position + self.stride - align_up(self.payload.len(), RECORD_ALIGN)
    }
}

impl Region {
    /// Wraps `len` bytes at `ptr`.
    ///
    /// # Safety
    /// - `ptr` is 8-byte aligned and valid for reads of `len` bytes for as long as the
    ///   Region (and anything borrowed from it) is used; for [`Region::write_record`] and the
    ///   other writers, also valid for writes.
    /// - Other writers of these bytes (in any process) follow the commit protocol of this
    ///   module: the bytes of a record are not changed after its commit word is published,
    ///   and words read atomically here are written atomically there.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Region {
        debug_assert!(ptr as usize % 8 == 0);
        Region { ptr, len }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Base pointer.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    #[inline]
    fn atomic_u32(&self, at: usize) -> Option<&AtomicU32> {
        if at % 4 != 0 || at.checked_add(4)? > self.len {
            return None;
        }
        // SAFETY: in bounds and 4-aligned (the base is 8-aligned); the protocol makes every
        // concurrent access to this word atomic.
        Some(unsafe { AtomicU32::from_ptr(self.ptr.add(at).cast()) })
    }

    fn atomic_u64(&self, at: usize) -> Option<&AtomicU64> {
        if at % 8 != 0 || at.checked_add(8)? > self.len {
            return None;
        }
        // SAFETY: in bounds and 8-aligned; the protocol makes every concurrent access to
        // this word atomic.
        Some(unsafe { AtomicU64::from_ptr(self.ptr.add(at).cast()) })
    }

    /// Loads the commit word at `at` (Acquire; pairs with the Release store in
    /// [`Region::publish`]). `None` when out of bounds or misaligned.
    #[inline]
    pub fn load_commit(&self, at: usize) -> Option<u32> {
        Some(self.atomic_u32(at)?.load(Ordering::Acquire))
    }

    /// Borrows bytes that are known to be immutable (a committed record, a header).
    ///
    /// Returns `None` when out of bounds.
    #[inline]
    pub fn committed_bytes(&self, at: usize, len: usize) -> Option<&[u8]> {
        if at.checked_add(len)? > self.len {
            return None;
        }
        // SAFETY: in bounds; callers only ask for bytes behind a published commit word (or a
        // header that is never rewritten while a reader holds the region), which the
        // protocol keeps immutable.
        Some(unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) })
    }

    /// Copies bytes out (for headers, which may be rewritten while read).
    pub fn copy_out(&self, at: usize, out: &mut [u8]) -> bool {
        if at.checked_add(out.len()).is_none_or(|end| end > self.len) {
            return false;
        }
        // SAFETY: in bounds; a volatile-free byte copy of plain bytes. A concurrent header
        // rewrite can only make the copy fail its checksum, which the caller checks.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(at), out.as_mut_ptr(), out.len()) };
        true
    }

    /// Decodes the slot at `position`, expecting `expected_offset` there, with payloads of at
    /// most `payload_max` bytes.
    ///
    /// # Errors
    /// [`RecordError`] when the bytes are not a valid record.
    #[inline]
    pub fn decode(
        &self,
        position: usize,
        expected_offset: Option<u64>,
        payload_max: usize,
    ) -> Result<Slot<'_>, RecordError> {
        if position % RECORD_ALIGN != 0 {
            return Err(RecordError::BadPosition);
        }
        let commit = self.load_commit(position).ok_or(RecordError::BadPosition)?;
        if commit == 0 {
            return Ok(Slot::Empty);
        }
        if commit == END_OF_SEGMENT {
            return Ok(Slot::End);
        }
        if commit & COMMIT_BIT == 0 {
            return Err(RecordError::BadCommitWord(commit));
        }
        if commit & EXTENDED_BIT != 0 {
            return self.decode_extended(position, commit, expected_offset, payload_max);
        }
        let payload_len = commit & !COMMIT_BIT;
        let len = payload_len as usize;
        if len > payload_max {
            return Err(RecordError::TooLong { payload_len });
        }
        let stride = record_stride(len);
        if position.checked_add(stride).is_none_or(|end| end > self.len) {
            return Err(RecordError::LengthPastEnd { payload_len });
        }
        let bytes = self.committed_bytes(position, stride).ok_or(RecordError::LengthPastEnd { payload_len })?;
        let mut tail = [0u8; 24];
        tail.copy_from_slice(&bytes[8..32]);
        let stored_crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let payload = &bytes[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len];
        if record_crc_in_place(payload_len, &bytes[8..]) != stored_crc {
            return Err(RecordError::BadChecksum);
        }
        let word = |i: usize| u64::from_le_bytes(tail[i..i + 8].try_into().unwrap_or([0; 8]));
        let offset = word(0);
        if let Some(expected) = expected_offset {
            if offset != expected {
                return Err(RecordError::WrongOffset { expected, found: offset });
            }
        }
        Ok(Slot::Record(RecordView {
            position,
            offset,
            timestamp_ns: word(8),
            key: word(16),
            payload,
            event_time_ns: None,
            key_bytes: None,
            stride,
        }))
    }

    /// [`Region::decode`] of a record with an extension block (kept out of line: records
    /// without one never come here, and their decode stays small).
    #[inline(never)]
    fn decode_extended(
        &self,
        position: usize,
        commit: u32,
        expected_offset: Option<u64>,
        payload_max: usize,
    ) -> Result<Slot<'_>, RecordError> {
        let seed = commit & !COMMIT_BIT;
        let len = commit_payload_len(commit);
        let payload_len = len as u32;
        if len > payload_max {
            return Err(RecordError::TooLong { payload_len });
        }
        let fixed = RECORD_HEADER_BYTES + EXT_HEADER_BYTES;
        let head = self.committed_bytes(position, fixed).ok_or(RecordError::LengthPastEnd { payload_len })?;
        let ext = &head[RECORD_HEADER_BYTES..];
        let flags = ext[0];
        let key_len = u16::from_le_bytes([ext[2], ext[3]]) as usize;
        let reserved_clear = ext[1] == 0 && ext[4..8] == [0; 4];
        let known = flags & !(EXT_EVENT_TIME | EXT_KEY_BYTES) == 0 && flags != 0;
        if !reserved_clear || !known || (flags & EXT_KEY_BYTES == 0 && key_len != 0) {
            return Err(RecordError::BadExtension);
        }
        let time_bytes = if flags & EXT_EVENT_TIME != 0 { 8 } else { 0 };
        let ext_bytes = EXT_HEADER_BYTES + time_bytes + align_up(key_len, RECORD_ALIGN);
        let stride = record_stride_ext(ext_bytes, len);
        if position.checked_add(stride).is_none_or(|end| end > self.len) {
            return Err(RecordError::LengthPastEnd { payload_len });
        }
        let bytes = self.committed_bytes(position, stride).ok_or(RecordError::LengthPastEnd { payload_len })?;
        let stored_crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if record_crc_in_place(seed, &bytes[8..]) != stored_crc {
            return Err(RecordError::BadChecksum);
        }
        let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
        let offset = word(8);
        if let Some(expected) = expected_offset {
            if offset != expected {
                return Err(RecordError::WrongOffset { expected, found: offset });
            }
        }
        let event_time_ns = (time_bytes != 0).then(|| word(fixed));
        let key_at = fixed + time_bytes;
        let key_bytes = (flags & EXT_KEY_BYTES != 0).then(|| &bytes[key_at..key_at + key_len]);
        let payload_at = RECORD_HEADER_BYTES + ext_bytes;
        Ok(Slot::Record(RecordView {
            position,
            offset,
            timestamp_ns: word(16),
            key: word(24),
            payload: &bytes[payload_at..payload_at + len],
            event_time_ns,
            key_bytes,
            stride,
        }))
    }

    /// Writes a record's header (all but the commit word) and lets `fill` write the payload
    /// in place; does not publish it. Returns the CRC-complete length of the record.
    ///
    /// # Safety
    /// The caller is the only writer of `[position, position + record_stride(len))`, that
    /// range is in bounds and unpublished (its commit word is 0 and no reader holds a
    /// reference into it), and the bytes after the payload up to the stride are zero.
    #[inline]
    pub unsafe fn write_record<F: FnOnce(&mut [u8])>(
        &self,
        position: usize,
        offset: u64,
        timestamp_ns: u64,
        key: u64,
        len: usize,
        fill: F,
    ) -> u32 {
        debug_assert!(position % RECORD_ALIGN == 0);
        debug_assert!(position + record_stride(len) <= self.len);
        let mut tail = [0u8; 24];
        tail[0..8].copy_from_slice(&offset.to_le_bytes());
        tail[8..16].copy_from_slice(&timestamp_ns.to_le_bytes());
        tail[16..24].copy_from_slice(&key.to_le_bytes());
        // SAFETY: the caller owns this unpublished, in-bounds range exclusively; readers only
        // load the commit word at `position`, which we do not touch here.
        let payload = unsafe {
            std::ptr::copy_nonoverlapping(tail.as_ptr(), self.ptr.add(position + 8), 24);
            std::slice::from_raw_parts_mut(self.ptr.add(position + RECORD_HEADER_BYTES), len)
        };
        // SAFETY: the range is ours and in bounds (as above).
        let unwound = unsafe { ZeroOnUnwind::new(self.ptr.add(position + 8), record_stride(len) - 8) };
        fill(payload);
        unwound.disarm();
        let payload_len = len as u32;
        // SAFETY: as above; the range (header tail, payload, zero padding) is ours and in
        // bounds, and `payload`'s borrow ended with `fill`.
        let body = unsafe { std::slice::from_raw_parts(self.ptr.add(position + 8), record_stride(len) - 8) };
        let crc = record_crc_in_place(payload_len, body);
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(crc.to_le_bytes().as_ptr(), self.ptr.add(position + 4), 4) };
        COMMIT_BIT | payload_len
    }

    /// [`Region::write_record`] with an extension block: writes the header, `ext` (its
    /// event time and key bytes) and lets `fill` write the payload in place; does not publish
    /// it. Returns the commit word to publish. With `ext` empty this is `write_record`.
    ///
    /// # Safety
    /// As [`Region::write_record`], for the range
    /// `[position, position + record_stride_ext(ext.encoded_bytes(), len))`; and
    /// `ext.key_bytes` is at most [`KEY_BYTES_MAX`] long.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    pub unsafe fn write_record_ext<F: FnOnce(&mut [u8])>(
        &self,
        position: usize,
        offset: u64,
        timestamp_ns: u64,
        key: u64,
        ext: &Extensions<'_>,
        len: usize,
        fill: F,
    ) -> u32 {
        if ext.is_empty() {
            // SAFETY: the caller's contract is write_record's for this range.
            return unsafe { self.write_record(position, offset, timestamp_ns, key, len, fill) };
        }
        let ext_bytes = ext.encoded_bytes();
        let stride = record_stride_ext(ext_bytes, len);
        debug_assert!(position % RECORD_ALIGN == 0);
        debug_assert!(position + stride <= self.len);
        let key_text = ext.key_bytes.unwrap_or(&[]);
        debug_assert!(key_text.len() <= KEY_BYTES_MAX);
        let mut head = [0u8; 24 + EXT_HEADER_BYTES + 8];
        head[0..8].copy_from_slice(&offset.to_le_bytes());
        head[8..16].copy_from_slice(&timestamp_ns.to_le_bytes());
        head[16..24].copy_from_slice(&key.to_le_bytes());
        head[24] = if ext.event_time_ns.is_some() { EXT_EVENT_TIME } else { 0 }
            | if ext.key_bytes.is_some() { EXT_KEY_BYTES } else { 0 };
        head[26..28].copy_from_slice(&(key_text.len() as u16).to_le_bytes());
        let mut head_len = 24 + EXT_HEADER_BYTES;
        if let Some(t) = ext.event_time_ns {
            head[head_len..head_len + 8].copy_from_slice(&t.to_le_bytes());
            head_len += 8;
        }
        let key_at = position + 8 + head_len;
        let payload_at = position + RECORD_HEADER_BYTES + ext_bytes;
        // SAFETY: the caller owns this unpublished, in-bounds range exclusively (stride
        // bytes from `position`); the key bytes end before `payload_at`, the payload before
        // `position + stride`; readers only load the commit word, untouched here.
        let payload = unsafe {
            std::ptr::copy_nonoverlapping(head.as_ptr(), self.ptr.add(position + 8), head_len);
            std::ptr::copy_nonoverlapping(key_text.as_ptr(), self.ptr.add(key_at), key_text.len());
            std::slice::from_raw_parts_mut(self.ptr.add(payload_at), len)
        };
        // SAFETY: the range is ours and in bounds (as above).
        let unwound = unsafe { ZeroOnUnwind::new(self.ptr.add(position + 8), stride - 8) };
        fill(payload);
        unwound.disarm();
        let seed = EXTENDED_BIT | len as u32;
        // SAFETY: as above; `payload`'s borrow ended with `fill`.
        let body = unsafe { std::slice::from_raw_parts(self.ptr.add(position + 8), stride - 8) };
        let crc = record_crc_in_place(seed, body);
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(crc.to_le_bytes().as_ptr(), self.ptr.add(position + 4), 4) };
        COMMIT_BIT | seed
    }

    /// The format version in the segment header at the start of the region (0 when the
    /// region is shorter than a header). Not checked: use [`Region::read_header`] first.
    pub fn header_version(&self) -> u32 {
        let mut b = [0u8; 4];
        if self.copy_out(8, &mut b) {
            u32::from_le_bytes(b)
        } else {
            0
        }
    }

    /// Publishes a commit word (Release; pairs with the Acquire load in
    /// [`Region::load_commit`]).
    ///
    /// Returns false when `position` is out of bounds or misaligned.
    #[inline]
    pub fn publish(&self, position: usize, commit: u32) -> bool {
        match self.atomic_u32(position) {
            Some(word) => {
                word.store(commit, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Loads index entry `i` of a segment (Acquire; pairs with [`Region::store_index`]).
    pub fn load_index(&self, i: usize) -> Option<u64> {
        let at = SEGMENT_HEADER_BYTES.checked_add(i.checked_mul(8)?)?;
        Some(self.atomic_u64(at)?.load(Ordering::Acquire))
    }

    /// Stores index entry `i` (Release; pairs with [`Region::load_index`]).
    pub fn store_index(&self, i: usize, entry: u64) -> bool {
        let at = match i.checked_mul(8).and_then(|b| b.checked_add(SEGMENT_HEADER_BYTES)) {
            Some(at) => at,
            None => return false,
        };
        match self.atomic_u64(at) {
            Some(word) => {
                word.store(entry, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Zeroes `[from, to)`, commit words included, atomically word by word where a reader
    /// may be polling. Used to cut a torn tail.
    ///
    /// # Safety
    /// The caller is the only writer of the range and no reader holds a reference into it
    /// (readers only poll commit words atomically, which this stores atomically).
    pub unsafe fn zero(&self, from: usize, to: usize) {
        let to = to.min(self.len);
        let mut at = align_up(from, 8);
        // Leading unaligned bytes.
        for i in from..at.min(to) {
            // SAFETY: in bounds, exclusive per the caller's contract.
            unsafe { self.ptr.add(i).write_volatile(0) };
        }
        while at + 8 <= to {
            if let Some(word) = self.atomic_u64(at) {
                if word.load(Ordering::Relaxed) != 0 {
                    word.store(0, Ordering::Release);
                }
            }
            at += 8;
        }
        for i in at..to {
            // SAFETY: in bounds, exclusive per the caller's contract.
            unsafe { self.ptr.add(i).write_volatile(0) };
        }
    }

    /// Writes a segment header at the start of the region.
    ///
    /// # Safety
    /// The caller is the only writer of the header; readers copy the header out and verify
    /// its checksum, so a racing read sees a checksum mismatch, never a torn value used.
    pub unsafe fn write_header(&self, header: &SegmentHeader) {
        let bytes = header.encode();
        assert!(self.len >= bytes.len());
        // SAFETY: in bounds (asserted); exclusive writer per the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr, bytes.len()) };
    }

    /// Reads and validates the segment header at the start of the region.
    ///
    /// # Errors
    /// [`HeaderError`] when the bytes are not a valid header.
    pub fn read_header(&self) -> Result<SegmentHeader, HeaderError> {
        let mut bytes = [0u8; SEGMENT_HEADER_USED_BYTES];
        if !self.copy_out(0, &mut bytes) {
            return Err(HeaderError::Short);
        }
        SegmentHeader::decode(&bytes)
    }
}

/// An 8-byte aligned, heap-backed buffer for tests, fuzzing and Miri: lets [`Region`] run
/// over ordinary memory.
#[derive(Debug)]
pub struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn zeroed(len: usize) -> AlignedBuf {
        AlignedBuf { words: vec![0u64; len.div_ceil(8)], len }
    }

    /// A buffer holding a copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(bytes.len());
        buf.as_mut_bytes().copy_from_slice(bytes);
        buf
    }

    /// The bytes.
    pub fn as_mut_bytes(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<u64, u8>(&mut self.words)[..self.len]
    }

    /// A region over the buffer. The region must not outlive the buffer, and the buffer must
    /// not be accessed through `as_mut_bytes` while the region is used.
    pub fn region(&mut self) -> Region {
        // SAFETY: the pointer is 8-aligned (a Vec<u64>), valid for `len` bytes; the doc above
        // states the lifetime and aliasing duties, which every caller in this crate meets by
        // keeping the buffer alive and unborrowed while using the region.
        unsafe { Region::new(self.words.as_mut_ptr().cast(), self.len) }
    }
}

/// Zeroes an unpublished record's bytes when the caller's `fill` unwinds, leaving the slot
/// as it was prepared (zero): the next record written there gets a zeroed buffer, and no
/// reader or later record ever meets what a panicking `fill` wrote.
struct ZeroOnUnwind {
    at: *mut u8,
    len: usize,
}

impl ZeroOnUnwind {
    /// # Safety
    /// `at..at + len` is writable and owned by the caller until the guard is disarmed or
    /// dropped, and no reference into it is alive when the guard drops.
    unsafe fn new(at: *mut u8, len: usize) -> ZeroOnUnwind {
        ZeroOnUnwind { at, len }
    }

    /// `fill` returned: keep what it wrote.
    #[inline(always)]
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for ZeroOnUnwind {
    #[cold]
    fn drop(&mut self) {
        // SAFETY: `new`'s contract; `fill`'s borrow of the payload ended as it unwound.
        unsafe { std::ptr::write_bytes(self.at, 0, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            seq: 3,
            base_offset: 100,
            segment_bytes: 1 << 20,
            index_entries: 64,
            index_interval: 4096,
            created_ns: 1,
            activated_ns: 2,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = header();
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Ok(h));
        for i in 0..bytes.len() {
            let mut damaged = bytes;
            damaged[i] ^= 0x10;
            assert!(SegmentHeader::decode(&damaged).is_err(), "flip at byte {i} accepted");
        }
        // A newer version under a valid checksum is a newer format; with a mismatch (one
        // flipped bit in the version field, say) it is undecided, never "upgrade".
        let mut newer = bytes;
        newer[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert_eq!(SegmentHeader::decode(&newer), Err(HeaderError::NewerOrDamaged(FORMAT_VERSION + 1)));
        newer[12..16].fill(0);
        let crc = crc32c::crc32c(&newer[..SEGMENT_HEADER_USED_BYTES]);
        newer[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&newer), Err(HeaderError::NewerVersion(FORMAT_VERSION + 1)));
        let mut flipped = bytes;
        flipped[8] ^= 0x08;
        assert_eq!(SegmentHeader::decode(&flipped), Err(HeaderError::NewerOrDamaged(FORMAT_VERSION ^ 0x08)));
        // A version 1 header (as written before the extension block existed) still decodes.
        let mut v1 = bytes;
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        v1[12..16].fill(0);
        let crc = crc32c::crc32c(&v1);
        v1[12..16].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(SegmentHeader::decode(&v1), Ok(h));
        assert_eq!(
            SegmentHeader::decode(b"not a segment at all, not at all......................."),
            Err(HeaderError::BadMagic)
        );
    }

    #[test]
    fn record_round_trip_and_every_torn_prefix_is_rejected() {
        let payload = b"hello, shoal";
        let stride = record_stride(payload.len());
        let mut buf = AlignedBuf::zeroed(64 + stride);
        let region = buf.region();
        // SAFETY: the buffer is ours alone and zeroed.
        let commit = unsafe { region.write_record(64, 7, 11, 13, payload.len(), |b| b.copy_from_slice(payload)) };
        assert!(matches!(region.decode(64, Some(7), 1 << 20), Ok(Slot::Empty)));
        assert!(region.publish(64, commit));
        match region.decode(64, Some(7), 1 << 20) {
            Ok(Slot::Record(r)) => {
                assert_eq!((r.offset, r.timestamp_ns, r.key, r.payload), (7, 11, 13, &payload[..]));
                assert_eq!(r.next_position(), 64 + stride);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(region.decode(64, Some(8), 1 << 20).err(), Some(RecordError::WrongOffset { expected: 8, found: 7 }));
        assert_eq!(
            region.decode(64, Some(7), 4).err(),
            Some(RecordError::TooLong { payload_len: payload.len() as u32 })
        );
        let full = buf.as_mut_bytes().to_vec();
        // A torn record: any strict prefix of its bytes (the rest zero) must not decode as a
        // record once its commit word is present.
        for cut in 4..64 + stride {
            let mut torn = full.clone();
            torn[cut.max(68)..].fill(0);
            torn[64..68].copy_from_slice(&commit.to_le_bytes());
            if cut >= 64 + stride - (stride - 32 - payload.len()) {
                continue; // only padding missing: the record is whole
            }
            let mut b = AlignedBuf::from_bytes(&torn);
            let r = b.region();
            assert!(r.decode(64, Some(7), 1 << 20).is_err(), "torn at {cut} accepted");
        }
    }

    #[test]
    fn a_fill_that_panics_leaves_the_slot_zeroed() {
        let ext = Extensions { event_time_ns: Some(5), key_bytes: Some(b"key") };
        for with_ext in [false, true] {
            let stride = record_stride_ext(if with_ext { ext.encoded_bytes() } else { 0 }, 40);
            let mut buf = AlignedBuf::zeroed(64 + stride + 64);
            let region = buf.region();
            let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let fill = |b: &mut [u8]| {
                    b.fill(0xAB);
                    panic!("fill panics");
                };
                // SAFETY: the buffer is ours alone and zeroed.
                unsafe {
                    if with_ext {
                        region.write_record_ext(64, 1, 2, 3, &ext, 40, fill);
                    } else {
                        region.write_record(64, 1, 2, 3, 40, fill);
                    }
                }
            }));
            assert!(panicked.is_err());
            assert!(buf.as_mut_bytes().iter().all(|b| *b == 0), "with_ext {with_ext}");
        }
    }

    /// Writes a record with extensions at 64 of a fresh buffer; returns the buffer's bytes
    /// and the commit word (not published).
    fn extended(ext: &Extensions<'_>, payload: &[u8]) -> (Vec<u8>, u32, usize) {
        let stride = record_stride_ext(ext.encoded_bytes(), payload.len());
        let mut buf = AlignedBuf::zeroed(64 + stride);
        let region = buf.region();
        // SAFETY: the buffer is ours alone and zeroed; the key is short.
        let commit =
            unsafe { region.write_record_ext(64, 7, 11, 13, ext, payload.len(), |b| b.copy_from_slice(payload)) };
        (buf.as_mut_bytes().to_vec(), commit, stride)
    }

    #[test]
    fn extended_records_round_trip_in_every_combination() {
        let payload = b"hello, shoal";
        for (time, key) in [
            (None, None),
            (Some(99u64), None),
            (None, Some(&b"alice"[..])),
            (Some(5), Some(b"")),
            (Some(u64::MAX), Some(b"12345678")),
        ] {
            let ext = Extensions { event_time_ns: time, key_bytes: key };
            let (bytes, commit, stride) = extended(&ext, payload);
            assert_eq!(commit & EXTENDED_BIT != 0, !ext.is_empty(), "{ext:?}");
            assert_eq!(commit_payload_len(commit), payload.len());
            let mut b = AlignedBuf::from_bytes(&bytes);
            let region = b.region();
            assert!(region.publish(64, commit));
            match region.decode(64, Some(7), 1 << 20) {
                Ok(Slot::Record(r)) => {
                    assert_eq!((r.offset, r.timestamp_ns, r.key, r.payload), (7, 11, 13, &payload[..]));
                    assert_eq!((r.event_time_ns, r.key_bytes()), (time, key), "{ext:?}");
                    assert_eq!(r.next_position(), 64 + stride);
                    assert_eq!(r.payload_position() % RECORD_ALIGN, 0);
                    assert_eq!(r.payload.as_ptr() as usize - region.as_ptr() as usize, r.payload_position());
                }
                other => panic!("unexpected {other:?} for {ext:?}"),
            }
            assert_eq!(region.decode(64, Some(7), 4).err(), Some(RecordError::TooLong { payload_len: 12 }));
        }
    }

    #[test]
    fn a_record_without_extensions_is_laid_out_as_in_version_1() {
        let payload = b"same bytes";
        let (v2, commit2, _) = extended(&Extensions::default(), payload);
        // Version 1's writer: header, payload, CRC seeded with the length.
        let mut tail = [0u8; 24];
        tail[0..8].copy_from_slice(&7u64.to_le_bytes());
        tail[8..16].copy_from_slice(&11u64.to_le_bytes());
        tail[16..24].copy_from_slice(&13u64.to_le_bytes());
        let mut v1 = vec![0u8; 64];
        v1.extend_from_slice(&[0; 4]);
        v1.extend_from_slice(&record_crc(payload.len() as u32, &tail, payload).to_le_bytes());
        v1.extend_from_slice(&tail);
        v1.extend_from_slice(payload);
        v1.resize(v2.len(), 0);
        assert_eq!(v1, v2);
        assert_eq!(commit2, COMMIT_BIT | payload.len() as u32);
    }

    #[test]
    fn torn_or_damaged_extended_records_are_rejected() {
        let payload = b"payload bytes";
        let ext = Extensions { event_time_ns: Some(1234), key_bytes: Some(b"a key of some length") };
        let (full, commit, stride) = extended(&ext, payload);
        let end = 64 + stride;
        let padding = align_up(payload.len(), 8) - payload.len();
        for cut in 68..end - padding {
            let mut torn = full.clone();
            torn[cut..].fill(0);
            torn[64..68].copy_from_slice(&commit.to_le_bytes());
            let mut b = AlignedBuf::from_bytes(&torn);
            assert!(b.region().decode(64, Some(7), 1 << 20).is_err(), "torn at {cut} accepted");
        }
        for i in 68..end - padding {
            for bit in [0x01u8, 0x80] {
                let mut damaged = full.clone();
                damaged[i] ^= bit;
                damaged[64..68].copy_from_slice(&commit.to_le_bytes());
                let mut b = AlignedBuf::from_bytes(&damaged);
                assert!(b.region().decode(64, Some(7), 1 << 20).is_err(), "flip {bit:#x} at {i} accepted");
            }
        }
        // Unknown flags, reserved bytes, or a key length without its flag.
        for (at, value) in [(96usize, 4u8), (96, 0), (97, 1), (100, 1)] {
            let mut bad = full.clone();
            bad[at] = value;
            bad[64..68].copy_from_slice(&commit.to_le_bytes());
            let mut b = AlignedBuf::from_bytes(&bad);
            assert_eq!(b.region().decode(64, Some(7), 1 << 20).err(), Some(RecordError::BadExtension), "byte {at}");
        }
        let mut no_key_flag = full.clone();
        no_key_flag[96] = EXT_EVENT_TIME;
        no_key_flag[64..68].copy_from_slice(&commit.to_le_bytes());
        let mut b = AlignedBuf::from_bytes(&no_key_flag);
        assert_eq!(b.region().decode(64, Some(7), 1 << 20).err(), Some(RecordError::BadExtension));
        // A key length that runs past the end of the segment.
        let mut long_key = full.clone();
        long_key[98..100].copy_from_slice(&u16::MAX.to_le_bytes());
        long_key[64..68].copy_from_slice(&commit.to_le_bytes());
        let mut b = AlignedBuf::from_bytes(&long_key);
        assert!(matches!(b.region().decode(64, Some(7), 1 << 20), Err(RecordError::LengthPastEnd { .. })));
        // The extension block's header needs 8 bytes past the record header.
        let mut short = AlignedBuf::zeroed(36);
        short.as_mut_bytes()[0..4].copy_from_slice(&(COMMIT_BIT | EXTENDED_BIT).to_le_bytes());
        assert!(matches!(short.region().decode(0, None, usize::MAX), Err(RecordError::LengthPastEnd { .. })));
    }

    #[test]
    fn key_hash_is_fnv1a() {
        assert_eq!(key_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn lane_checksum_is_the_same_with_and_without_sse42() {
        let bytes: Vec<u8> = (0..800u32).map(|i| (i * 7 + 3) as u8).collect();
        for words in 0..100 {
            let b = &bytes[..words * 8];
            let portable = lanes_portable(words as u32 * 5, b);
            assert_eq!(record_crc_in_place(words as u32 * 5, b), portable, "{words} words");
            if words > 0 {
                let mut flipped = b.to_vec();
                flipped[words * 8 - 1] ^= 1;
                assert_ne!(record_crc_in_place(words as u32 * 5, &flipped), portable);
            }
        }
        assert_ne!(record_crc_in_place(1, &bytes[..64]), record_crc_in_place(2, &bytes[..64]), "the length is covered");
    }

    #[test]
    fn crc_helpers_agree() {
        for len in 0..20usize {
            let payload: Vec<u8> = (0..len as u8).collect();
            let tail = [9u8; 24];
            let mut laid = tail.to_vec();
            laid.extend_from_slice(&payload);
            laid.resize(24 + align_up(len, 8), 0);
            assert_eq!(record_crc(len as u32, &tail, &payload), record_crc_in_place(len as u32, &laid));
        }
    }

    #[test]
    fn decode_never_reads_out_of_bounds() {
        let mut buf = AlignedBuf::zeroed(40);
        let bytes = buf.as_mut_bytes();
        bytes[0..4].copy_from_slice(&(COMMIT_BIT | 1000).to_le_bytes());
        let region = buf.region();
        assert_eq!(region.decode(0, None, usize::MAX).err(), Some(RecordError::LengthPastEnd { payload_len: 1000 }));
        assert_eq!(region.decode(3, None, 10).err(), Some(RecordError::BadPosition));
        assert_eq!(region.decode(40, None, 10).err(), Some(RecordError::BadPosition));
        assert!(region.load_index(usize::MAX).is_none());
    }
}
