//! The compiled model `tttc compile` writes (cpu/model.o, cpu/model.h), linked with the system's
//! C compiler into the shipped example driver (examples/c/run_model.c) and run on every
//! reference case: its logits and loss match the reference within SPEC §1's tolerance.

mod common;
use common::*;

use std::process::Command;

use safetensors::SafeTensors;

const RTOL_LOGITS: f64 = 1e-5;

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

#[test]
fn the_compiled_model_links_into_a_c_program_and_matches_every_reference_case() {
    let dir = scratch("compiled_model");
    for case in cases() {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let io = read(&case.join("io.safetensors"));
        let ids = &io["input_ids"];
        let (b, t) = (ids.shape[0].to_string(), ids.shape[1].to_string());
        let out = dir.join(&name);
        let r = tttc(&["compile", p(&case), "-o", p(&out), "--batch", &b, "--seq-len", &t]);
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));

        let exe = out.join("run_model");
        let driver = repo().join("examples/c/run_model.c");
        let cc = Command::new("cc")
            .args(["-O2", "-Wall", "-Werror", "-I"])
            .arg(out.join("cpu"))
            .arg(&driver)
            .arg(out.join("cpu/model.o"))
            .args(["-lm", "-o"])
            .arg(&exe)
            .output()
            .expect("a C compiler (cc)");
        assert!(cc.status.success(), "{name}: cc: {}", String::from_utf8_lossy(&cc.stderr));

        // The arguments as raw files, named as the manifest lists them: input_ids, then weights.
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        let (args, results) = (out.join("args"), out.join("results"));
        std::fs::create_dir_all(&args).unwrap();
        std::fs::create_dir_all(&results).unwrap();
        let weights = std::fs::read(case.join("model.safetensors")).unwrap();
        let weights = SafeTensors::deserialize(&weights).unwrap();
        for a in manifest["cpu"]["args"].as_array().unwrap() {
            let arg = a["name"].as_str().unwrap();
            let bytes =
                if arg == "input_ids" { i64_bytes(&ids.i64) } else { weights.tensor(arg).unwrap_or_else(|e| panic!("{name}: {arg}: {e}")).data().to_vec() };
            std::fs::write(args.join(format!("{arg}.bin")), bytes).unwrap();
        }
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
