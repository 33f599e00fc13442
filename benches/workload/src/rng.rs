//! A small, self-contained PRNG (xoshiro256++ seeded through SplitMix64).
//!
//! Implemented here rather than taken from a crate so that the workload bytes for a given
//! `--seed` never change when a dependency is upgraded. Only integer and basic IEEE
//! arithmetic is used (no libm), so results are identical on every platform.

/// Lowercase hex digits.
pub const HEX: &[u8; 16] = b"0123456789abcdef";

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256++ generator.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator seeded from one 64-bit value.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        Self {
            s: [
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
                splitmix64(&mut x),
            ],
        }
    }

    /// An independent stream for `(seed, parts…)`, e.g. `(seed, db, day)`.
    pub fn derive(seed: u64, parts: &[u64]) -> Self {
        let mut h = seed ^ 0xC0FF_EE00_CA1B_0001;
        for &p in parts {
            let mut x = h ^ p.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            h = splitmix64(&mut x);
        }
        Self::new(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift (bias < 2^-40 for our sizes).
    #[allow(clippy::cast_possible_truncation)] // the result is < n, which is a usize
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        let span = hi.abs_diff(lo).saturating_add(1);
        let r = ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as u64;
        lo.wrapping_add_unsigned(r)
    }

    /// Uniform in `lo..=hi` as a usize.
    pub fn urange(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn frange(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Fills `out` with random lowercase hex digits.
    pub fn fill_hex(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(16) {
            let mut v = self.next_u64();
            for b in chunk {
                *b = HEX[(v & 15) as usize];
                v >>= 4;
            }
        }
    }

    /// `n` random lowercase hex digits.
    pub fn hex(&mut self, n: usize) -> String {
        let mut buf = vec![0u8; n];
        self.fill_hex(&mut buf);
        buf.into_iter().map(char::from).collect()
    }

    /// A CouchDB-style id / rev hash: 32 lowercase hex digits.
    pub fn hex32(&mut self) -> [u8; 32] {
        let mut buf = [0u8; 32];
        self.fill_hex(&mut buf);
        buf
    }

    /// A dashed UUID (8-4-4-4-12), as edx-submissions uses.
    pub fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Rounds `x >= 0` to an integer count, up with probability `frac(x)`, so small
    /// databases still see the expected churn on average.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // x is small and >= 0
    pub fn round_prob(&mut self, x: f64) -> usize {
        let x = x.max(0.0);
        let base = x.floor();
        let extra = usize::from(self.f64() < x - base);
        base as usize + extra
    }

    /// Picks `k` distinct indices out of `0..n` (partial Fisher–Yates).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let k = k.min(n);
        let mut idx: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below(n - i);
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::derive(7, &[1, 2]);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::derive(7, &[1, 2]);
                move |_| r.next_u64()
            })
            .collect();
        let c: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::derive(7, &[2, 1]);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn ranges_stay_in_bounds() {
        let mut r = Rng::new(3);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let x = r.range(-5, 5);
            assert!((-5..=5).contains(&x));
            let f = r.f64();
            assert!((0.0..1.0).contains(&f));
        }
        let s = r.sample_indices(100, 30);
        let mut d = s.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), 30);
    }
}
