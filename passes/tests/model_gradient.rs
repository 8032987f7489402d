//! The whole-model gradient (outer autodiff through the mini-batch scan, whose body holds the
//! expanded inner gradient) against central finite differences, in f64, on tiny seeded models of
//! every family.

use tttc_ir::{run, ArgKind, Graph, Precision, Tensor};
use tttc_passes::{dead_code_elimination, expand_grads, gradient_graph, keep_outputs};

fn eval(g: &Graph, weights: &std::collections::BTreeMap<String, Tensor>, ids: &Tensor) -> Vec<Tensor> {
    let args: Vec<&Tensor> = g.args.iter().map(|a| if a.kind == ArgKind::Input { ids } else { &weights[&a.name] }).collect();
    run(g, &args, Precision::F64).unwrap()
}

#[test]
fn model_gradients_match_finite_differences() {
    let dir = std::env::temp_dir().join(format!("tttc-model-fd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let configs = [
        r#"{"model_type": "ttt", "ttt_layer_type": "mlp", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 3, "pre_conv": true, "share_qk": true, "use_gate": true}"#,
        r#"{"model_type": "ttt", "ttt_layer_type": "linear", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 2, "num_attention_heads": 2, "mini_batch_size": 2}"#,
        r#"{"model_type": "mamba", "vocab_size": 11, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 3, "conv_kernel": 2}"#,
        r#"{"model_type": "llama", "vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1}"#,
    ];
    for config in configs {
        std::fs::write(dir.join("config.json"), config).unwrap();
        let mut model = tttc_frontends::load(&dir, None).unwrap();
        // Seeded weights leave biases and token scales at zero: perturb every weight, in f64.
        for (k, t) in model.weights.values_mut().enumerate() {
            let v: Vec<f64> = t.to_f64().unwrap().iter().enumerate().map(|(i, x)| x + 0.1 * (((i * 7 + k * 13) % 11) as f64 - 5.0) / 5.0).collect();
            *t = Tensor::f64(t.shape.clone(), v);
        }
        let forward = expand_grads(&model.builder.g).unwrap();
        let grads = dead_code_elimination(&gradient_graph(&forward, "loss", 1).unwrap());
        let loss_only = keep_outputs(&forward, &["loss"]);
        let ids = Tensor::i64(vec![2, 7], (0..14).map(|i| (i * 5 + 2) % 11).collect());
        let out = eval(&grads, &model.weights, &ids);
        let eps = 1e-6;
        let mut checked = 0;
        for (k, (name, _)) in grads.outputs.iter().enumerate().skip(1) {
            let analytic = out[k].to_f64().unwrap();
            // A few entries of every parameter.
            for i in (0..analytic.len()).step_by(analytic.len().div_ceil(3)) {
                let bumped = |delta: f64| {
                    let mut w = model.weights.clone();
                    let t = w.get_mut(name).unwrap();
                    let mut v = t.to_f64().unwrap();
                    v[i] += delta;
                    *t = Tensor::f64(t.shape.clone(), v);
                    eval(&loss_only, &w, &ids)[0].to_f64().unwrap()[0]
                };
                let numeric = (bumped(eps) - bumped(-eps)) / (2.0 * eps);
                let err = (analytic[i] - numeric).abs();
                assert!(err <= 1e-6 * (1.0 + numeric.abs()), "{config}\n d loss / d {name}[{i}]: autodiff {} vs numeric {numeric}", analytic[i]);
                checked += 1;
            }
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
