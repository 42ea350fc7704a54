//! Typed topics: a schema kept in the topic's `meta` file, and the checks that refuse a
//! producer or a group member declaring another type.
//!
//! [`Record::payload_as`](crate::log::Record::payload_as) checks only a payload's size and
//! alignment, so a `#[repr(C)]` type whose fields moved, or another type of the same size,
//! would read the bytes without complaint. A topic created with
//! [`Bus::topic_or_create_typed`] keeps the [`TopicSchema`] of its record type: the type's
//! [`Schema::NAME`], a user-given [`Schema::VERSION`], its size and alignment, and a
//! [`Schema::FINGERPRINT`] of its layout (each field's name, offset, size and type). A
//! producer made with [`Topic::producer_typed`] and a group member that declares a type
//! (`Member::join_typed`, `Member::expect_schema` in [`crate::group`]) are refused with
//! [`BusError::SchemaMismatch`] when any of these differ, before they write or read a
//! record.
//!
//! A topic created without a schema (with [`Bus::topic_or_create`], `shoal produce`, `shoal
//! topics create`, or by an older shoal) takes any declared type and says nothing: it holds
//! bytes, and only its users know what they mean. A schema is fixed when the topic is
//! created; asking to create a typed topic where an untyped one exists is an error.
//!
//! # The fingerprint
//! [`fingerprint`] is 64-bit FNV-1a over the type's size and alignment and, for each field
//! in declaration order, its name, offset, size and type as written (whitespace ignored).
//! It is fixed forever, like [`key_hash`](super::key_hash), so programs built at different
//! times by different compilers agree on it. Reordering, resizing, retyping or renaming a
//! field changes it; so does writing a field's type another way (`u64` and
//! `core::primitive::u64` differ): write the types the same way in every program.
//!
//! # The `schema!` macro
//! [`schema!`](crate::schema) implements [`Schema`] for a `#[repr(C)]` struct with named
//! fields from its field list, and checks at compile time that the list is the struct's:
//! every field, no other, in declaration order, each with its type. It is a `macro_rules!`
//! macro rather than a derive because shoal is one package (a derive needs a proc-macro
//! crate of its own). The type must also be [`bytemuck::Pod`], as for
//! [`Appender::append_pod`](crate::log::Appender::append_pod).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use super::{Bus, BusError, Topic, TopicProducer};
use crate::log::{AppendError, LogOptions, Offset};

/// The longest [`Schema::NAME`] a topic's `meta` file keeps, in bytes.
pub const SCHEMA_NAME_BYTES_MAX: usize = 256;

/// One field of a record type, as [`fingerprint`] sees it. [`schema!`](crate::schema)
/// fills these in from the struct's field list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name.
    pub name: &'static str,
    /// Its offset in the type, in bytes (`core::mem::offset_of!`).
    pub offset: usize,
    /// Its size in bytes.
    pub size: usize,
    /// Its type as written (`"u64"`, `"[u8; 16]"`); whitespace is ignored.
    pub type_name: &'static str,
}

/// A record type with a name, a version and a layout fingerprint, which a typed topic
/// keeps and checks.
///
/// Implement it with [`schema!`](crate::schema), which lists the fields and so fingerprints
/// the layout. By hand, leave [`Schema::FIELDS`] empty and the fingerprint covers only the
/// size and alignment: then [`Schema::VERSION`] is what tells two layouts apart, and is
/// yours to bump.
///
/// ```
/// use shoal::bus::{Bus, Schema};
/// use shoal::log::LogOptions;
///
/// #[repr(C)]
/// #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Order {
///     id: u64,
///     price_cents: i64,
///     qty: u32,
///     side: u32,
/// }
/// shoal::schema!(Order, version = 1, { id: u64, price_cents: i64, qty: u32, side: u32 });
///
/// assert_eq!((Order::NAME, Order::VERSION, Order::FIELDS.len()), ("Order", 1, 4));
///
/// let dir = tempfile::tempdir()?;
/// let bus = Bus::open(dir.path())?;
/// let topic = bus.topic_or_create_typed::<Order>("orders", Some(4))?;
/// assert_eq!(topic.schema().map(|s| s.name.as_str()), Some("Order"));
///
/// let mut producer = topic.producer_typed::<Order>(LogOptions::default())?;
/// let order = Order { id: 7, price_cents: 1250, qty: 3, side: 0 };
/// let (p, offset) = producer.send(order.id, &order)?; // no cast
/// producer.close()?;
///
/// let mut reader = shoal::log::Reader::open(topic.partition_dir(p)?)?;
/// reader.seek(offset)?;
/// assert_eq!(reader.next()?.expect("the order").payload_as::<Order>()?, &order);
///
/// // Another type of the same size is refused, naming both schemas.
/// #[repr(C)]
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Quote { bid: i64, ask: i64, venue: u64 }
/// shoal::schema!(Quote { bid: i64, ask: i64, venue: u64 });
/// let refused = topic.producer_typed::<Quote>(LogOptions::default()).unwrap_err();
/// assert!(refused.to_string().contains("Quote"), "{refused}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Schema: bytemuck::Pod {
    /// The type's name, kept in the topic (at most [`SCHEMA_NAME_BYTES_MAX`] bytes, not
    /// empty). [`schema!`](crate::schema) uses the struct's name unless given `name = "..."`.
    const NAME: &'static str;
    /// A version of your choosing: bump it when the meaning of the bytes changes while the
    /// layout does not (cents become tenths of a cent).
    const VERSION: u32 = 0;
    /// The fields, in declaration order; empty when unknown.
    const FIELDS: &'static [Field] = &[];
    /// The layout fingerprint: [`fingerprint`] of the fields, size and alignment.
    const FINGERPRINT: u64 = fingerprint(Self::FIELDS, core::mem::size_of::<Self>(), core::mem::align_of::<Self>());
}

/// The layout fingerprint of a type: 64-bit FNV-1a over its size and alignment (each a
/// little-endian u64) and, per field in declaration order, its name, a `0xFF` byte, its
/// offset and size (little-endian u64s), its type name without whitespace and another
/// `0xFF`. Fixed forever, like [`key_hash`](super::key_hash), so that programs built at
/// different times by different compilers agree on it. Reordering, resizing, retyping or
/// renaming a field changes it; so does writing a field's type another way (`u64` and
/// `core::primitive::u64` differ): write the types the same way in every program.
pub const fn fingerprint(fields: &[Field], size: usize, align: usize) -> u64 {
    let mut h = FNV_OFFSET_BASIS;
    h = fnv_u64(h, size as u64);
    h = fnv_u64(h, align as u64);
    let mut i = 0;
    while i < fields.len() {
        let field = &fields[i];
        h = fnv_bytes(h, field.name.as_bytes(), false);
        h = fnv_byte(h, 0xFF);
        h = fnv_u64(h, field.offset as u64);
        h = fnv_u64(h, field.size as u64);
        h = fnv_bytes(h, field.type_name.as_bytes(), true);
        h = fnv_byte(h, 0xFF);
        i += 1;
    }
    h
}

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const fn fnv_byte(h: u64, b: u8) -> u64 {
    (h ^ b as u64).wrapping_mul(FNV_PRIME)
}

const fn fnv_u64(mut h: u64, v: u64) -> u64 {
    let bytes = v.to_le_bytes();
    let mut i = 0;
    while i < bytes.len() {
        h = fnv_byte(h, bytes[i]);
        i += 1;
    }
    h
}

const fn fnv_bytes(mut h: u64, bytes: &[u8], skip_whitespace: bool) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        if !(skip_whitespace && bytes[i].is_ascii_whitespace()) {
            h = fnv_byte(h, bytes[i]);
        }
        i += 1;
    }
    h
}

/// Implements [`Schema`](crate::bus::Schema) for a `#[repr(C)]` struct with named fields
/// (which must also be `bytemuck::Pod`) from its field list, fingerprinting each field's
/// name, offset, size and type.
///
/// ```text
/// shoal::schema!(Type { field: FieldType, ... });
/// shoal::schema!(Type, version = 2, { field: FieldType, ... });
/// shoal::schema!(Type, name = "orders.Order", version = 2, { field: FieldType, ... });
/// ```
///
/// `name` defaults to the struct's name, `version` to 0. The list is checked at
/// compile time: a field left out, one the struct lacks, a wrong type or another order is an
/// error. Tuple structs and generic structs are not supported (implement [`Schema`] by
/// hand). A `macro_rules!` macro rather than a derive: shoal is one package, and a derive
/// needs a proc-macro crate of its own.
///
/// [`Schema`]: crate::bus::Schema
///
/// # Examples
/// ```
/// use shoal::bus::Schema;
///
/// #[repr(C)]
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Tick { instrument: u32, venue: u32, price: f64 }
/// shoal::schema!(Tick { instrument: u32, venue: u32, price: f64 });
///
/// // The same fields in another order: another layout, another fingerprint.
/// mod v2 {
///     #[repr(C)]
///     #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
///     pub struct Tick { pub venue: u32, pub instrument: u32, pub price: f64 }
///     shoal::schema!(Tick, name = "Tick", { venue: u32, instrument: u32, price: f64 });
/// }
/// assert_eq!(Tick::NAME, v2::Tick::NAME);
/// assert_ne!(Tick::FINGERPRINT, v2::Tick::FINGERPRINT);
/// assert_eq!(Tick::FIELDS[2].offset, 8);
/// ```
///
/// A field list that is not the struct's does not compile:
/// ```compile_fail
/// #[repr(C)]
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Tick { instrument: u32, venue: u32, price: f64 }
/// shoal::schema!(Tick { instrument: u32, price: f64 }); // venue is missing
/// ```
/// ```compile_fail
/// #[repr(C)]
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Tick { instrument: u32, venue: u32, price: f64 }
/// shoal::schema!(Tick { venue: u32, instrument: u32, price: f64 }); // not the declaration order
/// ```
/// ```compile_fail
/// #[repr(C)]
/// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
/// struct Tick { instrument: u32, venue: u32, price: f64 }
/// shoal::schema!(Tick { instrument: u32, venue: u32, price: u64 }); // price is an f64
/// ```
#[macro_export]
macro_rules! schema {
    ($ty:ident { $($field:ident : $fty:ty),* $(,)? }) => {
        $crate::schema!(@impl $ty, ::core::stringify!($ty), 0, { $($field : $fty),* });
    };
    ($ty:ident, version = $version:expr, { $($field:ident : $fty:ty),* $(,)? }) => {
        $crate::schema!(@impl $ty, ::core::stringify!($ty), $version, { $($field : $fty),* });
    };
    ($ty:ident, name = $name:expr, { $($field:ident : $fty:ty),* $(,)? }) => {
        $crate::schema!(@impl $ty, $name, 0, { $($field : $fty),* });
    };
    ($ty:ident, name = $name:expr, version = $version:expr, { $($field:ident : $fty:ty),* $(,)? }) => {
        $crate::schema!(@impl $ty, $name, $version, { $($field : $fty),* });
    };
    (@impl $ty:ident, $name:expr, $version:expr, { $($field:ident : $fty:ty),* }) => {
        impl $crate::bus::Schema for $ty {
            const NAME: &'static str = $name;
            const VERSION: u32 = $version;
            const FIELDS: &'static [$crate::bus::Field] = &[$(
                $crate::bus::Field {
                    name: ::core::stringify!($field),
                    offset: ::core::mem::offset_of!($ty, $field),
                    size: ::core::mem::size_of::<$fty>(),
                    type_name: ::core::stringify!($fty),
                },
            )*];
        }
        const _: () = {
            // Every field and no other (a struct pattern without `..`), each of the type
            // listed.
            #[allow(dead_code, clippy::all)]
            fn fields_are_the_structs(value: &$ty) {
                let $ty { $($field),* } = value;
                $(let _: &$fty = $field;)*
            }
            // In declaration order, with no padding (which `Pod` rules out anyway).
            let fields = <$ty as $crate::bus::Schema>::FIELDS;
            let mut end = 0;
            let mut i = 0;
            while i < fields.len() {
                ::core::assert!(
                    fields[i].offset == end,
                    "schema!: list the fields in declaration order (the struct must be #[repr(C)] without padding)"
                );
                end += fields[i].size;
                i += 1;
            }
            ::core::assert!(end == ::core::mem::size_of::<$ty>(), "schema!: the fields do not cover the struct");
        };
    };
}

/// The schema a typed topic keeps in its `meta` file, or one a type declares
/// ([`TopicSchema::of`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TopicSchema {
    /// [`Schema::NAME`].
    pub name: String,
    /// [`Schema::VERSION`].
    pub version: u32,
    /// The type's size in bytes.
    pub size: u64,
    /// The type's alignment in bytes.
    pub align: u32,
    /// [`Schema::FINGERPRINT`].
    pub fingerprint: u64,
}

impl TopicSchema {
    /// The schema type `T` declares.
    pub fn of<T: Schema>() -> TopicSchema {
        TopicSchema {
            name: T::NAME.to_string(),
            version: T::VERSION,
            size: core::mem::size_of::<T>() as u64,
            align: core::mem::align_of::<T>() as u32,
            fingerprint: T::FINGERPRINT,
        }
    }

    /// Checks what a `meta` file can keep: a name of 1 to [`SCHEMA_NAME_BYTES_MAX`] bytes,
    /// an alignment that is a power of two.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if self.name.is_empty() {
            return Err("the schema name is empty");
        }
        if self.name.len() > SCHEMA_NAME_BYTES_MAX {
            return Err("the schema name is longer than 256 bytes");
        }
        if !self.align.is_power_of_two() {
            return Err("the alignment is not a power of two");
        }
        Ok(())
    }
}

impl fmt::Display for TopicSchema {
    /// `Order v1 (24 B, align 8, fingerprint 0x9f3c2a1b7d4e6f80)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} v{} ({} B, align {}, fingerprint {:#018x})",
            self.name, self.version, self.size, self.align, self.fingerprint
        )
    }
}

impl Bus {
    /// Opens a typed topic, creating it with `partitions` partitions (the default count for
    /// `None`) and `T`'s schema if it does not exist. See [`Schema`] and [typed topics](crate::bus#typed-topics).
    ///
    /// # Errors
    /// [`BusError::SchemaMismatch`] when the topic exists with another schema or without one
    /// (a schema is fixed at creation); [`BusError::BadSchema`] when `T::NAME` is empty or
    /// longer than [`SCHEMA_NAME_BYTES_MAX`]; as [`Bus::topic_or_create`] otherwise.
    pub fn topic_or_create_typed<T: Schema>(&self, name: &str, partitions: Option<u32>) -> Result<Topic, BusError> {
        let declared = TopicSchema::of::<T>();
        declared.check().map_err(|why| BusError::BadSchema { name: declared.name.clone(), why })?;
        let topic = self.create_topic(name, partitions, Some(&declared))?;
        match topic.schema() {
            Some(kept) if *kept == declared => Ok(topic),
            kept => Err(schema_mismatch(&topic, kept.cloned(), declared)),
        }
    }
}

impl Topic {
    /// Checks that the topic takes records of type `T`: a typed topic whose schema is
    /// `T`'s, or a topic without a schema (which takes any type).
    ///
    /// # Errors
    /// [`BusError::SchemaMismatch`], naming the topic, both schemas and what to do.
    pub fn check_schema<T: Schema>(&self) -> Result<(), BusError> {
        match self.schema() {
            None => Ok(()),
            Some(kept) if *kept == TopicSchema::of::<T>() => Ok(()),
            Some(kept) => Err(schema_mismatch(self, Some(kept.clone()), TopicSchema::of::<T>())),
        }
    }

    /// A producer of `T` records: [`Topic::producer`] after [`Topic::check_schema`].
    ///
    /// # Errors
    /// [`BusError::SchemaMismatch`]; as [`Topic::producer`].
    pub fn producer_typed<T: Schema>(&self, opts: LogOptions) -> Result<TypedProducer<T>, BusError> {
        self.check_schema::<T>()?;
        Ok(TypedProducer { inner: self.producer(opts)?, _type: PhantomData })
    }
}

fn schema_mismatch(topic: &Topic, kept: Option<TopicSchema>, declared: TopicSchema) -> BusError {
    BusError::SchemaMismatch {
        topic: topic.name().to_string(),
        path: topic.dir.join("meta"),
        kept: kept.map(Box::new),
        declared: Box::new(declared),
    }
}

/// A producer of a typed topic: [`TypedProducer::send`] takes a `&T`, no cast. Made by
/// [`Topic::producer_typed`]; [`TypedProducer::untyped`] reaches the [`TopicProducer`]
/// underneath (durable watermarks, syncs, raw payloads).
pub struct TypedProducer<T: Schema> {
    inner: TopicProducer,
    _type: PhantomData<fn(&T)>,
}

impl<T: Schema> fmt::Debug for TypedProducer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedProducer").field("schema", &T::NAME).field("inner", &self.inner).finish()
    }
}

impl<T: Schema> TypedProducer<T> {
    /// Appends `value` to the partition of `key`; returns (partition, offset).
    ///
    /// # Errors
    /// The partition's append error.
    #[inline]
    pub fn send(&mut self, key: u64, value: &T) -> Result<(u32, Offset), AppendError> {
        self.inner.send(key, bytemuck::bytes_of(value))
    }

    /// Appends `value` to partition `p`.
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error.
    pub fn send_to(&mut self, p: u32, key: u64, value: &T) -> Result<Offset, BusError> {
        self.inner.send_to(p, key, bytemuck::bytes_of(value))
    }

    /// Appends several values (key 0) to partition `p` with one publication.
    ///
    /// # Errors
    /// [`BusError::NoPartition`] or the partition's append error; the values before the
    /// failing one are appended.
    pub fn send_batch_to<'v, I>(&mut self, p: u32, values: I) -> Result<Range<Offset>, BusError>
    where
        I: IntoIterator<Item = &'v T>,
        T: 'v,
    {
        self.inner.send_batch_to(p, values.into_iter().map(bytemuck::bytes_of))
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        self.inner.topic()
    }

    /// The untyped producer underneath.
    pub fn untyped(&mut self) -> &mut TopicProducer {
        &mut self.inner
    }

    /// Blocks until every record appended so far is durable, on every partition.
    ///
    /// # Errors
    /// The first sync error.
    pub fn sync(&mut self) -> Result<(), BusError> {
        self.inner.sync()
    }

    /// Closes every partition, as [`TopicProducer::close`].
    ///
    /// # Errors
    /// The first partition's close error.
    pub fn close(self) -> Result<(), BusError> {
        self.inner.close()
    }
}
