//! A log-linear latency histogram in microseconds: exact below 256 us, then 128 buckets per power of two (relative
//! error under 0.8 %), fixed size (about 36 KiB), no allocation when recording.

/// Values below this are counted exactly.
const EXACT: u64 = 256;
/// Sub-buckets per power of two above `EXACT`.
const SUB: u64 = 128;
/// Powers of two covered above `EXACT` (up to 2^41 us, about 25 days).
const OCTAVES: u64 = 34;
const BUCKETS: usize = (EXACT + OCTAVES * SUB) as usize;

/// Counts of values (microseconds).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
    sum: u128,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let mag = 63 - u64::from(v.leading_zeros()); // >= 8
    let shift = mag - 7; // >= 1
    let sub = v >> shift; // in [128, 256)
    let i = EXACT + (shift - 1) * SUB + (sub - SUB);
    (i as usize).min(BUCKETS - 1)
}

/// The smallest value of bucket `i`.
fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let shift = (i - EXACT) / SUB + 1;
    let sub = (i - EXACT) % SUB + SUB;
    sub << shift
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    /// Counts one value.
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max = self.max.max(us);
        self.sum += u128::from(us);
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The largest value counted (exact).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The mean (exact), 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the lower bound of the bucket holding the ceil(q * count)-th smallest
    /// value, capped by the exact maximum. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut prev = 0;
        for v in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let i = index(v);
            assert!(i >= prev, "{v}");
            prev = i;
            let lo = lower_bound(i);
            assert!(lo <= v, "{v} {lo}");
            if v < 1 << 40 {
                assert!((v - lo) as f64 <= v as f64 / 128.0, "{v} {lo}");
            }
        }
    }

    #[test]
    fn quantiles_of_known_values() {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.count(), 1000);
        assert_eq!(h.quantile(0.5), 500);
        assert_eq!(h.quantile(0.0), 1);
        assert_eq!(h.max(), 1000);
        // 990 lies in a bucket 4 wide starting at 988.
        assert_eq!(h.quantile(0.99), 988);
        assert_eq!(h.quantile(1.0), 1000);
        assert!((h.mean() - 500.5).abs() < 1e-9);
        assert_eq!(Histogram::new().quantile(0.99), 0);
    }
}
