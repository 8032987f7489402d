//! The whole-model gradient (outer autodiff through the mini-batch scan, whose body holds the
//! expanded inner gradient) against central finite differences, in f64, on tiny seeded models of
//! every family.

use tttc_frontends::Mode;
use tttc_ir::{run, ArgKind, Graph, Precision, Tensor};
use tttc_passes::{dead_code_elimination, expand_grads, gradient_graph, gradient_graph_wrt, keep_outputs};

fn eval(g: &Graph, weights: &std::collections::BTreeMap<String, Tensor>, ids: &Tensor) -> Vec<Tensor> {
    eval_named(g, weights, &[("input_ids".into(), ids.clone())])
}

/// Checks a few entries of `analytic`, the gradient of `what`, against central differences of
/// `loss_with(i, delta)`, the loss with entry i moved by delta; returns how many it checked.
fn check_against_differences(what: &str, analytic: &[f64], loss_with: impl Fn(usize, f64) -> f64) -> usize {
    let eps = 1e-6;
    let entries: Vec<usize> = (0..analytic.len()).step_by(analytic.len().div_ceil(3)).collect();
    for &i in &entries {
        let numeric = (loss_with(i, eps) - loss_with(i, -eps)) / (2.0 * eps);
        let err = (analytic[i] - numeric).abs();
        assert!(err <= 1e-6 * (1.0 + numeric.abs()), "{what}[{i}]: autodiff {} vs numeric {numeric}", analytic[i]);
    }
    entries.len()
}

/// `t` (f64) with entry `i` moved by `delta`.
fn moved(t: &Tensor, i: usize, delta: f64) -> Tensor {
    let mut v = t.to_f64().unwrap();
    v[i] += delta;
    Tensor::f64(t.shape.clone(), v)
}

/// The model whose config.json is in `dir`, its weights in f64 and perturbed: seeded weights leave
/// biases and token scales at zero.
fn perturbed_model(dir: &std::path::Path) -> tttc_frontends::Model {
    let mut model = tttc_frontends::load(dir, None).unwrap();
    for (k, t) in model.weights.values_mut().enumerate() {
        let v: Vec<f64> = t.to_f64().unwrap().iter().enumerate().map(|(i, x)| x + 0.1 * (((i * 7 + k * 13) % 11) as f64 - 5.0) / 5.0).collect();
        *t = Tensor::f64(t.shape.clone(), v);
    }
    model
}

#[test]
fn model_gradients_match_finite_differences() {
    let dir = std::env::temp_dir().join(format!("tttc-model-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let configs = [
        r#"{"model_type": "ttt", "ttt_layer_type": "mlp", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "pre_conv": true, "share_qk": true, "use_gate": true}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2, "mini_batch_size": 2}"#,
        // The gated inner optimizer: both gates, and forgetting alone (no momentum carried).
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"momentum": true, "forget": true}}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "mlp", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 4, "ttt_inner": {"forget": true}}"#,
        // Muon per token (no dual form: the primal form through the pipeline).
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"muon": true, "momentum": true}}"#,
        // The apply-then-update inner optimizer with every part (through Muon), and pre-norm.
        r#"{"model_type": "ttt", "ttt_layer_type": "mlp", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"update": "per_chunk", "momentum": true, "forget": true, "muon": true, "renormalize": "post"}}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 2, "ttt_inner": {"update": "per_chunk", "renormalize": "pre"}}"#,
        // LaCT's learner and optimizer from parts (GLU, the dot product, a rate per matrix).
        r#"{"model_type": "ttt", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"widths": [2], "activation": "silu", "glu": true, "bias": false, "residual": false, "norm": "none", "loss": "dot_product", "update": "per_chunk", "learning_rates": "per_matrix", "momentum": true, "muon": true, "renormalize": "post"}}"#,
        // A gated learner per token, with biases (the gate's too).
        r#"{"model_type": "ttt", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"widths": [2], "glu": true, "loss": "dot_product"}}"#,
        r#"{"model_type": "mamba", "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 3, "conv_kernel": 2}"#,
        r#"{"model_type": "llama", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}"#,
        // LaCT: through Muon, momentum and the low-rank initial weights; and pre-norm with
        // q/k-norm, a qkv bias and unbounded attention (the second chunk reads the first's update).
        r#"{"model_type": "lact_swiglu", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attn_heads": 2, "num_lact_heads": 2, "lact_chunk_size": 4, "window_size": 3, "use_muon": true, "w0_w2_low_rank": 2}"#,
        r#"{"model_type": "lact_swiglu", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attn_heads": 2, "num_lact_heads": 2, "lact_chunk_size": 3, "window_size": null, "ttt_prenorm": true, "attn_qk_norm": true, "qkv_bias": true, "use_momentum": false}"#,
    ];
    for config in configs {
        std::fs::write(dir.join("config.json"), config).unwrap();
        let model = perturbed_model(&dir);
        let forward = expand_grads(&model.builder.g).unwrap();
        let grads = dead_code_elimination(&gradient_graph(&forward, "loss", 1).unwrap());
        let loss_only = keep_outputs(&forward, &["loss"]);
        let ids = Tensor::i64(vec![2, 7], (0..14).map(|i| (i * 5 + 2) % 11).collect());
        let out = eval(&grads, &model.weights, &ids);
        let mut checked = 0;
        for (k, (name, _)) in grads.outputs.iter().enumerate().skip(1) {
            checked += check_against_differences(&format!("{config}\n d loss / d {name}"), &out[k].to_f64().unwrap(), |i, delta| {
                let mut w = model.weights.clone();
                let t = w.get_mut(name).unwrap();
                *t = moved(t, i, delta);
                eval(&loss_only, &w, &ids)[0].to_f64().unwrap()[0]
            });
        }
        assert!(checked > 20, "{config}: only {checked} entries checked");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rematerialising the forward in segments changes where values are computed, not what: the
/// gradients equal the plain reverse sweep's (up to the order adjoints are summed in).
#[test]
fn rematerialised_gradients_equal_the_plain_ones() {
    let dir = std::env::temp_dir().join(format!("tttc-remat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type": "ttt", "ttt_layer_type": "mlp", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2, "mini_batch_size": 3, "pre_conv": true, "share_qk": true}"#,
    )
    .unwrap();
    let model = tttc_frontends::load(&dir, None).unwrap();
    let forward = expand_grads(&model.builder.g).unwrap();
    let ids = Tensor::i64(vec![2, 7], (0..14).map(|i| (i * 5 + 2) % 11).collect());
    let plain = eval(&dead_code_elimination(&gradient_graph(&forward, "loss", 1).unwrap()), &model.weights, &ids);
    for segments in [2, 7, 40] {
        let remat = dead_code_elimination(&gradient_graph(&forward, "loss", segments).unwrap());
        assert!(remat.nodes.iter().any(|n| matches!(n.op, tttc_ir::Op::Barrier)));
        for (k, (a, b)) in eval(&remat, &model.weights, &ids).iter().zip(&plain).enumerate() {
            let (a, b) = (a.to_f64().unwrap(), b.to_f64().unwrap());
            let scale = b.iter().fold(0f64, |m, x| m.max(x.abs()));
            let err = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(err <= 1e-12 * scale.max(1e-300), "{segments} segments, output {k}: differs by {err:e} (scale {scale:e})");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `g` in f64 with its inputs from `inputs` and its parameters from `weights`, by name.
fn eval_named(g: &Graph, weights: &std::collections::BTreeMap<String, Tensor>, inputs: &[(String, Tensor)]) -> Vec<Tensor> {
    let args: Vec<&Tensor> = g
        .args
        .iter()
        .map(|a| match a.kind {
            ArgKind::Input => &inputs.iter().find(|(n, _)| *n == a.name).unwrap_or_else(|| panic!("no input {}", a.name)).1,
            ArgKind::Param => &weights[&a.name],
        })
        .collect();
    run(g, &args, Precision::F64).unwrap()
}

/// The gradient of a resumed run's loss with respect to the state it starts from (`tttc grad
/// --state-in`) against central finite differences, in f64: the state a first run ends in (inside
/// a mini-batch for TTT, so the gradient sums are not zero), then a second run from it.
#[test]
fn state_gradients_match_finite_differences() {
    let dir = std::env::temp_dir().join(format!("tttc-state-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let configs = [
        r#"{"model_type": "ttt", "ttt_layer_type": "mlp", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "pre_conv": true, "share_qk": true, "use_gate": true}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2, "mini_batch_size": 4}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"update": "per_chunk", "momentum": true, "forget": true, "muon": true, "renormalize": "pre"}}"#,
        // Muon per token without momentum: the padding's zero steps kept out of Newton–Schulz.
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"muon": true}}"#,
        r#"{"model_type": "mamba", "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 3, "conv_kernel": 3}"#,
        r#"{"model_type": "llama", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}"#,
        r#"{"model_type": "lact_swiglu", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attn_heads": 2, "num_lact_heads": 2, "lact_chunk_size": 3, "window_size": 2, "ttt_prenorm": true}"#,
    ];
    for config in configs {
        std::fs::write(dir.join("config.json"), config).unwrap();
        let model = perturbed_model(&dir);
        // The first run: 5 tokens (position 2 of a mini-batch of 3, 1 of 4).
        let first = expand_grads(&tttc_frontends::build_for(&model.config, Mode::Run).unwrap().g).unwrap();
        let ids = Tensor::i64(vec![2, 5], (0..10).map(|i| (i * 3 + 1) % 11).collect());
        let outs = eval_named(&first, &model.weights, &[("input_ids".into(), ids)]);
        let state: Vec<(String, Tensor)> =
            first.outputs.iter().zip(outs).filter(|((n, _), _)| n.starts_with("state.")).map(|((n, _), t)| (n.clone(), t)).collect();
        let position = state.iter().find(|(n, _)| n == "state.position").unwrap().1.to_f64().unwrap()[0] as usize;
        let resumed = expand_grads(&tttc_frontends::build_for(&model.config, Mode::Resume { position }).unwrap().g).unwrap();
        let wrt: Vec<&str> = resumed.args.iter().filter(|a| a.kind == ArgKind::Input && a.name.starts_with("state.")).map(|a| a.name.as_str()).collect();
        assert!(!wrt.is_empty(), "{config}: no state inputs");
        let grads = dead_code_elimination(&gradient_graph_wrt(&resumed, "loss", 1, &wrt).unwrap());
        let loss_only = keep_outputs(&resumed, &["loss"]);
        let ids = Tensor::i64(vec![2, 6], (0..12).map(|i| (i * 5 + 2) % 11).collect());
        let mut inputs = state.clone();
        inputs.push(("input_ids".into(), ids));
        let out = eval_named(&grads, &model.weights, &inputs);
        let mut checked = 0;
        for &name in &wrt {
            let k = grads.outputs.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("{config}: no gradient for {name}"));
            checked += check_against_differences(&format!("{config}\n d loss / d {name}"), &out[k].to_f64().unwrap(), |i, delta| {
                let mut inputs = inputs.clone();
                let t = &mut inputs.iter_mut().find(|(n, _)| n == name).unwrap().1;
                *t = moved(t, i, delta);
                eval_named(&loss_only, &model.weights, &inputs)[0].to_f64().unwrap()[0]
            });
        }
        // The gradient sums A and the windows matter: some state entries move the loss (not
        // LaCT's chunk_position, a count the resumed graph takes from its position instead).
        let moving = grads.outputs.iter().zip(&out).filter(|((n, _), _)| wrt.contains(&n.as_str()) && n != "state.chunk_position");
        for ((name, _), g) in moving {
            assert!(g.to_f64().unwrap().iter().any(|x| x.abs() > 1e-9), "{config}: the gradient for {name} is all zero");
        }
        assert!(checked >= 2 * wrt.len(), "{config}: only {checked} entries checked");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A layer's vector–Jacobian product with the state after the sequence among its outputs (what a
/// framework's backward pass runs for a sequence in pieces): through the whole pass pipeline (the
/// dual form derived in the forward scan and again in the reverse one) it equals the product
/// computed from the primal form alone, in f64, for every family; the cotangents are arbitrary.
/// So does the product cut at its cotangents into a forward and a backward half.
#[test]
fn layer_vector_jacobian_products_through_the_state_survive_the_pipeline_and_the_split() {
    let configs = [
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 4}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "mlp", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "share_qk": true, "use_gate": true}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"update": "per_chunk", "momentum": true, "muon": true, "renormalize": "post"}}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 1, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "ttt_inner": {"muon": true, "forget": true}}"#,
        r#"{"model_type": "mamba", "vocab_size": 1, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 3, "conv_kernel": 2}"#,
        r#"{"model_type": "llama", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}"#,
        r#"{"model_type": "lact_swiglu", "vocab_size": 1, "hidden_size": 8, "intermediate_size": 4, "num_hidden_layers": 1, "num_attn_heads": 2, "num_lact_heads": 2, "lact_chunk_size": 3, "window_size": 2}"#,
    ];
    for config in configs {
        let (config, _) = tttc_frontends::parse_config_json(config).unwrap();
        let layer = tttc_frontends::build_layer_for(&config, Mode::Run).unwrap();
        let weights: std::collections::BTreeMap<String, Tensor> = tttc_frontends::init::initialise(&layer, 3)
            .into_iter()
            .map(|(name, t)| {
                let v: Vec<f64> = t.to_f64().unwrap().iter().enumerate().map(|(i, x)| x + 0.05 * ((i % 7) as f64 - 3.0)).collect();
                (name, Tensor::f64(t.shape, v))
            })
            .collect();
        let primal = tttc_passes::vector_jacobian_product(&expand_grads(&layer.g).unwrap(), &["state.position"]).unwrap();
        let compiled =
            tttc_passes::compile(&tttc_passes::vector_jacobian_product(&tttc_passes::differentiable(&layer.g).unwrap(), &["state.position"]).unwrap()).unwrap();
        let (b, t) = (2, 7);
        let inputs: Vec<(String, Tensor)> = primal
            .args
            .iter()
            .filter(|a| a.kind == ArgKind::Input)
            .enumerate()
            .map(|(k, a)| {
                let env: tttc_ir::DimEnv = [("B".to_string(), b), ("T".to_string(), t)].into_iter().collect();
                let shape = primal.ty(a.value).resolve(&env).unwrap();
                let n: usize = shape.iter().product();
                (a.name.clone(), Tensor::f64(shape, (0..n).map(|i| (((i * 31 + k * 17) % 23) as f64 - 11.0) / 11.0).collect()))
            })
            .collect();
        let want = eval_named(&primal, &weights, &inputs);
        let got = eval_named(&compiled, &weights, &inputs);
        assert!(want.len() > 5 && compiled.outputs.len() == primal.outputs.len());
        let same = |what: &str, names: &[(String, tttc_ir::ValueId)], got: &[Tensor]| {
            for ((name, _), w) in primal.outputs.iter().zip(&want) {
                let at = names.iter().position(|(n, _)| n == name).unwrap_or_else(|| panic!("{what}: no output {name}"));
                let (w, g) = (w.to_f64().unwrap(), got[at].to_f64().unwrap());
                let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                let err = w.iter().zip(&g).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                assert!(err <= 1e-9 * (1.0 + scale), "{config:?}, {what}: {name} differs by {err} (scale {scale})");
            }
        };
        same("compiled", &compiled.outputs, &got);

        // Cut at the cotangents: the forward half reads none of them, and the backward half, given
        // the residuals the forward half kept, completes the same outputs.
        let vjp = tttc_passes::vector_jacobian_product(&tttc_passes::differentiable(&layer.g).unwrap(), &["state.position"]).unwrap();
        let cotangents: Vec<&str> = vjp.args.iter().map(|a| a.name.as_str()).filter(|n| n.starts_with("d.")).collect();
        let split = tttc_passes::split_at(&vjp, &cotangents).unwrap();
        let (before, after) = (tttc_passes::compile(&split.before).unwrap(), tttc_passes::compile(&split.after).unwrap());
        assert!(before.args.iter().all(|a| !a.name.starts_with("d.")));
        // Attention's weights are recomputed by the backward half, not kept (LaCT's windowed
        // attention is not the one-pass chain yet: it keeps them).
        let square = |t: &tttc_ir::Type| t.rank() >= 2 && t.shape[t.rank() - 2..] == [tttc_ir::Dim::sym("T"), tttc_ir::Dim::sym("T")];
        let keeps_weights = before.outputs.iter().any(|(n, v)| n.starts_with("saved.") && square(before.ty(*v)));
        assert!(!keeps_weights || matches!(config, tttc_frontends::ModelConfig::Lact(_)), "{config:?}: a [T, T] residual");
        let first = eval_named(&before, &weights, &inputs);
        let mut second_inputs = inputs.clone();
        second_inputs.extend(before.outputs.iter().zip(&first).filter(|((n, _), _)| n.starts_with("saved.")).map(|((n, _), t)| (n.clone(), t.clone())));
        let second = eval_named(&after, &weights, &second_inputs);
        let names: Vec<(String, tttc_ir::ValueId)> = before.outputs.iter().chain(&after.outputs).cloned().collect();
        same("split", &names, &first.into_iter().chain(second).collect::<Vec<_>>());
        assert!(after.nodes.len() < compiled.nodes.len(), "the backward half computes less than the whole");
    }
}
