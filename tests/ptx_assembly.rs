//! Every example's PTX, as `tttc compile` writes it (the forward pass, the training step and,
//! for every family whose decoding state keeps its size, decoding's prefill and step), assembled
//! by NVIDIA's `ptxas` for sm_80 and sm_90: any error fails, every kernel gets figures for both
//! targets, and none spills.
//! Needs `ptxas` (`TTTC_PTXAS` or `PATH`; `.ci/run` installs it from the pip package
//! `nvidia-cuda-nvcc-cu12`), so it is ignored by a plain `cargo test`.

mod common;

use common::{examples, p, scratch, tttc};

#[test]
#[ignore = "needs ptxas (pip install nvidia-cuda-nvcc-cu12); .ci/run runs it"]
fn every_example_assembles_for_sm80_and_sm90() {
    assert!(tttc_ptx::ptxas::find().is_some(), "ptxas not found: set TTTC_PTXAS or put it on PATH");
    let out_dir = scratch("ptx_assembly");
    let examples = examples();
    assert!(!examples.is_empty());
    for ex in examples {
        let out = out_dir.join(ex.file_stem().unwrap());
        let r = tttc(&["compile", p(&ex), "-o", p(&out), "--seq-len", "256"]);
        assert!(r.status.success(), "{}: {}", ex.display(), String::from_utf8_lossy(&r.stderr));
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        // Decoding's programs exist unless a KV cache grows with every step (Llama's).
        let decodes = manifest["model"]["model_type"] != "llama";
        let programs: &[&str] = if decodes { &["gpu", "gpu_loss_and_grad", "gpu_prefill", "gpu_step"] } else { &["gpu", "gpu_loss_and_grad"] };
        for program in programs {
            let gpu = &manifest[program];
            assert!(gpu["ptxas"].is_string(), "{}: compile did not find ptxas for {program}", ex.display());
            let seconds = gpu["estimate"]["seconds"].as_f64();
            assert!(seconds.is_some_and(|s| s > 0.0), "{}: {program} has no H100 estimate from its figures", ex.display());
            let kernels = gpu["kernels"].as_array().unwrap();
            assert!(!kernels.is_empty());
            for k in kernels {
                for target in tttc_ptx::TARGETS {
                    let f = &k["ptxas"][target];
                    assert!(f["registers"].as_u64().is_some_and(|r| r > 0), "{}: {program} {} has no {target} figures", ex.display(), k["name"]);
                    assert_eq!(f["spill_store_bytes"], 0, "{}: {program} {} spills on {target}", ex.display(), k["name"]);
                }
            }
        }
    }
}
