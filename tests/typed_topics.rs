//! Typed topics: a topic created with a schema keeps it in its `meta` file, and producers
//! and group members that declare another type are refused with an error naming the topic,
//! both schemas and what to do; untyped and old topics go on working; a damaged `meta` file
//! is an error, never a panic; the command line shows the schema.

mod cli_support;
use cli_support::*;

use std::path::Path;
use std::time::Duration;

use shoal::bus::{decode_meta, Bus, BusError, MetaError, Schema, TopicSchema};
use shoal::group::{GroupError, GroupOptions, Member};
use shoal::log::LogOptions;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct Order {
    id: u64,
    price_cents: i64,
    qty: u32,
    side: u32,
}
shoal::schema!(Order, version = 1, { id: u64, price_cents: i64, qty: u32, side: u32 });

/// Another type of Order's size and alignment.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Quote {
    bid: i64,
    ask: i64,
    venue: u64,
}
shoal::schema!(Quote { bid: i64, ask: i64, venue: u64 });

/// Order's fields with `qty` and `side` swapped: same name, version, size and alignment.
mod reordered {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct Order {
        pub id: u64,
        pub price_cents: i64,
        pub side: u32,
        pub qty: u32,
    }
    shoal::schema!(Order, version = 1, { id: u64, price_cents: i64, side: u32, qty: u32 });
}

/// Order with `qty` renamed `quantity`.
mod renamed {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct Order {
        pub id: u64,
        pub price_cents: i64,
        pub quantity: u32,
        pub side: u32,
    }
    shoal::schema!(Order, version = 1, { id: u64, price_cents: i64, quantity: u32, side: u32 });
}

/// Order with `price_cents` an `f64`: same size, another type.
mod retyped {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct Order {
        pub id: u64,
        pub price_cents: f64,
        pub qty: u32,
        pub side: u32,
    }
    shoal::schema!(Order, version = 1, { id: u64, price_cents: f64, qty: u32, side: u32 });
}

/// Order's layout under version 2.
mod bumped {
    #[repr(C)]
    #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
    pub struct Order {
        pub id: u64,
        pub price_cents: i64,
        pub qty: u32,
        pub side: u32,
    }
    shoal::schema!(Order, version = 2, { id: u64, price_cents: i64, qty: u32, side: u32 });
}

fn quick() -> GroupOptions {
    GroupOptions::default().liveness_check(Duration::from_millis(20))
}

fn mismatch(e: &BusError) -> (Option<&TopicSchema>, &TopicSchema) {
    match e {
        BusError::SchemaMismatch { kept, declared, .. } => (kept.as_deref(), declared),
        other => panic!("not a schema mismatch: {other}"),
    }
}

#[test]
fn a_typed_topic_takes_its_type_from_producers_and_members() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create_typed::<Order>("orders", Some(2)).expect("typed topic");
    assert_eq!(topic.schema(), Some(&TopicSchema::of::<Order>()));
    // Opened again, by name or by creating it with the same type, it keeps its schema.
    assert_eq!(bus.topic("orders").expect("open").schema(), Some(&TopicSchema::of::<Order>()));
    let again = bus.topic_or_create_typed::<Order>("orders", None).expect("same type, existing topic");
    assert_eq!(again.partitions(), 2);

    let mut producer = topic.producer_typed::<Order>(LogOptions::default()).expect("typed producer");
    let orders: Vec<Order> = (0..20).map(|i| Order { id: i, price_cents: 100 * i as i64, qty: 1, side: 0 }).collect();
    for order in &orders {
        producer.send(order.id, order).expect("send");
    }
    producer.send_batch_to(1, &orders[..2]).expect("batch");
    producer.close().expect("close");

    let mut member = Member::join_typed::<Order>(&bus, "billing", "orders", quick()).expect("typed member");
    member.expect_schema::<Order>().expect("the member's topic keeps Order");
    let mut seen = Vec::new();
    while seen.len() < orders.len() + 2 {
        let batch = member.poll(100, Duration::from_secs(10)).expect("poll");
        assert!(!batch.is_empty(), "records missing after {} of {}", seen.len(), orders.len() + 2);
        seen.extend(batch.iter().map(|d| *d.record.payload_as::<Order>().expect("an Order")));
    }
    seen.sort_by_key(|o| o.id);
    let mut want = orders.clone();
    want.extend_from_slice(&orders[..2]);
    want.sort_by_key(|o| o.id);
    assert_eq!(seen, want);
    member.leave().expect("leave");
}

#[test]
fn another_type_of_the_same_size_is_refused_naming_both_schemas() {
    assert_eq!(std::mem::size_of::<Quote>(), std::mem::size_of::<Order>());
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create_typed::<Order>("orders", Some(2)).expect("typed topic");

    let e = topic.producer_typed::<Quote>(LogOptions::default()).expect_err("a Quote producer");
    let (kept, declared) = mismatch(&e);
    assert_eq!((kept, declared), (Some(&TopicSchema::of::<Order>()), &TopicSchema::of::<Quote>()));
    let text = e.to_string();
    for part in [
        "\"orders\"",
        "Order v1 (24 B",
        "Quote v0 (24 B",
        &format!("{:#018x}", Order::FINGERPRINT),
        &format!("{:#018x}", Quote::FINGERPRINT),
        "create a new topic",
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
    assert!(text.contains(&dir.path().join("topics/orders/meta").display().to_string()), "{text}");

    // A member declaring Quote is refused before it joins: the group has no member.
    let e = Member::join_typed::<Quote>(&bus, "billing", "orders", quick()).expect_err("a Quote member");
    let GroupError::Bus(e) = e else { panic!("not a bus error: {e}") };
    assert_eq!(mismatch(&e).1.name, "Quote");
    assert!(shoal::group::describe(&bus).expect("describe").iter().all(|g| g.members.is_empty()));
    // A member that joined untyped is refused when it declares Quote, and accepted with Order.
    let member = Member::join(&bus, "billing", "orders", quick()).expect("join");
    assert!(matches!(member.expect_schema::<Quote>(), Err(GroupError::Bus(BusError::SchemaMismatch { .. }))));
    member.expect_schema::<Order>().expect("Order");
    member.leave().expect("leave");
    // Creating the topic again with Quote is refused too, and changes nothing.
    let e = bus.topic_or_create_typed::<Quote>("orders", None).expect_err("create as Quote");
    assert_eq!(mismatch(&e).0, Some(&TopicSchema::of::<Order>()));
    assert_eq!(bus.topic("orders").expect("open").schema(), Some(&TopicSchema::of::<Order>()));
}

#[test]
fn a_reordered_renamed_retyped_or_bumped_layout_is_refused() {
    let order = TopicSchema::of::<Order>();
    for (what, other) in [
        ("reordered", TopicSchema::of::<reordered::Order>()),
        ("renamed", TopicSchema::of::<renamed::Order>()),
        ("retyped", TopicSchema::of::<retyped::Order>()),
        ("bumped", TopicSchema::of::<bumped::Order>()),
    ] {
        assert_eq!((&other.name, other.size, other.align), (&order.name, order.size, order.align), "{what}");
        assert_ne!(other, order, "{what}: the schema must differ");
    }
    // The layout changes move the fingerprint; the version bump keeps it and moves the version.
    for fingerprint in [reordered::Order::FINGERPRINT, renamed::Order::FINGERPRINT, retyped::Order::FINGERPRINT] {
        assert_ne!(fingerprint, Order::FINGERPRINT);
    }
    assert_eq!((bumped::Order::FINGERPRINT, bumped::Order::VERSION), (Order::FINGERPRINT, 2));

    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create_typed::<Order>("orders", Some(1)).expect("typed topic");
    let opts = LogOptions::default();
    let refusals = [
        topic.producer_typed::<reordered::Order>(opts).map(drop),
        topic.producer_typed::<renamed::Order>(opts).map(drop),
        topic.producer_typed::<retyped::Order>(opts).map(drop),
        topic.producer_typed::<bumped::Order>(opts).map(drop),
    ];
    for (i, refused) in refusals.into_iter().enumerate() {
        let e = refused.expect_err("another layout of Order");
        assert!(matches!(e, BusError::SchemaMismatch { .. }), "{i}: {e}");
    }
    let e = Member::join_typed::<reordered::Order>(&bus, "g", "orders", quick()).expect_err("reordered member");
    assert!(e.to_string().contains("same name, version and fields in the same order"), "{e}");
}

#[test]
fn the_fingerprint_is_fixed() {
    // FNV-1a over the layout, as documented: a value computed once and written down, so a
    // change of the function (which would refuse every typed topic already on disk) fails here.
    let by_hand = {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for &b in bytes {
                h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(&24u64.to_le_bytes());
        eat(&8u64.to_le_bytes());
        for (name, offset, size, ty) in
            [("id", 0u64, 8u64, "u64"), ("price_cents", 8, 8, "i64"), ("qty", 16, 4, "u32"), ("side", 20, 4, "u32")]
        {
            eat(name.as_bytes());
            eat(&[0xFF]);
            eat(&offset.to_le_bytes());
            eat(&size.to_le_bytes());
            eat(ty.as_bytes());
            eat(&[0xFF]);
        }
        h
    };
    assert_eq!(Order::FINGERPRINT, by_hand);
    assert_eq!(Order::FINGERPRINT, 0x638c_233e_b0ee_f638);
    // Whitespace in a type as written does not count.
    let spaced = [shoal::bus::Field { name: "raw", offset: 0, size: 16, type_name: "[ u8 ; 16 ]" }];
    let tight = [shoal::bus::Field { name: "raw", offset: 0, size: 16, type_name: "[u8;16]" }];
    assert_eq!(shoal::bus::fingerprint(&spaced, 16, 1), shoal::bus::fingerprint(&tight, 16, 1));
}

#[test]
fn an_untyped_topic_takes_any_type_and_cannot_become_typed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create("raw", Some(1)).expect("untyped topic");
    assert_eq!(topic.schema(), None);
    // Untyped topics keep the version 1 meta file older shoal reads.
    let meta = std::fs::read(dir.path().join("topics/raw/meta")).expect("meta");
    assert_eq!((meta.len(), &meta[8..12]), (40, &1u32.to_le_bytes()[..]));

    topic.producer_typed::<Order>(LogOptions::default()).expect("Order on an untyped topic").close().expect("close");
    topic.producer_typed::<Quote>(LogOptions::default()).expect("Quote on an untyped topic").close().expect("close");
    Member::join_typed::<Quote>(&bus, "g", "raw", quick()).expect("a Quote member").leave().expect("leave");

    let e = bus.topic_or_create_typed::<Order>("raw", None).expect_err("typing an untyped topic");
    assert_eq!(mismatch(&e).0, None);
    assert!(e.to_string().contains("was created without a schema"), "{e}");
    assert!(e.to_string().contains("fixed when a topic is created"), "{e}");
    assert_eq!(bus.topic("raw").expect("open").schema(), None);
}

/// A version 1 meta file as a shoal without typed topics wrote it, byte for byte.
fn old_meta(partitions: u32) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"SHOALTOP");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&partitions.to_le_bytes());
    b.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
    b.extend_from_slice(&[0; 12]);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn an_old_meta_file_without_a_schema_still_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::open(dir.path()).expect("bus");
    std::fs::create_dir_all(dir.path().join("topics/legacy")).expect("topic dir");
    std::fs::write(dir.path().join("topics/legacy/meta"), old_meta(3)).expect("write meta");
    let decoded = decode_meta(&old_meta(3)).expect("decodes");
    assert_eq!((decoded.partitions, decoded.created_ns, decoded.schema), (3, 1_700_000_000_000_000_000, None));

    let topic = bus.topic("legacy").expect("the old topic opens");
    assert_eq!((topic.partitions(), topic.schema()), (3, None));
    let mut producer = topic.producer_typed::<Order>(LogOptions::default()).expect("typed producer");
    producer.send_to(0, 1, &Order { id: 1, price_cents: 5, qty: 1, side: 1 }).expect("send");
    producer.close().expect("close");
    assert_eq!(std::fs::read(dir.path().join("topics/legacy/meta")).expect("meta"), old_meta(3), "left as it was");
    let rows = text(&ok(&["topics", dir.path().to_str().expect("UTF-8")], b""));
    assert!(rows.lines().any(|l| l.starts_with("legacy ") && l.ends_with(" -")), "{rows}");
}

#[test]
fn a_damaged_meta_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus = Bus::open(dir.path()).expect("bus");
    bus.topic_or_create_typed::<Order>("orders", Some(2)).expect("typed topic");
    let meta_path = dir.path().join("topics/orders/meta");
    let good = std::fs::read(&meta_path).expect("meta");
    assert_eq!(&good[8..12], &2u32.to_le_bytes(), "a typed topic's meta is version 2");

    let mut flipped = good.clone();
    flipped[60] ^= 0x20; // a byte of the schema's name
    let mut newer = good.clone();
    newer[8] = 3;
    let cases: [(&str, Vec<u8>, MetaError); 5] = [
        ("flipped", flipped, MetaError::Checksum),
        ("cut in the name", good[..good.len() - 2].to_vec(), MetaError::Checksum),
        ("cut in the fixed part", good[..50].to_vec(), MetaError::BadLength { len: 50, need: 56 }),
        ("empty", Vec::new(), MetaError::BadLength { len: 0, need: 40 }),
        ("newer", newer, MetaError::UnsupportedVersion { found: 3, supported: 2 }),
    ];
    for (what, bytes, why) in cases {
        std::fs::write(&meta_path, &bytes).expect("write meta");
        match bus.topic("orders") {
            Err(BusError::BadMeta { path, why: found }) => {
                assert_eq!((path.as_path(), &found), (meta_path.as_path(), &why), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
        let e = Member::join_typed::<Order>(&bus, "g", "orders", quick()).expect_err(what).to_string();
        assert!(e.contains(&meta_path.display().to_string()) && e.contains("restore it"), "{what}: {e}");
        let e = fails(&["topics", dir.path().to_str().expect("UTF-8")], b"");
        assert!(e.contains("meta") && e.contains("restore it"), "{what}: {e}");
    }
    // Put back, it reads as before.
    std::fs::write(&meta_path, &good).expect("write meta");
    assert_eq!(bus.topic("orders").expect("open").schema(), Some(&TopicSchema::of::<Order>()));
}

#[test]
fn the_command_line_shows_the_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus_path = dir.path().to_str().expect("UTF-8").to_string();
    let bus = Bus::open(dir.path()).expect("bus");
    let mut producer = bus
        .topic_or_create_typed::<Order>("orders", Some(2))
        .expect("typed topic")
        .producer_typed::<Order>(LogOptions::default())
        .expect("producer");
    producer.send_to(1, 9, &Order { id: 9, price_cents: 1, qty: 2, side: 0 }).expect("send");
    producer.close().expect("close");
    ok(&["topics", "create", &bus_path, "lines", "--partitions", "1"], b"");

    let shown = TopicSchema::of::<Order>().to_string();
    assert_eq!(shown, format!("Order v1 (24 B, align 8, fingerprint {:#018x})", Order::FINGERPRINT));
    let out = text(&ok(&["topics", &bus_path], b""));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["TOPIC", "PARTITIONS", "RECORDS", "BYTES", "SCHEMA"]);
    assert!(lines[1].starts_with("lines ") && lines[1].ends_with("  -"), "{out}");
    assert!(lines[2].starts_with("orders ") && lines[2].ends_with(&format!("  {shown}")), "{out}");
    // Creating a typed topic that exists says its schema.
    let said = text(&ok(&["topics", "create", &bus_path, "orders"], b""));
    assert!(said.contains(&format!("and schema {shown}; left as it is")), "{said}");

    let stats = |p: &Path| text(&ok(&["stats", p.to_str().expect("UTF-8")], b""));
    let typed = stats(&dir.path().join("topics/orders/1"));
    assert_eq!(row(&typed, "schema").as_deref(), Some(shown.as_str()), "{typed}");
    assert_eq!(row(&typed, "topic").as_deref(), Some("orders (partition 1 of 2)"), "{typed}");
    assert_eq!(row(&typed, "records").as_deref(), Some("1"), "{typed}");
    // Written by `produce`, the untyped topic's partition has a log to look at.
    ok(&["produce", &bus_path, "--topic", "lines"], b"a line\n");
    let untyped = stats(&dir.path().join("topics/lines/0"));
    assert_eq!(row(&untyped, "schema").as_deref(), Some("-"), "{untyped}");
    // A plain log outside any bus has no topic rows.
    let log = dir.path().join("plain");
    ok(&["produce", log.to_str().expect("UTF-8")], b"x\n");
    let plain = stats(&log);
    assert_eq!((row(&plain, "schema"), row(&plain, "topic")), (None, None), "{plain}");

    // A damaged meta file: the log's figures still print, the schema reads as unreadable,
    // and the error is on stderr with exit 1.
    std::fs::write(dir.path().join("topics/orders/meta"), b"SHOALTOP").expect("damage meta");
    let out = run(&["stats", dir.path().join("topics/orders/1").to_str().expect("UTF-8")], b"");
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(row(&stdout, "schema").as_deref(), Some("unreadable (see the error below)"), "{stdout}");
    assert_eq!(row(&stdout, "records").as_deref(), Some("1"), "{stdout}");
    assert!(text(&out.stderr).contains("topic meta is 8 bytes"), "{}", text(&out.stderr));
}

/// The value of row `key` of a `stats` table (`key   value`).
fn row(table: &str, key: &str) -> Option<String> {
    table.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        rest.starts_with("  ").then(|| rest.trim().to_string())
    })
}

#[test]
fn produce_refuses_a_typed_topic_naming_its_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bus_path = dir.path().to_str().expect("UTF-8").to_string();
    let bus = Bus::open(dir.path()).expect("bus");
    let topic = bus.topic_or_create_typed::<Order>("orders", Some(2)).expect("typed topic");
    // A line of exactly the schema's size would read as an Order without complaint.
    let line = [b'x'; 24];
    for keyed in [false, true] {
        let mut args = vec!["produce", &bus_path, "--topic", "orders"];
        if keyed {
            args.push("--keyed");
        }
        let err = fails(&args, &[&line[..], b"\nhello\n"].concat());
        let shown = TopicSchema::of::<Order>().to_string();
        assert!(
            err.contains(dir.path().join("topics/orders").to_str().expect("UTF-8"))
                && err.contains(&format!("topic orders holds records of schema {shown}"))
                && err.contains("producer_typed"),
            "{err}"
        );
    }
    for p in 0..2 {
        let records = text(&ok(&["cat", &bus_path, "--topic", "orders", "--partition", &p.to_string()], b""));
        assert_eq!(records, "", "partition {p}: nothing was written");
    }
    // The typed producer still writes, and untyped topics still take lines.
    let mut producer = topic.producer_typed::<Order>(LogOptions::default()).expect("producer");
    producer.send_to(0, 1, &Order { id: 1, price_cents: 2, qty: 3, side: 0 }).expect("send");
    producer.close().expect("close");
    ok(&["produce", &bus_path, "--topic", "lines"], b"a line\n");
}
