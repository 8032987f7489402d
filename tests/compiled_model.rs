//! The compiled model `tttc compile` writes (cpu/model.o, cpu/model.h), linked with the system's
//! C compiler into the shipped example driver (examples/c/run_model.c) and run on every
//! reference case (SPEC's, the gated optimizer's and LaCT's language models): its logits and loss match the reference within SPEC §1's tolerance; and its
//! training entry point, linked into the shipped training-step driver (examples/c/train_step.c):
//! its loss and gradients match the reference; and its decoding entry points, linked into the
//! shipped greedy decoder (examples/c/generate.c): its tokens and logits are `tttc generate`'s.
//! One compiled model serves every length up to the bounds it was compiled for. A compiled layer
//! (LaCT's bidirectional one) runs its forward pass and its backward through the same driver.

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

/// The cases of `cases` that the tests run on the compiled model (every one but LaCT's switch
/// variants, see `runs_on`).
fn compiled_cases(cases: Vec<PathBuf>) -> Vec<PathBuf> {
    cases.into_iter().filter(|c| runs_on(c, "cpu-model")).collect()
}

/// Compiles `case` for its input's batch size and lengths up to `seq_len` into `out`; returns the
/// manifest.
fn compile(case: &Path, out: &Path, seq_len: usize) -> serde_json::Value {
    let ids = &read(&case.join("io.safetensors"))["input_ids"];
    compile_for(case, out, ids.shape[0], seq_len)
}

/// Compiles `case` for B up to `batch` and T up to `seq_len` into `out`; returns the manifest.
fn compile_for(case: &Path, out: &Path, batch: usize, seq_len: usize) -> serde_json::Value {
    let (b, t) = (batch.to_string(), seq_len.to_string());
    let r = tttc(&["compile", p(case), "-o", p(out), "--batch", &b, "--seq-len", &t, "--no-ptxas"]);
    assert!(r.status.success(), "{}: {}", case.display(), String::from_utf8_lossy(&r.stderr));
    serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap()
}

/// Links `driver` (a file of examples/c/) with the object file compiled into `out`; returns the
/// executable.
fn link(out: &Path, driver: &str) -> PathBuf {
    link_with(out, driver, None)
}

/// [`link`], with the driver built with `-D<define>` (the executable named after it).
fn link_with(out: &Path, driver: &str, define: Option<&str>) -> PathBuf {
    let exe = out.join(define.unwrap_or(driver.trim_end_matches(".c")));
    let cc = Command::new("cc")
        .args(define.map(|d| format!("-D{d}")))
        .args(["-O2", "-Wall", "-Werror", "-I"])
        .arg(out.join("cpu"))
        .arg(repo().join("examples/c").join(driver))
        .arg(out.join("cpu/model.o"))
        .args(["-lm", "-lpthread", "-o"])
        .arg(&exe)
        .output()
        .expect("a C compiler (cc)");
    assert!(cc.status.success(), "{}: cc: {}", out.display(), String::from_utf8_lossy(&cc.stderr));
    exe
}

/// The arguments of the manifest's CPU entry point `entry` as raw files in `dir`, named as it
/// lists them: input_ids (`ids`), then the case's weights.
fn write_args(case: &Path, manifest: &serde_json::Value, entry: &str, ids: &[i64], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let weights = std::fs::read(case.join("model.safetensors")).unwrap();
    let weights = SafeTensors::deserialize(&weights).unwrap();
    let entry = manifest["cpu"]["entries"].as_array().unwrap().iter().find(|e| e["name"] == entry).unwrap_or_else(|| panic!("no entry point {entry}"));
    for a in entry["args"].as_array().unwrap() {
        let arg = a["name"].as_str().unwrap();
        let bytes = if arg == "input_ids" { i64_bytes(ids) } else { weights.tensor(arg).unwrap_or_else(|e| panic!("{arg}: {e}")).data().to_vec() };
        std::fs::write(dir.join(format!("{arg}.bin")), bytes).unwrap();
    }
}

/// A model's run (logits, loss and the state after the sequence) and training step (the loss and
/// every gradient), each compiled once for lengths up to B = 2, T = 40 as a CPU object and as a
/// GPU program (run by the PTX simulator), run at lengths inside and at the ends of those ranges
/// (whole mini-batches, a shorter last one, a single token; an odd and an even number of them)
/// give the interpreter's outputs; a length past its bound is refused.
#[test]
fn one_compiled_model_serves_every_length_up_to_its_bounds() {
    for case in compiled_cases(all_cases()) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let model = tttc_frontends::load(&case, None).unwrap();
        let vocab = model.config.vocab_size();
        let run = tttc_passes::compile(&tttc_frontends::build_for(&model.config, tttc_frontends::Mode::Run).unwrap().g).unwrap();
        let step = tttc_runtime::GradientStep::of(&model.builder.g, vocab, None).unwrap();
        let bounds = [("B".to_string(), 2), ("T".to_string(), 40)].into_iter().collect();
        for (graph, rtol, shortest) in [(&run, RTOL_LOGITS, 1), (step.graph(), RTOL_GRADS, 2)] {
            let compiled = tttc_codegen_cpu::aot::CompiledModel::compile(graph, &bounds).unwrap();
            let gpu = tttc_ptx::model::GpuModel::compile(graph, &bounds).unwrap();
            assert_eq!(gpu.signature.lengths, compiled.signature.lengths, "{name} {}: the GPU program's lengths", graph.name);
            let device = std::cell::RefCell::new(tttc_ptx_sim::SimDevice::load(&gpu.module("sm_80").to_text()).unwrap());
            let simulated = |args: &[&tttc_ir::Tensor]| gpu.run(&mut *device.borrow_mut(), args);
            let lengths: Vec<&str> = compiled.signature.lengths.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(lengths, ["B", "T"], "{name} {}: the lengths left open", graph.name);
            // Laid out for the longest lengths, the workspace is about what the fixed-size schedule at
            // those lengths needs (a chunk longer than any sequence gets no body of its own).
            let fixed = tttc_codegen_cpu::aot::schedule(graph, &bounds, tttc_lower::schedule::Lengths::Fixed).unwrap().1;
            let (open, at_bounds) = (compiled.signature.workspace_bytes, fixed.workspace_bytes);
            assert!(open <= at_bounds + at_bounds / 4 + (64 << 10), "{name} {}: workspace {open} bytes, {at_bounds} at fixed sizes", graph.name);
            for (b, t) in [(2, 40), (1, 1), (2, 2), (2, 15), (1, 16), (2, 17), (1, 33), (2, 32)] {
                if t < shortest {
                    continue;
                }
                let ids = tttc_ir::Tensor::i64(vec![b, t], (0..(b * t) as i64).map(|i| (i * 7 + 3) % vocab as i64).collect());
                let args: Vec<&tttc_ir::Tensor> = graph.args.iter().map(|a| if a.name == "input_ids" { &ids } else { &model.weights[&a.name] }).collect();
                let want = tttc_ir::run(graph, &args, tttc_ir::Precision::F32).unwrap();
                // The simulator (slow) at a single token, whole chunks and a shorter last one.
                let on_gpu = [(1, 1), (1, 16), (2, 17)].contains(&(b, t));
                for (who, got) in [("cpu-model", Some(compiled.run(&args))), ("ptx-sim", on_gpu.then(|| simulated(&args)))] {
                    let Some(got) = got else { continue };
                    let got = got.unwrap_or_else(|e| panic!("{name} {} on {who} at B = {b}, T = {t}: {e:#}", graph.name));
                    for (((out, _), w), g) in graph.outputs.iter().zip(&want).zip(&got) {
                        assert_eq!(g.shape, w.shape, "{name} on {who} at B = {b}, T = {t}: {out}");
                        let ratio = parity_ratio(g.as_f32().unwrap(), w.as_f32().unwrap(), rtol);
                        assert!(ratio <= 1.0, "{name} {} on {who} at B = {b}, T = {t}: {out} at {ratio:.2}× tolerance", graph.name);
                    }
                }
            }
            let long = tttc_ir::Tensor::i64(vec![1, 41], vec![0; 41]);
            let args: Vec<&tttc_ir::Tensor> = graph.args.iter().map(|a| if a.name == "input_ids" { &long } else { &model.weights[&a.name] }).collect();
            for refused in [compiled.run(&args).err(), simulated(&args).err()] {
                let err = refused.map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains("T = 41: compiled for T from 1 to 40"), "{name}: {err}");
            }
        }
    }
}

#[test]
fn the_compiled_model_links_into_a_c_program_and_matches_every_reference_case() {
    let dir = scratch("compiled_model");
    for case in compiled_cases(all_cases()) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let out = dir.join(&name);
        // Compiled for longer sequences than the case's, run at its length.
        let manifest = compile(&case, &out, ids.shape[1] + 5);
        let exe = link(&out, "run_model.c");
        let (args, results) = (out.join("args"), out.join("results"));
        write_args(&case, &manifest, "forward", &ids.i64, &args);
        std::fs::create_dir_all(&results).unwrap();
        let lengths = |t: usize| -> Vec<String> {
            let names = manifest["cpu"]["lengths"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap());
            names.map(|n| if n == "B" { ids.shape[0] } else { t }.to_string()).collect()
        };
        let run = Command::new(&exe).arg(&args).arg(&results).args(lengths(ids.shape[1])).output().unwrap();
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
        let run = Command::new(&exe).arg(&args).arg(&results).args(lengths(ids.shape[1])).output().unwrap();
        assert_eq!(run.status.code(), Some(1), "{name}: an out-of-range id must fail");
        assert!(String::from_utf8_lossy(&run.stderr).contains("returned 1"), "{name}");
        // A length of 0 is refused by the entry point.
        let run = Command::new(&exe).arg(&args).arg(&results).args(lengths(0)).output().unwrap();
        assert!(String::from_utf8_lossy(&run.stderr).contains("tttc_forward returned 2"), "{name}: {}", String::from_utf8_lossy(&run.stderr));
    }
}

/// A compiled layer (every LaCT bidirectional layer case, compiled for its B and T) through the
/// shipped driver: `tttc_forward` gives the case's `y`, and `tttc_vjp` (the driver built with
/// -DTTTC_RUN_VJP), for the cotangent `r`, its `dx` and every parameter's gradient, within
/// SPEC-lact.md §1's tolerances.
#[test]
fn a_compiled_layer_runs_forward_and_backward_as_the_reference() {
    let dir = scratch("compiled_layer");
    for case in lact_layer_cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("layer.safetensors"));
        let x = &io["x"];
        let out = dir.join(&name);
        let manifest = compile_for(&case, &out, x.shape[0], x.shape[1]);
        let (b, t) = (x.shape[0].to_string(), x.shape[1].to_string());
        let entries: Vec<&str> = manifest["cpu"]["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(entries, ["forward", "vjp"], "{name}");
        assert!(manifest["gpu_vjp"].is_object() && manifest.get("gpu_loss_and_grad").is_none(), "{name}: the GPU program of the vjp");
        // The arguments: x, the weights and (for the vjp) the cotangent d.y = r.
        let args = out.join("args");
        std::fs::create_dir_all(&args).unwrap();
        let weights = read(&case.join("model.safetensors"));
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        for (arg, value) in [("x", &io["x"]), ("d.y", &io["r"])].into_iter().chain(weights.iter().map(|(k, v)| (k.as_str(), v))) {
            std::fs::write(args.join(format!("{arg}.bin")), f32_bytes(&value.f32)).unwrap();
        }
        let grads = read(&case.join("grads.safetensors"));
        let mut want: Vec<(String, &[f32], f64)> = vec![("y".into(), &io["y"].f32, RTOL_LOGITS), ("d.x".into(), &io["dx"].f32, RTOL_GRADS)];
        want.extend(grads.iter().map(|(k, v)| (format!("d.{k}"), v.f32.as_slice(), RTOL_GRADS)));
        let results = out.join("results");
        std::fs::create_dir_all(&results).unwrap();
        // The lengths compiled above 1, in the header's order.
        let lengths: Vec<&String> = manifest["cpu"]["lengths"].as_array().unwrap().iter().map(|l| if l["name"] == "B" { &b } else { &t }).collect();
        for define in [None, Some("TTTC_RUN_VJP")] {
            let exe = link_with(&out, "run_model.c", define);
            let run = Command::new(&exe).arg(&args).arg(&results).args(&lengths).output().unwrap();
            assert!(run.status.success(), "{name} {define:?}: {}", String::from_utf8_lossy(&run.stderr));
        }
        for (output, reference, rtol) in want {
            let got = floats(&std::fs::read(results.join(format!("{output}.bin"))).unwrap_or_else(|e| panic!("{name}: {output}: {e}")));
            let ratio = parity_ratio(&got, reference, rtol);
            eprintln!("{name}: {output} error {ratio:.3} of tolerance");
            assert!(ratio <= 1.0, "{name}: {output} at {ratio:.2}× tolerance");
        }
    }
}

/// The training entry point through the shipped driver (examples/c/train_step.c): the loss and
/// every gradient match the reference (PyTorch, f64; for the gated optimizer's cases, which come
/// without gradients, `tttc grad` on the interpreter, which tests/gradients.rs checks by finite
/// differences) within SPEC's tolerances, each new weight is the SGD step from them, and the loss
/// the forward entry point gives at the new weights is `tttc run`'s with those weights.
#[test]
fn the_compiled_training_step_matches_every_reference_case() {
    const LR: f32 = 0.05;
    let dir = scratch("compiled_training_step");
    for case in compiled_cases(all_cases()) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        if io["input_ids"].shape[1] < 2 {
            continue; // one token: no loss to differentiate
        }
        let out = dir.join(&name);
        let ids = &io["input_ids"];
        let manifest = compile(&case, &out, ids.shape[1]);
        let exe = link(&out, "train_step.c");
        let (args, results) = (out.join("args"), out.join("results"));
        write_args(&case, &manifest, "loss_and_grad", &ids.i64, &args);
        std::fs::create_dir_all(&results).unwrap();
        let run = Command::new(&exe).arg(&args).arg(&results).arg(LR.to_string()).output().unwrap();
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));

        let file = |n: &str| floats(&std::fs::read(results.join(format!("{n}.bin"))).unwrap());
        let ratio = parity_ratio(&file("loss"), &io["loss"].f32, RTOL_LOGITS);
        assert!(ratio <= 1.0, "{name}: loss at {ratio:.2}× tolerance");
        let want = match case.join("grads.safetensors") {
            file if file.exists() => read(&file),
            _ => {
                let grads = out.join("interp-grads.safetensors");
                let r = tttc(&["grad", p(&case), "--input", p(&case.join("io.safetensors")), "-o", p(&grads), "--backend", "interp"]);
                assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
                read(&grads).into_iter().filter(|(n, _)| n != "loss").collect()
            }
        };
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

/// SPEC: decoded logits equal the reference computation's within 1e-4 relative to the largest.
const RTOL_DECODE: f64 = 1e-4;

/// The names and shapes of the state `tttc run --state-out` writes after the first `len` tokens of
/// each row of `ids` (`[rows, t]`).
fn state_shapes(case: &Path, dir: &Path, ids: &Array, len: usize) -> Vec<(String, Vec<usize>)> {
    let (input, out, state) =
        (dir.join(format!("run-{len}.safetensors")), dir.join(format!("run-{len}-out.safetensors")), dir.join(format!("state-{len}.safetensors")));
    write_prompt(&input, ids, len);
    let r = tttc(&["run", p(case), "--input", p(&input), "-o", p(&out), "--state-out", p(&state)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    read(&state).into_iter().map(|(n, a)| (n, a.shape)).collect()
}

/// The first `len` tokens of each row of `ids` (`[rows, t]`).
fn prompt(ids: &Array, len: usize) -> Vec<i64> {
    let t = ids.shape[1];
    (0..ids.shape[0]).flat_map(|r| ids.i64[r * t..r * t + len].to_vec()).collect()
}

fn write_prompt(path: &Path, ids: &Array, len: usize) {
    write_raw(path, &[("input_ids".into(), safetensors::Dtype::I64, vec![ids.shape[0], len], i64_bytes(&prompt(ids, len)))]);
}

/// The decoding entry points through the shipped greedy decoder (examples/c/generate.c), on every
/// reference case whose state keeps its size from token to token (a KV cache grows: there are
/// no entry points of fixed sizes for it, and the manifest must not list any): from a prompt
/// that ends inside a mini-batch, past a boundary, its new tokens crossing two more, it prints
/// and writes the tokens `tttc generate` (on the interpreter) chooses greedily, and every new
/// token's logits are its within 1e-4 (the first token's, from the prefill, on their own too). An
/// out-of-range prompt id makes the prefill fail.
#[test]
fn the_compiled_decoder_generates_what_tttc_generate_does() {
    let dir = scratch("compiled_decoding");
    let mut compared = 0;
    for case in compiled_cases(all_cases()) {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let ids = &read(&case.join("io.safetensors"))["input_ids"];
        let rows = ids.shape[0];
        let b = mini_batch(&case);
        let (len, new) = ((b + 1).min(ids.shape[1] - 1), 2 * b + 5);
        let out = dir.join(&name);
        std::fs::create_dir_all(&out).unwrap();
        let fixed = state_shapes(&case, &out, ids, len) == state_shapes(&case, &out, ids, len + 1);
        let manifest = compile(&case, &out.join("compiled"), len);
        let entries: Vec<&str> = manifest["cpu"]["entries"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        for (entry, program) in [("prefill", "gpu_prefill"), ("step", "gpu_step")] {
            assert_eq!(entries.contains(&entry), fixed, "{name}: entry point {entry} (the state keeps its size: {fixed})");
            assert_eq!(manifest.get(program).is_some(), fixed, "{name}: {program} (the state keeps its size: {fixed})");
        }
        if !fixed {
            eprintln!("{name}: the state grows with every step, no decoding entry points");
            continue;
        }

        let exe = link(&out.join("compiled"), "generate.c");
        let (args, results) = (out.join("args"), out.join("results"));
        write_args(&case, &manifest, "prefill", &prompt(ids, len), &args);
        std::fs::create_dir_all(&results).unwrap();
        let run = Command::new(&exe).arg(&args).arg(new.to_string()).arg(&results).output().unwrap();
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));

        let input = out.join("prompt.safetensors");
        write_prompt(&input, ids, len);
        let want = out.join("generated.safetensors");
        let r = tttc(&["generate", p(&case), "--prompt", p(&input), "--max-new-tokens", &new.to_string(), "-o", p(&want), "--backend", "interp"]);
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
        let want = read(&want);
        let tokens: Vec<i64> = std::fs::read(results.join("tokens.bin")).unwrap().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(tokens, want["tokens"].i64, "{name}: the tokens");
        let printed: Vec<Vec<i64>> = String::from_utf8(run.stdout).unwrap().lines().map(|l| l.split(' ').map(|x| x.parse().unwrap()).collect()).collect();
        let chosen: Vec<Vec<i64>> = (0..rows).map(|r| want["tokens"].i64[r * (len + new) + len..(r + 1) * (len + new)].to_vec()).collect();
        assert_eq!(printed, chosen, "{name}: the printed tokens");
        let logits = floats(&std::fs::read(results.join("logits.bin")).unwrap());
        let vocab = want["logits"].shape[2];
        let first = |all: &[f32]| -> Vec<f32> { (0..rows).flat_map(|r| all[r * new * vocab..(r * new + 1) * vocab].to_vec()).collect() };
        let first_ratio = parity_ratio(&first(&logits), &first(&want["logits"].f32), RTOL_DECODE);
        let ratio = parity_ratio(&logits, &want["logits"].f32, RTOL_DECODE);
        eprintln!("{name}: {rows} × {new} tokens equal; logits error {ratio:.3} of tolerance (the first token's {first_ratio:.3})");
        assert!(first_ratio <= 1.0 && ratio <= 1.0, "{name}: logits at {ratio:.2}× tolerance (the first token's at {first_ratio:.2}×)");
        compared += rows * new;

        let vocab = vocab as i64;
        let mut bad = prompt(ids, len);
        bad[len - 1] = vocab;
        std::fs::write(args.join("input_ids.bin"), i64_bytes(&bad)).unwrap();
        let run = Command::new(&exe).arg(&args).arg(new.to_string()).arg(&results).output().unwrap();
        assert_eq!(run.status.code(), Some(1), "{name}: an out-of-range id must fail");
        assert!(String::from_utf8_lossy(&run.stderr).contains("tttc_prefill returned 1"), "{name}");
    }
    eprintln!("{compared} tokens compared");
    assert!(compared > 0, "no reference case decodes");
}
