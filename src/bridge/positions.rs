//! Stored positions of the bridges, crash-safe.
//!
//! ```text
//! <bus>/bridges/export-<topic>-<stream>/<p>   next offset of partition p to publish, in the
//!                                             two-slot format of the committed offsets (b"SHOALOFF")
//! <bus>/bridges/import-<topic>-<stream>/<p>   128 bytes: two 56-byte slots, at 0 and at 64,
//!                                             written alternately (little-endian, version 1):
//!   0 magic       [u8; 8]  b"SHOALBRI"
//!   8 version     u32      1
//!  12 reserved    u32      0
//!  16 generation  u64      1, 2, 3, ... (the slot written is generation % 2)
//!  24 stream_seq  u64      JetStream sequence of the last message imported into p (0: none)
//!  32 local_next  u64      local offset of p that follows that message's record
//!  40 base_next   u64      local offset of p where this import began (records before it are not ours)
//!  48 crc32c      u32      of bytes 0..48
//!  52 reserved    u32      0
//! ```
//! The import file holds numbers that must change together (a stream sequence and local
//! offsets), so it has its own magic and three words, in the same two-slot codec
//! ([`crate::log::slots::SlotFormat`]) as the committed offsets. A torn write damages
//! only the slot being written; the other (the previous position) still stands.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::log::slots::{SlotError, SlotFormat, SLOTS_FILE_BYTES, SLOT_STRIDE};
use crate::sys::fs::{split, Dir, Open};

use super::BridgeError;

/// Bytes of an export positions file.
const EXPORT_FILE_BYTES: usize = SLOTS_FILE_BYTES;
/// Bytes of one export slot.
const EXPORT_SLOT_BYTES: usize = 40;

/// The export positions file: exactly the consumer groups' committed-offsets format
/// (`crate::group::format`, magic `b"SHOALOFF"`, version 1, one word), so that the two
/// stay byte-identical on disk.
const EXPORT_FORMAT: SlotFormat = SlotFormat { magic: *b"SHOALOFF", version: 1, words: 1, what: "committed-offsets" };

fn encode_export_slot(generation: u64, next: u64) -> [u8; EXPORT_SLOT_BYTES] {
    let mut b = [0u8; EXPORT_SLOT_BYTES];
    EXPORT_FORMAT.encode_into(generation, &[next], &mut b);
    b
}

/// Decodes an export positions file: the generation and next offset of its newest valid
/// slot, `Ok(None)` when empty.
fn decode_export(bytes: &[u8]) -> Result<Option<(u64, u64)>, SlotError> {
    Ok(EXPORT_FORMAT.decode_file(bytes)?.map(|(generation, w)| (generation, w[0])))
}

/// Bytes of an import positions file.
pub const IMPORT_FILE_BYTES: usize = SLOTS_FILE_BYTES;
/// Bytes of one import slot.
pub const IMPORT_SLOT_BYTES: usize = 56;
const IMPORT_SLOT_STRIDE: usize = SLOT_STRIDE;
const IMPORT_MAGIC: [u8; 8] = *b"SHOALBRI";
const IMPORT_VERSION: u32 = 1;

/// One import position.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImportPosition {
    /// Commit number (the newest valid slot wins).
    pub generation: u64,
    /// JetStream sequence of the last message imported into the partition (0: none yet).
    pub stream_seq: u64,
    /// Local offset that follows that message's record.
    pub local_next: u64,
    /// Local offset where the import began.
    pub base_next: u64,
}

/// The import positions file, in the two-slot format of the committed offsets.
const IMPORT_FORMAT: SlotFormat =
    SlotFormat { magic: IMPORT_MAGIC, version: IMPORT_VERSION, words: 3, what: "import-positions" };

/// Encodes one import slot.
pub fn encode_import_slot(pos: &ImportPosition) -> [u8; IMPORT_SLOT_BYTES] {
    let mut b = [0u8; IMPORT_SLOT_BYTES];
    IMPORT_FORMAT.encode_into(pos.generation, &[pos.stream_seq, pos.local_next, pos.base_next], &mut b);
    b
}

/// Decodes an import positions file: the newest valid slot, `Ok(None)` when empty.
///
/// # Errors
/// Why the bytes are not a valid file.
pub fn decode_import(bytes: &[u8]) -> Result<Option<ImportPosition>, SlotError> {
    Ok(IMPORT_FORMAT.decode_file(bytes)?.map(|(generation, w)| ImportPosition {
        generation,
        stream_seq: w[0],
        local_next: w[1],
        base_next: w[2],
    }))
}

/// A positions file of one partition, open for reading and rewriting.
#[derive(Debug)]
pub struct PositionFile {
    file: File,
    path: PathBuf,
    generation: u64,
    bytes: usize,
}

fn io(path: &Path, op: &'static str, source: std::io::Error) -> BridgeError {
    BridgeError::Io { path: path.to_path_buf(), op, source }
}

/// Creates `dir` (`<bus>/bridges/<name>`) and makes its entry durable. `bridges` and
/// `<name>` are created through the bus directory's descriptor, never through a symlink.
pub fn create_dir(dir: &Path) -> Result<(), BridgeError> {
    let (bridges_path, name) = split(dir).map_err(|e| io(dir, "create directory", e))?;
    let (bus_path, bridges_name) = split(bridges_path).map_err(|e| io(dir, "create directory", e))?;
    let bus = Dir::open(bus_path).map_err(|e| io(bus_path, "open directory", e))?;
    let bridges = bus.create_subdir(bridges_name).map_err(|e| io(bridges_path, "create directory", e))?;
    bridges.create_subdir(name).map_err(|e| io(dir, "create directory", e))?;
    bridges.sync().map_err(|e| io(bridges_path, "fsync", e))?;
    bus.sync().map_err(|e| io(bus_path, "fsync", e))
}

impl PositionFile {
    /// Opens the positions file at `path` (created `bytes` long, zeroed, when missing),
    /// relative to its directory and never through a symlink; returns it, its content and
    /// whether it existed.
    fn open(path: PathBuf, bytes: usize) -> Result<(PositionFile, Vec<u8>, bool), BridgeError> {
        let (dir_path, name) = split(&path).map_err(|e| io(&path, "open", e))?;
        let dir = Dir::open(dir_path).map_err(|e| io(dir_path, "open directory", e))?;
        let (file, existed) = match dir.open_file(name, Open::ReadWrite) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let file = dir.open_file(name, Open::CreateNew).map_err(|e| io(&path, "create", e))?;
                (file, false)
            }
            Err(e) => return Err(io(&path, "open", e)),
        };
        let mut content = Vec::with_capacity(bytes);
        (&file).take(bytes as u64 + 1).read_to_end(&mut content).map_err(|e| io(&path, "read", e))?;
        if !existed {
            file.set_len(bytes as u64).map_err(|e| io(&path, "extend", e))?;
            file.sync_all().map_err(|e| io(&path, "fsync", e))?;
            dir.sync().map_err(|e| io(dir_path, "fsync", e))?;
        }
        Ok((PositionFile { file, path, generation: 0, bytes }, content, existed))
    }

    /// Opens (creating) an export position: the next offset to publish (0 when new).
    ///
    /// # Errors
    /// I/O errors, or [`BridgeError::BadPositions`] for a damaged file.
    pub fn open_export(path: PathBuf) -> Result<(PositionFile, u64), BridgeError> {
        let (mut f, content, _) = PositionFile::open(path, EXPORT_FILE_BYTES)?;
        let all_zero = content.iter().all(|&b| b == 0);
        let slot = if all_zero {
            None
        } else {
            decode_export(&content).map_err(|why| BridgeError::BadPositions { path: f.path.clone(), why })?
        };
        f.generation = slot.map_or(0, |(generation, _)| generation);
        Ok((f, slot.map_or(0, |(_, next)| next)))
    }

    /// Opens (creating) an import position; `None` when nothing was stored yet.
    ///
    /// # Errors
    /// I/O errors, or [`BridgeError::BadPositions`] for a damaged file.
    pub fn open_import(path: PathBuf) -> Result<(PositionFile, Option<ImportPosition>), BridgeError> {
        let (mut f, content, _) = PositionFile::open(path, IMPORT_FILE_BYTES)?;
        let all_zero = content.iter().all(|&b| b == 0);
        let pos = if all_zero {
            None
        } else {
            decode_import(&content).map_err(|why| BridgeError::BadPositions { path: f.path.clone(), why })?
        };
        f.generation = pos.map_or(0, |p| p.generation);
        Ok((f, pos))
    }

    /// Stores the next offset to publish (export files).
    ///
    /// # Errors
    /// I/O errors.
    pub fn store_export(&mut self, next: u64, sync: bool) -> Result<(), BridgeError> {
        debug_assert_eq!(self.bytes, EXPORT_FILE_BYTES);
        let generation = self.generation + 1;
        let slot = encode_export_slot(generation, next);
        self.write(&slot, (generation % 2) as usize * SLOT_STRIDE, sync)?;
        self.generation = generation;
        Ok(())
    }

    /// Stores an import position (its generation is assigned here).
    ///
    /// # Errors
    /// I/O errors.
    pub fn store_import(&mut self, pos: ImportPosition, sync: bool) -> Result<(), BridgeError> {
        debug_assert_eq!(self.bytes, IMPORT_FILE_BYTES);
        let generation = self.generation + 1;
        let slot = encode_import_slot(&ImportPosition { generation, ..pos });
        self.write(&slot, (generation % 2) as usize * IMPORT_SLOT_STRIDE, sync)?;
        self.generation = generation;
        Ok(())
    }

    fn write(&mut self, slot: &[u8], at: usize, sync: bool) -> Result<(), BridgeError> {
        self.file.write_all_at(slot, at as u64).map_err(|e| io(&self.path, "write", e))?;
        if sync {
            self.file.sync_data().map_err(|e| io(&self.path, "fdatasync", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn import_slots_round_trip_and_survive_a_torn_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0");
        let (mut f, pos) = PositionFile::open_import(path.clone()).unwrap();
        assert_eq!(pos, None);
        f.store_import(ImportPosition { stream_seq: 7, local_next: 3, base_next: 1, generation: 0 }, true).unwrap();
        f.store_import(ImportPosition { stream_seq: 9, local_next: 4, base_next: 1, generation: 0 }, true).unwrap();
        let (_, pos) = PositionFile::open_import(path.clone()).unwrap();
        assert_eq!(pos.map(|p| (p.stream_seq, p.local_next, p.base_next)), Some((9, 4, 1)));
        // Tear the newest slot (generation 2 lives at slot 0): the previous one stands.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (_, pos) = PositionFile::open_import(path.clone()).unwrap();
        assert_eq!(pos.map(|p| (p.stream_seq, p.local_next)), Some((7, 3)));
    }

    #[test]
    fn import_decoder_rejects_foreign_bytes_without_panicking() {
        for len in [1, 55, 127, 129] {
            assert!(decode_import(&vec![1u8; len]).is_err());
        }
        assert!(decode_import(&[0xAB; IMPORT_FILE_BYTES]).is_err());
        assert_eq!(decode_import(&[0; IMPORT_FILE_BYTES]), Ok(None));
    }

    #[test]
    fn export_positions_use_the_group_offsets_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1");
        let (mut f, next) = PositionFile::open_export(path.clone()).unwrap();
        assert_eq!(next, 0);
        f.store_export(41, false).unwrap();
        f.store_export(42, true).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(crate::group::format::decode_offsets(&bytes).unwrap().map(|s| s.offset), Some(42));
        assert_eq!(&encode_export_slot(7, 42)[..], &crate::group::format::encode_offsets_slot(7, 42)[..]);
        assert_eq!(PositionFile::open_export(path).unwrap().1, 42);
    }
}
