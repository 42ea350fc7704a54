//! The latency histogram every timing path records into: `hdrhistogram` with 3 significant
//! figures over 1 ns .. 1 hour; recording never allocates after construction.

/// A latency histogram in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: hdrhistogram::Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram covering 1 ns to one hour.
    pub fn new() -> LatencyHistogram {
        // Fixed, valid bounds (1 <= low, high >= 2 * low, 3 significant figures): this
        // constructor cannot fail.
        let hist = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000_000, 3)
            .expect("constant histogram bounds are valid");
        LatencyHistogram { hist }
    }

    /// Records one value in ns (clamped into range).
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.max(1));
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at quantile `q` (0.0..=1.0), in ns; 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    /// Largest value recorded, in ns.
    pub fn max_ns(&self) -> u64 {
        self.hist.max()
    }

    /// Mean in ns.
    pub fn mean_ns(&self) -> f64 {
        self.hist.mean()
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &LatencyHistogram) {
        let _ = self.hist.add(&other.hist);
    }

    /// The underlying histogram (for exporters that walk its buckets).
    #[cfg(feature = "metrics")]
    pub(crate) fn hdr(&self) -> &hdrhistogram::Histogram<u64> {
        &self.hist
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_follow_the_values() {
        let mut h = LatencyHistogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 1000);
        let p50 = h.quantile_ns(0.5);
        assert!((499_000..=501_000).contains(&p50), "{p50}");
        assert!(h.quantile_ns(0.99) >= 989_000);
        let mut other = LatencyHistogram::new();
        other.record(5);
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        assert_eq!(LatencyHistogram::default().quantile_ns(0.5), 0);
    }
}
