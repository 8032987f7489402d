//! Model sources and weight files: model.toml with and without weights, `--weights`, f16/bf16
//! files, seeded initialisation, and T = 1.

mod common;
use common::*;

use safetensors::Dtype;
use std::path::Path;

const CASE: &str = "ttt-mlp-mamba-backbone";

fn run_ok(model: &Path, input: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec!["run", p(model), "--input", p(input), "--output", p(out)];
    args.extend_from_slice(extra);
    let r = tttc(&args);
    assert!(r.status.success(), "tttc failed: {}", String::from_utf8_lossy(&r.stderr));
}

/// A model.toml holding the case's config.json keys under [config].
fn toml_for_case(case: &str, weights: Option<&str>) -> String {
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(repo().join("tests/vectors").join(case).join("config.json")).unwrap()).unwrap();
    let mut s = format!("model_type = {}\n", cfg["model_type"]);
    if let Some(w) = weights {
        s += &format!("weights = {w:?}\n");
    }
    s += "[config]\n";
    for (k, v) in cfg.as_object().unwrap() {
        let keep = v.is_number() || v.is_boolean() || v.is_string();
        if k != "model_type" && keep {
            s += &format!("{k} = {v}\n");
        }
    }
    s
}

#[test]
fn model_toml_with_weights_matches_the_folder() {
    let dir = copy_case(CASE, "toml_weights");
    std::fs::write(dir.join("model.toml"), toml_for_case(CASE, Some("model.safetensors"))).unwrap();
    let io = dir.join("io.safetensors");
    run_ok(&dir.join("model.toml"), &io, &dir.join("a.safetensors"), &[]);
    run_ok(&dir, &io, &dir.join("b.safetensors"), &[]);
    assert_eq!(read(&dir.join("a.safetensors"))["logits"].f32, read(&dir.join("b.safetensors"))["logits"].f32);
}

#[test]
fn weights_flag_wins() {
    let dir = copy_case(CASE, "weights_flag");
    // The toml names a file that does not exist: --weights must win over it.
    std::fs::write(dir.join("model.toml"), toml_for_case(CASE, Some("absent.safetensors"))).unwrap();
    let io = dir.join("io.safetensors");
    let w = dir.join("model.safetensors");
    run_ok(&dir.join("model.toml"), &io, &dir.join("out.safetensors"), &["--weights", p(&w)]);
    let ratio = parity_ratio(&read(&dir.join("out.safetensors"))["logits"].f32, &read(&io)["logits"].f32, 1e-5);
    assert!(ratio <= 1.0, "logits at {ratio}× tolerance");
}

/// Half-precision files are converted on load: a bf16 (or f16) file gives exactly the logits of an
/// f32 file holding the same (rounded) values.
#[test]
fn half_precision_weights_are_converted() {
    for (label, dtype) in [("bf16", Dtype::BF16), ("f16", Dtype::F16)] {
        let dir = copy_case(CASE, &format!("half_{label}"));
        let raw = read_raw(&dir.join("model.safetensors"));
        let (mut half, mut rounded) = (Vec::new(), Vec::new());
        for (name, _, shape, data) in raw {
            let vals = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()));
            let (hb, fb): (Vec<[u8; 2]>, Vec<f32>) = match dtype {
                Dtype::BF16 => vals
                    .map(|x| {
                        let h = half::bf16::from_f32(x);
                        (h.to_le_bytes(), h.to_f32())
                    })
                    .unzip(),
                _ => vals
                    .map(|x| {
                        let h = half::f16::from_f32(x);
                        (h.to_le_bytes(), h.to_f32())
                    })
                    .unzip(),
            };
            half.push((name.clone(), dtype, shape.clone(), hb.concat()));
            rounded.push((name, Dtype::F32, shape, fb.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
        write_raw(&dir.join("half.safetensors"), &half);
        write_raw(&dir.join("rounded.safetensors"), &rounded);
        let io = dir.join("io.safetensors");
        run_ok(&dir, &io, &dir.join("a.safetensors"), &["--weights", p(&dir.join("half.safetensors"))]);
        run_ok(&dir, &io, &dir.join("b.safetensors"), &["--weights", p(&dir.join("rounded.safetensors"))]);
        assert_eq!(read(&dir.join("a.safetensors"))["logits"].f32, read(&dir.join("b.safetensors"))["logits"].f32, "{label}");
    }
}

#[test]
fn seeded_initialisation_is_deterministic() {
    let dir = scratch("seeded");
    let input = dir.join("in.safetensors");
    write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![2, 5], i64_bytes(&[1, 2, 3, 4, 5, 9, 8, 7, 6, 5]))]);
    let toml = std::fs::read_to_string(repo().join("examples/ttt-linear-tiny.toml")).unwrap();
    std::fs::write(dir.join("a.toml"), &toml).unwrap();
    std::fs::write(dir.join("b.toml"), toml.replace("seed = 0", "seed = 1")).unwrap();
    run_ok(&dir.join("a.toml"), &input, &dir.join("a1.safetensors"), &[]);
    run_ok(&dir.join("a.toml"), &input, &dir.join("a2.safetensors"), &[]);
    run_ok(&dir.join("b.toml"), &input, &dir.join("b.safetensors"), &[]);
    let (a1, a2, b) = (read(&dir.join("a1.safetensors")), read(&dir.join("a2.safetensors")), read(&dir.join("b.safetensors")));
    assert_eq!(a1["logits"].f32, a2["logits"].f32);
    assert_ne!(a1["logits"].f32, b["logits"].f32);
    // An untrained model over 256 tokens predicts roughly uniformly: loss near ln 256.
    let loss = a1["loss"].f32[0];
    assert!((loss - 256f32.ln()).abs() < 0.5, "loss {loss}");
}

#[test]
fn single_token_has_logits_and_no_loss() {
    let dir = copy_case(CASE, "single_token");
    let input = dir.join("in.safetensors");
    let ids = read(&dir.join("io.safetensors"))["input_ids"].i64.clone();
    write_raw(&input, &[("input_ids".into(), Dtype::I64, vec![1, 1], i64_bytes(&ids[..1]))]);
    run_ok(&dir, &input, &dir.join("out.safetensors"), &[]);
    let out = read(&dir.join("out.safetensors"));
    assert!(!out.contains_key("loss"));
    // Causality: the first position's logits do not depend on later tokens.
    let want = &read(&dir.join("io.safetensors"))["logits"].f32[..out["logits"].f32.len()];
    assert!(parity_ratio(&out["logits"].f32, want, 1e-5) <= 1.0);
}
