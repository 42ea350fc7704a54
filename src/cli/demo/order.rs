//! The demo's event, how the producer makes it, what the risk stage adds, and how every
//! copy read back is checked.
//!
//! An [`Order`] is 48 bytes, `#[repr(C)]` and `bytemuck::Pod`: the same bytes travel by value
//! through the pipeline's rings, land in the topic's mapped log, and are read in place by
//! consumers in this and other processes ([`RecordRef::payload_as`](shoal::log::RecordRef::payload_as)).
//!
//! Everything but the creation time is derived from the id ([`Order::new`]), so a reader
//! can rebuild what the producer made from the id alone. The producer seals each order
//! ([`seal`]: a 64-bit hash over id, account, amount and creation time) and keeps the
//! wrapping sum of the seals; the risk stage fills in [`Order::risk`], a function of the
//! account and amount. [`Tally`] checks each order read back against all of that.

use bytemuck::{Pod, Zeroable};

use shoal::bus::partition_for_key;

/// Accounts the orders are spread over (the key of the pipeline's risk stage and of the topic).
pub(super) const ACCOUNTS: u64 = 4096;

/// One order, as it travels through the pipeline and lies in the topic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub(super) struct Order {
    /// 0, 1, 2, ... in the order the producer made them.
    pub(super) id: u64,
    /// The account (derived from the id); the record's key.
    pub(super) account: u64,
    /// Signed amount in cents (derived from the id).
    pub(super) amount_cents: i64,
    /// Wall clock (ns since the Unix epoch) when the producer made it.
    pub(super) created_ns: u64,
    /// Filled in by the risk stage: [`risk_score`] of account and amount; 0 before.
    pub(super) risk: u64,
    /// [`seal`] of the other fields but `risk`, set by the producer.
    pub(super) check: u64,
}

/// Bytes of an [`Order`].
pub(super) const ORDER_BYTES: usize = std::mem::size_of::<Order>();

impl Order {
    /// The order with this id, made at `created_ns`, sealed, not yet scored.
    #[inline]
    pub(super) fn new(id: u64, created_ns: u64) -> Order {
        let (account, amount_cents) = derived(id);
        let mut order = Order { id, account, amount_cents, created_ns, risk: 0, check: 0 };
        order.check = seal(&order);
        order
    }

    /// The key that routes it: its account.
    #[inline]
    pub(super) fn key(order: &Order) -> u64 {
        order.account
    }
}

/// Account and amount of order `id`.
#[inline]
fn derived(id: u64) -> (u64, i64) {
    let h = mix(id);
    // Amounts from -500.00 to +9,499.99: mostly buys, some refunds.
    (h % ACCOUNTS, ((h >> 20) % 1_000_000) as i64 - 50_000)
}

/// The producer's seal over id, account, amount and creation time.
#[inline]
pub(super) fn seal(order: &Order) -> u64 {
    let mut h = mix(order.id ^ 0x5348_4f41_4c44_454d);
    h = mix(h ^ order.account);
    h = mix(h ^ order.amount_cents as u64);
    mix(h ^ order.created_ns)
}

/// What the risk stage computes for an order: a score from 0 to 999 that grows with the
/// amount, varied per account. A few rounds of mixing stand in for real work.
#[inline]
pub(super) fn risk_score(account: u64, amount_cents: i64) -> u64 {
    let mut h = account;
    for round in 0..8u64 {
        h = mix(h ^ round.wrapping_add(amount_cents as u64));
    }
    let size = amount_cents.unsigned_abs() / 1_000; // tens of units
    (size * 3 + h % 200).min(999)
}

/// splitmix64's finaliser.
#[inline]
pub(super) fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One bit per order id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct IdSet {
    words: Vec<u64>,
    bits: u64,
}

impl IdSet {
    /// An empty set for ids `0..bits`.
    pub(super) fn new(bits: u64) -> IdSet {
        IdSet { words: vec![0; bits.div_ceil(64) as usize], bits }
    }

    /// A set from its words (as [`IdSet::words`] gave them); `None` when the count does not
    /// fit `bits` or a bit past `bits` is set.
    pub(super) fn from_words(words: Vec<u64>, bits: u64) -> Option<IdSet> {
        if words.len() as u64 != bits.div_ceil(64) {
            return None;
        }
        let tail = bits % 64;
        if tail != 0 && words.last().is_some_and(|w| w >> tail != 0) {
            return None;
        }
        Some(IdSet { words, bits })
    }

    /// Ids the set is for.
    pub(super) fn bits(&self) -> u64 {
        self.bits
    }

    /// The words, id `i` at bit `i % 64` of word `i / 64`.
    pub(super) fn words(&self) -> &[u64] {
        &self.words
    }

    /// Adds `id`; false when it was there already. Ids past the end are refused (false).
    #[inline]
    pub(super) fn insert(&mut self, id: u64) -> bool {
        if id >= self.bits {
            return false;
        }
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let fresh = self.words[word] & bit == 0;
        self.words[word] |= bit;
        fresh
    }

    /// Adds every id of `other` (of the same size; a smaller one is read as far as it goes).
    pub(super) fn union_with(&mut self, other: &IdSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Ids in the set.
    pub(super) fn len(&self) -> u64 {
        self.words.iter().map(|w| w.count_ones() as u64).sum()
    }
}

/// What checking every record of the topic found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tally {
    /// Orders the producer made.
    pub(super) events: u64,
    /// Records read.
    pub(super) records: u64,
    /// Orders read intact, each id once.
    pub(super) intact: u64,
    /// Ids read more than once (counted per extra copy).
    pub(super) duplicated: u64,
    /// Records whose payload is not an intact, scored order in its right partition.
    pub(super) corrupt: u64,
    /// Orders of an account read after an order of the same account with a higher id.
    pub(super) reordered: u64,
    /// Wrapping sum of the seals of the intact orders (compared with the producer's).
    pub(super) seal_sum: u64,
    /// The first problem seen, for the error message.
    pub(super) first_problem: Option<String>,
    seen: IdSet,
    last_id: Vec<u64>,
}

impl Tally {
    /// A tally for `events` orders over [`ACCOUNTS`] accounts.
    pub(super) fn new(events: u64) -> Tally {
        Tally {
            events,
            records: 0,
            intact: 0,
            duplicated: 0,
            corrupt: 0,
            reordered: 0,
            seal_sum: 0,
            first_problem: None,
            seen: IdSet::new(events),
            last_id: vec![u64::MAX; ACCOUNTS as usize],
        }
    }

    /// Ids never read intact.
    pub(super) fn lost(&self) -> u64 {
        self.events - self.intact
    }

    /// Checks one record: its partition, its key, and its payload read as an order (`None`
    /// when the payload is not one: wrong size or alignment).
    pub(super) fn add(&mut self, partition: u32, partitions: u32, offset: u64, key: u64, order: Option<&Order>) {
        self.records += 1;
        let Some(order) = order else {
            return self.problem(partition, offset, "the payload is not a 48-byte order");
        };
        if order.id >= self.events {
            return self.problem(partition, offset, "an id the producer never made");
        }
        if order.check != seal(order) {
            return self.problem(partition, offset, "the seal does not match the fields");
        }
        if (order.account, order.amount_cents) != derived(order.id) {
            return self.problem(partition, offset, "account or amount differ from what the producer made");
        }
        if order.risk != risk_score(order.account, order.amount_cents) {
            return self.problem(partition, offset, "the risk stage's score is missing or wrong");
        }
        if key != order.account || partition != partition_for_key(order.account, partitions) {
            return self.problem(partition, offset, "the record's key or partition is not the order's account's");
        }
        if !self.seen.insert(order.id) {
            self.duplicated += 1;
            return;
        }
        self.intact += 1;
        self.seal_sum = self.seal_sum.wrapping_add(order.check);
        let last = &mut self.last_id[order.account as usize];
        if *last != u64::MAX && *last > order.id {
            self.reordered += 1;
        }
        *last = order.id;
    }

    /// Counts a record that could not be read at all (a log error ended its partition).
    pub(super) fn unreadable(&mut self, partition: u32, offset: u64, why: &str) {
        self.problem(partition, offset, why);
    }

    fn problem(&mut self, partition: u32, offset: u64, why: &str) {
        self.corrupt += 1;
        if self.first_problem.is_none() {
            self.first_problem = Some(format!("partition {partition} offset {offset}: {why}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(id: u64, created_ns: u64) -> Order {
        let mut o = Order::new(id, created_ns);
        o.risk = risk_score(o.account, o.amount_cents);
        o
    }

    fn add(t: &mut Tally, o: &Order) {
        t.add(partition_for_key(o.account, 4), 4, 0, o.account, Some(o));
    }

    #[test]
    fn orders_are_derived_from_their_id_and_sealed() {
        assert_eq!(ORDER_BYTES, 48);
        let a = Order::new(7, 1_000);
        assert_eq!(a, Order::new(7, 1_000));
        assert_eq!(a.check, seal(&a));
        assert!(a.account < ACCOUNTS);
        assert!((-50_000..950_000).contains(&a.amount_cents));
        assert_ne!(seal(&a), seal(&Order::new(7, 1_001)), "the seal covers the creation time");
        assert_ne!(Order::new(8, 1_000).check, a.check);
        // Every field but risk and check changes the seal.
        for flip in 0..4 {
            let mut b = a;
            match flip {
                0 => b.id ^= 1,
                1 => b.account ^= 1,
                2 => b.amount_cents ^= 1,
                _ => b.created_ns ^= 1,
            }
            assert_ne!(seal(&b), a.check, "field {flip}");
        }
        let r = risk_score(a.account, a.amount_cents);
        assert!(r <= 999);
        assert_eq!(r, risk_score(a.account, a.amount_cents));
        // The bytes are the fields in order, little-endian on this platform.
        let bytes = bytemuck::bytes_of(&a);
        assert_eq!(bytes.len(), ORDER_BYTES);
        assert_eq!(u64::from_ne_bytes(bytes[..8].try_into().expect("8 bytes")), 7);
        assert_eq!(bytemuck::try_pod_read_unaligned::<Order>(bytes), Ok(a));
    }

    #[test]
    fn id_sets_count_and_refuse_what_does_not_fit() {
        let mut s = IdSet::new(130);
        assert!(s.insert(0) && s.insert(129) && !s.insert(129) && !s.insert(130));
        assert_eq!(s.len(), 2);
        let mut t = IdSet::new(130);
        t.insert(5);
        t.insert(129);
        s.union_with(&t);
        assert_eq!(s.len(), 3);
        let back = IdSet::from_words(s.words().to_vec(), 130).expect("round trip");
        assert_eq!(back, s);
        assert!(IdSet::from_words(vec![0; 2], 130).is_none(), "too few words");
        assert!(IdSet::from_words(vec![0, 0, 1 << 2], 130).is_none(), "a bit past the end");
    }

    #[test]
    fn a_clean_topic_tallies_intact_with_the_producers_seal_sum() {
        let mut t = Tally::new(100);
        let mut sum = 0u64;
        for id in 0..100 {
            let o = scored(id, 1_000 + id);
            sum = sum.wrapping_add(o.check);
            add(&mut t, &o);
        }
        assert_eq!((t.records, t.intact, t.lost(), t.duplicated, t.corrupt, t.reordered), (100, 100, 0, 0, 0, 0));
        assert_eq!(t.seal_sum, sum);
        assert!(t.first_problem.is_none());
    }

    #[test]
    fn lost_duplicated_corrupt_and_reordered_orders_are_counted() {
        let mut t = Tally::new(10);
        // 0..10 but 3 missing, 4 twice, 5 altered, 6 unscored, 7 under a wrong key.
        for id in [0u64, 1, 2, 4, 4] {
            add(&mut t, &scored(id, 9));
        }
        let mut altered = scored(5, 9);
        altered.amount_cents += 1;
        add(&mut t, &altered);
        add(&mut t, &Order::new(6, 9));
        let wrong_key = scored(7, 9);
        t.add(partition_for_key(wrong_key.account, 4), 4, 0, wrong_key.account ^ 1, Some(&wrong_key));
        t.add(0, 4, 0, 0, None);
        add(&mut t, &scored(10, 9)); // an id past the end
        add(&mut t, &scored(9, 9));
        add(&mut t, &scored(8, 9));
        assert_eq!(t.records, 12);
        assert_eq!(t.intact, 6, "0 1 2 4 8 9");
        assert_eq!(t.lost(), 4, "3 5 6 7");
        assert_eq!(t.duplicated, 1);
        assert_eq!(t.corrupt, 5);
        assert!(t.first_problem.as_deref().is_some_and(|p| p.contains("seal")), "{:?}", t.first_problem);
        // An account's later order read before its earlier one is out of order.
        let same_account = (0..10_000u64).filter(|&i| derived(i).0 == derived(9).0).take(2).collect::<Vec<_>>();
        let mut r = Tally::new(10_000);
        add(&mut r, &scored(same_account[1], 1));
        add(&mut r, &scored(same_account[0], 1));
        assert_eq!((r.intact, r.reordered), (2, 1));
    }
}
