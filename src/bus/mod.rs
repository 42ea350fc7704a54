//! The bus: a directory of named topics, each split into a fixed number of partitions, each
//! partition a [`crate::log`] with its own single appender.
//!
//! # Layout
//! ```text
//! <bus>/topics/<topic>/meta        topic metadata (format below)
//! <bus>/topics/<topic>/<p>/        partition p's log directory (p = 0, 1, ...)
//! <bus>/groups/<group>/...         consumer group state (see crate::group)
//! ```
//! `meta` is little-endian, in one of two versions:
//! - version 1, a topic without a schema (40 bytes): magic `b"SHOALTOP"`, format version u32
//!   (1), partition count u32, created_ns u64, 12 reserved zero bytes, CRC32C of the first 36
//!   bytes. Topics without a schema are still written in version 1, so older shoal reads them.
//! - version 2, a typed topic (56 + n bytes; see [Typed topics](self#typed-topics)): magic, format
//!   version u32 (2), partition count u32, created_ns u64, then the schema: its version u32,
//!   alignment u32, size u64, fingerprint u64, name length n u16 (1 to 256), 2 reserved zero
//!   bytes, the name (n bytes of UTF-8), and last the CRC32C of every byte before it.
//!
//! It is written to a new temporary file and renamed into place without replacing
//! (`RENAME_NOREPLACE`), so two processes creating the same topic at once agree on one
//! partition count and schema (the loser reads the winner's). It is in place (and the topic
//! directory synced) before any partition directory is made, so a topic directory with
//! partitions and no `meta` lost it: that is an error ([`MetaError::Missing`]), never a new
//! `meta` with the default partition count, which would route keys to other partitions.
//!
//! Everything below the bus directory is reached through `crate::sys::fs::Dir`: opened
//! relative to its parent's descriptor, never through a symlink (one planted as `topics`, a
//! topic, a partition or `meta` is an error naming it; a partition's log, opened by its path,
//! is refused by [`Topic::partition_dir`] when its directory is a link, for readers and
//! producers alike). Only [`Bus::open`] and the
//! producers create anything; reading a bus creates nothing. A directory that holds a log
//! (its `HEAD` or segment files) is never opened as a bus ([`BusError::LogDirectory`]), so
//! `topics/` and `groups/` are never made beside a log's files.
//!
//! # Names
//! Topic and group names are 1 to 128 bytes of `[A-Za-z0-9._-]`, not starting with `.`: a
//! name can never be a path separator, `..`, or anything outside the bus directory.
//!
//! # Routing
//! [`partition_for_key`] maps a key to a partition with a fixed 64-bit mixer (splitmix64's
//! finaliser) modulo the partition count: stable across processes, machines and versions
//! of shoal, so every producer of a topic routes a key to the same partition. Keys that are
//! byte strings (the `shoal produce --keyed` tool's) become a `u64` key with [`key_hash`]
//! (64-bit FNV-1a), equally fixed.
//!
//! # Typed topics
//! A topic may keep the schema of its records (a [`Schema`]'s name, version, size,
//! alignment and layout fingerprint): [`Bus::topic_or_create_typed`] creates one,
//! [`Topic::producer_typed`] and the group member's `join_typed` and `expect_schema` refuse
//! another type with [`BusError::SchemaMismatch`], before they write or read a record. A
//! topic created without a schema ([`Bus::topic_or_create`], `shoal produce`, `shoal topics
//! create`, an older shoal) takes any declared type and says nothing; a schema is fixed when
//! the topic is created. See [`Schema`], [`schema!`](crate::schema) and [`fingerprint`].

use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::log::{Appender, DurableWatch, LogError, LogOptions, NewRecord, Offset};
use crate::sys::fs::{Dir, Open};
use crate::sys::histogram::LatencyHistogram;

mod schema;

pub use schema::{fingerprint, Field, Schema, TopicSchema, TypedProducer, SCHEMA_NAME_BYTES_MAX};

/// Errors of the bus: names, topics, partitions and their logs. Consumer groups have
/// their own [`GroupError`](crate::group::GroupError), which wraps this one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A topic or group name that is not allowed.
    #[error("invalid {kind} name {name:?}: {why}; use 1 to 128 characters of A-Z a-z 0-9 . _ - not starting with '.'")]
    InvalidName {
        /// "topic" or "group".
        kind: &'static str,
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The topic does not exist.
    #[error(
        "{path}: no topic {topic:?} in this bus; create it by producing to it (`shoal produce <BUS> --topic {topic}`)"
    )]
    NoTopic {
        /// The topic directory looked for.
        path: PathBuf,
        /// The topic.
        topic: String,
    },
    /// The topic exists with another partition count.
    #[error("{path}: topic {topic:?} has {existing} partitions, not {asked}; partition counts are fixed at creation")]
    PartitionMismatch {
        /// The topic's meta file.
        path: PathBuf,
        /// The topic.
        topic: String,
        /// Partitions it has.
        existing: u32,
        /// Partitions asked for.
        asked: u32,
    },
    /// A partition number out of range.
    #[error("topic {topic:?} has {partitions} partitions; partition {partition} does not exist")]
    NoPartition {
        /// The topic.
        topic: String,
        /// Partition asked for.
        partition: u32,
        /// Partitions it has.
        partitions: u32,
    },
    /// A partition count of 0 or above the limit.
    #[error("a topic needs between 1 and {max} partitions, not {asked}")]
    BadPartitionCount {
        /// Asked for.
        asked: u32,
        /// The limit.
        max: u32,
    },
    /// A producer, member or creator declared a record type that is not the topic's.
    #[error(
        "{path}: topic {topic:?} {}, not {declared} as declared here; {}",
        kept.as_ref().map_or_else(|| "was created without a schema".to_string(), |k| format!("holds records of schema {k}")),
        if kept.is_some() {
            "use the type the topic was created with (same name, version and fields in the same order), \
             or create a new topic for the new type"
        } else {
            "a schema is fixed when a topic is created: open it untyped (producer_typed and join_typed accept \
             any type on it), or create a new topic with topic_or_create_typed"
        }
    )]
    SchemaMismatch {
        /// The topic.
        topic: String,
        /// Its meta file.
        path: PathBuf,
        /// The schema the topic keeps (`None`: created without one).
        kept: Option<Box<TopicSchema>>,
        /// The schema of the type declared.
        declared: Box<TopicSchema>,
    },
    /// A [`Schema`] that a topic cannot keep.
    #[error("schema {name:?}: {why}; give the type a Schema::NAME of 1 to 256 bytes")]
    BadSchema {
        /// The schema's name.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A directory named as a bus that holds a log (its `HEAD` or segment files): a bus
    /// is never made there, so the log stays reachable by the log commands.
    #[error(
        "{path} holds a log ({found}), not a bus; {}",
        if *bus_too {
            "its topics/ and groups/ directories were made over the log: if they hold nothing of yours, \
             remove them (the log's records are untouched) and read it as a log (`shoal cat <DIR>` without \
             --topic); otherwise move the log's files out"
        } else {
            "read it as a log (`shoal cat <DIR>` without --topic), or give another directory for the bus"
        }
    )]
    LogDirectory {
        /// The directory.
        path: PathBuf,
        /// What shows it is a log: `HEAD`, or the first segment file found.
        found: String,
        /// It also holds a `topics/` directory (a bus made over the log).
        bus_too: bool,
    },
    /// A damaged or foreign metadata file.
    #[error("{path}: {why}; restore it or remove the topic directory")]
    BadMeta {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: MetaError,
    },
    /// An I/O call failed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// An error of a partition's log.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl BusError {
    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: std::io::Error) -> BusError {
        BusError::Io { path: path.into(), op, source }
    }
}

/// The most partitions a topic may have.
pub const PARTITIONS_MAX: u32 = 4096;
const META_MAGIC: [u8; 8] = *b"SHOALTOP";
/// Partitions a producer opens side by side.
const OPEN_AT_ONCE: usize = 8;
/// The version of a topic without a schema.
const META_VERSION: u32 = 1;
/// The version of a typed topic.
const META_VERSION_TYPED: u32 = 2;
/// Bytes of a version 1 meta file.
const META_BYTES: usize = 40;
/// Bytes of a version 2 meta file without its name.
const META_TYPED_FIXED_BYTES: usize = 56;
/// The most bytes a meta file of either version has.
const META_BYTES_MAX: usize = META_TYPED_FIXED_BYTES + SCHEMA_NAME_BYTES_MAX;

/// Checks a topic or group name.
///
/// # Errors
/// [`BusError::InvalidName`] saying what is wrong.
pub fn validate_name(kind: &'static str, name: &str) -> Result<(), BusError> {
    let bad = |why| Err(BusError::InvalidName { kind, name: name.to_string(), why });
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 128 {
        return bad("it is longer than 128 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        return bad("it has a character other than A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// The partition of `key` in a topic of `partitions` partitions (see the module docs).
#[inline]
pub fn partition_for_key(key: u64, partitions: u32) -> u32 {
    let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % partitions.max(1) as u64) as u32
}

/// The `u64` key of a byte-string key: 64-bit FNV-1a (offset basis `0xcbf29ce484222325`,
/// prime `0x100000001b3`) over the bytes. Fixed forever, like [`partition_for_key`], so that
/// `shoal produce --keyed` and library producers route the same key to the same partition.
#[inline]
pub fn key_hash(bytes: &[u8]) -> u64 {
    crate::log::key_hash(bytes)
}

/// A bus directory: its topics (each partition a log) and its consumer groups' state.
///
/// ```
/// use shoal::bus::Bus;
///
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?; // creates `topics/` and `groups/` if needed
/// bus.topic_or_create("orders", Some(4))?;
/// bus.topic_or_create("audit", None)?; // the default partition count
/// assert_eq!(bus.topics()?, ["audit", "orders"]);
///
/// // Commands that only read open the bus without creating anything.
/// let existing = Bus::open_existing(dir.path())?;
/// assert_eq!(existing.topic("orders")?.partitions(), 4);
/// assert!(existing.topic("payments").is_err()); // no such topic: an error naming it
/// assert!(existing.topic("../outside").is_err()); // names never leave the bus directory
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Bus {
    dir: PathBuf,
}

impl Bus {
    /// Opens (creating if needed) the bus in `dir`.
    ///
    /// # Errors
    /// I/O errors creating the directories; `dir` or one of its subdirectories being a
    /// file or a symlink; [`BusError::LogDirectory`] when `dir` holds a log.
    pub fn open(dir: impl AsRef<Path>) -> Result<Bus, BusError> {
        let dir = dir.as_ref().to_path_buf();
        refuse_log_dir(&dir)?;
        if let Err(e) = std::fs::create_dir_all(&dir) {
            if dir.exists() && !dir.is_dir() {
                return Err(not_a_bus_directory(&dir));
            }
            return Err(BusError::io(&dir, "create directory", e));
        }
        let root = open_bus_dir(&dir)?;
        for sub in ["topics", "groups"] {
            root.create_subdir(sub).map_err(|e| BusError::io(dir.join(sub), "create directory", e))?;
        }
        Ok(Bus { dir })
    }

    /// Opens the existing bus in `dir` without creating anything (for commands that only
    /// read it).
    ///
    /// # Errors
    /// An I/O error naming `dir/topics` when there is no bus there (`NotFound`), or when it
    /// is a symlink or not a directory; [`BusError::LogDirectory`] when `dir` holds a log.
    pub fn open_existing(dir: impl AsRef<Path>) -> Result<Bus, BusError> {
        let dir = dir.as_ref().to_path_buf();
        refuse_log_dir(&dir)?;
        open_bus_dir(&dir)?.subdir("topics").map_err(|e| BusError::io(dir.join("topics"), "open", e))?;
        Ok(Bus { dir })
    }

    /// The directory of topic `name` (validated), opened through the bus directory; created
    /// when `create` is set. `None` when it does not exist and `create` is not set.
    fn topic_dir(&self, name: &str, create: bool) -> Result<Option<Dir>, BusError> {
        let topics_path = self.dir.join("topics");
        let root = open_bus_dir(&self.dir)?;
        let topics = if create { root.create_subdir("topics") } else { root.subdir("topics") };
        let topics = match topics {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => return Ok(None),
            other => other.map_err(|e| BusError::io(&topics_path, "open", e))?,
        };
        let path = topics.join(name);
        let dir = if create { topics.create_subdir(name) } else { topics.subdir(name) };
        match dir {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => Ok(None),
            Err(e) => Err(BusError::io(&path, if create { "create directory" } else { "open" }, e)),
        }
    }

    /// The bus directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory holding a group's state (the name is validated).
    ///
    /// # Errors
    /// [`BusError::InvalidName`].
    pub fn group_dir(&self, group: &str) -> Result<PathBuf, BusError> {
        validate_name("group", group)?;
        Ok(self.dir.join("groups").join(group))
    }

    /// Opens an existing topic.
    ///
    /// # Errors
    /// [`BusError::InvalidName`], [`BusError::NoTopic`], [`BusError::BadMeta`].
    pub fn topic(&self, name: &str) -> Result<Topic, BusError> {
        validate_name("topic", name)?;
        let dir = self.dir.join("topics").join(name);
        let meta = match self.topic_dir(name, false)? {
            Some(topic_dir) => read_meta(&topic_dir)?,
            None => None,
        };
        let Some(meta) = meta else {
            return Err(BusError::NoTopic { path: dir, topic: name.to_string() });
        };
        Ok(Topic { dir, name: name.to_string(), partitions: meta.partitions, schema: meta.schema.map(Box::new) })
    }

    /// Opens a topic, creating it with `partitions` partitions if it does not exist.
    ///
    /// # Errors
    /// [`BusError::PartitionMismatch`] when it exists with another count (pass `None` to
    /// accept any); [`BusError::BadMeta`] when its `meta` file is damaged, or missing while
    /// partition directories exist; name, count and I/O errors.
    pub fn topic_or_create(&self, name: &str, partitions: Option<u32>) -> Result<Topic, BusError> {
        self.create_topic(name, partitions, None)
    }

    /// [`Bus::topic_or_create`], writing `schema` into the meta file of a topic it creates
    /// (an existing topic is returned with the schema it has).
    fn create_topic(
        &self,
        name: &str,
        partitions: Option<u32>,
        schema: Option<&TopicSchema>,
    ) -> Result<Topic, BusError> {
        validate_name("topic", name)?;
        let asked = partitions.unwrap_or(DEFAULT_PARTITIONS);
        if asked == 0 || asked > PARTITIONS_MAX {
            return Err(BusError::BadPartitionCount { asked, max: PARTITIONS_MAX });
        }
        let dir = self.dir.join("topics").join(name);
        let topic_dir = self
            .topic_dir(name, true)?
            .ok_or_else(|| BusError::NoTopic { path: dir.clone(), topic: name.to_string() })?;
        let existing = match read_meta(&topic_dir)? {
            Some(existing) => existing,
            None => {
                write_meta(&topic_dir, asked, schema)?;
                read_meta(&topic_dir)?
                    .ok_or_else(|| BusError::NoTopic { path: dir.clone(), topic: name.to_string() })?
            }
        };
        if let Some(asked) = partitions {
            if asked != existing.partitions {
                let meta = dir.join("meta");
                let existing = existing.partitions;
                return Err(BusError::PartitionMismatch { path: meta, topic: name.to_string(), existing, asked });
            }
        }
        Ok(Topic {
            dir,
            name: name.to_string(),
            partitions: existing.partitions,
            schema: existing.schema.map(Box::new),
        })
    }

    /// Names of the topics, sorted.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn topics(&self) -> Result<Vec<String>, BusError> {
        list_names(&self.dir.join("topics"))
    }

    /// Names of the groups, sorted.
    ///
    /// # Errors
    /// I/O errors listing the directory.
    pub fn groups(&self) -> Result<Vec<String>, BusError> {
        list_names(&self.dir.join("groups"))
    }
}

/// Partitions of a topic created without a count.
pub const DEFAULT_PARTITIONS: u32 = 4;

fn list_names(dir: &Path) -> Result<Vec<String>, BusError> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(BusError::io(dir, "list", e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| BusError::io(dir, "list", e))?;
        if let Some(name) = entry.file_name().to_str() {
            if validate_name("topic", name).is_ok() && entry.path().is_dir() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    Ok(names)
}

/// What a topic's `meta` file says.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicMeta {
    /// The partition count.
    pub partitions: u32,
    /// When the topic was created, ns since the Unix epoch.
    pub created_ns: u64,
    /// The schema of a typed topic; `None` for a topic without one.
    pub schema: Option<TopicSchema>,
}

/// Encodes a meta file (see the module docs): version 1 without a schema, version 2 with
/// one. The schema must pass [`TopicSchema::check`].
fn encode_meta(partitions: u32, created_ns: u64, schema: Option<&TopicSchema>) -> Vec<u8> {
    let mut b = Vec::with_capacity(META_BYTES_MAX);
    b.extend_from_slice(&META_MAGIC);
    b.extend_from_slice(&if schema.is_some() { META_VERSION_TYPED } else { META_VERSION }.to_le_bytes());
    b.extend_from_slice(&partitions.to_le_bytes());
    b.extend_from_slice(&created_ns.to_le_bytes());
    match schema {
        None => b.extend_from_slice(&[0; 12]),
        Some(schema) => {
            debug_assert!(schema.check().is_ok());
            b.extend_from_slice(&schema.version.to_le_bytes());
            b.extend_from_slice(&schema.align.to_le_bytes());
            b.extend_from_slice(&schema.size.to_le_bytes());
            b.extend_from_slice(&schema.fingerprint.to_le_bytes());
            b.extend_from_slice(&(schema.name.len() as u16).to_le_bytes());
            b.extend_from_slice(&[0; 2]);
            b.extend_from_slice(schema.name.as_bytes());
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Why bytes are not a valid topic `meta` file (see the module docs for the format).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetaError {
    /// The file is not as long as its version says (40 bytes in version 1; 56 plus the
    /// schema name's length in version 2).
    #[error("topic meta is {len} bytes, expected {need}")]
    BadLength {
        /// Bytes given.
        len: usize,
        /// Bytes of a meta file.
        need: usize,
    },
    /// The file does not start with `b"SHOALTOP"`.
    #[error("not a shoal topic meta file")]
    BadMagic,
    /// A version this build does not read.
    #[error("topic meta version {found} is newer than the {supported} this shoal reads; use a newer shoal")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The checksum does not match the bytes.
    #[error("topic meta checksum mismatch")]
    Checksum,
    /// A partition count of 0 or above [`PARTITIONS_MAX`].
    #[error("topic meta says {partitions} partitions")]
    BadPartitionCount {
        /// The count in the file.
        partitions: u32,
    },
    /// No `meta` file, while the topic directory holds partition directories: the file
    /// was removed, and with it the partition count that routes keys and the schema.
    #[error(
        "topic meta is missing, yet the topic directory holds {partitions} partition director{} (the file \
         kept the partition count that routes keys, so the topic is not made again with a default count)",
        if *partitions == 1 { "y" } else { "ies" }
    )]
    Missing {
        /// Partition directories found (`0`, `1`, ...).
        partitions: u32,
    },
    /// A typed topic's schema that cannot be (a name that is not UTF-8, an alignment that
    /// is not a power of two, reserved bytes that are not zero).
    #[error("topic meta has a bad schema: {why}")]
    BadSchema {
        /// What is wrong.
        why: &'static str,
    },
}

/// Decodes a topic meta file's bytes, of either version (see the module docs).
///
/// # Errors
/// A [`MetaError`] when the bytes are not a valid meta file.
pub fn decode_meta(bytes: &[u8]) -> Result<TopicMeta, MetaError> {
    if bytes.len() < 12 {
        return Err(MetaError::BadLength { len: bytes.len(), need: META_BYTES });
    }
    if bytes[0..8] != META_MAGIC {
        return Err(MetaError::BadMagic);
    }
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
    let found = u32_at(8);
    let need = match found {
        META_VERSION => META_BYTES,
        META_VERSION_TYPED => {
            // The name's length is only known from the bytes: check the checksum over
            // whatever length the file has first, then that the length agrees.
            if bytes.len() < META_TYPED_FIXED_BYTES || bytes.len() > META_BYTES_MAX {
                let need = if bytes.len() < META_TYPED_FIXED_BYTES { META_TYPED_FIXED_BYTES } else { META_BYTES_MAX };
                return Err(MetaError::BadLength { len: bytes.len(), need });
            }
            bytes.len()
        }
        _ => return Err(MetaError::UnsupportedVersion { found, supported: META_VERSION_TYPED }),
    };
    if bytes.len() != need {
        return Err(MetaError::BadLength { len: bytes.len(), need });
    }
    if crc32c::crc32c(&bytes[..need - 4]) != u32_at(need - 4) {
        return Err(MetaError::Checksum);
    }
    let partitions = u32_at(12);
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(MetaError::BadPartitionCount { partitions });
    }
    let created_ns = u64_at(16);
    if found == META_VERSION {
        return Ok(TopicMeta { partitions, created_ns, schema: None });
    }
    let name_len = u16::from_le_bytes([bytes[48], bytes[49]]) as usize;
    if name_len != need - META_TYPED_FIXED_BYTES {
        let need = META_TYPED_FIXED_BYTES + name_len;
        return Err(MetaError::BadLength { len: bytes.len(), need });
    }
    let bad = |why| Err(MetaError::BadSchema { why });
    if bytes[50..52] != [0, 0] {
        return bad("reserved bytes are not zero");
    }
    let Ok(name) = std::str::from_utf8(&bytes[52..52 + name_len]) else {
        return bad("the name is not UTF-8");
    };
    let schema = TopicSchema {
        name: name.to_string(),
        version: u32_at(24),
        align: u32_at(28),
        size: u64_at(32),
        fingerprint: u64_at(40),
    };
    if let Err(why) = schema.check() {
        return bad(why);
    }
    Ok(TopicMeta { partitions, created_ns, schema: Some(schema) })
}

/// The topic's `meta` file, `None` when there is none yet.
///
/// A topic directory without `meta` but with partition directories is an error
/// ([`MetaError::Missing`]): `meta` is written (and its directory synced) before any
/// partition directory is made, so such a topic lost its `meta`, and making a new one with
/// another partition count would route keys elsewhere.
fn read_meta(dir: &Dir) -> Result<Option<TopicMeta>, BusError> {
    let path = dir.join("meta");
    let file = match dir.open_file("meta", Open::Read) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let partitions = partition_dirs(dir)?;
            if partitions > 0 {
                return Err(BusError::BadMeta { path, why: MetaError::Missing { partitions } });
            }
            return Ok(None);
        }
        Err(e) => return Err(BusError::io(&path, "open", e)),
    };
    let mut bytes = Vec::with_capacity(META_BYTES_MAX);
    file.take(META_BYTES_MAX as u64 + 1).read_to_end(&mut bytes).map_err(|e| BusError::io(&path, "read", e))?;
    decode_meta(&bytes).map(Some).map_err(|why| BusError::BadMeta { path, why })
}

/// How many partition directories (named by a number) the topic directory holds.
fn partition_dirs(dir: &Dir) -> Result<u32, BusError> {
    let entries = std::fs::read_dir(dir.path()).map_err(|e| BusError::io(dir.path(), "list", e))?;
    let mut count = 0u32;
    for entry in entries {
        let entry = entry.map_err(|e| BusError::io(dir.path(), "list", e))?;
        let name = entry.file_name();
        let is_partition = !name.is_empty() && name.as_encoded_bytes().iter().all(u8::is_ascii_digit);
        if is_partition && entry.file_type().is_ok_and(|t| t.is_dir()) {
            count = count.saturating_add(1);
        }
    }
    Ok(count)
}

/// Writes the topic's `meta` file: a new temporary file, synced, renamed into place unless
/// another creator's is there first (then theirs stands), and the directory synced.
fn write_meta(dir: &Dir, partitions: u32, schema: Option<&TopicSchema>) -> Result<(), BusError> {
    let temp = format!(".meta.{}.{}", std::process::id(), crate::log::now_ns());
    let temp_path = dir.join(&temp);
    let mut file = dir.open_file(&temp, Open::CreateNew).map_err(|e| BusError::io(&temp_path, "create", e))?;
    let written = file
        .write_all(&encode_meta(partitions, crate::log::now_ns(), schema))
        .and_then(|()| file.sync_all())
        .map_err(|e| BusError::io(&temp_path, "write", e));
    let renamed = written.and_then(|()| match dir.rename_noreplace(&temp, "meta") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(BusError::io(dir.join("meta"), "rename", e)),
    });
    // Gone after a rename; left behind when another creator won or a step failed.
    let _ = dir.unlink(&temp);
    renamed?;
    dir.sync().map_err(|e| BusError::io(dir.path(), "fsync", e))
}

/// Refuses `dir` as a bus when it holds a log: a `HEAD` entry or a segment file
/// (`<20 digits>.seg`), the files every log directory has. A bus root holds neither (its
/// partitions' logs live under `topics/`), so making `topics/` and `groups/` there would only
/// turn a log into a directory every log command refuses. A directory that does not exist
/// yet holds no log.
fn refuse_log_dir(dir: &Path) -> Result<(), BusError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Missing, or a file: Bus::open creates it or says what it is.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(());
        }
        Err(e) => return Err(BusError::io(dir, "list", e)),
    };
    let mut found = None;
    let mut bus_too = false;
    for entry in entries {
        let entry = entry.map_err(|e| BusError::io(dir, "list", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == "topics" {
            bus_too = true;
        } else if found.is_none() && (name == "HEAD" || is_segment_name(name)) {
            found = Some(name.to_string());
        }
    }
    match found {
        Some(found) => Err(BusError::LogDirectory { path: dir.to_path_buf(), found, bus_too }),
        None => Ok(()),
    }
}

/// Whether `name` is a log segment's file name: 20 digits and `.seg`.
fn is_segment_name(name: &str) -> bool {
    name.strip_suffix(".seg").is_some_and(|digits| digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// Opens the bus directory itself (named by the user, so followed if it is a symlink).
fn open_bus_dir(dir: &Path) -> Result<Dir, BusError> {
    Dir::open(dir).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTDIR) && dir.exists() {
            not_a_bus_directory(dir)
        } else {
            BusError::io(dir, "open directory", e)
        }
    })
}

fn not_a_bus_directory(dir: &Path) -> BusError {
    BusError::io(
        dir,
        "open bus directory",
        std::io::Error::other("it is a file, not a bus directory; give the path of a bus directory"),
    )
}

/// A topic: its directory and partition count. Each partition is a log of its own, which
/// [`crate::log::Reader`] and [`crate::log::Tailer`] read like any other.
///
/// ```
/// use shoal::bus::Bus;
/// use shoal::log::{LogOptions, Reader};
///
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?;
/// let topic = bus.topic_or_create("orders", Some(4))?;
/// assert_eq!((topic.name(), topic.partitions()), ("orders", 4));
/// assert!(topic.partition_dir(4).is_err()); // partitions 0 to 3 only
/// // The count is fixed at creation: asking for another is an error.
/// assert!(bus.topic_or_create("orders", Some(8)).is_err());
///
/// let mut producer = topic.producer(LogOptions::default())?;
/// producer.send_to(2, 0, b"to partition 2")?;
/// producer.close()?;
/// let mut reader = Reader::open(topic.partition_dir(2)?)?;
/// assert_eq!(reader.next()?.expect("the record").payload(), b"to partition 2");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Topic {
    dir: PathBuf,
    name: String,
    partitions: u32,
    /// Boxed: most topics have none, and a `Topic` sits in every producer and member.
    schema: Option<Box<TopicSchema>>,
}

impl Topic {
    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The schema of a typed topic (see [`Schema`]); `None` for a topic created without
    /// one, which takes records of any type.
    pub fn schema(&self) -> Option<&TopicSchema> {
        self.schema.as_deref()
    }

    /// The log directory of partition `p` (it may not exist yet: a partition never written
    /// to has none), refused when it is a symbolic link. Every reader of a partition in shoal
    /// (group members, `describe`, metrics, the command line) gets
    /// its directory here, so none follows a link planted as a partition out of the bus, as
    /// a producer does not.
    ///
    /// # Errors
    /// [`BusError::NoPartition`] when `p` is out of range; [`BusError::Io`] naming the
    /// partition directory when it is a symbolic link.
    pub fn partition_dir(&self, p: u32) -> Result<PathBuf, BusError> {
        if p >= self.partitions {
            return Err(BusError::NoPartition { topic: self.name.clone(), partition: p, partitions: self.partitions });
        }
        let dir = self.dir.join(p.to_string());
        // Anything else (missing, not a directory, unreadable) is for the log to report.
        if let Some(e) = std::fs::symlink_metadata(&dir)
            .ok()
            .filter(|meta| meta.file_type().is_symlink())
            .and_then(|meta| crate::sys::fs::refuse_entry(&dir, meta.file_type()))
        {
            return Err(BusError::io(&dir, "open", e));
        }
        Ok(dir)
    }

    /// Opens the appenders of every partition. With [`Writers::Shared`](crate::log::Writers)
    /// (the default) any number of producers of the topic, in any threads and processes,
    /// send at once; with `Writers::Exclusive` another producer of the topic gets
    /// [`LogError::Locked`].
    ///
    /// # Errors
    /// Log errors of any partition.
    pub fn producer(&self, opts: LogOptions) -> Result<TopicProducer, BusError> {
        let topic_dir = Dir::open(&self.dir).map_err(|e| BusError::io(&self.dir, "open", e))?;
        let mut dirs = Vec::with_capacity(self.partitions as usize);
        for p in 0..self.partitions {
            // Created through the topic's directory, so a symlink planted as a partition is
            // refused rather than followed by the appender.
            let dir = self.partition_dir(p)?;
            topic_dir.create_subdir(&p.to_string()).map_err(|e| BusError::io(&dir, "create directory", e))?;
            dirs.push(dir);
        }
        // Opening a partition mostly waits for the disk (recovery's reads, a first segment
        // made and synced): the partitions open side by side, a few at a time, so a topic
        // opens in about the time of its slowest partition rather than the sum of them all.
        let mut partitions = Vec::with_capacity(dirs.len());
        for chunk in dirs.chunks(OPEN_AT_ONCE) {
            let opened: Vec<Result<Appender, LogError>> = std::thread::scope(|scope| {
                // A thread that cannot be started leaves its partition to this one.
                let started: Vec<_> = chunk
                    .iter()
                    .map(|dir| {
                        let open = move || Appender::open(dir.as_path(), opts);
                        std::thread::Builder::new().name("shoal-open".into()).spawn_scoped(scope, open).map_err(|_| dir)
                    })
                    .collect();
                started
                    .into_iter()
                    .map(|h| match h {
                        Ok(h) => h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                        Err(dir) => Appender::open(dir.as_path(), opts),
                    })
                    .collect()
            });
            for appender in opened {
                partitions.push(appender?);
            }
        }
        Ok(TopicProducer { topic: self.clone(), opts: opts.fitted(), partitions })
    }
}

/// Writes to a topic: routes each record to a partition by key hash, or to an explicit one.
///
/// ```
/// use shoal::bus::{partition_for_key, Bus};
/// use shoal::log::{Durability, LogOptions};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let topic = Bus::open(dir.path())?.topic_or_create("orders", Some(4))?;
/// let mut producer = topic.producer(LogOptions::default().durability(Durability::Batch))?;
/// let (p, first) = producer.send(42, b"deposit 10")?;
/// assert_eq!(p, partition_for_key(42, 4)); // the same key always lands on the same partition
/// let (again, second) = producer.send(42, b"deposit 5")?;
/// assert_eq!((again, second.0), (p, first.0 + 1)); // dense offsets per partition
///
/// // Another thread can wait until a record is durable (group commit).
/// let watch = producer.durable_watch(p).expect("a partition of the topic");
/// let waiter = std::thread::spawn(move || watch.wait_durable(second, Some(Duration::from_secs(10))));
/// assert!(waiter.join().expect("the waiter panicked")?);
/// producer.close()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct TopicProducer {
    topic: Topic,
    /// The options every partition was opened with.
    opts: LogOptions,
    partitions: Vec<Appender>,
}

impl TopicProducer {
    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The options every partition was opened with.
    pub fn options(&self) -> &LogOptions {
        &self.opts
    }

    /// Appends to the partition of `key`; returns (partition, offset).
    ///
    /// # Errors
    /// The partition's append error.
    #[inline]
    pub fn send(&mut self, key: u64, payload: &[u8]) -> Result<(u32, Offset), crate::log::AppendError> {
        let p = partition_for_key(key, self.topic.partitions);
        let offset = self.partitions[p as usize].append_keyed(key, payload)?;
        Ok((p, offset))
    }

    /// Appends to partition `p`.
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error.
    pub fn send_to(&mut self, p: u32, key: u64, payload: &[u8]) -> Result<Offset, BusError> {
        self.appender(p)?.append_keyed(key, payload).map_err(append_error)
    }

    /// Appends to partition `p` a record with the event time given (for records that keep
    /// the time they were first appended elsewhere, as an import does); its append time is
    /// the partition's clock. See [`Appender::append_keyed_at`].
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error.
    pub fn send_to_at(&mut self, p: u32, key: u64, timestamp_ns: u64, payload: &[u8]) -> Result<Offset, BusError> {
        self.appender(p)?.append_keyed_at(key, timestamp_ns, payload).map_err(append_error)
    }

    /// Appends to partition `p` several `(key, event time, payload)` records with one
    /// publication; see [`Appender::append_batch_at`].
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error; the records before the
    /// failing one are appended.
    pub fn send_batch_to_at<'p, I>(&mut self, p: u32, records: I) -> Result<Range<Offset>, BusError>
    where
        I: IntoIterator<Item = (u64, u64, &'p [u8])>,
    {
        self.appender(p)?.append_batch_at(records).map_err(append_error)
    }

    /// Appends a `len`-byte record with `key` to the partition of `key`, letting `fill`
    /// write the payload in place in the mapped segment (no copy; `fill` gets a zeroed
    /// buffer). Returns (partition, offset).
    ///
    /// # Errors
    /// The partition's append error ([`crate::log::AppendError::TooLarge`] over
    /// `max_record_bytes`).
    ///
    /// # Examples
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let bus = shoal::bus::Bus::open(dir.path()).unwrap();
    /// let topic = bus.topic_or_create("ticks", Some(2)).unwrap();
    /// let mut producer = topic.producer(shoal::log::LogOptions::default()).unwrap();
    /// let (p, offset) = producer.send_with(7, 8, |buf| buf.copy_from_slice(&42u64.to_le_bytes())).unwrap();
    /// assert_eq!(p, shoal::bus::partition_for_key(7, 2));
    /// assert_eq!(offset.0, 0);
    /// ```
    #[inline]
    pub fn send_with<F: FnOnce(&mut [u8])>(
        &mut self,
        key: u64,
        len: usize,
        fill: F,
    ) -> Result<(u32, Offset), crate::log::AppendError> {
        let p = partition_for_key(key, self.topic.partitions);
        let offset = self.partitions[p as usize].append_keyed_with(key, len, fill)?;
        Ok((p, offset))
    }

    /// Appends several records (key 0) to partition `p` with one timestamp and one
    /// publication (one wake-up of its tailers and of its sync thread). Returns their
    /// offsets. Spreading lines round-robin over the partitions is one such batch per
    /// partition.
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error; the records before the
    /// failing one are appended.
    ///
    /// # Examples
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let bus = shoal::bus::Bus::open(dir.path()).unwrap();
    /// let topic = bus.topic_or_create("lines", Some(2)).unwrap();
    /// let mut producer = topic.producer(shoal::log::LogOptions::default()).unwrap();
    /// let offsets = producer.send_batch_to(1, [&b"a"[..], b"b"]).unwrap();
    /// assert_eq!(offsets.end.0 - offsets.start.0, 2);
    /// assert_eq!(producer.next_offset(1).unwrap().0, 2);
    /// ```
    pub fn send_batch_to<'p, I>(&mut self, p: u32, payloads: I) -> Result<Range<Offset>, BusError>
    where
        I: IntoIterator<Item = &'p [u8]>,
    {
        self.appender(p)?.append_batch(payloads).map_err(append_error)
    }

    /// The offset the next record appended to partition `p` gets (`None` when `p` is out
    /// of range).
    pub fn next_offset(&self, p: u32) -> Option<Offset> {
        self.partitions.get(p as usize).map(Appender::next_offset)
    }

    /// A handle on partition `p`'s durable watermark, for other threads (`None` when `p`
    /// is out of range).
    pub fn durable_watch(&self, p: u32) -> Option<DurableWatch> {
        self.partitions.get(p as usize).map(Appender::durable_watch)
    }

    /// The durable watermark handles of every partition, in partition order.
    pub fn durable_watches(&self) -> Vec<DurableWatch> {
        self.partitions.iter().map(Appender::durable_watch).collect()
    }

    /// The largest record a partition takes (every partition is opened with the same
    /// [`LogOptions`]).
    pub fn max_record_bytes(&self) -> usize {
        self.opts.max_record_bytes
    }

    /// The I/O backend the partitions write with (`"io_uring"` or `"pwrite"`).
    pub fn io_backend(&self) -> &'static str {
        self.partitions.first().map_or("none", |a| a.io_backend())
    }

    /// Data syncs of every partition so far, and their latency histogram (ns), summed over
    /// the partitions.
    pub fn sync_stats(&self) -> (u64, LatencyHistogram) {
        let (mut syncs, mut latency) = (0, LatencyHistogram::new());
        for a in &self.partitions {
            let (n, hist) = a.sync_stats();
            syncs += n;
            latency.merge(&hist);
        }
        (syncs, latency)
    }

    fn appender(&mut self, p: u32) -> Result<&mut Appender, BusError> {
        let topic = &self.topic;
        self.partitions.get_mut(p as usize).ok_or_else(|| BusError::NoPartition {
            topic: topic.name.clone(),
            partition: p,
            partitions: topic.partitions,
        })
    }

    /// Blocks until every record appended to partition `p` so far is durable.
    ///
    /// # Errors
    /// [`BusError::NoPartition`], or the partition's sync error.
    pub fn sync_partition(&mut self, p: u32) -> Result<Offset, BusError> {
        Ok(self.appender(p)?.sync()?)
    }

    /// Syncs every partition.
    ///
    /// # Errors
    /// The first sync error.
    pub fn sync(&mut self) -> Result<(), BusError> {
        for a in &mut self.partitions {
            a.sync()?;
        }
        Ok(())
    }

    /// Closes every partition: in `Batch` and `Interval` modes everything appended is
    /// synced first (as [`Appender::close`]). Dropping the producer does the same but
    /// cannot report a failed sync.
    ///
    /// # Errors
    /// The first partition's close error (every partition is closed regardless).
    pub fn close(self) -> Result<(), BusError> {
        let mut result = Ok(());
        for a in self.partitions {
            let closed = a.close();
            if result.is_ok() {
                result = closed.map_err(BusError::Log);
            }
        }
        result
    }
}

/// Records with key text and event time: keys route as [`key_hash`] of their text, so a
/// record sent with its key text goes to the same partition as one sent with the hash alone.
impl TopicProducer {
    /// Appends `payload` with the key text `key` (kept in the record, readable with
    /// [`Record::key_bytes`](crate::log::Record::key_bytes)) to the partition of
    /// [`key_hash`]`(key)`. Returns (partition, offset).
    ///
    /// # Errors
    /// The partition's append error ([`crate::log::AppendError::KeyTooLong`] over
    /// [`KEY_BYTES_MAX`](crate::log::format::KEY_BYTES_MAX)).
    ///
    /// # Examples
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let bus = shoal::bus::Bus::open(dir.path()).unwrap();
    /// let topic = bus.topic_or_create("orders", Some(4)).unwrap();
    /// let mut producer = topic.producer(shoal::log::LogOptions::default()).unwrap();
    /// let (p, offset) = producer.send_keyed(b"alice", b"paid").unwrap();
    /// assert_eq!(p, shoal::bus::partition_for_key(shoal::bus::key_hash(b"alice"), 4));
    /// producer.close().unwrap();
    /// let mut reader = shoal::log::Reader::open(topic.partition_dir(p).unwrap()).unwrap();
    /// reader.seek(offset).unwrap();
    /// assert_eq!(reader.next().unwrap().unwrap().key_bytes(), Some(&b"alice"[..]));
    /// ```
    pub fn send_keyed(&mut self, key: &[u8], payload: &[u8]) -> Result<(u32, Offset), crate::log::AppendError> {
        self.send_record(&NewRecord::new(payload).key(key))
    }

    /// Appends a record with its optional parts (key text, event time) to the partition
    /// of its routing key ([`NewRecord::routing_key`]). Returns (partition, offset).
    ///
    /// # Errors
    /// The partition's append error.
    pub fn send_record(&mut self, record: &NewRecord<'_>) -> Result<(u32, Offset), crate::log::AppendError> {
        let p = partition_for_key(record.routing_key(), self.topic.partitions);
        let offset = self.partitions[p as usize].append_record(record)?;
        Ok((p, offset))
    }

    /// Appends a record with its optional parts to partition `p`.
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error.
    pub fn send_record_to(&mut self, p: u32, record: &NewRecord<'_>) -> Result<Offset, BusError> {
        self.appender(p)?.append_record(record).map_err(append_error)
    }

    /// Appends several records with their optional parts to partition `p`, with one
    /// publication; see [`Appender::append_records`].
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error; the records before the
    /// failing one are appended.
    pub fn send_records_to<'p, I>(&mut self, p: u32, records: I) -> Result<Range<Offset>, BusError>
    where
        I: IntoIterator<Item = NewRecord<'p>>,
    {
        self.appender(p)?.append_records(records).map_err(append_error)
    }
}

/// A failed append as a bus error.
fn append_error(e: crate::log::AppendError) -> BusError {
    match e {
        crate::log::AppendError::Log(e) => BusError::Log(e),
        too_large => BusError::Log(LogError::Config(too_large.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_bus() {
        for bad in ["", ".", "..", "../x", "a/b", ".hidden", "a b", "x\0", &"n".repeat(129), "é"] {
            assert!(validate_name("topic", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["orders", "a.b-c_d", "0", &"n".repeat(128)] {
            assert!(validate_name("topic", good).is_ok(), "{good:?} refused");
        }
        let e = validate_name("group", "../etc").unwrap_err().to_string();
        assert!(e.contains("invalid group name") && e.contains("A-Z"), "{e}");
    }

    #[test]
    fn topics_keep_their_partition_count_and_route_keys_stably() {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::open(dir.path()).unwrap();
        assert!(matches!(bus.topic("orders"), Err(BusError::NoTopic { .. })));
        let t = bus.topic_or_create("orders", Some(8)).unwrap();
        assert_eq!(t.partitions(), 8);
        assert_eq!(bus.topic_or_create("orders", None).unwrap().partitions(), 8);
        assert!(matches!(bus.topic_or_create("orders", Some(4)), Err(BusError::PartitionMismatch { .. })));
        assert!(matches!(bus.topic_or_create("zero", Some(0)), Err(BusError::BadPartitionCount { .. })));
        assert_eq!(bus.topics().unwrap(), vec!["orders".to_string()]);
        // Stable routing: fixed values, spread over the partitions.
        assert_eq!(partition_for_key(0, 8), partition_for_key(0, 8));
        let mut counts = [0u32; 8];
        for k in 0..8000u64 {
            counts[partition_for_key(k, 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        // FNV-1a reference values.
        assert_eq!(key_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut producer = t
            .producer(LogOptions { segment_bytes: 1 << 20, max_record_bytes: 1 << 16, ..LogOptions::default() })
            .unwrap();
        let (p, off) = producer.send(42, b"hello").unwrap();
        assert_eq!(p, partition_for_key(42, 8));
        assert_eq!(off, Offset(0));
        assert!(matches!(producer.send_to(9, 0, b"x"), Err(BusError::NoPartition { .. })));
        // A second producer of the same topic sends too, after the first's records.
        let mut second = t.producer(LogOptions::default()).unwrap();
        assert_eq!(second.send(42, b"again").unwrap(), (p, Offset(1)));
        assert_eq!(producer.send(42, b"third").unwrap(), (p, Offset(2)));
        drop((producer, second));
        // An exclusive producer is refused while another is open, and refuses others.
        let shared = t.producer(LogOptions::default()).unwrap();
        assert!(t.producer(LogOptions::default().writers(crate::log::Writers::Exclusive)).is_err());
        drop(shared);
        let exclusive = t.producer(LogOptions::default().writers(crate::log::Writers::Exclusive)).unwrap();
        assert!(t.producer(LogOptions::default()).is_err());
        drop(exclusive);
    }

    #[test]
    fn meta_decoding_rejects_damage() {
        let good: [u8; META_BYTES] = encode_meta(8, 1, None).try_into().expect("a version 1 meta file");
        assert_eq!(decode_meta(&good), Ok(TopicMeta { partitions: 8, created_ns: 1, schema: None }));
        for i in 0..good.len() {
            let mut bad = good;
            bad[i] ^= 1;
            assert!(decode_meta(&bad).is_err(), "flip at {i} accepted");
        }
        assert!(decode_meta(&good[..10]).is_err());
        assert_eq!(decode_meta(&good[..10]), Err(MetaError::BadLength { len: 10, need: META_BYTES }));
        assert_eq!(decode_meta(&good[..10]).unwrap_err().to_string(), "topic meta is 10 bytes, expected 40");
        let mut newer = good;
        newer[8] = 3;
        assert_eq!(decode_meta(&newer), Err(MetaError::UnsupportedVersion { found: 3, supported: META_VERSION_TYPED }));
        let mut flipped = good;
        flipped[20] ^= 1;
        assert_eq!(decode_meta(&flipped).unwrap_err().to_string(), "topic meta checksum mismatch");
    }

    #[test]
    fn typed_meta_round_trips_and_rejects_damage() {
        let schema =
            TopicSchema { name: "Order".into(), version: 3, size: 24, align: 8, fingerprint: 0x0123_4567_89ab_cdef };
        let good = encode_meta(4, 7, Some(&schema));
        assert_eq!(good.len(), META_TYPED_FIXED_BYTES + 5);
        assert_eq!(&good[8..12], &META_VERSION_TYPED.to_le_bytes());
        let meta = decode_meta(&good).expect("decodes");
        assert_eq!(meta, TopicMeta { partitions: 4, created_ns: 7, schema: Some(schema.clone()) });
        for i in 0..good.len() {
            for bit in [0x01, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                assert!(decode_meta(&bad).is_err(), "flip {bit:#x} at {i} accepted");
            }
        }
        for len in 0..good.len() {
            assert!(decode_meta(&good[..len]).is_err(), "cut at {len} accepted");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode_meta(&longer).is_err());
        // A name length that disagrees with the file's, under a valid checksum.
        let mut lying = good[..good.len() - 4].to_vec();
        lying[48] = 6;
        let crc = crc32c::crc32c(&lying);
        lying.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_meta(&lying),
            Err(MetaError::BadLength { len: good.len(), need: META_TYPED_FIXED_BYTES + 6 })
        );
        // A name that is not UTF-8, and an alignment that is not a power of two.
        for (at, byte, why) in [(52, 0xFF, "the name is not UTF-8"), (28, 3, "the alignment is not a power of two")] {
            let mut bad = good[..good.len() - 4].to_vec();
            bad[at] = byte;
            let crc = crc32c::crc32c(&bad);
            bad.extend_from_slice(&crc.to_le_bytes());
            assert_eq!(decode_meta(&bad), Err(MetaError::BadSchema { why }));
        }
        // The longest name fits; the bytes of the longest file are accepted, one more is not.
        let long = TopicSchema { name: "n".repeat(SCHEMA_NAME_BYTES_MAX), ..schema };
        let longest = encode_meta(1, 0, Some(&long));
        assert_eq!(longest.len(), META_BYTES_MAX);
        assert_eq!(decode_meta(&longest).expect("decodes").schema, Some(long));
    }
}
