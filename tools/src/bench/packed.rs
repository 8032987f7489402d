//! A packed batch of mixed lengths against the same batch padded to its longest: whole models
//! (the layer's family at a given depth, 125m width, weights from a seed), both forms timed in
//! the same run, tokens per second counting only the real tokens.

use std::time::Instant;

use anyhow::Result;
use serde_json::{json, Value};
use tttc_ir::Tensor;

use super::Layer;
use tttc_frontends::rng::SplitMix64;
use tttc_runtime::packed::PackedRunner;
use tttc_runtime::{Backend, Executable};

pub struct PackedRequest {
    pub layers: Vec<Layer>,
    pub depth: usize,
    /// Sequence lengths, drawn from a seeded generator between `min_len` and `max_len`.
    pub sequences: usize,
    pub min_len: usize,
    pub max_len: usize,
    pub backend: &'static dyn Backend,
    pub reps: usize,
}

pub struct PackedTiming {
    pub layer: Layer,
    pub lengths: Vec<usize>,
    /// Median seconds per call: packed, then padded.
    pub packed_s: f64,
    pub padded_s: f64,
}

impl PackedTiming {
    pub fn tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    pub fn to_json(&self) -> Value {
        json!({"kind": "packed", "layer": self.layer.model_name(), "lengths": self.lengths, "tokens": self.tokens(),
               "packed_s": self.packed_s, "padded_s": self.padded_s,
               "packed_tokens_per_s": self.tokens() as f64 / self.packed_s, "padded_tokens_per_s": self.tokens() as f64 / self.padded_s})
    }
}

/// The lengths a packed benchmark uses: `n` draws between `min` and `max` (inclusive), seeded.
pub fn lengths(n: usize, min: usize, max: usize) -> Vec<usize> {
    let mut rng = SplitMix64::keyed(0, "packed lengths");
    (0..n).map(|_| min + (rng.next_u64() % (max - min + 1) as u64) as usize).collect()
}

pub fn packed(req: &PackedRequest, mut report: impl FnMut(&PackedTiming)) -> Result<Vec<PackedTiming>> {
    anyhow::ensure!(req.sequences > 0 && req.min_len > 0 && req.min_len <= req.max_len, "the packed benchmark needs sequences of 1 ≤ min ≤ max tokens");
    let lengths = lengths(req.sequences, req.min_len, req.max_len);
    let longest = *lengths.iter().max().expect("at least one sequence");
    let mut all = Vec::new();
    for &layer in &req.layers {
        let config = layer.model_config(req.depth)?;
        let builder = tttc_frontends::build(&config)?;
        let weights = tttc_frontends::init::initialise(&builder, 0);
        let vocab = config.vocab_size() as i64;
        let model = tttc_frontends::Model { config, config_json: Value::Null, builder, weights };
        let token = |i: usize, k: usize| ((i * 7919 + k * 104_729) as i64) % vocab;
        let packed_ids: Vec<i64> = lengths.iter().enumerate().flat_map(|(k, &len)| (0..len).map(move |i| token(i, k))).collect();
        let mut cu = vec![0i64];
        for &len in &lengths {
            cu.push(cu.last().expect("starts at 0") + len as i64);
        }
        // Padded: every sequence followed by token 0 up to the longest.
        let padded_ids: Vec<i64> = lengths.iter().enumerate().flat_map(|(k, &len)| (0..longest).map(move |i| if i < len { token(i, k) } else { 0 })).collect();
        let (ids, cu) = (Tensor::i64(vec![1, packed_ids.len()], packed_ids), Tensor::i64(vec![cu.len()], cu));
        let padded = Tensor::i64(vec![lengths.len(), longest], padded_ids);
        let time = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
            f()?; // compiles and warms up
            let mut t: Vec<f64> = (0..req.reps)
                .map(|_| {
                    let start = Instant::now();
                    f().map(|_| start.elapsed().as_secs_f64())
                })
                .collect::<Result<_>>()?;
            t.sort_by(f64::total_cmp);
            Ok(t[t.len() / 2])
        };
        // Both compiled once; the timed calls execute only.
        let runner = PackedRunner::new(&model, false)?;
        let whole = Executable::new(tttc_passes::compile(&model.builder.g)?);
        let packed_s = time(&|| runner.run(&model, &ids, &cu, req.backend).map(|_| ()))?;
        let padded_s = time(&|| whole.run(&model.weights, &padded, req.backend).map(|_| ()))?;
        let t = PackedTiming { layer, lengths: lengths.clone(), packed_s, padded_s };
        report(&t);
        all.push(t);
    }
    Ok(all)
}
