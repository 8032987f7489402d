//! Weights for a model without a weights file, drawn from a seed the way the references
//! initialise them (normal projections and embeddings, unit norms, zero biases, Mamba's special
//! `A_log` and time-step bias). Each parameter has its own stream, keyed by seed and name, so
//! adding a layer does not change the others.

use tttc_ir::Tensor;

use crate::builder::{Init, ModelBuilder};
use crate::rng::SplitMix64;
use crate::weights::Weights;

pub fn initialise(b: &ModelBuilder, seed: u64) -> Weights {
    let mut out = Weights::new();
    for arg in b.g.params() {
        let shape: Vec<usize> = b.g.ty(arg.value).shape.iter().map(|d| d.as_const().expect("parameters have static shapes")).collect();
        let n: usize = shape.iter().product();
        let mut rng = SplitMix64::keyed(seed, &arg.name);
        let init = b.inits.get(&arg.name).cloned().unwrap_or(Init::Zeros);
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal { std } => (0..n).map(|_| (rng.normal() * std) as f32).collect(),
            Init::Uniform { bound } => (0..n).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect(),
            Init::LogIndex => {
                let last = shape.last().copied().unwrap_or(1);
                (0..n).map(|i| ((i % last + 1) as f32).ln()).collect()
            }
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
