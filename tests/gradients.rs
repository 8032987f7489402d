//! `tttc grad` on every reference case (SPEC's, the gated optimizer's and LaCT's): the loss within
//! 1e-5 and every parameter's gradient within 1e-4 (max-normalised) of the reference gradient
//! computed in f64, on every backend that runs here, and on a GPU where there is one. The
//! reference is the case's `grads.safetensors`; the gated optimizer's cases, which have none (SPEC
//! §2), are checked against the interpreter's reverse sweep in f64, itself checked against central
//! finite differences of the f64 loss.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::path::Path;

use tttc_ir::{ArgKind, Precision, Tensor};

const RTOL_LOSS: f64 = 1e-5;
const RTOL_GRADS: f64 = 1e-4;

#[test]
fn grad_matches_every_reference_case() {
    check_every_case(&backends(), "reference_grads");
}

#[test]
#[ignore = "needs a GPU"]
fn cuda_grad_matches_every_reference_case() {
    check_every_case(&gpu_backends(), "reference_grads_cuda");
}

fn check_every_case(backends: &[&str], scratch_name: &str) {
    let out_dir = scratch(scratch_name);
    let mut failures = Vec::new();
    let with_files = [cases(), lact_cases()].concat().into_iter().filter(|c| c.join("grads.safetensors").exists()).map(|c| {
        let want = read(&c.join("grads.safetensors"));
        (c, want)
    });
    let every = with_files.chain(gated_cases().into_iter().map(|c| {
        let want = gradients_in_f64(&c);
        (c, want)
    }));
    for ((case, want), backend) in every.flat_map(|c| backends.iter().map(move |&b| (c.clone(), b))).filter(|((c, _), b)| runs_on(c, b)) {
        let name = format!("{} ({backend})", case.file_name().unwrap().to_str().unwrap());
        let out = out_dir.join(format!("{name}.safetensors"));
        let io = case.join("io.safetensors");
        let r = tttc(&["grad", p(&case), "--input", p(&io), "--output", p(&out), "--backend", backend]);
        if !r.status.success() {
            failures.push(format!("{name}: tttc grad failed: {}", String::from_utf8_lossy(&r.stderr)));
            continue;
        }
        let got = read(&out);
        let loss = parity_ratio(&got["loss"].f32, &read(&io)["loss"].f32, RTOL_LOSS);
        if loss > 1.0 {
            failures.push(format!("{name}: loss at {loss:.2}× tolerance"));
        }
        let mut worst = (0.0f64, String::new());
        for (param, reference) in &want {
            let Some(ours) = got.get(param) else {
                failures.push(format!("{name}: no gradient for {param}"));
                continue;
            };
            assert_eq!(ours.shape, reference.shape, "{name}: {param} shape");
            let ratio = parity_ratio(&ours.f32, &reference.f32, RTOL_GRADS);
            if ratio > worst.0 {
                worst = (ratio, param.clone());
            }
            if ratio > 1.0 {
                failures.push(format!("{name}: d/d{param} at {ratio:.2}× tolerance"));
            }
        }
        let extra: Vec<&String> = got.keys().filter(|k| *k != "loss" && !want.contains_key(*k)).collect();
        if !extra.is_empty() {
            failures.push(format!("{name}: gradients for unknown parameters {extra:?}"));
        }
        eprintln!("{name}: loss {loss:.3} of tolerance; worst gradient {} at {:.3}", worst.1, worst.0);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The gradient of the loss of `case` on its input, by the interpreter's reverse sweep in f64
/// (the case's weights widened to f64), after checking each parameter's gradient along two
/// directions against the central differences of the f64 loss along them.
fn gradients_in_f64(case: &Path) -> BTreeMap<String, Array> {
    let name = case.file_name().unwrap().to_string_lossy();
    let model = tttc_frontends::load(case, None).unwrap();
    let weights: BTreeMap<String, Tensor> = model.weights.iter().map(|(k, t)| (k.clone(), Tensor::f64(t.shape.clone(), t.to_f64().unwrap()))).collect();
    let ids = &read(&case.join("io.safetensors"))["input_ids"];
    let ids = Tensor::i64(ids.shape.clone(), ids.i64.clone());
    let eval = |g: &tttc_ir::Graph, weights: &BTreeMap<String, Tensor>| -> Vec<Tensor> {
        let args: Vec<&Tensor> = g.args.iter().map(|a| if matches!(a.kind, ArgKind::Input) { &ids } else { &weights[&a.name] }).collect();
        tttc_ir::run(g, &args, Precision::F64).unwrap()
    };
    let forward = tttc_passes::expand_grads(&model.builder.g).unwrap();
    let gradient = tttc_passes::dead_code_elimination(&tttc_passes::gradient_graph(&forward, "loss", 1).unwrap());
    let loss_only = tttc_passes::keep_outputs(&forward, &["loss"]);
    let grads = eval(&gradient, &weights);
    let mut out = BTreeMap::new();
    for ((param, _), tensor) in gradient.outputs.iter().zip(&grads).skip(1) {
        let grad = tensor.to_f64().unwrap();
        // Two directions of ±1 entries (signs from a hash of the index); the loss moved by ±eps
        // along each.
        for k in 0..2 {
            let direction: Vec<f64> =
                (0..grad.len()).map(|i| if ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (40 + 7 * k)) & 1 == 1 { -1.0 } else { 1.0 }).collect();
            let loss_along = |eps: f64| {
                let mut w = weights.clone();
                let t = &w[param];
                let moved = t.to_f64().unwrap().iter().zip(&direction).map(|(x, d)| x + eps * d).collect();
                w.insert(param.clone(), Tensor::f64(t.shape.clone(), moved));
                eval(&loss_only, &w)[0].to_f64().unwrap()[0]
            };
            let eps = 1e-6;
            let numeric = (loss_along(eps) - loss_along(-eps)) / (2.0 * eps);
            let analytic: f64 = grad.iter().zip(&direction).map(|(g, d)| g * d).sum();
            let scale = grad.iter().map(|g| g.abs()).sum::<f64>();
            assert!(
                (analytic - numeric).abs() <= 1e-6 * (1.0 + scale),
                "{name}: d loss / d {param} along direction {k}: autodiff {analytic} vs numeric {numeric}"
            );
        }
        out.insert(param.clone(), Array { shape: tensor.shape.clone(), f32: grad.iter().map(|&g| g as f32).collect(), i64: vec![] });
    }
    out
}

#[test]
fn grad_needs_two_tokens() {
    let case = cases().into_iter().next().unwrap();
    let dir = scratch("grad_one_token");
    let input = dir.join("in.safetensors");
    write_raw(&input, &[("input_ids".into(), safetensors::Dtype::I64, vec![1, 1], i64_bytes(&[3]))]);
    let out = dir.join("out.safetensors");
    let r = tttc(&["grad", p(&case), "--input", p(&input), "--output", p(&out)]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && stderr.contains("T = 1") && stderr.lines().count() == 1, "{stderr}");
    assert!(!out.exists());
}

/// `tttc grad` refuses what it cannot honour, in one line and writing nothing: a packed batch
/// (its sequences would be taken for one), and `--state-out` (it writes gradients, not states).
#[test]
fn grad_refuses_packed_batches_and_state_out() {
    let case = cases().into_iter().next().unwrap();
    let dir = scratch("grad_refuses");
    let (packed, plain) = (dir.join("packed.safetensors"), dir.join("plain.safetensors"));
    let ids: Vec<i64> = (0..6).collect();
    write_raw(
        &packed,
        &[
            ("input_ids".into(), safetensors::Dtype::I64, vec![1, 6], i64_bytes(&ids)),
            ("cu_seqlens".into(), safetensors::Dtype::I64, vec![3], i64_bytes(&[0, 2, 6])),
        ],
    );
    write_raw(&plain, &[("input_ids".into(), safetensors::Dtype::I64, vec![1, 6], i64_bytes(&ids))]);
    let state = dir.join("state.safetensors");
    for (input, extra, needle) in [(&packed, vec![], "no packed batch"), (&plain, vec!["--state-out", p(&state)], "writes no state")] {
        let out = dir.join("out.safetensors");
        let mut args = vec!["grad", p(&case), "--input", p(input), "--output", p(&out)];
        args.extend(extra);
        let r = tttc(&args);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success() && stderr.contains(needle) && stderr.lines().count() == 1, "{stderr}");
        assert!(!out.exists() && !state.exists());
    }
}
