//! LaCT's bidirectional layer (SPEC-lact.md §8) on every layer case and every backend that runs
//! here: the output `y` within 1e-5, and the vector–Jacobian product with the case's cotangent
//! `r` (`dx` and every parameter's gradient, ∂Σ(y⊙r)) within 1e-4 of the reference, which was
//! computed in f64.

mod common;
use common::*;
use tttc_passes::ADJOINT;
use tttc_runtime::Executable;

#[test]
fn bidirectional_layer_matches_every_case() {
    check_layer_cases(&backends());
}

/// The same on a GPU (`cuda`).
#[test]
#[ignore = "needs a GPU"]
fn bidirectional_layer_matches_every_case_on_the_gpu() {
    check_layer_cases(&gpu_backends());
}

fn check_layer_cases(backends: &[&str]) {
    for case in lact_layer_cases().into_iter().filter(|c| backends.iter().any(|b| runs_on(c, b))) {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let (config, _) = tttc_frontends::parse_config_json(&std::fs::read_to_string(case.join("config.json")).unwrap()).unwrap();
        let layer = tttc_frontends::build_layer(&config).unwrap().g;
        let weights = tttc_runtime::read_tensors(&case.join("model.safetensors")).unwrap();
        let io = tttc_runtime::read_tensors(&case.join("layer.safetensors")).unwrap();
        let want_grads = tttc_runtime::read_tensors(&case.join("grads.safetensors")).unwrap();
        let (x, r) = (&io["x"], &io["r"]);
        let forward = Executable::new(tttc_passes::compile(&layer).unwrap());
        let vjp = tttc_passes::vector_jacobian_product(&tttc_passes::differentiable(&layer).unwrap(), &[]).unwrap();
        let vjp = Executable::new(tttc_passes::compile(&vjp).unwrap());
        let cotangent = format!("{ADJOINT}y");
        for backend in backends.iter().copied().filter(|b| runs_on(&case, b)) {
            let tag = format!("{name} ({backend})");
            let on = tttc_runtime::backend(backend).unwrap();
            let y = forward.run_with(&weights, &[("x", x)], on).unwrap();
            let ratio = parity_ratio(y[0].as_f32().unwrap(), io["y"].as_f32().unwrap(), 1e-5);
            assert!(ratio <= 1.0, "{tag}: y at {ratio:.2}x tolerance");
            let outs = vjp.run_with(&weights, &[("x", x), (&cotangent, r)], on).unwrap();
            let got: std::collections::BTreeMap<&str, &tttc_ir::Tensor> = vjp.graph.outputs.iter().map(|(n, _)| n.as_str()).zip(&outs).collect();
            let mut worst = 0f64;
            let wanted = want_grads.iter().map(|(n, t)| (n.clone(), t)).chain([("x".to_string(), &io["dx"])]);
            for (param, want) in wanted {
                let have = got.get(format!("{ADJOINT}{param}").as_str()).unwrap_or_else(|| panic!("{tag}: no gradient for {param}"));
                assert_eq!(have.shape, want.shape, "{tag}: d/d{param} shape");
                let ratio = parity_ratio(have.as_f32().unwrap(), want.as_f32().unwrap(), 1e-4);
                assert!(ratio <= 1.0, "{tag}: d/d{param} at {ratio:.2}x tolerance");
                worst = worst.max(ratio);
            }
            eprintln!("{tag}: y at {ratio:.3} of tolerance, worst gradient at {worst:.3}");
        }
    }
}

/// A bidirectional layer is no language model: `tttc run` refuses it in one line.
#[test]
fn a_bidirectional_layer_is_not_a_language_model() {
    let case = lact_layer_cases().into_iter().next().unwrap();
    let input = case.join("layer.safetensors");
    let out = scratch("lact_layer_run").join("out.safetensors");
    let r = tttc(&["run", p(&case), "--input", p(&input), "--output", p(&out)]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && stderr.contains("one layer") && stderr.lines().count() == 1, "{stderr}");
    assert!(!out.exists());
}
