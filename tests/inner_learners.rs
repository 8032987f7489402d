//! TTT inner learners built from parts (`ttt_inner`, docs/model-toml.md): each learner builds the
//! weights its spec names, runs for T < b, T not a multiple of b and several mini-batch sizes, is
//! causal across mini-batch boundaries, freezes when the learning rate is 0, and matches an
//! independent float64 implementation of SPEC §2 written in this file (checked itself against the
//! reference vectors). The presets written out in full give the reference models exactly; bad
//! specs stop with a one-line error naming the key.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tttc_frontends::Mode;

use safetensors::Dtype;
use serde_json::{json, Value};

/// Inner learners beyond the reference's linear and mlp.
fn learners() -> Vec<(&'static str, Value)> {
    vec![
        ("linear-nobias", json!({"bias": false})),
        ("linear-nonorm", json!({"norm": "none"})),
        ("relu3", json!({"widths": [4, 2], "activation": "relu"})),
        ("silu2-noresidual", json!({"widths": [4], "activation": "silu", "residual": false})),
        ("mlp-w2-nobias", json!({"widths": [2], "bias": false})),
        ("bare-silu3", json!({"widths": [1, 3], "activation": "silu", "bias": false, "residual": false, "norm": "none"})),
        ("geglu", json!({"widths": [2], "glu": true})),
        ("relu-fractional", json!({"widths": [1.5], "activation": "relu"})),
        ("swiglu-dot", lact_learner()),
    ]
}

/// LaCT's inner optimizer from parts: per chunk (the key is set by the caller), a learning rate
/// per matrix, momentum, Muon and post-norm renormalisation.
fn lact_optimizer() -> Value {
    json!({"learning_rates": "per_matrix", "momentum": true, "muon": true, "renormalize": "post"})
}

/// LaCT's learner and optimizer from parts, per chunk: its fast-weight layer's inner loop.
fn lact_parts() -> Value {
    let mut inner = lact_learner();
    inner.as_object_mut().unwrap().extend(lact_optimizer().as_object().unwrap().clone());
    inner["update"] = json!("per_chunk");
    inner
}

fn without_muon(mut inner: Value) -> Value {
    inner["muon"] = json!(false);
    inner
}

/// LaCT's fast-weight learner from parts: `f(x) = (silu(x G) ⊙ (x W1)) W2`, no bias, residual or
/// norm, and the dot-product loss `−v · f(k)`.
fn lact_learner() -> Value {
    json!({"widths": [2], "activation": "silu", "glu": true, "bias": false, "residual": false, "norm": "none", "loss": "dot_product"})
}

/// The learners above and the two presets (as `ttt_layer_type`, with no `ttt_inner`).
fn learners_and_presets() -> Vec<(&'static str, Value)> {
    let mut v = vec![("preset-linear", Value::Null), ("preset-mlp", Value::Null)];
    v.extend(learners());
    v
}

/// A small TTT config (d = 8) with the inner learner `inner` (`null`: none; the name decides
/// the preset) and `extra` keys.
fn config(name: &str, inner: &Value, extra: Value) -> Value {
    let mut c = json!({"model_type": "ttt", "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "vocab_size": 13, "mini_batch_size": 4});
    let m = c.as_object_mut().unwrap();
    if name == "preset-mlp" {
        m.insert("ttt_layer_type".into(), json!("mlp"));
    }
    if !inner.is_null() {
        m.insert("ttt_inner".into(), inner.clone());
    }
    m.extend(extra.as_object().unwrap().clone());
    c
}

fn write_model(dir: &Path, config: &Value) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    dir.to_path_buf()
}

fn ids_for(b: usize, t: usize, vocab: usize, salt: usize) -> Vec<i64> {
    (0..b * t).map(|k| ((k * 7 + salt * 5 + 3) % vocab) as i64).collect()
}

/// Runs `tttc run` on `ids` `[b, t]`; returns logits and, when t > 1, the loss.
fn run(model: &Path, ids: &[i64], b: usize, t: usize, tag: &str) -> (Array, Option<f32>) {
    run_on(model, ids, b, t, tag, "cpu")
}

/// [`run`] on `backend`.
fn run_on(model: &Path, ids: &[i64], b: usize, t: usize, tag: &str, backend: &str) -> (Array, Option<f32>) {
    let input = model.join(format!("in-{tag}.safetensors"));
    let out = model.join(format!("out-{tag}.safetensors"));
    write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![b, t], i64_bytes(ids))]);
    let r = tttc(&["run", p(model), "--input", p(&input), "--output", p(&out), "--backend", backend]);
    assert!(r.status.success(), "{} ({tag}): {}", model.display(), String::from_utf8_lossy(&r.stderr));
    let mut got = read(&out);
    let loss = got.remove("loss").map(|l| l.f32[0]);
    (got.remove("logits").unwrap(), loss)
}

/// Rows `..n` of every sequence of `[b, t, v]` logits.
fn first_positions(x: &Array, n: usize) -> Vec<f32> {
    let (b, t, v) = (x.shape[0], x.shape[1], x.shape[2]);
    (0..b).flat_map(|i| x.f32[i * t * v..(i * t + n) * v].to_vec()).collect()
}

fn max_abs(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &a| m.max(a.abs()))
}

// ---------------------------------------------------------------------------------------------
// Structure

/// `(name → shape)` of a model's parameters.
fn params(model: &Path) -> BTreeMap<String, Vec<usize>> {
    let b = tttc_frontends::load_structure(model).unwrap();
    b.g.params().map(|a| (a.name.clone(), b.g.ty(a.value).shape.iter().map(|d| d.as_const().unwrap()).collect())).collect()
}

#[test]
fn learners_have_the_weights_their_spec_names() {
    let dir = scratch("inner_structure");
    let (heads, d) = (2usize, 8usize);
    for (name, inner) in learners_and_presets() {
        let c = config(name, &inner, json!({}));
        let model = write_model(&dir.join(name), &c);
        let spec = reference::Spec::from_config(&c);
        let got = params(&model);
        for layer in 0..2 {
            let s = format!("model.layers.{layer}.seq_modeling_block.");
            let block: BTreeMap<&str, &Vec<usize>> = got.iter().filter_map(|(n, sh)| n.strip_prefix(&s).map(|k| (k, sh))).collect();
            let mut want: BTreeMap<String, Vec<usize>> = BTreeMap::new();
            for (tensor, rows, cols, _) in spec.tensors(d) {
                want.insert(tensor, vec![heads, rows, cols]);
            }
            if spec.norm {
                want.insert("ttt_norm_weight".into(), vec![heads, d]);
                want.insert("ttt_norm_bias".into(), vec![heads, d]);
            }
            let inner_names = |k: &str| k.starts_with('W') || (k.starts_with('b') && (k.len() == 2 || k.ends_with("_gate"))) || k.starts_with("ttt_norm");
            let have: BTreeMap<String, Vec<usize>> = block.iter().filter(|(k, _)| inner_names(k)).map(|(k, sh)| (k.to_string(), (*sh).clone())).collect();
            assert_eq!(have, want, "{name}: inner weights of layer {layer}");
        }
        let graph = tttc_frontends::load_structure(&model).unwrap().g;
        tttc_ir::verify(&graph).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let text = tttc_ir::text::print(&graph);
        assert_eq!(tttc_ir::text::parse(&text).unwrap(), graph, "{name}: IR does not round-trip");
    }
}

// ---------------------------------------------------------------------------------------------
// Running: shapes, finiteness, causality across mini-batches

/// Every learner for mini-batch sizes 1, 3, 4 and 16 on T = 13 (not a multiple of 3 or 4, less
/// than 16): finite logits `[B, T, V]` and loss; every prefix (T = 1, 2, b−1, b, b+1, 2b+1) gives
/// the full run's first positions, so the state is handed over correctly between mini-batches.
#[test]
fn learners_run_and_are_causal_across_mini_batches() {
    let dir = scratch("inner_causal");
    let (bsz, t, vocab) = (2usize, 13usize, 13usize);
    for (i, (name, inner)) in learners_and_presets().into_iter().enumerate() {
        for mb in [1usize, 3, 4, 16] {
            // Alternate the backbone options so the learners meet each of them.
            let extra = if (i + mb) % 2 == 0 {
                json!({"mini_batch_size": mb, "pre_conv": true, "share_qk": true, "use_gate": true})
            } else {
                json!({"mini_batch_size": mb})
            };
            let model = write_model(&dir.join(format!("{name}-b{mb}")), &config(name, &inner, extra));
            let ids = ids_for(bsz, t, vocab, i);
            let (full, loss) = run(&model, &ids, bsz, t, "full");
            assert_eq!(full.shape, vec![bsz, t, vocab], "{name} b={mb}");
            assert!(full.f32.iter().all(|x| x.is_finite()), "{name} b={mb}: logits not finite");
            let loss = loss.expect("loss for T > 1");
            assert!(loss.is_finite() && loss > 0.0, "{name} b={mb}: loss {loss}");

            let mut lengths = vec![1, 2, mb.saturating_sub(1), mb, mb + 1, 2 * mb + 1];
            lengths.retain(|&n| n >= 1 && n < t);
            lengths.sort();
            lengths.dedup();
            for n in lengths {
                let cut: Vec<i64> = (0..bsz).flat_map(|s| ids[s * t..s * t + n].to_vec()).collect();
                let (prefix, loss) = run(&model, &cut, bsz, n, &format!("t{n}"));
                assert_eq!(prefix.shape, vec![bsz, n, vocab], "{name} b={mb} T={n}");
                assert_eq!(loss.is_some(), n > 1, "{name} b={mb} T={n}: loss present iff T > 1");
                let ratio = parity_ratio(&prefix.f32, &first_positions(&full, n), 1e-5);
                assert!(ratio <= 1.0, "{name} b={mb} T={n}: prefix logits at {ratio:.2}× tolerance of the full run");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The primal form's defining property: the inner model learns only through the learning rate

/// Without convolutions every layer but the TTT layer is per token, and with `ttt_base_lr = 0` the
/// inner model never moves: a token's logits depend only on the token and its position inside its
/// mini-batch, so a sequence repeating with period b repeats its logits. With a learning rate the
/// inner model learns from the first period and the repeat differs. (Random weights of unit
/// scale: with the seeded init's 0.02-scale inner weights some learners learn too little to show.)
#[test]
fn zero_learning_rate_freezes_the_inner_learner() {
    let dir = scratch("inner_frozen");
    let (mb, periods, vocab) = (4usize, 3usize, 13usize);
    let t = mb * periods;
    let pattern = [3i64, 11, 0, 7];
    let ids: Vec<i64> = (0..t).map(|i| pattern[i % mb]).collect();
    for (name, inner) in learners_and_presets() {
        let mut spread = Vec::new();
        for lr in [0.0, 1.0] {
            let c = config(name, &inner, json!({"mini_batch_size": mb, "ttt_base_lr": lr}));
            let model = write_model(&dir.join(format!("{name}-lr{lr}")), &c);
            random_weights(&model); // the seeded init's 0.02-scale inner weights hardly learn without a norm
            let (logits, _) = run(&model, &ids, 1, t, "x");
            let row = |i: usize| &logits.f32[i * vocab..(i + 1) * vocab];
            let scale = max_abs(&logits.f32);
            let worst = (mb..t).map(|i| max_abs(&row(i).iter().zip(row(i - mb)).map(|(a, b)| a - b).collect::<Vec<_>>())).fold(0f32, f32::max);
            spread.push(worst / scale);
        }
        eprintln!("{name}: relative spread of repeated tokens {:.2e} (lr 0), {:.2e} (lr 1)", spread[0], spread[1]);
        assert!(spread[0] <= 1e-6, "{name}: with lr 0 repeated tokens differ by {:.2e} (relative)", spread[0]);
        assert!(spread[1] >= 1e-4, "{name}: with lr 1 the inner learner does not learn ({:.2e})", spread[1]);
    }
}

/// With the learning rate 0, biases stay at their initial zeros: a learner with bias computes the
/// same function as the one without (seeded weights draw each tensor from its own stream, so both
/// have the same W).
#[test]
fn zero_learning_rate_zero_bias_equals_no_bias() {
    let dir = scratch("inner_bias");
    let (bsz, t, vocab) = (2usize, 9usize, 13usize);
    for widths in [json!([]), json!([2]), json!([4, 2])] {
        let mut out = Vec::new();
        for bias in [true, false] {
            let inner = json!({"widths": widths, "activation": "relu", "bias": bias});
            let c = config("x", &inner, json!({"ttt_base_lr": 0.0, "pre_conv": true, "share_qk": true}));
            let model = write_model(&dir.join(format!("w{}-{bias}", widths.as_array().unwrap().len())), &c);
            out.push(run(&model, &ids_for(bsz, t, vocab, 1), bsz, t, "x").0);
        }
        let ratio = parity_ratio(&out[1].f32, &out[0].f32, 1e-6);
        assert!(ratio <= 1.0, "widths {widths}: without bias at {ratio:.2}× of 1e-6 from zero bias");
    }
}

// ---------------------------------------------------------------------------------------------
// An independent float64 implementation of SPEC §2 for any inner learner

/// Deterministic weights for every parameter of `model` (uniform, scaled per kind so that the
/// inner learner matters), written to `model/model.safetensors`.
fn random_weights(model: &Path) {
    let mut tensors = Vec::new();
    for (name, shape) in params(model) {
        let n: usize = shape.iter().product();
        let mut state = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, c| (h ^ c as u64).wrapping_mul(0x100_0000_01B3));
        let mut uniform = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let leaf = name.rsplit('.').next().unwrap();
        let fan_in = *shape.last().unwrap() as f64;
        let (center, spread) = match leaf {
            "weight" if name.contains("norm") => (1.0, 0.2),
            "bias" if name.contains("norm") => (0.0, 0.2),
            "ttt_norm_weight" => (1.0, 0.2),
            "ttt_norm_bias" => (0.0, 0.2),
            "learnable_token_idx" => (0.0, 0.1),
            // The learning rate's, the momentum's and the forgetting's gates.
            l if l.starts_with("learnable_ttt_") => (0.0, 0.5),
            l if l.starts_with('W') => (0.0, (3.0 / shape[1] as f64).sqrt()),
            l if l.starts_with('b') && l.len() == 2 => (0.0, 0.2),
            "weight" if name.contains("conv") => (0.0, 0.5),
            "bias" => (0.0, 0.1),
            "weight" if name.contains("embed") => (0.0, 1.0),
            _ => (0.0, (3.0 / fan_in).sqrt()),
        };
        let data: Vec<u8> = (0..n).flat_map(|_| ((center + spread * uniform()) as f32).to_le_bytes()).collect();
        tensors.push((name, Dtype::F32, shape, data));
    }
    write_raw(&model.join("model.safetensors"), &tensors);
}

/// Every learner (and preset) on random weights, with and without the Mamba-style backbone
/// options, for mini-batch sizes 3 (T = 11 is not a multiple) and 16 (T < b), matches the float64
/// implementation within SPEC §1's bound; the implementation reads exactly the model's parameters.
#[test]
fn learners_match_an_independent_f64_implementation() {
    let dir = scratch("inner_reference");
    let (bsz, t) = (2usize, 11usize);
    let mut report = Vec::new();
    for (i, (name, inner)) in learners_and_presets().into_iter().enumerate() {
        for mb in [3usize, 16] {
            let backbone = if i % 2 == 0 { json!({"pre_conv": true, "share_qk": true, "use_gate": true}) } else { json!({}) };
            let mut extra = json!({"mini_batch_size": mb, "tie_word_embeddings": i % 3 != 0});
            extra.as_object_mut().unwrap().extend(backbone.as_object().unwrap().clone());
            let c = config(name, &inner, extra);
            let model = write_model(&dir.join(format!("{name}-b{mb}")), &c);
            random_weights(&model);
            let ratio = logits_against_f64(&model, &c, &ids_for(bsz, t, 13, i + mb), (bsz, t), name);
            report.push(format!("{name} b={mb}: {ratio:.3}"));
            assert!(ratio <= 1.0, "{name} b={mb}: logits at {ratio:.2}× tolerance of the f64 implementation");
        }
    }
    eprintln!("{}", report.join("\n"));
}

/// `tttc run`'s logits of `model` (config `c`) on `ids` `[b, t]`, as a ratio of SPEC §1's bound
/// to the float64 implementation's, which must read exactly the model's parameters.
fn logits_against_f64(model: &Path, c: &Value, ids: &[i64], (b, t): (usize, usize), name: &str) -> f64 {
    logits_against_f64_on(model, c, ids, (b, t), name, "cpu")
}

/// [`logits_against_f64`] on `backend`.
fn logits_against_f64_on(model: &Path, c: &Value, ids: &[i64], (b, t): (usize, usize), name: &str, backend: &str) -> f64 {
    let (got, _) = run_on(model, ids, b, t, "x", backend);
    let weights = reference::Weights::read(&model.join("model.safetensors"));
    let want = reference::logits(&reference::Config::from_json(c), &weights, ids, b, t);
    let expected: BTreeSet<String> = params(model).into_keys().collect();
    assert_eq!(weights.used(), expected, "{name}: the model's parameters are not those SPEC §2 reads");
    parity_ratio(&got.f32, &want.iter().map(|&x| x as f32).collect::<Vec<_>>(), 1e-5)
}

/// A model in `dir` of `learner` (as [`config`] names it) with the `inner` table, mini-batches of
/// `mb`, the Mamba-style backbone options when `backbone`, and random weights; its config.
fn optimizer_case(dir: &Path, learner: &str, inner: &Value, mb: usize, backbone: bool) -> (PathBuf, Value) {
    let extra = if backbone { json!({"mini_batch_size": mb, "pre_conv": true, "share_qk": true, "use_gate": true}) } else { json!({"mini_batch_size": mb}) };
    let c = config(learner, inner, extra);
    let model = write_model(dir, &c);
    random_weights(&model);
    (model, c)
}

/// The gated inner optimizer (`ttt_inner.momentum` / `forget`, SPEC §2) with each gate alone and
/// both, on a preset, a deeper learner and a gated one with the dot-product loss (LaCT's), for
/// mini-batch sizes 1, 3 and 16, matches the float64
/// implementation's per-token recurrence; the model has the gates' weights and no
/// `learnable_token_idx`.
#[test]
fn gated_optimizers_match_an_independent_f64_implementation() {
    let dir = scratch("inner_gated");
    let (bsz, t) = (2usize, 11usize);
    let gates = [json!({"momentum": true}), json!({"forget": true}), json!({"momentum": true, "forget": true})];
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for (i, ((learner, inner), gate)) in
        [("preset-linear", json!({})), ("relu3", json!({"widths": [4, 2], "activation": "relu"})), ("swiglu-dot", lact_learner())]
            .into_iter()
            .flat_map(|l| gates.iter().map(move |g| (l.clone(), g)))
            .enumerate()
    {
        let mut inner = inner.clone();
        inner.as_object_mut().unwrap().extend(gate.as_object().unwrap().clone());
        for mb in [1usize, 3, 16] {
            let name = format!("{learner}-{}-b{mb}", gate.as_object().unwrap().keys().cloned().collect::<Vec<_>>().join("-"));
            let (model, c) = optimizer_case(&dir.join(&name), learner, &inner, mb, i % 2 == 0);
            let names: BTreeSet<String> = params(&model).into_keys().collect();
            let has = |n: &str| names.iter().any(|p| p.ends_with(n));
            assert!(!has("learnable_token_idx"), "{name}: a gated model has no token scale");
            for g in ["momentum", "forget"] {
                let on = gate.get(g).is_some();
                assert_eq!(has(&format!("learnable_ttt_{g}_weight")) && has(&format!("learnable_ttt_{g}_bias")), on, "{name}: the {g} gate's weights");
            }
            let ratio = logits_against_f64(&model, &c, &ids_for(bsz, t, 13, i + mb), (bsz, t), &name);
            report.push(format!("{name}: {ratio:.3}"));
            if ratio > 1.0 {
                failed.push(format!("{name}: logits at {ratio:.2}× tolerance of the f64 implementation"));
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failed.is_empty(), "{}", failed.join("; "));
}

/// The apply-then-update inner optimizer (`ttt_inner.update = "per_chunk"`) plain and with
/// momentum, forgetting, Muon, post- and pre-norm renormalisation and all of them, on a preset and
/// a deeper learner, for mini-batch sizes 1, 3 and 4, matches the float64 implementation; the
/// model has the gates' weights it needs and no `learnable_token_idx`.
///
/// Newton–Schulz maps a step's singular values σ ≪ 1 to about 500σ: a step of lower rank than
/// its matrix has zero singular values whose rounding it amplifies past any f32 tolerance. The
/// Muon cases therefore take mini-batches as wide as the learner's widest layer (their steps of
/// full rank) and run past one.
#[test]
fn per_chunk_optimizers_match_an_independent_f64_implementation() {
    let dir = scratch("inner_per_chunk");
    let bsz = 2usize;
    let parts = [
        json!({}),
        json!({"momentum": true}),
        json!({"forget": true}),
        json!({"muon": true}),
        json!({"renormalize": "post"}),
        json!({"renormalize": "pre", "momentum": true}),
        json!({"momentum": true, "forget": true, "muon": true, "renormalize": "post"}),
        json!({"learning_rates": "per_matrix"}),
        lact_optimizer(),
    ];
    let mut report = Vec::new();
    let mut failed = Vec::new();
    for (i, ((learner, inner, widest), part)) in
        [("preset-linear", json!({}), 8), ("relu3", json!({"widths": [4, 2], "activation": "relu"}), 32), ("swiglu-dot", lact_learner(), 16)]
            .into_iter()
            .flat_map(|l| parts.iter().map(move |p| (l.clone(), p)))
            .enumerate()
    {
        let mut inner = inner.clone();
        inner.as_object_mut().unwrap().extend(part.as_object().unwrap().clone());
        inner["update"] = json!("per_chunk");
        let muon = part.get("muon").is_some();
        let mb = if muon { widest } else { [1usize, 3, 4][i % 3] };
        let t = if muon { widest + 5 } else { 11 };
        let keys: Vec<String> = part.as_object().unwrap().keys().cloned().collect();
        let name = format!("{learner}-chunk-{}-b{mb}", keys.join("-"));
        let (model, c) = optimizer_case(&dir.join(&name), learner, &inner, mb, i % 2 == 0);
        let shapes = params(&model);
        assert!(!shapes.keys().any(|p| p.ends_with("learnable_token_idx")), "{name}: a per-chunk model has no token scale");
        // One rate per head, or per head and matrix (a layer's and its gate's).
        let matrices = 1 + inner["widths"].as_array().map_or(0, |w| w.len()) * if inner.get("glu").is_some() { 2 } else { 1 };
        let rates = if part.get("learning_rates").is_some() { matrices } else { 1 };
        assert_eq!(shapes["model.layers.0.seq_modeling_block.learnable_ttt_lr_weight"], [2, rates, 16], "{name}");
        let ratio = logits_against_f64(&model, &c, &ids_for(bsz, t, 13, i + mb), (bsz, t), &name);
        report.push(format!("{name}: {ratio:.3}"));
        if ratio > 1.0 {
            failed.push(format!("{name}: logits at {ratio:.2}× tolerance of the f64 implementation"));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failed.is_empty(), "{}", failed.join("; "));
}

/// The apply-then-update optimizer with every part, on the MLP learner, and LaCT's learner and
/// optimizer from parts match the float64 implementation on every backend that runs here.
#[test]
fn per_chunk_optimizer_matches_the_f64_implementation_on_every_backend() {
    let dir = scratch("inner_per_chunk_backends");
    // Muon takes mini-batches as wide as the learner (see the test above): 4·d, 2·d.
    let cases = [
        ("mlp-all", "preset-mlp", json!({"update": "per_chunk", "momentum": true, "forget": true, "muon": true, "renormalize": "pre"}), 37, 32),
        ("lact", "swiglu-dot", lact_parts(), 21, 16),
    ];
    let mut failed = Vec::new();
    for (name, learner, inner, t, mb) in cases {
        let c = config(learner, &inner, json!({"mini_batch_size": mb, "pre_conv": true}));
        let model = write_model(&dir.join(name), &c);
        random_weights(&model);
        for backend in backends() {
            let ratio = logits_against_f64_on(&model, &c, &ids_for(2, t, 13, 5), (2, t), &format!("{name}-{backend}"), backend);
            eprintln!("{name} on {backend}: {ratio:.3}");
            if ratio > 1.0 {
                failed.push(format!("{name} on {backend}: logits at {ratio:.2}× tolerance of the f64 implementation"));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("; "));
}

/// Muon per token (the gated rule, each token's step `S_i` orthogonalised) has no dual form: the
/// dual-form pass says so and keeps the primal form, and the graph the backends take (after the
/// whole pass pipeline), run by the interpreter in f64, matches the float64 implementation within
/// 1e-9 of the largest logit; so do a run continued from a state cut inside a mini-batch and
/// decoding token by token. (A per-token step is of low rank, whose rounding Newton–Schulz
/// amplifies past f32's tolerances: see above.)
#[test]
fn per_token_muon_keeps_the_primal_form_and_matches_in_f64_whole_in_pieces_and_decoded() {
    let dir = scratch("inner_muon_f64");
    let (bsz, t) = (2usize, 11usize);
    let cases = [
        ("preset-linear", json!({"muon": true}), 3),
        ("relu3", json!({"widths": [4, 2], "activation": "relu", "muon": true, "momentum": true, "forget": true}), 4),
        ("preset-mlp", json!({"muon": true, "momentum": true}), 2),
    ];
    for (i, (learner, inner, mb)) in cases.into_iter().enumerate() {
        let name = format!("{learner}-b{mb}");
        let (folder, c) = optimizer_case(&dir.join(&name), learner, &inner, mb, i % 2 == 0);
        let model = tttc_frontends::load(&folder, None).unwrap();
        let expanded = tttc_passes::expand_grads(&model.builder.g).unwrap();
        let (_, reports) = tttc_passes::derive_with_report(&expanded).unwrap();
        let summaries: Vec<String> = reports.iter().map(|r| r.summary()).collect();
        assert!(reports.iter().any(|r| r.per_token_state && r.primal_left), "{name}: the dual-form pass did not keep a primal form: {summaries:?}");
        assert!(summaries.iter().any(|s| s.starts_with("no dual form found: keeping the primal form")), "{name}: {summaries:?}");

        let ids = ids_for(bsz, t, 13, i);
        let weights: BTreeMap<String, tttc_ir::Tensor> =
            model.weights.iter().map(|(n, w)| (n.clone(), tttc_ir::Tensor::f64(w.shape.clone(), w.to_f64().unwrap()))).collect();
        let whole = vec![("input_ids".to_string(), tttc_ir::Tensor::i64(vec![bsz, t], ids.clone()))];
        let got = run_f64(&tttc_passes::compile(&model.builder.g).unwrap(), &weights, whole)["logits"].to_f64().unwrap();
        let want = reference::logits(&reference::Config::from_json(&c), &reference::Weights::read(&folder.join("model.safetensors")), &ids, bsz, t);
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
        let differ = |a: &[f64], b: &[f64]| a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        let err = differ(&got, &want);
        eprintln!("{name}: {:.2e} of the largest logit", err / scale);
        assert!(err <= 1e-9 * scale, "{name}: f64 logits differ by {err:e} (largest {scale:e})");

        // In pieces and decoded: a run cut inside a mini-batch continued from its state, and
        // every token after the cut decoded one by one, give the whole run's logits.
        let cut = mb + 1;
        let rows = |from: usize, to: usize| -> Vec<i64> { (0..bsz).flat_map(|r| ids[r * t + from..r * t + to].to_vec()).collect() };
        let vocab = got.len() / (bsz * t);
        let at = |x: &[f64], len: usize, r: usize, p: usize| x[(r * len + p) * vocab..(r * len + p + 1) * vocab].to_vec();
        let graph = |mode: Mode| tttc_passes::compile(&tttc_frontends::build_for(&model.config, mode).unwrap().g).unwrap();
        let first = run_f64(&graph(Mode::Run), &weights, vec![("input_ids".into(), tttc_ir::Tensor::i64(vec![bsz, cut], rows(0, cut)))]);
        let state = |outs: &BTreeMap<String, tttc_ir::Tensor>| -> Vec<(String, tttc_ir::Tensor)> {
            outs.iter().filter(|(n, _)| n.starts_with("state.")).map(|(n, v)| (n.clone(), v.clone())).collect()
        };
        let position = first["state.position"].to_f64().unwrap()[0] as usize;
        let mut inputs = state(&first);
        inputs.push(("input_ids".into(), tttc_ir::Tensor::i64(vec![bsz, t - cut], rows(cut, t))));
        let second = run_f64(&graph(Mode::Resume { position }), &weights, inputs)["logits"].to_f64().unwrap();
        let mut decoded = state(&first);
        let step = graph(Mode::Step);
        for p in cut..t {
            let mut inputs = decoded.clone();
            inputs.push(("input_ids".into(), tttc_ir::Tensor::i64(vec![bsz, 1], rows(p, p + 1))));
            let outs = run_f64(&step, &weights, inputs);
            let logits = outs["logits"].to_f64().unwrap();
            for r in 0..bsz {
                let err = differ(&at(&logits, 1, r, 0), &at(&got, t, r, p));
                assert!(err <= 1e-9 * scale, "{name}: decoded position {p} differs by {err:e}");
            }
            decoded = state(&outs);
        }
        for r in 0..bsz {
            for p in cut..t {
                let err = differ(&at(&second, t - cut, r, p - cut), &at(&got, t, r, p));
                assert!(err <= 1e-9 * scale, "{name}: the resumed run at position {p} differs by {err:e}");
            }
        }
    }
}

/// Runs `g` in f64 on `inputs` and the parameters `weights`; returns its outputs by name.
fn run_f64(g: &tttc_ir::Graph, weights: &BTreeMap<String, tttc_ir::Tensor>, inputs: Vec<(String, tttc_ir::Tensor)>) -> BTreeMap<String, tttc_ir::Tensor> {
    let inputs: BTreeMap<String, tttc_ir::Tensor> = inputs.into_iter().collect();
    let args: Vec<&tttc_ir::Tensor> = g
        .args
        .iter()
        .map(|a| match a.kind {
            tttc_ir::ArgKind::Input => inputs.get(&a.name).unwrap_or_else(|| panic!("no input {}", a.name)),
            tttc_ir::ArgKind::Param => &weights[&a.name],
        })
        .collect();
    let outs = tttc_ir::run(g, &args, tttc_ir::Precision::F64).unwrap();
    g.outputs.iter().map(|(n, _)| n.clone()).zip(outs).collect()
}

/// A gated model with either gate alone (the reference case has both; `tests/state.rs` and
/// `tests/generate.rs` run it) continues from its state exactly: a sequence run in two pieces
/// through `--state-out` / `--state-in`, cut inside a mini-batch, gives one run's logits, and
/// `tttc generate` gives the logits of one run over the sequence it ends with. So do the
/// apply-then-update optimizers, whose state holds the current mini-batch's step and gates so far.
#[test]
fn inner_optimizers_resume_and_decode_exactly() {
    let dir = scratch("inner_gated_state");
    let (bsz, t) = (2usize, 11usize);
    // With Muon a mini-batch as wide as the learner (see the test above).
    let optimizers = [
        ("momentum", json!({"momentum": true}), json!({"mini_batch_size": 3})),
        ("forget", json!({"forget": true}), json!({"mini_batch_size": 3})),
        ("chunk", json!({"update": "per_chunk", "renormalize": "post"}), json!({"mini_batch_size": 3})),
        ("chunk-all", json!({"update": "per_chunk", "momentum": true, "forget": true, "muon": true, "renormalize": "pre"}), json!({"mini_batch_size": 8})),
        // LaCT's learner with a rate per matrix (Muon's f32 rounding needs wider chunks).
        ("chunk-lact", without_muon(lact_parts()), json!({"mini_batch_size": 3})),
    ];
    for (k, (gate, inner, extra)) in optimizers.into_iter().enumerate() {
        let mb = extra["mini_batch_size"].as_u64().unwrap() as usize;
        let model = write_model(&dir.join(gate), &config(gate, &inner, extra));
        random_weights(&model);
        let ids = ids_for(bsz, t, 13, k);
        let (whole, _) = run(&model, &ids, bsz, t, "whole");
        let rows = |from: usize, to: usize| -> Vec<i64> { (0..bsz).flat_map(|r| ids[r * t + from..r * t + to].to_vec()).collect() };
        // Inside a mini-batch, or at its edge.
        let cut = if k % 2 == 0 { mb + 1 } else { mb };
        let (state, input, out) = (model.join("state.safetensors"), model.join("piece.safetensors"), model.join("piece-out.safetensors"));
        let mut pieces = Vec::new();
        for (from, to) in [(0, cut), (cut, t)] {
            write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![bsz, to - from], i64_bytes(&rows(from, to)))]);
            let mut args = vec!["run", p(&model), "--input", p(&input), "--output", p(&out)];
            args.extend(if from == 0 { ["--state-out", p(&state)] } else { ["--state-in", p(&state)] });
            let r = tttc(&args);
            assert!(r.status.success(), "{gate}: {}", String::from_utf8_lossy(&r.stderr));
            pieces.push(read(&out)["logits"].clone());
        }
        let v = whole.shape[2];
        let chunked: Vec<f32> =
            (0..bsz).flat_map(|r| [&pieces[0], &pieces[1]].map(|x| x.f32[r * x.shape[1] * v..(r + 1) * x.shape[1] * v].to_vec()).concat()).collect();
        let ratio = parity_ratio(&chunked, &whole.f32, 1e-5);
        assert!(ratio <= 1.0, "{gate}: two pieces at {ratio:.2}× tolerance of one run");

        write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![bsz, cut], i64_bytes(&rows(0, cut)))]);
        let new = t - cut;
        let r = tttc(&["generate", p(&model), "--prompt", p(&input), "--max-new-tokens", &new.to_string(), "-o", p(&out)]);
        assert!(r.status.success(), "{gate}: {}", String::from_utf8_lossy(&r.stderr));
        let got = read(&out);
        let (tokens, logits) = (&got["tokens"], &got["logits"]);
        let (all, _) = run(&model, &tokens.i64, bsz, t, "generated");
        let want: Vec<f32> = (0..bsz).flat_map(|r| all.f32[(r * t + cut - 1) * v..(r * t + t - 1) * v].to_vec()).collect();
        // SPEC: generated logits equal a forward pass's within 1e-4 relative to the largest.
        let ratio = parity_ratio(&logits.f32, &want, 1e-4);
        assert!(ratio <= 1.0, "{gate}: generated logits at {ratio:.2}× tolerance of one run");
    }
}

/// The float64 implementation itself reproduces the reference vectors (TTT-Linear with both
/// backbones, TTT-MLP with the Mamba backbone, TTT-Linear with the gated inner optimizer).
#[test]
fn f64_implementation_matches_the_reference_vectors() {
    let gated = repo().join("tests/vectors-gated/ttt-momentum-forget");
    for dir in ["ttt-linear-transformer-backbone", "ttt-linear-mamba-backbone", "ttt-mlp-mamba-backbone"]
        .map(|c| repo().join("tests/vectors").join(c))
        .into_iter()
        .chain([gated])
    {
        let case = dir.file_name().unwrap().to_str().unwrap();
        let c: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        let io = read(&dir.join("io.safetensors"));
        let (ids, logits) = (&io["input_ids"], &io["logits"]);
        let (b, t) = (ids.shape[0], ids.shape[1]);
        // A causal model: a prefix across the first mini-batch boundary keeps the check quick.
        let n = t.min(21);
        let cut: Vec<i64> = (0..b).flat_map(|i| ids.i64[i * t..i * t + n].to_vec()).collect();
        let weights = reference::Weights::read(&dir.join("model.safetensors"));
        let want = reference::logits(&reference::Config::from_json(&c), &weights, &cut, b, n);
        let ratio = parity_ratio(&want.iter().map(|&x| x as f32).collect::<Vec<_>>(), &first_positions(logits, n), 1e-5);
        eprintln!("{case}: f64 implementation at {ratio:.3} of tolerance");
        assert!(ratio <= 1.0, "{case}: the f64 implementation is at {ratio:.2}× tolerance");
    }
}

/// SPEC §2 in plain float64 loops, for any inner learner of the documented `ttt_inner` format. The
/// inner gradients are exact derivatives by forward-mode dual numbers (one pass per parameter),
/// of the loss written as `½‖f(k) − v‖²` — independent of the compiler's autodiff and of how its
/// graph spells the target.
mod reference {
    use super::*;
    use std::cell::RefCell;
    use std::ops::{Add, Div, Mul, Sub};

    pub struct Spec {
        /// Multiples of d: hidden widths ⌊w·d⌋.
        pub widths: Vec<f64>,
        pub bias: bool,
        pub activation: String,
        pub glu: bool,
        pub residual: bool,
        pub norm: bool,
        pub dot_product: bool,
    }

    impl Spec {
        /// `ttt_layer_type`'s preset, then the `ttt_inner` keys over it (docs/model-toml.md).
        pub fn from_config(c: &Value) -> Spec {
            let mlp = c.get("ttt_layer_type").and_then(Value::as_str) == Some("mlp");
            let widths = if mlp { vec![4.0] } else { vec![] };
            let mut s = Spec { widths, bias: true, activation: "gelu_tanh".into(), glu: false, residual: true, norm: true, dot_product: false };
            if let Some(t) = c.get("ttt_inner").and_then(Value::as_object) {
                if let Some(w) = t.get("widths") {
                    s.widths = w.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
                }
                if let Some(b) = t.get("bias") {
                    s.bias = b.as_bool().unwrap();
                }
                if let Some(a) = t.get("activation") {
                    s.activation = a.as_str().unwrap().into();
                }
                if let Some(g) = t.get("glu") {
                    s.glu = g.as_bool().unwrap();
                }
                if let Some(l) = t.get("loss") {
                    s.dot_product = l.as_str().unwrap() == "dot_product";
                }
                if let Some(r) = t.get("residual") {
                    s.residual = r.as_bool().unwrap();
                }
                if let Some(n) = t.get("norm") {
                    s.norm = n.as_str().unwrap() == "layer_norm";
                }
            }
            s
        }

        /// Layer widths `d, widths[0]·d, …, d`.
        pub fn sizes(&self, d: usize) -> Vec<usize> {
            let mut v = vec![d];
            v.extend(self.widths.iter().map(|w| (w * d as f64).floor() as usize));
            v.push(d);
            v
        }

        /// The learner's tensors in order, `(name, rows, cols, matrix)`: per layer `W{l}`
        /// `[in, out]`, `b{l}` `[1, out]` with bias, then with glu on a hidden layer its gate's
        /// `W{l}_gate` and `b{l}_gate` (docs/model-toml.md); `matrix` counts the matrices, a
        /// bias taking its matrix's.
        pub fn tensors(&self, d: usize) -> Vec<(String, usize, usize, usize)> {
            let sizes = self.sizes(d);
            let depth = sizes.len() - 1;
            let mut out = Vec::new();
            let mut matrix = 0;
            for l in 0..depth {
                let (i, o) = (sizes[l], sizes[l + 1]);
                let gates: &[&str] = if self.glu && l + 1 < depth { &["", "_gate"] } else { &[""] };
                for gate in gates {
                    out.push((format!("W{}{gate}", l + 1), i, o, matrix));
                    if self.bias {
                        out.push((format!("b{}{gate}", l + 1), 1, o, matrix));
                    }
                    matrix += 1;
                }
            }
            out
        }
    }

    pub struct Config {
        vocab: usize,
        hidden: usize,
        inter: usize,
        layers: usize,
        heads: usize,
        mb: usize,
        base_lr: f64,
        theta: f64,
        eps: f64,
        pre_conv: bool,
        share_qk: bool,
        use_gate: bool,
        kernel: usize,
        tied: bool,
        spec: Spec,
        /// The gated inner optimizer's gates (`ttt_inner.momentum`, `ttt_inner.forget`).
        momentum: bool,
        forget: bool,
        /// `ttt_inner.update = "per_chunk"`, with `muon` and `renormalize` ("post" / "pre").
        per_chunk: bool,
        muon: bool,
        renormalize: Option<String>,
        /// `ttt_inner.learning_rates = "per_matrix"`.
        lr_per_matrix: bool,
    }

    impl Config {
        pub fn from_json(c: &Value) -> Config {
            let u = |k: &str, d: u64| c.get(k).and_then(Value::as_u64).unwrap_or(d) as usize;
            let f = |k: &str, d: f64| c.get(k).and_then(Value::as_f64).unwrap_or(d);
            let b = |k: &str, d: bool| c.get(k).and_then(Value::as_bool).unwrap_or(d);
            let inner = |k: &str| c.get("ttt_inner").and_then(|t| t.get(k));
            let gate = |k: &str| inner(k).and_then(Value::as_bool).unwrap_or(false);
            Config {
                vocab: u("vocab_size", 0),
                hidden: u("hidden_size", 0),
                inter: u("intermediate_size", 0),
                layers: u("num_hidden_layers", 0),
                heads: u("num_attention_heads", 0),
                mb: u("mini_batch_size", 16),
                base_lr: f("ttt_base_lr", 1.0),
                theta: f("rope_theta", 10000.0),
                eps: f("rms_norm_eps", 1e-6),
                pre_conv: b("pre_conv", false),
                share_qk: b("share_qk", false),
                use_gate: b("use_gate", false),
                kernel: u("conv_kernel", 4),
                tied: b("tie_word_embeddings", true),
                spec: Spec::from_config(c),
                momentum: gate("momentum"),
                forget: gate("forget"),
                per_chunk: inner("update").and_then(Value::as_str) == Some("per_chunk"),
                muon: gate("muon"),
                renormalize: inner("renormalize").and_then(Value::as_str).map(String::from),
                lr_per_matrix: inner("learning_rates").and_then(Value::as_str) == Some("per_matrix"),
            }
        }
    }

    /// Weights in float64, remembering which names were read.
    pub struct Weights {
        map: BTreeMap<String, Vec<f64>>,
        used: RefCell<BTreeSet<String>>,
    }

    impl Weights {
        pub fn read(path: &Path) -> Weights {
            let map = super::read(path).into_iter().map(|(k, v)| (k, v.f32.iter().map(|&x| x as f64).collect())).collect();
            Weights { map, used: RefCell::new(BTreeSet::new()) }
        }

        fn get(&self, name: &str) -> &[f64] {
            self.used.borrow_mut().insert(name.to_string());
            self.map.get(name).unwrap_or_else(|| panic!("no weight {name}"))
        }

        pub fn used(&self) -> BTreeSet<String> {
            self.used.borrow().clone()
        }
    }

    /// A number with a derivative along one direction.
    #[derive(Clone, Copy)]
    struct Dual {
        v: f64,
        d: f64,
    }

    fn c(v: f64) -> Dual {
        Dual { v, d: 0.0 }
    }

    impl Add for Dual {
        type Output = Dual;
        fn add(self, o: Dual) -> Dual {
            Dual { v: self.v + o.v, d: self.d + o.d }
        }
    }
    impl Sub for Dual {
        type Output = Dual;
        fn sub(self, o: Dual) -> Dual {
            Dual { v: self.v - o.v, d: self.d - o.d }
        }
    }
    impl Mul for Dual {
        type Output = Dual;
        fn mul(self, o: Dual) -> Dual {
            Dual { v: self.v * o.v, d: self.d * o.v + self.v * o.d }
        }
    }
    impl Div for Dual {
        type Output = Dual;
        fn div(self, o: Dual) -> Dual {
            Dual { v: self.v / o.v, d: (self.d * o.v - self.v * o.d) / (o.v * o.v) }
        }
    }
    impl Dual {
        fn sqrt(self) -> Dual {
            let r = self.v.sqrt();
            Dual { v: r, d: self.d / (2.0 * r) }
        }
        fn tanh(self) -> Dual {
            let t = self.v.tanh();
            Dual { v: t, d: self.d * (1.0 - t * t) }
        }
        fn exp(self) -> Dual {
            let e = self.v.exp();
            Dual { v: e, d: self.d * e }
        }
    }

    fn activate(name: &str, x: Dual) -> Dual {
        match name {
            "gelu_tanh" => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                c(0.5) * x * (c(1.0) + (c(k) * (x + c(0.044715) * x * x * x)).tanh())
            }
            "silu" => x / (c(1.0) + (c(0.0) - x).exp()),
            "relu" => {
                if x.v >= 0.0 {
                    x
                } else {
                    c(0.0)
                }
            }
            other => panic!("activation {other}"),
        }
    }

    /// The inner learner of one head: its layer sizes and its LayerNorm.
    struct Inner<'a> {
        spec: &'a Spec,
        sizes: Vec<usize>,
        ln: Option<(&'a [f64], &'a [f64])>,
    }

    impl Inner<'_> {
        /// `f(x)` with the flat parameters `p`, the tensors of [`Spec::tensors`] in order, each
        /// row-major (`W1` in×out, `b1`, …).
        fn f(&self, p: &[Dual], x: &[Dual]) -> Vec<Dual> {
            let mut a = x.to_vec();
            let mut off = 0;
            let depth = self.sizes.len() - 1;
            // `a·W + b` with the next tensors of `p`.
            let mut affine = |a: &[Dual], i: usize, o: usize| -> Vec<Dual> {
                let mut z = vec![c(0.0); o];
                for (r, &ar) in a.iter().enumerate() {
                    for (col, zc) in z.iter_mut().enumerate() {
                        *zc = *zc + ar * p[off + r * o + col];
                    }
                }
                off += i * o;
                if self.spec.bias {
                    for (col, zc) in z.iter_mut().enumerate() {
                        *zc = *zc + p[off + col];
                    }
                    off += o;
                }
                z
            };
            for l in 0..depth {
                let (i, o) = (self.sizes[l], self.sizes[l + 1]);
                let z = affine(&a, i, o);
                a = if l + 1 == depth {
                    z
                } else if self.spec.glu {
                    let gate = affine(&a, i, o);
                    gate.into_iter().zip(z).map(|(g, z)| activate(&self.spec.activation, g) * z).collect()
                } else {
                    z.into_iter().map(|v| activate(&self.spec.activation, v)).collect()
                };
            }
            assert_eq!(off, p.len());
            let n = match self.ln {
                Some((w, b)) => {
                    let len = a.len() as f64;
                    let mu = a.iter().fold(c(0.0), |s, &v| s + v) / c(len);
                    let var = a.iter().fold(c(0.0), |s, &v| s + (v - mu) * (v - mu)) / c(len);
                    let sd = (var + c(1e-6)).sqrt();
                    a.iter().enumerate().map(|(j, &v)| c(w[j]) * (v - mu) / sd + c(b[j])).collect()
                }
                None => a,
            };
            if self.spec.residual {
                n.iter().zip(x).map(|(&a, &b)| b + a).collect()
            } else {
                n
            }
        }

        /// `∇_p ½‖f(k) − v‖²` (or `∇_p −v·f(k)`), one forward-mode pass per parameter.
        fn grad(&self, p: &[f64], k: &[f64], v: &[f64]) -> Vec<f64> {
            let mut dp: Vec<Dual> = p.iter().map(|&x| c(x)).collect();
            let k: Vec<Dual> = k.iter().map(|&x| c(x)).collect();
            (0..p.len())
                .map(|i| {
                    dp[i].d = 1.0;
                    let y = self.f(&dp, &k);
                    dp[i].d = 0.0;
                    let adjoint = |yj: &Dual, vj: f64| if self.spec.dot_product { -vj } else { yj.v - vj };
                    y.iter().zip(v).fold(0.0, |s, (yj, &vj)| s + adjoint(yj, vj) * yj.d)
                })
                .collect()
        }

        fn value(&self, p: &[f64], x: &[f64]) -> Vec<f64> {
            let p: Vec<Dual> = p.iter().map(|&x| c(x)).collect();
            let x: Vec<Dual> = x.iter().map(|&x| c(x)).collect();
            self.f(&p, &x).iter().map(|y| y.v).collect()
        }
    }

    /// `x` `[t, i]` times a PyTorch Linear weight `[o, i]`.
    fn linear(x: &[f64], w: &[f64], i: usize, o: usize) -> Vec<f64> {
        let t = x.len() / i;
        let mut y = vec![0.0; t * o];
        for r in 0..t {
            for col in 0..o {
                y[r * o + col] = (0..i).map(|j| x[r * i + j] * w[col * i + j]).sum();
            }
        }
        y
    }

    fn rms_norm(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
        let dim = w.len();
        x.chunks(dim)
            .flat_map(|row| {
                let s = (row.iter().map(|v| v * v).sum::<f64>() / dim as f64 + eps).sqrt();
                row.iter().zip(w).map(move |(v, wi)| wi * v / s)
            })
            .collect()
    }

    fn layer_norm(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
        let dim = w.len();
        x.chunks(dim)
            .flat_map(|row| {
                let mu = row.iter().sum::<f64>() / dim as f64;
                let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / dim as f64;
                let sd = (var + eps).sqrt();
                row.iter().enumerate().map(move |(j, v)| w[j] * (v - mu) / sd + b[j])
            })
            .collect()
    }

    /// Depthwise causal convolution: `y[t,c] = bias[c] + Σ_k w[c,0,k] · x[t−K+1+k, c]`.
    fn causal_conv(x: &[f64], w: &[f64], bias: &[f64], kernel: usize) -> Vec<f64> {
        let dim = bias.len();
        let t = x.len() / dim;
        let mut y = vec![0.0; x.len()];
        for r in 0..t {
            for ch in 0..dim {
                let mut s = bias[ch];
                for k in 0..kernel {
                    let src = r as isize - kernel as isize + 1 + k as isize;
                    if src >= 0 {
                        s += w[ch * kernel + k] * x[src as usize * dim + ch];
                    }
                }
                y[r * dim + ch] = s;
            }
        }
        y
    }

    fn gelu(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    }

    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Interleaved RoPE on one head's row at position `pos`.
    fn rope(x: &mut [f64], pos: usize, theta: f64) {
        let d = x.len();
        for i in 0..d / 2 {
            let a = pos as f64 * theta.powf(-2.0 * i as f64 / d as f64);
            let (s, co) = a.sin_cos();
            let (e, o) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = e * co - o * s;
            x[2 * i + 1] = o * co + e * s;
        }
    }

    /// `(offset, rows, cols, is a matrix)` of each tensor in the flat parameters of a learner
    /// (see [`Inner::f`]).
    fn blocks(spec: &Spec, d: usize) -> Vec<(usize, usize, usize, bool)> {
        let mut off = 0;
        spec.tensors(d)
            .into_iter()
            .map(|(name, rows, cols, _)| {
                off += rows * cols;
                (off - rows * cols, rows, cols, !name.starts_with('b'))
            })
            .collect()
    }

    /// `a` `[n, k]` · `b` `[k, m]`, row-major.
    fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                out[i * m + j] = (0..k).map(|l| a[i * k + l] * b[l * m + j]).sum();
            }
        }
        out
    }

    fn transpose(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        (0..cols * rows).map(|i| a[(i % rows) * cols + i / rows]).collect()
    }

    /// Muon's orthogonalisation of a `[rows, cols]` matrix (SPEC-lact.md §6): on the transpose
    /// when rows > cols, `X = G / (‖G‖_F + 1e-7)`, five steps `X ← aX + (bA + cA²)X`, `A = XXᵀ`.
    fn newton_schulz(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        const STEPS: [(f64, f64, f64); 5] =
            [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)];
        let tall = rows > cols;
        let (r, k, mut x) = if tall { (cols, rows, transpose(m, rows, cols)) } else { (rows, cols, m.to_vec()) };
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt() + 1e-7;
        x.iter_mut().for_each(|v| *v /= norm);
        for (a, b, c) in STEPS {
            let gram = matmul(&x, &transpose(&x, r, k), r, k, r);
            let square = matmul(&gram, &gram, r, r, r);
            let poly: Vec<f64> = gram.iter().zip(&square).map(|(g, s)| b * g + c * s).collect();
            let moved = matmul(&poly, &x, r, r, k);
            x = x.iter().zip(&moved).map(|(x, m)| a * x + m).collect();
        }
        if tall {
            transpose(&x, r, k)
        } else {
            x
        }
    }

    /// Muon on each matrix of the flat parameters laid out as `blocks` (a bias, one row, takes
    /// its step as it is).
    fn orthogonalise(step: &mut [f64], blocks: &[(usize, usize, usize, bool)]) {
        for &(off, rows, cols, _) in blocks.iter().filter(|b| b.3) {
            let o = newton_schulz(&step[off..off + rows * cols], rows, cols);
            step[off..off + rows * cols].copy_from_slice(&o);
        }
    }

    /// The norms of the columns of a `[rows, cols]` matrix.
    fn column_norms(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        (0..cols).map(|j| (0..rows).map(|i| m[i * cols + j].powi(2)).sum::<f64>().sqrt()).collect()
    }

    /// One head's apply-then-update loop (`ttt_inner.update = "per_chunk"`, docs/model-toml.md):
    /// every token of a mini-batch reads the weights the mini-batch started from; then
    /// `Δ = −Σ_j lr_j g_j` (each matrix's rates with `learning_rates = "per_matrix"`: `rates` holds
    /// one sequence per matrix then, else one), with momentum `M ← Δ + β̄M` (β̄ = Σβ / b) and the step M, Muon on
    /// each matrix, `W ← (1 − ᾱ)W + step` (pre-norm: the unnormalised weights take it), and the
    /// matrices' columns renormalised to their initial norms. Returns the outputs `[t][d]`.
    #[allow(clippy::too_many_arguments)]
    fn per_chunk(
        c: &Config,
        inner: &Inner,
        w0: Vec<f64>,
        qkv: impl Fn(usize) -> (Vec<f64>, Vec<f64>, Vec<f64>),
        rates: &[Vec<f64>],
        beta: &[f64],
        alpha: &[f64],
        t: usize,
    ) -> Vec<Vec<f64>> {
        let blocks = blocks(&c.spec, inner.sizes[0]);
        // The rates each flat parameter takes.
        let rate_of: Vec<&[f64]> = c
            .spec
            .tensors(inner.sizes[0])
            .into_iter()
            .flat_map(|(_, rows, cols, matrix)| std::iter::repeat_n(&rates[if rates.len() > 1 { matrix } else { 0 }][..], rows * cols))
            .collect();
        let targets: Vec<Vec<f64>> = blocks.iter().map(|&(off, r, k, _)| column_norms(&w0[off..off + r * k], r, k)).collect();
        let (mut w, mut raw, mut momentum) = (w0.clone(), w0, None::<Vec<f64>>);
        let mut outs = Vec::new();
        for start in (0..t).step_by(c.mb) {
            let end = (start + c.mb).min(t);
            let mut delta = vec![0.0; w.len()];
            for r in start..end {
                let (q, k, v) = qkv(r);
                outs.push(inner.value(&w, &q));
                for ((a, g), rate) in delta.iter_mut().zip(inner.grad(&w, &k, &v)).zip(&rate_of) {
                    *a -= rate[r] * g;
                }
            }
            let mean = |gate: &[f64]| gate[start..end].iter().sum::<f64>() / c.mb as f64;
            let mut step = delta;
            if c.momentum {
                let beta_bar = mean(beta);
                if let Some(m) = &momentum {
                    step.iter_mut().zip(m).for_each(|(s, m)| *s += beta_bar * m);
                }
                momentum = Some(step.clone());
            }
            if c.muon {
                orthogonalise(&mut step, &blocks);
            }
            let keep = 1.0 - if c.forget { mean(alpha) } else { 0.0 };
            let pre = c.renormalize.as_deref() == Some("pre");
            let from = if pre { &raw } else { &w };
            let stepped: Vec<f64> = from.iter().zip(&step).map(|(w, s)| keep * w + s).collect();
            w = stepped.clone();
            if c.renormalize.is_some() {
                for (&(off, r, k, matrix), target) in blocks.iter().zip(&targets) {
                    if !matrix {
                        continue;
                    }
                    let norms = column_norms(&stepped[off..off + r * k], r, k);
                    for i in 0..r {
                        for j in 0..k {
                            w[off + i * k + j] = stepped[off + i * k + j] / (norms[j] + 1e-5) * target[j];
                        }
                    }
                }
            }
            raw = stepped;
        }
        outs
    }

    /// The TTT layer on one sequence `x` `[t, D]` (SPEC §2, steps 1–6).
    fn ttt(c: &Config, w: &Weights, s: &str, x: &[f64]) -> Vec<f64> {
        let (dim, heads) = (c.hidden, c.heads);
        let d = dim / heads;
        let t = x.len() / dim;
        let get = |n: &str| w.get(&format!("{s}{n}"));
        let (mut xq, mut xk) = if c.share_qk {
            let pq = linear(x, get("q_proj.weight"), dim, dim);
            (causal_conv(&pq, get("conv_q.weight"), get("conv_q.bias"), c.kernel), causal_conv(&pq, get("conv_k.weight"), get("conv_k.bias"), c.kernel))
        } else {
            (linear(x, get("q_proj.weight"), dim, dim), linear(x, get("k_proj.weight"), dim, dim))
        };
        let xv = linear(x, get("v_proj.weight"), dim, dim);
        for r in 0..t {
            for h in 0..heads {
                rope(&mut xq[r * dim + h * d..r * dim + (h + 1) * d], r % c.mb, c.theta);
                rope(&mut xk[r * dim + h * d..r * dim + (h + 1) * d], r % c.mb, c.theta);
            }
        }
        let gated = !c.per_chunk && (c.momentum || c.forget || c.muon);
        let (lr_w, lr_b) = (get("learnable_ttt_lr_weight"), get("learnable_ttt_lr_bias"));
        let tok = if gated || c.per_chunk { &[][..] } else { get("learnable_token_idx") };
        // A per-head gate sigmoid(x·w_h + b_h) at every position, or 0 when off.
        let gate = |name: &str, on: bool, h: usize| -> Vec<f64> {
            if !on {
                return vec![0.0; t];
            }
            let (gw, gb) = (get(&format!("learnable_ttt_{name}_weight")), get(&format!("learnable_ttt_{name}_bias")));
            (0..t).map(|r| sigmoid((0..dim).map(|j| x[r * dim + j] * gw[h * dim + j]).sum::<f64>() + gb[h])).collect()
        };
        let sizes = c.spec.sizes(d);
        let mut z = vec![0.0; t * dim];
        for h in 0..heads {
            let ln = c.spec.norm.then(|| (&get("ttt_norm_weight")[h * d..(h + 1) * d], &get("ttt_norm_bias")[h * d..(h + 1) * d]));
            let inner = Inner { spec: &c.spec, sizes: sizes.clone(), ln };
            let mut w0 = Vec::new();
            for (name, rows, cols, _) in c.spec.tensors(d) {
                w0.extend_from_slice(&get(&name)[h * rows * cols..(h + 1) * rows * cols]);
            }
            let head = |m: &[f64], r: usize| m[r * dim + h * d..r * dim + (h + 1) * d].to_vec();
            // lr_w `[H, M, D]`, lr_b `[H, M]`: M rates per head, one per matrix or one.
            let count = if c.lr_per_matrix { c.spec.tensors(d).last().unwrap().3 + 1 } else { 1 };
            let rates: Vec<Vec<f64>> = (0..count)
                .map(|m| {
                    let row = h * count + m;
                    (0..t).map(|r| c.base_lr * sigmoid((0..dim).map(|j| x[r * dim + j] * lr_w[row * dim + j]).sum::<f64>() + lr_b[row]) / d as f64).collect()
                })
                .collect();
            let lr = &rates[0];
            let (beta, alpha) = (gate("momentum", c.momentum, h), gate("forget", c.forget, h));
            if c.per_chunk {
                let outs = per_chunk(c, &inner, w0, |r| (head(&xq, r), head(&xk, r), head(&xv, r)), &rates, &beta, &alpha, t);
                for (r, out) in outs.into_iter().enumerate() {
                    z[r * dim + h * d..r * dim + (h + 1) * d].copy_from_slice(&out);
                }
                continue;
            }
            // The gated rule's momentum S, zero at the sequence's start and carried across
            // mini-batches.
            let mut momentum = vec![0.0; w0.len()];
            for start in (0..t).step_by(c.mb) {
                let n = c.mb.min(t - start);
                let g: Vec<Vec<f64>> = (0..n).map(|j| inner.grad(&w0, &head(&xk, start + j), &head(&xv, start + j))).collect();
                let mut wi = w0.clone();
                for i in 0..n {
                    if gated {
                        // S_i = β_i·S_{i−1} + lr_i·g_i, W_i = (1 − α_i)·W_{i−1} − S_i
                        // (Muon: minus Muon(S_i), per tensor.)
                        let r = start + i;
                        for (s, gi) in momentum.iter_mut().zip(&g[i]) {
                            *s = beta[r] * *s + lr[r] * gi;
                        }
                        let mut step = momentum.clone();
                        if c.muon {
                            orthogonalise(&mut step, &blocks(&c.spec, d));
                        }
                        for (w, s) in wi.iter_mut().zip(&step) {
                            *w = (1.0 - alpha[r]) * *w - s;
                        }
                        let out = inner.value(&wi, &head(&xq, r));
                        z[r * dim + h * d..r * dim + (h + 1) * d].copy_from_slice(&out);
                        continue;
                    }
                    let tau = (1.0 / (i as f64 + 1.0) + tok[i]).max(0.0);
                    wi = w0.clone();
                    for (j, gj) in g.iter().enumerate().take(i + 1) {
                        let eta = tau * lr[start + j];
                        for (a, b) in wi.iter_mut().zip(gj) {
                            *a -= eta * b;
                        }
                    }
                    let out = inner.value(&wi, &head(&xq, start + i));
                    z[(start + i) * dim + h * d..(start + i) * dim + (h + 1) * d].copy_from_slice(&out);
                }
                w0 = wi;
            }
        }
        let mut y = layer_norm(&z, get("post_norm.weight"), get("post_norm.bias"), 1e-6);
        if c.use_gate {
            let gate = linear(x, get("g_proj.weight"), dim, dim);
            for (a, g) in y.iter_mut().zip(gate) {
                *a *= gelu(g);
            }
        }
        linear(&y, get("o_proj.weight"), dim, dim)
    }

    /// Logits `[b, t, V]` of a TTT model on `ids` `[b, t]`, flattened.
    pub fn logits(c: &Config, w: &Weights, ids: &[i64], b: usize, t: usize) -> Vec<f64> {
        let dim = c.hidden;
        let embed = w.get("model.embed_tokens.weight");
        let mut out = Vec::new();
        for seq in 0..b {
            let mut h: Vec<f64> = (0..t).flat_map(|r| embed[ids[seq * t + r] as usize * dim..][..dim].to_vec()).collect();
            for layer in 0..c.layers {
                let p = format!("model.layers.{layer}.");
                let get = |n: &str| w.get(&format!("{p}{n}"));
                if c.pre_conv {
                    let x = rms_norm(&h, get("conv.norm.weight"), c.eps);
                    let y = causal_conv(&x, get("conv.conv.weight"), get("conv.conv.bias"), c.kernel);
                    h.iter_mut().zip(y).for_each(|(a, b)| *a += b);
                }
                let x = rms_norm(&h, get("seq_norm.weight"), c.eps);
                let y = ttt(c, w, &format!("{p}seq_modeling_block."), &x);
                h.iter_mut().zip(y).for_each(|(a, b)| *a += b);
                let x = rms_norm(&h, get("ffn_norm.weight"), c.eps);
                let gate = linear(&x, get("mlp.gate_proj.weight"), dim, c.inter);
                let up = linear(&x, get("mlp.up_proj.weight"), dim, c.inter);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(&g, &u)| g * sigmoid(g) * u).collect();
                let y = linear(&act, get("mlp.down_proj.weight"), c.inter, dim);
                h.iter_mut().zip(y).for_each(|(a, b)| *a += b);
            }
            let h = rms_norm(&h, w.get("model.norm.weight"), c.eps);
            let head = if c.tied { embed } else { w.get("lm_head.weight") };
            out.extend(linear(&h, head, dim, c.vocab));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The presets written out

const MLP_CASE: &str = "ttt-mlp-mamba-backbone";

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut c: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(c.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
}

/// Runs a model on its case's `io.safetensors`; returns the outputs.
fn run_case_io(model: &Path, io: &Path, out: &Path) -> BTreeMap<String, Array> {
    let r = tttc(&["run", p(model), "--input", p(io), "--output", p(out)]);
    assert!(r.status.success(), "{}: {}", model.display(), String::from_utf8_lossy(&r.stderr));
    read(out)
}

/// LaCT's fast weights are a preset of the same parts: the learner its layers build
/// (`InnerSpec::lact`) is the one these `ttt_inner` keys describe, fractional width included.
#[test]
fn lact_fast_weights_are_a_ttt_inner_preset() {
    let dir = scratch("inner_lact_preset");
    let mut inner = lact_learner();
    inner["widths"] = json!([1.5]);
    let model = write_model(&dir, &config("lact-parts", &inner, json!({})));
    let tttc_frontends::ModelConfig::Ttt(c) = tttc_frontends::load_config(&model).unwrap() else { panic!("not a TTT config") };
    assert_eq!(c.inner, tttc_frontends::config::InnerSpec::lact(1.5));
    assert_eq!(c.inner.preset(), None);
}

/// `ttt_inner` spelling out TTT-MLP (with `ttt_layer_type` removed, so the spec alone decides), in
/// config.json and in a model.toml, gives the same graph and bit-identical logits and loss as
/// `ttt_layer_type = "mlp"`, within SPEC §1 of the reference logits.
#[test]
fn explicit_mlp_spec_equals_the_preset() {
    let preset = repo().join("tests/vectors").join(MLP_CASE);
    let io = preset.join("io.safetensors");
    let dir = copy_case(MLP_CASE, "inner_explicit_mlp");
    let spec = json!({"widths": [4], "bias": true, "activation": "gelu_tanh", "residual": true,
                      "norm": "layer_norm", "loss": "reconstruction"});
    edit_config(&dir, |c| {
        c.remove("ttt_layer_type");
        c.insert("ttt_inner".into(), spec.clone());
    });
    assert_eq!(tttc_frontends::load_structure(&dir).unwrap().g, tttc_frontends::load_structure(&preset).unwrap().g);

    // The same model as a model.toml with a [config.ttt_inner] table.
    let c: Value = serde_json::from_str(&std::fs::read_to_string(preset.join("config.json")).unwrap()).unwrap();
    let mut toml = format!("model_type = \"ttt\"\nweights = {:?}\n\n[config]\n", p(&preset.join("model.safetensors")));
    for key in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "mini_batch_size",
        "pre_conv",
        "share_qk",
        "use_gate",
        "conv_kernel",
        "ttt_base_lr",
        "rope_theta",
        "rms_norm_eps",
    ] {
        toml += &format!("{key} = {}\n", c[key]);
    }
    toml += "\n[config.ttt_inner]\nwidths = [4]\nbias = true\nactivation = \"gelu_tanh\"\nresidual = true\nnorm = \"layer_norm\"\nloss = \"reconstruction\"\n";
    let toml_path = dir.join("model.toml");
    std::fs::write(&toml_path, toml).unwrap();

    let want = run_case_io(&preset, &io, &dir.join("preset.safetensors"));
    let reference = read(&io);
    for (label, model) in [("config.json", dir.clone()), ("model.toml", toml_path)] {
        let got = run_case_io(&model, &io, &dir.join("explicit.safetensors"));
        assert_eq!(got["logits"].f32, want["logits"].f32, "{label}: logits differ from ttt_layer_type = \"mlp\"");
        assert_eq!(got["loss"].f32, want["loss"].f32, "{label}: loss differs");
        let ratio = parity_ratio(&got["logits"].f32, &reference["logits"].f32, 1e-5);
        assert!(ratio <= 1.0, "{label}: logits at {ratio:.2}× tolerance of the reference");
        let ratio = parity_ratio(&got["loss"].f32, &reference["loss"].f32, 1e-5);
        assert!(ratio <= 1.0, "{label}: loss at {ratio:.2}× tolerance of the reference");
    }
}

/// `ttt_inner` keys replace only their fields of the `ttt_layer_type` preset: `mlp` with
/// `widths = []` is TTT-Linear, and matches the TTT-Linear reference case.
#[test]
fn ttt_inner_refines_the_layer_type_preset() {
    let case = "ttt-linear-transformer-backbone";
    let dir = copy_case(case, "inner_refines_preset");
    edit_config(&dir, |c| {
        c.insert("ttt_layer_type".into(), json!("mlp"));
        c.insert("ttt_inner".into(), json!({"widths": []}));
    });
    let io = dir.join("io.safetensors");
    let got = run_case_io(&dir, &io, &dir.join("out.safetensors"));
    let want = run_case_io(&repo().join("tests/vectors").join(case), &io, &dir.join("want.safetensors"));
    assert_eq!(got["logits"].f32, want["logits"].f32);
    assert!(parity_ratio(&got["logits"].f32, &read(&io)["logits"].f32, 1e-5) <= 1.0);
}

// ---------------------------------------------------------------------------------------------
// Errors

/// `tttc run` fails with a one-line error containing every `needles` entry, without panicking and
/// without writing OUT.
fn expect_error(model: &Path, needles: &[&str]) {
    let dir = if model.is_dir() { model.to_path_buf() } else { model.parent().unwrap().to_path_buf() };
    let input = dir.join("in.safetensors");
    write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![1, 3], i64_bytes(&[1, 2, 3]))]);
    let out = dir.join("out.safetensors");
    let _ = std::fs::remove_file(&out);
    let r = tttc(&["run", p(model), "--input", p(&input), "--output", p(&out)]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "expected failure for {needles:?}, got success");
    assert!(!stderr.contains("panicked"), "panic instead of an error: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "error is not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "error does not mention {needle:?}: {stderr}");
    }
    assert!(!out.exists(), "OUT was written");
}

fn bad_inner(name: &str, inner: Value) -> PathBuf {
    write_model(&scratch(&format!("inner_err_{name}")), &config("x", &inner, json!({})))
}

#[test]
fn unknown_activation_is_refused() {
    expect_error(&bad_inner("activation", json!({"widths": [4], "activation": "tanh"})), &["ttt_inner.activation", "\"tanh\"", "config.json"]);
}

#[test]
fn depth_four_is_refused() {
    expect_error(&bad_inner("depth", json!({"widths": [4, 4, 4]})), &["ttt_inner.widths", "depth 4"]);
}

#[test]
fn unknown_ttt_inner_key_is_refused() {
    expect_error(&bad_inner("key", json!({"widths": [4], "dropout": 0.1})), &["ttt_inner.dropout"]);
}

#[test]
fn unknown_loss_is_refused() {
    expect_error(&bad_inner("loss", json!({"loss": "contrastive"})), &["ttt_inner.loss", "\"contrastive\""]);
}

#[test]
fn malformed_widths_are_refused() {
    expect_error(&bad_inner("zero", json!({"widths": [4, 0]})), &["ttt_inner.widths", "positive"]);
    expect_error(&bad_inner("below_two", json!({"widths": [0.2]})), &["ttt_inner.widths", "below 2"]);
    expect_error(&bad_inner("scalar", json!({"widths": 4})), &["ttt_inner.widths", "list"]);
    expect_error(&bad_inner("norm", json!({"norm": "rms_norm"})), &["ttt_inner.norm", "\"rms_norm\""]);
    expect_error(&bad_inner("bias", json!({"bias": "yes"})), &["ttt_inner.bias"]);
    expect_error(&write_model(&scratch("inner_err_table"), &config("x", &json!("mlp"), json!({}))), &["ttt_inner", "table"]);
}

/// The inner optimizer's keys are booleans.
#[test]
fn gated_optimizer_keys_must_be_booleans() {
    expect_error(&bad_inner("momentum", json!({"momentum": 1})), &["ttt_inner.momentum", "true or false"]);
    expect_error(&bad_inner("forget", json!({"forget": "yes"})), &["ttt_inner.forget", "true or false"]);
}

/// The update granularity and renormalisation take their documented names; renormalisation
/// needs the per-chunk update.
#[test]
fn inner_optimizer_choices_are_checked() {
    expect_error(&bad_inner("update", json!({"update": "per_step"})), &["ttt_inner.update", "\"per_step\"", "per_chunk"]);
    expect_error(&bad_inner("renormalize", json!({"update": "per_chunk", "renormalize": "both"})), &["ttt_inner.renormalize", "\"both\""]);
    expect_error(&bad_inner("muon", json!({"muon": "on"})), &["ttt_inner.muon", "true or false"]);
    expect_error(&bad_inner("per_token_norm", json!({"update": "per_token", "renormalize": "post"})), &["ttt_inner.renormalize", "per_chunk"]);
    expect_error(&bad_inner("rates", json!({"update": "per_chunk", "learning_rates": "per_layer"})), &["ttt_inner.learning_rates", "\"per_layer\""]);
    expect_error(&bad_inner("per_token_rates", json!({"learning_rates": "per_matrix"})), &["ttt_inner.learning_rates", "per_chunk"]);
    expect_error(&bad_inner("glu", json!({"glu": 1})), &["ttt_inner.glu", "true or false"]);
    expect_error(&bad_inner("loss", json!({"loss": "dot"})), &["ttt_inner.loss", "\"dot\"", "dot_product"]);
}

/// The same errors from a model.toml's `[config.ttt_inner]` table name the file and the key.
#[test]
fn model_toml_errors_name_the_file_and_key() {
    let dir = scratch("inner_err_toml");
    let path = dir.join("model.toml");
    std::fs::write(
        &path,
        "model_type = \"ttt\"\n[config]\nvocab_size = 13\nhidden_size = 16\nintermediate_size = 24\nnum_hidden_layers = 1\n\
         num_attention_heads = 2\n\n[config.ttt_inner]\nwidths = [2]\nactivation = \"swish\"\n",
    )
    .unwrap();
    expect_error(&path, &["model.toml", "ttt_inner.activation", "\"swish\""]);
}
