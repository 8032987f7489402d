//! splitmix64: a small generator that is stable across versions (unlike a library's default
//! generator), so seeded weights and training batches are the same on every machine and release.

pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// A stream keyed by a seed and a name (one per parameter, so adding a layer does not change
    /// the others).
    pub fn keyed(seed: u64, name: &str) -> SplitMix64 {
        let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
        for byte in name.bytes() {
            h = (h ^ byte as u64).wrapping_mul(0x1000_0000_01B3);
        }
        SplitMix64(h)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
