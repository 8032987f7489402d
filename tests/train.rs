//! `tttc train`: the loss goes down on the demo corpus, checkpoints load with `tttc run` (and
//! `tttc generate` reads text through their tokenizer), a resumed run reproduces an
//! uninterrupted one bit for bit, and bad input stops with one line.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use serde_json::Value;

fn corpus() -> PathBuf {
    repo().join("tests/data/tinyshakespeare.txt")
}

fn tiny() -> PathBuf {
    repo().join("examples/ttt-linear-tiny.toml")
}

fn log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("log.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"))).collect()
}

fn ok(args: &[&str]) -> String {
    let r = tttc(args);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(r.status.success(), "tttc {args:?} failed: {stderr}");
    stderr
}

/// A failing run: one line on stderr, non-zero exit; returns the line.
fn fails(args: &[&str]) -> String {
    let r = tttc(args);
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(!r.status.success(), "tttc {args:?} succeeded: {stderr}");
    let last = stderr.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("error: "), "{stderr}");
    last
}

/// TTT-Linear and LaCT (whose chunks of 16 the generated text crosses).
#[test]
fn training_lowers_the_validation_loss_and_the_checkpoint_runs() {
    train_run_and_generate(&tiny(), "train_tiny");
    train_run_and_generate(&repo().join("examples/lact-tiny.toml"), "train_lact_tiny");
}

fn train_run_and_generate(model: &Path, scratch_name: &str) {
    let name = model.file_stem().unwrap().to_string_lossy();
    let dir = scratch(scratch_name);
    let out = dir.join("run");
    let stderr = ok(&["train", p(model), "--data", p(&corpus()), "-o", p(&out), "--steps", "40", "--batch-size", "4", "--context", "32", "--eval-every", "20"]);
    assert!(stderr.contains("step    40/40"), "{stderr}");
    let entries = log(&out);
    // Step 0: the validation loss before training; then steps 1, 10, 20, 30, 40.
    let steps: Vec<u64> = entries.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [0, 1, 10, 20, 30, 40]);
    for e in &entries[1..] {
        for key in ["loss", "lr", "tokens_per_s"] {
            assert!(e[key].as_f64().is_some_and(f64::is_finite), "{e} lacks {key}");
        }
    }
    let start = entries[0]["val_loss"].as_f64().unwrap();
    let end = entries.last().unwrap()["val_loss"].as_f64().unwrap();
    let uniform = 256f64.ln();
    eprintln!("{name}: validation loss {start:.4} → {end:.4}");
    // Freshly initialised weights predict nearly uniformly; 40 steps learn the byte statistics
    // (measured: 5.546 → 3.336 for TTT-Linear, 5.548 → 3.317 for LaCT).
    assert!((start - uniform).abs() < 0.1, "{name}: start {start}");
    assert!(end < uniform - 1.5, "{name}: end {end}");

    // The checkpoint is a model folder: `tttc run` on validation text gives a loss of the order of
    // the logged validation loss.
    for f in ["config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "trainer.json", "log.jsonl"] {
        assert!(out.join(f).is_file(), "checkpoint lacks {f}");
    }
    let tok: Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer.json")).unwrap()).unwrap();
    assert_eq!(tok, serde_json::json!({"kind": "bytes", "vocab_size": 256}));
    let trainer: Value = serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(trainer["step"], 40);
    assert_eq!(trainer["options"]["batch_size"], 4);
    let text = std::fs::read(corpus()).unwrap();
    let val = &text[text.len() - text.len() / 10..];
    let ids: Vec<i64> = (0..4).flat_map(|b| val[b * 1000..b * 1000 + 32].iter().map(|&c| c as i64)).collect();
    let input = dir.join("val.safetensors");
    write(&input, vec![("input_ids", safetensors::Dtype::I64, vec![4, 32], i64_bytes(&ids))]);
    let result = dir.join("out.safetensors");
    ok(&["run", p(&out), "--input", p(&input), "--output", p(&result)]);
    let loss = read(&result)["loss"].f32[0] as f64;
    eprintln!("{name}: tttc run on the checkpoint: loss {loss:.4}");
    assert!(out.join("loss.png").is_file());
    assert!(loss < uniform - 1.0 && (loss - end).abs() < 0.75, "{name}: run loss {loss}, logged validation loss {end}");

    // `generate` reads text through the checkpoint's tokenizer and streams the continuation to
    // stdout: the prompt's bytes and then the new ones, as OUT's tokens.
    let generated = dir.join("generated.safetensors");
    let r = tttc(&["generate", p(&out), "--prompt-text", "The ", "--max-new-tokens", "20", "-o", p(&generated)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let tokens = read(&generated)["tokens"].i64.clone();
    assert_eq!(tokens.len(), 24);
    assert_eq!(&tokens[..4], &[84, 104, 101, 32], "the prompt's bytes come first");
    let streamed: Vec<i64> = r.stdout.iter().take(20).map(|&b| b as i64).collect();
    assert_eq!(streamed, tokens[4..], "stdout streams the new bytes");
}

/// The numbers of a log line (not its throughput).
fn numbers(e: &Value) -> (Value, Value, Value, Value) {
    (e["step"].clone(), e["loss"].clone(), e["lr"].clone(), e["val_loss"].clone())
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one() {
    let dir = scratch("train_resume");
    let (whole, part, other) = (dir.join("whole"), dir.join("part"), dir.join("other"));
    let common = ["--steps", "6", "--batch-size", "2", "--context", "16", "--log-every", "1", "--eval-every", "3"];
    let (model, data) = (tiny(), corpus());
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", p(&model), "--data", p(&data), "-o", p(out)];
        args.extend(common);
        args.extend(extra);
        ok(&args)
    };
    run(&whole, &[]);
    run(&part, &["--stop-after", "3"]);
    let trainer: Value = serde_json::from_str(&std::fs::read_to_string(part.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(trainer["step"], 3);
    // Into the other folder first (the checkpoint stays at step 3), with MODEL and --data given
    // again; then in place, with only --resume.
    ok(&["train", p(&tiny()), "--data", p(&corpus()), "--resume", p(&part), "-o", p(&other)]);
    ok(&["train", "--resume", p(&part), "-o", p(&part)]);
    let want: Vec<_> = log(&whole).iter().map(numbers).collect();
    assert_eq!(want.len(), 7, "step 0 and steps 1..6");
    for resumed in [&part, &other] {
        let got: Vec<_> = log(resumed).iter().map(numbers).collect();
        assert_eq!(got, want, "{}", resumed.display());
        for f in ["model.safetensors", "optimizer.safetensors"] {
            assert!(
                std::fs::read(whole.join(f)).unwrap() == std::fs::read(resumed.join(f)).unwrap(),
                "{f} of {} differs from the uninterrupted run's",
                resumed.display()
            );
        }
    }
    // The checkpoint's options stay: changing one is refused, and nothing is left to train at 6.
    let e = fails(&["train", "--resume", p(&part), "-o", p(&dir.join("x")), "--steps", "8", "--lr", "0.01"]);
    assert!(e.contains("--lr") && e.contains("differs"), "{e}");
    let e = fails(&["train", "--resume", p(&part), "-o", p(&part)]);
    assert!(e.contains("nothing to train"), "{e}");
    // A fresh run does not overwrite a checkpoint.
    let e = fails(&["train", p(&tiny()), "--data", p(&corpus()), "-o", p(&part), "--steps", "2"]);
    assert!(e.contains("--resume"), "{e}");
    assert!(!dir.join("x").exists());
}

#[test]
fn bad_data_stops_with_one_line_and_writes_nothing() {
    let dir = scratch("train_errors");
    let out = dir.join("run");
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let short = dir.join("short.txt");
    std::fs::write(&short, "To be, or not to be, that is the question").unwrap();
    let (model, missing) = (tiny(), dir.join("missing.txt"));
    // A reference case with a 97-token vocabulary.
    let small_vocab = repo().join("tests/vectors/llama");
    let cases: [(&[&str], &str); 5] = [
        (&[p(&model), "--data", p(&empty)], "is empty"),
        (&[p(&model), "--data", p(&short), "--context", "64"], "longer than the training split"),
        (&[p(&model), "--data", p(&short), "--context", "8"], "longer than the validation split"),
        (&[p(&model), "--data", p(&missing)], "cannot read data file"),
        (&[p(&small_vocab), "--data", p(&short), "--context", "4"], "below the 256"),
    ];
    for (args, want) in cases {
        let mut all = vec!["train"];
        all.extend(args);
        all.extend(["-o", p(&out), "--steps", "2"]);
        let e = fails(&all);
        assert!(e.contains(want), "{all:?}: {e}");
        assert!(!out.exists(), "{all:?} wrote {}", out.display());
    }
    let e = fails(&["train", p(&tiny()), "--data", p(&short), "-o", p(&out)]);
    assert!(e.contains("--steps"), "{e}");
}

#[test]
fn a_diverging_run_stops_at_the_first_non_finite_loss_and_keeps_its_checkpoint() {
    // With a learning rate of 1e30 the first update blows the weights up: step 2's loss is NaN.
    let dir = scratch("train_nan");
    let out = dir.join("run");
    let r = tttc(&[
        "train",
        p(&tiny()),
        "--data",
        p(&corpus()),
        "-o",
        p(&out),
        "--steps",
        "10",
        "--batch-size",
        "2",
        "--context",
        "16",
        "--lr",
        "1e30",
        "--warmup",
        "0",
        "--checkpoint-every",
        "1",
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: step 2: the loss is NaN") && last.contains("keeps the checkpoint of step 1"), "{stderr}");
    let trainer: Value = serde_json::from_str(&std::fs::read_to_string(out.join("trainer.json")).unwrap()).unwrap();
    assert_eq!(trainer["step"], 1);
    assert!(out.join("model.safetensors").is_file());
}

/// `tttc compare` tabulates and plots finished runs; a folder without a log is a one-line error.
#[test]
fn compare_tabulates_and_plots_runs() {
    let dir = scratch("compare_runs");
    let data = repo().join("tests/data/tinyshakespeare.txt");
    for (name, seed) in [("a", "0"), ("b", "1")] {
        let run = dir.join(name);
        let r = tttc(&[
            "train",
            p(&repo().join("examples/llama-tiny.toml")),
            "--data",
            p(&data),
            "-o",
            p(&run),
            "--steps",
            "4",
            "--batch-size",
            "2",
            "--context",
            "16",
            "--eval-every",
            "2",
            "--seed",
            seed,
        ]);
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    let png = dir.join("cmp.png");
    let r = tttc(&["compare", p(&dir.join("a")), p(&dir.join("b")), "-o", p(&png)]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let table = String::from_utf8(r.stdout).unwrap();
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.lines().nth(2).unwrap().starts_with("| a | 4 |"), "{table}");
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
    let r = tttc(&["compare", p(&dir), "-o", p(&dir.join("x.png"))]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && stderr.lines().count() == 1 && stderr.contains("log.jsonl"), "{stderr}");
}
