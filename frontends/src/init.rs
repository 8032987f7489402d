//! Weights for a model without a weights file, drawn from a seed the way the references
//! initialise them (normal projections and embeddings, unit norms, zero biases, Mamba's special
//! `A_log` and time-step bias). Each parameter has its own stream, keyed by seed and name, so
//! adding a layer does not change the others.

use tttc_ir::Tensor;

use crate::builder::{Init, ModelBuilder};
use crate::weights::Weights;

pub fn initialise(b: &ModelBuilder, seed: u64) -> Weights {
    let mut out = Weights::new();
    for arg in b.g.params() {
        let shape: Vec<usize> = b.g.ty(arg.value).shape.iter().map(|d| d.as_const().expect("parameters have static shapes")).collect();
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(seed, &arg.name);
        let init = b.inits.get(&arg.name).cloned().unwrap_or(Init::Zeros);
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            Init::Uniform { bound } => (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect(),
            Init::Values(v) => v,
            Init::InverseSoftplusTimeStep { min, max, floor } => (0..n)
                .map(|_| {
                    let dt = (rng.uniform() * (max.ln() - min.ln()) + min.ln()).exp().max(floor);
                    (dt + (-(-dt).exp_m1()).ln()) as f32
                })
                .collect(),
        };
        out.insert(arg.name.clone(), Tensor::f32(shape, values));
    }
    out
}

/// splitmix64: small, fast and stable across versions (unlike a library's default generator).
struct Rng(u64);

impl Rng {
    fn new(seed: u64, name: &str) -> Rng {
        let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
        for byte in name.bytes() {
            h = (h ^ byte as u64).wrapping_mul(0x1000_0000_01B3);
        }
        Rng(h)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}
