//! No input may destroy a user's file, exhaust memory, hang or panic (docs/errors.md). Each test
//! gives a command bad input and checks the exit status, the one-line message, that no file in
//! its folder changed (hashed before and after) and that no staging file is left.

mod common;
use common::*;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use safetensors::Dtype;

fn tiny() -> PathBuf {
    repo().join("examples/ttt-linear-tiny.toml")
}

/// A scratch folder holding a copy of the example prompt, `in.st`.
fn folder(name: &str) -> PathBuf {
    let dir = scratch(name);
    std::fs::copy(repo().join("examples/prompt.safetensors"), dir.join("in.st")).unwrap();
    dir
}

/// Every entry below `dir`: its kind and, for a regular file, a hash of its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let state = if meta.is_dir() {
            out.extend(snapshot(&path));
            "folder".to_string()
        } else if meta.is_file() {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(&path).unwrap().hash(&mut h);
            format!("file {:x}", h.finish())
        } else {
            format!("{:?}", meta.file_type())
        };
        out.insert(path, state);
    }
    out
}

/// Runs tttc with `args` in `dir` and expects a one-line error containing `needle`, a non-zero
/// exit, no change to any file in `dir` and no staging file left. Returns the message.
fn refused(dir: &Path, args: &[&str], needle: &str) -> String {
    let before = snapshot(dir);
    let r = run_within(dir, args, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(!r.status.success(), "tttc {args:?} succeeded: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("warning: ")).collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected {needle:?}: {stderr}");
    assert_eq!(snapshot(dir), before, "tttc {args:?} changed files in {}", dir.display());
    lines[0].to_string()
}

/// Runs tttc in `dir`, killing it (and failing) if it runs longer than `limit`.
fn run_within(dir: &Path, args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tttc"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("tttc {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn succeeds(dir: &Path, args: &[&str]) -> String {
    let stderr = succeeds_leaving(dir, args);
    assert_no_staging_left(dir);
    stderr
}

/// [`succeeds`] without the check that no staging file is left.
fn succeeds_leaving(dir: &Path, args: &[&str]) -> String {
    let r = run_within(dir, args, Duration::from_secs(300));
    let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
    assert!(r.status.success(), "tttc {args:?} failed: {stderr}");
    stderr
}

fn assert_no_staging_left(dir: &Path) {
    let left: Vec<_> = snapshot(dir).into_keys().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tttc-")).collect();
    assert!(left.is_empty(), "staging files left: {left:?}");
}

fn mkfifo(path: &Path) {
    assert!(Command::new("mkfifo").arg(path).status().unwrap().success());
}

#[test]
fn an_output_may_not_be_an_input() {
    let dir = folder("files_output_is_input");
    let m = p(&tiny()).to_string();
    refused(&dir, &["run", &m, "--input", "in.st", "--output", "in.st"], "--output in.st is the same file as --input in.st");
    refused(&dir, &["run", &m, "--input", "in.st", "--output", "o.st", "--state-out", "in.st"], "--state-out in.st is the same file as --input in.st");
    refused(&dir, &["generate", &m, "--prompt", "in.st", "--max-new-tokens", "2", "-o", "in.st"], "--output in.st is the same file as --prompt in.st");
    refused(&dir, &["grad", &m, "--input", "in.st", "--output", "./in.st"], "is the same file as --input in.st");
    // Through a link and a hard link: the same file under another name.
    std::os::unix::fs::symlink("in.st", dir.join("link.st")).unwrap();
    std::fs::hard_link(dir.join("in.st"), dir.join("hard.st")).unwrap();
    refused(&dir, &["run", &m, "--input", "in.st", "--output", "link.st"], "--output link.st is the same file as --input in.st");
    refused(&dir, &["run", &m, "--input", "in.st", "--output", "hard.st"], "--output hard.st is the same file as --input in.st");
    // The model's own files.
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    std::fs::copy(repo().join("tests/vectors/ttt-linear-transformer-backbone/config.json"), model.join("config.json")).unwrap();
    refused(&dir, &["run", "model", "--input", "in.st", "--output", "model/config.json"], "is the same file as the model's model/config.json");
}

#[test]
fn what_a_killed_run_staged_is_removed_by_the_next() {
    let dir = folder("files_stale_staging");
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = format!(".tttc-{}-0.st", gone.id());
    std::fs::write(dir.join(&stale), b"half a file").unwrap();
    // A live process's staging file is its own business.
    let live = format!(".tttc-{}-0.st", std::process::id());
    std::fs::write(dir.join(&live), b"being written").unwrap();
    succeeds_leaving(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "o.st"]);
    assert!(!dir.join(&stale).exists(), "{stale} was not removed");
    assert!(dir.join(&live).exists(), "{live} was removed");
}

#[test]
fn outputs_of_one_command_need_their_own_paths() {
    let dir = folder("files_same_outputs");
    refused(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "f.st", "--state-out", "f.st"], "--state-out f.st is the same file as --output f.st");
}

#[test]
fn a_failed_run_writes_none_of_its_outputs() {
    let dir = folder("files_failed_run");
    std::fs::write(dir.join("s.st"), b"a state the user keeps").unwrap();
    std::fs::write(dir.join("o.st"), b"logits the user keeps").unwrap();
    refused(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "missing/o.st", "--state-out", "s.st"], "folder missing does not exist");
    // A failure after the outputs were declared: a token outside the vocabulary.
    write(&dir.join("bad.st"), vec![("input_ids", Dtype::I64, vec![1, 2], i64_bytes(&[1, 999]))]);
    refused(&dir, &["run", p(&tiny()), "--input", "bad.st", "--output", "o.st", "--state-out", "s.st"], "outside the vocabulary");
    // Both outputs appear together.
    succeeds(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "o.st", "--state-out", "s.st"]);
    assert!(read(&dir.join("o.st")).contains_key("logits"));
    assert!(read(&dir.join("s.st")).keys().any(|k| k.ends_with("W1")));
}

#[test]
fn an_output_that_is_not_a_regular_file_is_not_replaced() {
    let dir = folder("files_special_outputs");
    mkfifo(&dir.join("fifo"));
    std::fs::create_dir(dir.join("sub")).unwrap();
    refused(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "fifo"], "--output fifo exists and is a FIFO, not a regular file");
    refused(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "sub"], "--output sub exists and is a folder");
    refused(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "/dev/null"], "--output /dev/null exists and is a device");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
}

#[test]
fn a_long_output_name_fits() {
    let dir = folder("files_long_name");
    let name = "o".repeat(248);
    succeeds(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", &name]);
    assert!(read(&dir.join(&name)).contains_key("logits"));
}

#[test]
fn compile_replaces_only_a_folder_it_wrote() {
    let dir = folder("files_compile");
    let m = p(&tiny()).to_string();
    // A user's folder that happens to hold a manifest.json.
    std::fs::create_dir_all(dir.join("user/src")).unwrap();
    std::fs::write(dir.join("user/notes.txt"), b"notes").unwrap();
    std::fs::write(dir.join("user/manifest.json"), b"{}").unwrap();
    refused(&dir, &["compile", &m, "-o", "user", "--seq-len", "32", "--no-ptxas"], "user is not the output of tttc compile");
    // Its own folder is replaced; a file a user added to it is named and kept.
    succeeds(&dir, &["compile", &m, "-o", "out", "--seq-len", "32", "--no-ptxas"]);
    std::fs::write(dir.join("out/cpu/driver.c"), b"int main(void) { return 0; }").unwrap();
    refused(&dir, &["compile", &m, "-o", "out", "--seq-len", "32", "--no-ptxas"], "out holds cpu/driver.c, which tttc compile did not write");
    std::fs::remove_file(dir.join("out/cpu/driver.c")).unwrap();
    succeeds(&dir, &["compile", &m, "-o", "out", "--seq-len", "16", "--no-ptxas"]);
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("out/manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["shapes"]["T"], 16);
    for f in manifest["files"].as_array().unwrap() {
        assert!(dir.join("out").join(f.as_str().unwrap()).is_file(), "{f} listed but missing");
    }
}

#[test]
fn only_regular_files_are_read() {
    let dir = folder("files_special_inputs");
    let m = p(&tiny()).to_string();
    mkfifo(&dir.join("fifo"));
    std::os::unix::fs::symlink("/dev/zero", dir.join("zeros")).unwrap();
    std::os::unix::fs::symlink("/dev/urandom", dir.join("random")).unwrap();
    refused(&dir, &["run", &m, "--input", "fifo", "--output", "o.st"], "fifo is a FIFO, not a regular file");
    refused(&dir, &["run", &m, "--input", "/dev/zero", "--output", "o.st"], "/dev/zero is a device, not a regular file");
    refused(&dir, &["run", &m, "--input", "zeros", "--output", "o.st"], "zeros is a device, not a regular file");
    refused(&dir, &["run", &m, "--input", "in.st", "--output", "o.st", "--weights", "random"], "random is a device, not a regular file");
    // A model folder whose config.json is a FIFO, and a model.toml that is a link to a device.
    std::fs::create_dir(dir.join("model")).unwrap();
    mkfifo(&dir.join("model/config.json"));
    refused(&dir, &["run", "model", "--input", "in.st", "--output", "o.st"], "config.json is a FIFO, not a regular file");
    std::os::unix::fs::symlink("/dev/zero", dir.join("model.toml")).unwrap();
    refused(&dir, &["ir", "model.toml"], "model.toml is a device, not a regular file");
}

/// The memory each refused run would need is estimated before anything is allocated.
#[test]
fn a_run_that_cannot_fit_is_refused_with_its_estimate() {
    let dir = folder("files_memory");
    let toml = std::fs::read_to_string(tiny()).unwrap();
    let variant = |name: &str, from: &str, to: &str| {
        assert!(toml.contains(from));
        std::fs::write(dir.join(name), toml.replace(from, to)).unwrap();
    };
    variant("vocab.toml", "vocab_size = 256", "vocab_size = 2000000000");
    variant("vocab-huge.toml", "vocab_size = 256", "vocab_size = 1000000000000");
    variant("hidden.toml", "hidden_size = 64", "hidden_size = 1000000000");
    variant("conv.toml", "conv_kernel = 4", "conv_kernel = 1000000000");
    variant("deep.toml", "num_hidden_layers = 2", "num_hidden_layers = 1024");
    variant("deeper.toml", "num_hidden_layers = 2", "num_hidden_layers = 1000000");
    variant("inner.toml", "ttt_layer_type = \"linear\"", "ttt_layer_type = \"linear\"\nttt_inner = { widths = [100000] }");
    // The budget is given, so the test does not depend on this machine's free memory.
    for model in ["vocab.toml", "hidden.toml", "inner.toml"] {
        let line = refused(&dir, &["run", model, "--input", "in.st", "--output", "o.st", "--max-memory", "2G"], "more than the 2.0 GiB of --max-memory");
        assert!(line.contains("needs about") && line.contains("estimated before allocating"), "{line}");
    }
    // A kernel of a billion taps would be a billion nodes: the config's limit refuses it first.
    refused(&dir, &["run", "conv.toml", "--input", "in.st", "--output", "o.st"], "config key conv_kernel");
    refused(&dir, &["run", "vocab-huge.toml", "--input", "in.st", "--output", "o.st"], "config key vocab_size = 1000000000000 is too large");
    // The graph of 1024 layers is built only when its estimate (from one and two layers) fits.
    refused(&dir, &["ir", "deep.toml", "--max-memory", "256M"], "the model's graph (1024 layers");
    refused(&dir, &["run", "deep.toml", "--input", "in.st", "--output", "o.st", "--max-memory", "256M"], "the model (1024 layers");
    refused(&dir, &["ir", "deeper.toml"], "config key num_hidden_layers = 1000000 is too large");
    let mamba = std::fs::read_to_string(repo().join("examples/mamba-tiny.toml")).unwrap();
    let state = mamba
        .lines()
        .find(|l| l.starts_with("state_size"))
        .map_or_else(|| mamba.replace("[config]", "[config]\nstate_size = 1000000000"), |l| mamba.replace(l, "state_size = 1000000000"));
    std::fs::write(dir.join("mamba.toml"), state).unwrap();
    refused(&dir, &["run", "mamba.toml", "--input", "in.st", "--output", "o.st", "--max-memory", "2G"], "needs about");
    // Long inputs, against a budget given on the command line (attention's scores are never
    // stored whole on the CPU: Llama's memory grows with T, not T²).
    let ids = |t: usize| (0..t as i64).map(|i| i % 256).collect::<Vec<_>>();
    write(&dir.join("longer.st"), vec![("input_ids", Dtype::I64, vec![1, 2_000_000], i64_bytes(&ids(2_000_000)))]);
    let llama = repo().join("examples/llama-tiny.toml");
    refused(&dir, &["run", p(&llama), "--input", "longer.st", "--output", "o.st", "--max-memory", "2G"], "running llama at B = 1, T = 2000000 needs about");
    write(&dir.join("long.st"), vec![("input_ids", Dtype::I64, vec![1, 20_000], i64_bytes(&ids(20_000)))]);
    succeeds(&dir, &["run", p(&llama), "--input", "long.st", "--output", "o.st", "--max-memory", "2G"]);
    refused(&dir, &["run", p(&tiny()), "--input", "longer.st", "--output", "o.st", "--max-memory", "1G"], "T = 2000000 needs about");
    // Under `ulimit -v` (as a job scheduler sets it) the process's limit is the budget.
    let r = Command::new("sh")
        .args(["-c", &format!("ulimit -v 4000000 && exec {} run {} --input longer.st --output o.st", env!("CARGO_BIN_EXE_tttc"), p(&llama))])
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success() && stderr.trim().lines().count() == 1 && stderr.contains("of the process's memory limit (ulimit)"), "{stderr}");
    // The same budget lets a run that fits go ahead.
    succeeds(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "o.st", "--max-memory", "1G"]);
}

#[test]
fn training_that_cannot_fit_is_refused_before_drawing_a_batch() {
    let dir = training_folder("files_train_memory");
    refused(
        &dir,
        &[TRAIN, &["--steps", "2", "--batch-size", "1000000000", "--max-memory", "2G"]].concat(),
        "training on batches of 1000000000 × 16 tokens needs about",
    );
    // A checkpoint whose trainer.json was edited to a batch that cannot fit.
    succeeds(&dir, &[TRAIN, &["--steps", "2", "--batch-size", "2"]].concat());
    let trainer = dir.join("run/trainer.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trainer).unwrap()).unwrap();
    json["options"]["batch_size"] = 1_000_000_000.into();
    json["options"]["steps"] = 4.into();
    std::fs::write(&trainer, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    refused(&dir, &["train", "--resume", "run", "-o", "run", "--max-memory", "2G"], "training on batches of 1000000000 × 16 tokens needs about");
}

#[test]
fn non_finite_weights_are_named_and_non_finite_results_are_not_written() {
    let dir = copy_case("ttt-linear-transformer-backbone", "files_nonfinite");
    let path = dir.join("model.safetensors");
    let mut t = read_raw(&path);
    let w = t.iter_mut().find(|x| x.0 == "model.norm.weight").unwrap();
    w.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    write_raw(&path, &t);
    let args = ["run", ".", "--input", "io.safetensors", "--output", "o.st"];
    let r = run_within(&dir, &args, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains("warning: weight model.norm.weight holds 1 NaN or infinite values"), "{stderr}");
    refused(&dir, &args, "NaN or infinite values; nothing written (--allow-nonfinite writes them anyway)");
    let stderr = succeeds(&dir, &["run", ".", "--input", "io.safetensors", "--output", "o.st", "--allow-nonfinite"]);
    assert!(stderr.contains("loss NaN"), "{stderr}");
    refused(&dir, &["grad", ".", "--input", "io.safetensors", "--output", "g.st"], "nothing written");
}

#[test]
fn non_finite_state_is_named() {
    let dir = folder("files_nonfinite_state");
    succeeds(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "o.st", "--state-out", "s.st"]);
    let mut t = read_raw(&dir.join("s.st"));
    let name = t.iter().find(|x| x.1 == Dtype::F32).unwrap().0.clone();
    t.iter_mut().find(|x| x.0 == name).unwrap().3[..4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    write_raw(&dir.join("bad.st"), &t);
    let r = run_within(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "o2.st", "--state-in", "bad.st"], Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(stderr.contains(&format!("warning: state tensor {name} holds 1 NaN or infinite values")), "{stderr}");
}

#[test]
fn generate_refuses_a_packed_prompt() {
    let dir = folder("files_generate_packed");
    write(
        &dir.join("packed.st"),
        vec![("input_ids", Dtype::I64, vec![1, 10], i64_bytes(&[1; 10])), ("cu_seqlens", Dtype::I64, vec![3], i64_bytes(&[0, 4, 10]))],
    );
    refused(&dir, &["generate", p(&tiny()), "--prompt", "packed.st", "--max-new-tokens", "2", "-o", "o.st"], "tttc generate takes no packed prompt");
}

#[test]
fn small_mistakes_get_clear_errors() {
    let dir = folder("files_small");
    let m = p(&tiny()).to_string();
    refused(&dir, &["bench", "--packed", "--packed-lengths", "10,9", "--depths", "1", "--layers", "ttt-linear"], "--packed-lengths 10,9 must be a range");
    refused(&dir, &["grad", &m, "--input", "in.st", "--output", "g.st", "--remat", "0"], "--remat takes at least 1 segment");
    write(&dir.join("f64.st"), vec![("input_ids", Dtype::F64, vec![1, 2], [1f64, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect())]);
    let line = refused(&dir, &["run", &m, "--input", "f64.st", "--output", "o.st"], "input_ids must hold i64 token ids, got a float tensor");
    assert!(!line.contains("f32"), "{line}");
    // Command-line mistakes are one line too.
    refused(&dir, &["compile", &m, "--seq-len", "18446744073709551615"], "for '--seq-len <SEQ_LEN>': 18446744073709551615 is not in 1..=2147483648");
    refused(&dir, &["run", &m, "--inptu", "in.st"], "unexpected argument '--inptu' found; tip: a similar argument exists: '--input'");
    refused(&dir, &["--max-memory", "lots", "ir", &m], "\"lots\" is not a size");
}

/// `tttc train` of the tiny model on the corpus into `run` (in a [`training_folder`]), with small
/// windows and no validation; each test adds its steps and batch size.
const TRAIN: &[&str] = &["train", "model.toml", "--data", "corpus.txt", "-o", "run", "--context", "16", "--eval-every", "0"];

/// A [`folder`] that also holds the tiny model (`model.toml`) and the corpus (`corpus.txt`).
fn training_folder(name: &str) -> PathBuf {
    let dir = folder(name);
    std::fs::copy(tiny(), dir.join("model.toml")).unwrap();
    std::fs::copy(repo().join("tests/data/tinyshakespeare.txt"), dir.join("corpus.txt")).unwrap();
    dir
}

#[test]
fn a_run_folder_holding_what_training_did_not_write_is_not_resumed_into() {
    let dir = training_folder("files_train_foreign");
    succeeds(&dir, &[TRAIN, &["--steps", "4", "--stop-after", "2", "--batch-size", "2"]].concat());
    std::fs::write(dir.join("run/notes.txt"), b"a user's notes").unwrap();
    refused(&dir, &["train", "--resume", "run", "-o", "run"], "run holds notes.txt, which tttc train did not write");
    // An edited trainer.json with a key tttc does not know.
    std::fs::remove_file(dir.join("run/notes.txt")).unwrap();
    let trainer = std::fs::read_to_string(dir.join("run/trainer.json")).unwrap();
    std::fs::write(dir.join("run/trainer.json"), trainer.replacen("{", "{\n  \"zzz\": 1,", 1)).unwrap();
    refused(&dir, &["train", "--resume", "run", "-o", "run"], "unknown field `zzz`");
}

#[test]
fn training_data_inside_the_run_folder_is_refused() {
    let dir = training_folder("files_train_data_inside");
    std::fs::create_dir(dir.join("run")).unwrap();
    std::fs::write(dir.join("run/log.jsonl"), &std::fs::read(dir.join("corpus.txt")).unwrap()[..5000]).unwrap();
    refused(&dir, &["train", "model.toml", "--data", "run/log.jsonl", "-o", "run", "--steps", "2", "--batch-size", "2"], "is inside the run folder run");
}

/// A file put into the run folder while it trains survives the checkpoints that follow.
#[test]
fn a_file_added_to_the_run_folder_during_training_is_carried_over() {
    let dir = training_folder("files_train_carry");
    let args = [TRAIN, &["--steps", "400", "--batch-size", "1", "--checkpoint-every", "1"]].concat();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tttc")).args(args).current_dir(&dir).stderr(Stdio::piped()).spawn().unwrap();
    let trainer = dir.join("run/trainer.json");
    let step = || -> Option<u64> { serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&trainer).ok()?).ok()?["step"].as_u64() };
    let start = Instant::now();
    while step().is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint after two minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::write(dir.join("run/notes.txt"), b"a user's notes").unwrap();
    let added_at = step().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(step().unwrap() > added_at, "no checkpoint after the file was added (at step {added_at})");
    assert_eq!(std::fs::read(dir.join("run/notes.txt")).unwrap(), b"a user's notes");
}

#[test]
fn an_output_path_ending_in_a_slash_is_refused() {
    let dir = folder("files_trailing_slash");
    std::fs::write(dir.join("o.st"), b"kept").unwrap();
    refused(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "new/"], "--output new/ ends in /, which names a folder");
    refused(&dir, &["run", p(&tiny()), "--input", "in.st", "--output", "o.st/"], "--output o.st/ ends in /");
}
