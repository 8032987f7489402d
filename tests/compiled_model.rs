//! The compiled model `tttc compile` writes (cpu/model.o, cpu/model.h), linked with the system's
//! C compiler into the shipped example driver (examples/c/run_model.c) and run on every
//! reference case: its logits and loss match the reference within SPEC §1's tolerance; and its
//! training entry point, linked into the shipped training-step driver (examples/c/train_step.c):
//! its loss and gradients match the reference.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use safetensors::SafeTensors;

const RTOL_LOGITS: f64 = 1e-5;
const RTOL_GRADS: f64 = 1e-4;

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Compiles `case` at its input's sizes into `out` and links `driver` (a file of examples/c/)
/// with the object file; returns the executable and the manifest.
fn compile_and_link(case: &Path, out: &Path, driver: &str) -> (PathBuf, serde_json::Value) {
    let name = case.file_name().unwrap().to_string_lossy().to_string();
    let ids = &read(&case.join("io.safetensors"))["input_ids"];
    let (b, t) = (ids.shape[0].to_string(), ids.shape[1].to_string());
    let r = tttc(&["compile", p(case), "-o", p(out), "--batch", &b, "--seq-len", &t]);
    assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
    let exe = out.join(driver.trim_end_matches(".c"));
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(out.join("cpu"))
        .arg(repo().join("examples/c").join(driver))
        .arg(out.join("cpu/model.o"))
        .args(["-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("a C compiler (cc)");
    assert!(cc.status.success(), "{name}: cc: {}", String::from_utf8_lossy(&cc.stderr));
    let manifest = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    (exe, manifest)
}

/// The arguments of the manifest's CPU entry point `entry` as raw files in `dir`, named as it
/// lists them: input_ids, then the case's weights.
fn write_args(case: &Path, manifest: &serde_json::Value, entry: &str, dir: &Path) {
    let ids = &read(&case.join("io.safetensors"))["input_ids"];
    std::fs::create_dir_all(dir).unwrap();
    let weights = std::fs::read(case.join("model.safetensors")).unwrap();
    let weights = SafeTensors::deserialize(&weights).unwrap();
    let entry = manifest["cpu"]["entries"].as_array().unwrap().iter().find(|e| e["name"] == entry).unwrap_or_else(|| panic!("no entry point {entry}"));
    for a in entry["args"].as_array().unwrap() {
        let arg = a["name"].as_str().unwrap();
        let bytes = if arg == "input_ids" { i64_bytes(&ids.i64) } else { weights.tensor(arg).unwrap_or_else(|e| panic!("{arg}: {e}")).data().to_vec() };
        std::fs::write(dir.join(format!("{arg}.bin")), bytes).unwrap();
    }
}

#[test]
fn the_compiled_model_links_into_a_c_program_and_matches_every_reference_case() {
    let dir = scratch("compiled_model");
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let out = dir.join(&name);
        let (exe, manifest) = compile_and_link(&case, &out, "run_model.c");
        let (args, results) = (out.join("args"), out.join("results"));
        write_args(&case, &manifest, "forward", &args);
        std::fs::create_dir_all(&results).unwrap();
        let run = Command::new(&exe).arg(&args).arg(&results).output().unwrap();
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));

        let logits = floats(&std::fs::read(results.join("logits.bin")).unwrap());
        let loss = floats(&std::fs::read(results.join("loss.bin")).unwrap());
        let logits_ratio = parity_ratio(&logits, &io["logits"].f32, RTOL_LOGITS);
        let loss_ratio = parity_ratio(&loss, &io["loss"].f32, RTOL_LOGITS);
        eprintln!("{name}: logits error {logits_ratio:.3} of tolerance, loss {loss_ratio:.3}");
        assert!(logits_ratio <= 1.0 && loss_ratio <= 1.0, "{name}: logits at {logits_ratio:.2}× tolerance, loss at {loss_ratio:.2}×");

        // An id outside the vocabulary: status 1, reported, no crash.
        let vocab = io["logits"].shape[2] as i64;
        let mut bad = ids.i64.clone();
        bad[0] = vocab;
        std::fs::write(args.join("input_ids.bin"), i64_bytes(&bad)).unwrap();
        let run = Command::new(&exe).arg(&args).arg(&results).output().unwrap();
        assert_eq!(run.status.code(), Some(1), "{name}: an out-of-range id must fail");
        assert!(String::from_utf8_lossy(&run.stderr).contains("returned 1"), "{name}");
    }
}

/// The training entry point through the shipped driver (examples/c/train_step.c): the loss and
/// every gradient match the reference (PyTorch, f64) within SPEC's tolerances, each new weight is
/// the SGD step from them, and the loss the forward entry point gives at the new weights is
/// `tttc run`'s with those weights.
#[test]
fn the_compiled_training_step_matches_every_reference_case() {
    const LR: f32 = 0.05;
    let dir = scratch("compiled_training_step");
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        let out = dir.join(&name);
        let (exe, manifest) = compile_and_link(&case, &out, "train_step.c");
        let (args, results) = (out.join("args"), out.join("results"));
        write_args(&case, &manifest, "loss_and_grad", &args);
        std::fs::create_dir_all(&results).unwrap();
        let run = Command::new(&exe).arg(&args).arg(&results).arg(LR.to_string()).output().unwrap();
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));

        let file = |n: &str| floats(&std::fs::read(results.join(format!("{n}.bin"))).unwrap());
        let ratio = parity_ratio(&file("loss"), &io["loss"].f32, RTOL_LOGITS);
        assert!(ratio <= 1.0, "{name}: loss at {ratio:.2}× tolerance");
        let want = read(&case.join("grads.safetensors"));
        let weights = read(&case.join("model.safetensors"));
        let mut stepped = Vec::new();
        for (param, reference) in &want {
            let grad = file(&format!("grad.{param}"));
            let ratio = parity_ratio(&grad, &reference.f32, RTOL_GRADS);
            assert!(ratio <= 1.0, "{name}: d/d{param} at {ratio:.2}× tolerance");
            let new = file(param);
            let w = &weights[param];
            for ((&n, &w), &g) in new.iter().zip(&w.f32).zip(&grad) {
                assert_eq!(n, w - LR * g, "{name}: {param} after the step");
            }
            stepped.push((param.clone(), safetensors::Dtype::F32, w.shape.clone(), new.iter().flat_map(|x| x.to_le_bytes()).collect()));
        }
        let new_weights = out.join("stepped.safetensors");
        write_raw(&new_weights, &stepped);
        let forward = out.join("forward.safetensors");
        let r = tttc(&["run", p(&case), "--input", p(&case.join("io.safetensors")), "--weights", p(&new_weights), "-o", p(&forward)]);
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
        let ratio = parity_ratio(&file("loss_after"), &read(&forward)["loss"].f32, RTOL_LOGITS);
        assert!(ratio <= 1.0, "{name}: the loss after the step at {ratio:.2}× tolerance of tttc run's");
        eprintln!("{name}: {}", String::from_utf8_lossy(&run.stdout).trim());
    }
}
