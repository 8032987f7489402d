//! `tttc grad` on every reference case with gradients (SPEC's and LaCT's): the loss within 1e-5
//! and every parameter's gradient within 1e-4 (max-normalised) of `grads.safetensors`, computed
//! in f64, on every backend that runs here, and on a GPU where there is one.

mod common;
use common::*;

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
    let every = [cases(), lact_cases()].concat().into_iter().filter(|c| c.join("grads.safetensors").exists());
    for (case, backend) in every.flat_map(|c| backends.iter().map(move |&b| (c.clone(), b))).filter(|(c, b)| runs_on(c, b)) {
        let name = format!("{} ({backend})", case.file_name().unwrap().to_str().unwrap());
        let out = out_dir.join(format!("{name}.safetensors"));
        let io = case.join("io.safetensors");
        let r = tttc(&["grad", p(&case), "--input", p(&io), "--output", p(&out), "--backend", backend]);
        if !r.status.success() {
            failures.push(format!("{name}: tttc grad failed: {}", String::from_utf8_lossy(&r.stderr)));
            continue;
        }
        let got = read(&out);
        let want = read(&case.join("grads.safetensors"));
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
