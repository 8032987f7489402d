//! The derived dual form computes what the primal form computes: on every TTT reference case it
//! still matches the reference logits and loss, and the derivation actually rewrote the mini-batch
//! (fewer FLOPs, no per-token weights left).

use std::path::{Path, PathBuf};

use tttc_ir::{run, ArgKind, Graph, Op, Precision, Tensor};
use tttc_passes::{dead_code_elimination, derive_with_report, expand_grads};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors")
}

fn run_model(g: &Graph, model: &tttc_frontends::Model, ids: &Tensor) -> Vec<Tensor> {
    let args: Vec<&Tensor> = g.args.iter().map(|a| if a.kind == ArgKind::Input { ids } else { &model.weights[&a.name] }).collect();
    run(g, &args, Precision::F32).unwrap()
}

fn ratio(ours: &Tensor, want: &Tensor) -> f64 {
    let (a, b) = (ours.to_f64().unwrap(), want.to_f64().unwrap());
    let max_ref = b.iter().fold(0f64, |m, x| m.max(x.abs()));
    let err = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    err / (1e-5 * max_ref + 1e-6)
}

/// The element count of the largest value in any mini-batch scan body at batch 1 and a full chunk: per-token
/// weights (`n × rows × cols` per head) dominate the primal form.
fn largest_body_value(g: &Graph) -> usize {
    let env: tttc_ir::DimEnv = [("B".to_string(), 1), ("n".to_string(), 16)].into_iter().collect();
    let size = |t: &tttc_ir::Type| t.resolve(&env).map_or(0, |s| s.iter().product());
    let bodies = g.nodes.iter().filter_map(|n| n.op.body()).filter(|b| b.name == "mini_batch");
    bodies.flat_map(|b| b.nodes.iter().flat_map(|n| n.outputs.iter().map(|v| size(b.ty(*v))))).max().unwrap_or(0)
}

#[test]
fn ttt_reference_cases_in_dual_form() {
    let mut seen = 0;
    for entry in std::fs::read_dir(vectors()).unwrap() {
        let dir = entry.unwrap().path();
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        if !config.contains("\"model_type\": \"ttt\"") {
            continue;
        }
        seen += 1;
        let model = tttc_frontends::load(&dir, None).unwrap();
        let primal = dead_code_elimination(&expand_grads(&model.builder.g).unwrap());
        let (dual, reports) = derive_with_report(&primal).unwrap();
        let dual = dead_code_elimination(&dual);
        tttc_ir::verify(&dual).unwrap();
        // The mini-batch scans (one per layer); the head-and-loss scan has no dual form.
        let bodies = primal.nodes.iter().filter_map(|n| match &n.op {
            Op::Scan(s) => Some(s.body.name.as_str()),
            _ => None,
        });
        let mini_batch: Vec<_> = bodies.zip(&reports).filter(|(name, _)| *name == "mini_batch").map(|(_, r)| r).collect();
        assert!(!mini_batch.is_empty());
        for r in mini_batch {
            eprintln!("{}: {r:?}", dir.display());
            assert!(r.rewritten > 0, "nothing rewritten");
            assert!(r.flops_after < r.flops_before / 2.0, "the dual form should be much cheaper: {r:?}");
        }
        let (big_primal, big_dual) = (largest_body_value(&primal), largest_body_value(&dual));
        assert!(big_dual * 4 <= big_primal, "the dual form still materialises per-token weights: {big_dual} vs {big_primal} elements");

        let io = tttc_frontends::weights::load_safetensors(&dir.join("io.safetensors"), tttc_files::Cap::new("a test file", 1 << 30)).unwrap();
        let out = run_model(&dual, &model, &io["input_ids"]);
        let logits = ratio(&out[0], &io["logits"]);
        let loss = ratio(&out[1], &io["loss"]);
        eprintln!("{}: dual form logits at {logits:.3} of tolerance, loss {loss:.3}", dir.display());
        assert!(logits <= 1.0 && loss <= 1.0);
        assert!(dual.nodes.iter().all(|n| !matches!(n.op, Op::Grad(_))));
    }
    assert!(seen >= 3);
}

/// Runs the model on `ids` in f64 with the given passes applied after the inner autodiff.
fn logits_f64(g: &Graph, model: &tttc_frontends::Model, ids: &Tensor) -> Vec<f64> {
    let g = &tttc_passes::keep_outputs(g, &["logits"]);
    let args: Vec<&Tensor> = g.args.iter().map(|a| if a.kind == ArgKind::Input { ids } else { &model.weights[&a.name] }).collect();
    run(g, &args, Precision::F64).map_err(|e| format!("{e:#}")).unwrap()[0].to_f64().unwrap()
}

/// Seeded models of several inner learners and mini-batch sizes: the derived dual form equals the
/// primal form in f64 on sequences shorter than a mini-batch, at its edge, and not a multiple of it.
#[test]
fn dual_form_equals_primal_form() {
    let dir = std::env::temp_dir().join(format!("tttc-dual-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let learners = [
        r#""ttt_layer_type": "linear""#,
        r#""ttt_layer_type": "mlp""#,
        r#""ttt_layer_type": "linear", "share_qk": true, "pre_conv": true, "use_gate": true"#,
        r#""ttt_inner": {"bias": false}"#,
        r#""ttt_inner": {"norm": "none"}"#,
        r#""ttt_inner": {"widths": [4, 2], "activation": "relu"}"#,
        r#""ttt_inner": {"widths": [4], "activation": "silu", "residual": false}"#,
        r#""ttt_inner": {"widths": [2], "bias": false}"#,
        r#""ttt_inner": {"widths": [1, 3], "activation": "silu", "bias": false, "norm": "none", "residual": false}"#,
        // The gated inner optimizer: decay products in place of τ.
        r#""ttt_inner": {"momentum": true, "forget": true}"#,
        r#""ttt_layer_type": "mlp", "ttt_inner": {"momentum": true}"#,
        r#""ttt_inner": {"widths": [4, 2], "activation": "relu", "forget": true}"#,
        // Gated hidden layers (SwiGLU; with and without biases, norm and residual; two of them),
        // the dot-product loss with both gates, and LaCT's learner updated per token.
        r#""ttt_inner": {"widths": [2], "activation": "silu", "glu": true}"#,
        r#""ttt_inner": {"widths": [2], "glu": true, "residual": false, "norm": "none"}"#,
        r#""ttt_inner": {"widths": [4, 2], "glu": true, "bias": false}"#,
        r#""ttt_inner": {"widths": [2], "loss": "dot_product", "norm": "none", "residual": false, "momentum": true, "forget": true}"#,
        r#""ttt_inner": {"widths": [1], "activation": "silu", "glu": true, "bias": false, "residual": false, "norm": "none", "loss": "dot_product"}"#,
    ];
    for learner in learners {
        for b in [1usize, 4, 7] {
            let config = format!(
                r#"{{"model_type": "ttt", "vocab_size": 23, "hidden_size": 16, "intermediate_size": 24,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "mini_batch_size": {b}, {learner}}}"#
            );
            std::fs::write(dir.join("config.json"), &config).unwrap();
            let mut model = tttc_frontends::load(&dir, None).unwrap();
            // Seeded weights leave biases and token scales at zero: perturb every weight so that
            // no term of the update vanishes.
            for (k, t) in model.weights.values_mut().enumerate() {
                let v: Vec<f32> = t.to_f32().unwrap().iter().enumerate().map(|(i, x)| x + 0.05 * (((i * 7 + k * 13) % 11) as f32 - 5.0) / 5.0).collect();
                *t = Tensor::f32(t.shape.clone(), v);
            }
            let primal = dead_code_elimination(&expand_grads(&model.builder.g).unwrap());
            let (dual, reports) = derive_with_report(&primal).unwrap();
            let dual = dead_code_elimination(&dual);
            assert!(reports.iter().all(|r| r.rewritten > 0 && !r.primal_left), "{config}: {reports:?}");
            for t in [b.saturating_sub(1).max(1), b, 2 * b + 3] {
                let ids = Tensor::i64(vec![2, t], (0..2 * t as i64).map(|i| (i * 5 + 3) % 23).collect());
                let (p, d) = (logits_f64(&primal, &model, &ids), logits_f64(&dual, &model, &ids));
                let scale = p.iter().fold(0f64, |m, x| m.max(x.abs()));
                let err = p.iter().zip(&d).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(err <= 1e-10 * scale, "{config} T={t}: dual differs from primal by {err:e} (scale {scale})");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The gated inner optimizer's bodies that hand on a state (a prefill: the current weights
/// carried beside W₀) and continue from one (a resumed run: the padding's mask too) are derived
/// as well; tests/state.rs and tests/generate.rs check what they compute.
#[test]
fn gated_bodies_that_hand_on_or_resume_a_state_get_their_dual_form() {
    use tttc_frontends::Mode;
    let dir = std::env::temp_dir().join(format!("tttc-dual-gated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for gates in [r#""momentum": true, "forget": true"#, r#""momentum": true"#, r#""forget": true"#] {
        let config = format!(
            r#"{{"model_type": "ttt", "vocab_size": 23, "hidden_size": 16, "intermediate_size": 24,
                "num_hidden_layers": 1, "num_attention_heads": 2, "mini_batch_size": 4, "ttt_inner": {{{gates}}}}}"#
        );
        std::fs::write(dir.join("config.json"), &config).unwrap();
        let model = tttc_frontends::load(&dir, None).unwrap();
        for mode in [Mode::Prefill, Mode::Resume { position: 2 }] {
            let g = tttc_frontends::build_for(&model.config, mode).unwrap().g;
            let (_, reports) = derive_with_report(&dead_code_elimination(&expand_grads(&g).unwrap())).unwrap();
            let scan = reports.iter().find(|r| r.rewritten > 0).unwrap_or_else(|| panic!("{gates} {mode:?}: nothing derived: {reports:?}"));
            assert!(!scan.primal_left, "{gates} {mode:?}: {reports:?}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A learner whose per-token weights go through a non-linear function before use has no dual
/// form: the derivation says so, keeps the per-token weights, and computes the same values.
#[test]
fn no_dual_form_keeps_the_primal_and_says_so() {
    use tttc_ir::{DType, Dim, Scan, Type, UnaryOp};
    let (d, n) = (3usize, Dim::sym("n"));
    let mut body = Graph::new("step");
    let w0 = body.input("w", Type::f32(&[d, d]));
    let x = body.input("x", Type::new(DType::F32, vec![n.clone(), Dim::c(d)]));
    let col = body.reshape(x, vec![n.clone(), Dim::c(d), Dim::c(1)]).unwrap();
    let row = body.reshape(x, vec![n.clone(), Dim::c(1), Dim::c(d)]).unwrap();
    let outer = body.mul(col, row).unwrap();
    let flat = body.reshape(outer, vec![n.clone(), Dim::c(d * d)]).unwrap();
    let one = body.scalar(1.0).unwrap();
    let ones = body.broadcast(one, vec![n.clone(), n.clone()]).unwrap();
    let mask = body.tri_mask(ones, 0.0).unwrap();
    let step = body.matmul(mask, flat).unwrap();
    let step = body.reshape(step, vec![n.clone(), Dim::c(d), Dim::c(d)]).unwrap();
    let w = body.sub(w0, step).unwrap(); // per-token weights [n, d, d]
    let w = body.unary(UnaryOp::Tanh, w).unwrap(); // non-linear in the weights: no dual form
    let z = body.matmul(row, w).unwrap();
    let z = body.reshape(z, vec![n.clone(), Dim::c(d)]).unwrap();
    let last = body.slice(w, 0, -1, None).unwrap();
    let last = body.reshape(last, vec![Dim::c(d), Dim::c(d)]).unwrap();
    body.output("w", last);
    body.output("z", z);

    let mut g = Graph::new("outer");
    let w_init = g.input("w0", Type::f32(&[d, d]));
    let xs = g.input("xs", Type::new(DType::F32, vec![Dim::sym("T"), Dim::c(d)]));
    let outs = g.scan(Scan { axis: 0, chunk: 4, carries: 1, seqs: 1, body, reverse: false }, &[w_init, xs]).unwrap();
    g.output("z", outs[1]);

    let (derived, reports) = derive_with_report(&g).unwrap();
    assert!(reports[0].primal_left, "{reports:?}");
    assert!(reports[0].summary().contains("no dual form found: keeping the primal form"), "{}", reports[0].summary());
    let w = Tensor::f64(vec![d, d], (0..9).map(|i| 0.1 * i as f64 - 0.3).collect());
    let xs = Tensor::f64(vec![7, d], (0..21).map(|i| ((i * 7 % 5) as f64 - 2.0) * 0.2).collect());
    let before = run(&g, &[&w, &xs], Precision::F64).unwrap();
    let after = run(&dead_code_elimination(&derived), &[&w, &xs], Precision::F64).unwrap();
    let (a, b) = (before[0].to_f64().unwrap(), after[0].to_f64().unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + x.abs())));
}

/// The same extraction picks the dual form for a mini-batch of 16 tokens and, with one token per
/// step, the recurrent (primal) form: the output reads the updated state the step computes anyway.
#[test]
fn one_token_per_step_reads_the_updated_state() {
    let dir = std::env::temp_dir().join(format!("tttc-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for layer in ["linear", "mlp"] {
        for b in [16usize, 1] {
            let config = format!(
                r#"{{"model_type": "ttt", "vocab_size": 23, "hidden_size": 64, "intermediate_size": 24,
                    "num_hidden_layers": 1, "num_attention_heads": 4, "mini_batch_size": {b}, "ttt_layer_type": "{layer}"}}"#
            );
            std::fs::write(dir.join("config.json"), &config).unwrap();
            let g = tttc_frontends::load_structure(&dir).unwrap().g;
            let (_, reports) = derive_with_report(&dead_code_elimination(&expand_grads(&g).unwrap())).unwrap();
            let r = &reports[0];
            eprintln!("{layer} b={b}: {}", r.summary());
            if b == 1 {
                assert!(r.shared > 0, "{layer}: one token per step should read the updated state: {r:?}");
                assert!(r.summary().contains("primal form"), "{}", r.summary());
            } else {
                assert_eq!(r.shared, 0, "{layer}: {r:?}");
                assert!(r.summary().starts_with("dual form derived"), "{}", r.summary());
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// LaCT's chunk loop applies its fast weights to a chunk, then updates them once from the whole
/// chunk: no per-token copies of the state, nothing to derive. The body is kept as written (with
/// Muon's chains of products, before any e-graph is built) and says so.
#[test]
fn a_state_updated_once_per_chunk_is_kept_as_written() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors-lact/lact-momentum-muon");
    let g = dead_code_elimination(&expand_grads(&tttc_frontends::load_structure(&model).unwrap().g).unwrap());
    let (derived, reports) = derive_with_report(&g).unwrap();
    let chunk_scans: Vec<_> = g.nodes.iter().zip(&derived.nodes).filter(|(n, _)| matches!(&n.op, Op::Scan(s) if s.body.name == "lact_chunk")).collect();
    assert_eq!(chunk_scans.len(), 2, "one chunk loop per layer");
    for (before, after) in chunk_scans {
        assert_eq!(before.op, after.op, "the chunk body is unchanged");
    }
    let notes: Vec<String> = reports.iter().map(|r| r.summary()).filter(|s| s.contains("not copied per token")).collect();
    assert_eq!(notes.len(), 2, "{:?}", reports.iter().map(|r| r.summary()).collect::<Vec<_>>());
    assert!(reports.iter().filter(|r| !r.per_token_state).all(|r| r.egraph_nodes == 0));
}
