//! `tttc train` checkpoints survive crashes: a run killed (SIGKILL, through the `TTTC_CRASH_AT`
//! hook) at each point of a checkpoint's swap, with RENAME_EXCHANGE and with the two-rename
//! fallback, leaves a loadable checkpoint, the next run cleans up and reproduces the uninterrupted
//! run; dead processes' leftovers are removed and a live one's kept; SIGTERM stops a run cleanly.
//! Also: options read from trainer.json are checked, and a data file that is not a regular file
//! is refused in one line.

mod common;
use common::*;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const SIGKILL: i32 = 9;

/// Six steps, a checkpoint (and a validation loss) every two.
const OPTIONS: [&str; 12] = ["--steps", "6", "--batch-size", "2", "--context", "16", "--log-every", "1", "--eval-every", "2", "--checkpoint-every", "2"];

fn tttc_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tttc")).args(args).envs(env.iter().copied()).output().expect("tttc runs")
}

fn stderr(r: &Output) -> String {
    String::from_utf8_lossy(&r.stderr).into_owned()
}

/// A new run of the tiny model into `out`, with `extra` options.
fn train(out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let (model, data) = (repo().join("examples/ttt-linear-tiny.toml"), repo().join("tests/data/tinyshakespeare.txt"));
    let mut args = vec!["train", p(&model), "--data", p(&data), "-o", p(out)];
    args.extend(OPTIONS);
    args.extend(extra);
    tttc_env(&args, env)
}

fn resume(out: &Path, env: &[(&str, &str)]) -> Output {
    tttc_env(&["train", "--resume", p(out), "-o", p(out)], env)
}

fn ok(r: Output) -> String {
    assert!(r.status.success(), "tttc failed: {}", stderr(&r));
    stderr(&r)
}

/// The `.run.ckpt-*` folders beside `out`, sorted.
fn leftovers(out: &Path) -> Vec<String> {
    let prefix = format!(".{}.ckpt-", out.file_name().unwrap().to_str().unwrap());
    let mut v: Vec<String> =
        std::fs::read_dir(out.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with(&prefix)).collect();
    v.sort();
    v
}

fn step(dir: &Path) -> u64 {
    let trainer: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("trainer.json")).unwrap()).unwrap();
    trainer["step"].as_u64().unwrap()
}

/// The numbers of each log line (not the throughput).
fn log_numbers(dir: &Path) -> Vec<[Value; 4]> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|e| [e["step"].clone(), e["loss"].clone(), e["lr"].clone(), e["val_loss"].clone()])
        .collect()
}

/// `tttc run` loads the checkpoint as a model folder.
fn loads(dir: &Path) {
    let out = dir.with_file_name("run-output.safetensors");
    let input = repo().join("examples/prompt.safetensors");
    ok(tttc_env(&["run", p(dir), "--input", p(&input), "--output", p(&out)], &[]));
    assert!(read(&out)["loss"].f32[0].is_finite());
}

/// The run never interrupted, once for all tests.
fn uninterrupted() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = scratch("ckpt_whole").join("run");
        ok(train(&out, &[], &[]));
        out
    })
}

/// The resumed run ends where the uninterrupted one does: the same log and the same weights and
/// moments, bit for bit.
fn matches_uninterrupted(out: &Path) {
    let whole = uninterrupted();
    assert_eq!(log_numbers(out), log_numbers(whole));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(std::fs::read(out.join(f)).unwrap() == std::fs::read(whole.join(f)).unwrap(), "{f} differs from the uninterrupted run's");
    }
}

/// A run with a checkpoint at step 2 is continued and killed at `point` of its checkpoint at
/// step 4. `kept`: the step of the checkpoint left in the run folder (None: no folder, until the
/// next run restores it); `left`: the kinds of the folders left beside it.
fn crash(name: &str, point: &str, fallback: bool, kept: Option<u64>, left: &[&str]) {
    let out = scratch(name).join("run");
    ok(train(&out, &["--stop-after", "2"], &[]));
    assert_eq!(step(&out), 2);
    let mut env = vec![("TTTC_CRASH_AT", point)];
    if fallback {
        env.push(("TTTC_RENAME_EXCHANGE", "0"));
    }
    let r = resume(&out, &env);
    assert_eq!(r.status.signal(), Some(SIGKILL), "not killed at {point}: {}", stderr(&r));
    let found = leftovers(&out);
    assert_eq!(found.len(), left.len(), "{found:?}");
    for (f, kind) in found.iter().zip(left) {
        assert!(f.starts_with(&format!(".run.ckpt-{kind}-")), "{found:?}, expected {left:?}");
    }
    match kept {
        Some(s) => {
            assert_eq!(step(&out), s);
            loads(&out);
        }
        None => assert!(!out.exists()),
    }
    let e = ok(resume(&out, &[]));
    let restored = e.lines().filter(|l| l.starts_with("restored")).count();
    let removed = e.lines().filter(|l| l.starts_with("removed")).count();
    assert_eq!((restored, removed), (kept.is_none() as usize, left.len() - kept.is_none() as usize), "{e}");
    assert_eq!(leftovers(&out), Vec::<String>::new());
    matches_uninterrupted(&out);
    loads(&out);
}

#[test]
fn a_crash_before_the_swap_keeps_the_previous_checkpoint() {
    crash("ckpt_written", "checkpoint-written", false, Some(2), &["tmp"]);
}

#[test]
fn a_crash_before_the_fallback_keeps_the_previous_checkpoint() {
    crash("ckpt_written_fallback", "checkpoint-written", true, Some(2), &["tmp"]);
}

#[test]
fn a_crash_after_the_exchange_keeps_the_new_checkpoint() {
    // The previous checkpoint, exchanged, is at the temporary name.
    crash("ckpt_exchanged", "checkpoint-exchanged", false, Some(4), &["tmp"]);
}

#[test]
fn a_crash_after_the_fallbacks_renames_keeps_the_new_checkpoint() {
    crash("ckpt_exchanged_fallback", "checkpoint-exchanged", true, Some(4), &["old"]);
}

#[test]
fn a_crash_between_the_fallbacks_renames_is_repaired_by_the_next_run() {
    // No run folder: the previous checkpoint is set aside, the new one still at its temporary name.
    crash("ckpt_renamed_aside", "checkpoint-renamed-aside", true, None, &["old", "tmp"]);
}

#[test]
fn the_exchange_never_leaves_the_run_folder_missing() {
    // With RENAME_EXCHANGE there are no two renames to crash between: the run finishes.
    let out = scratch("ckpt_no_rename").join("run");
    ok(train(&out, &[], &[("TTTC_CRASH_AT", "checkpoint-renamed-aside")]));
    assert_eq!(step(&out), 6);
    assert_eq!(leftovers(&out), Vec::<String>::new());
}

#[test]
fn leftovers_of_dead_processes_are_removed_and_those_of_a_live_one_kept() {
    let dir = scratch("ckpt_stale");
    let out = dir.join("run");
    std::fs::create_dir(&out).unwrap();
    // PIDs are below pid_max; a process that was waited for is gone.
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap().trim().to_string();
    let mut child = Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    let live = std::process::id().to_string();
    let make = |name: String| {
        let path = dir.join(name);
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("model.safetensors"), "partial").unwrap();
        path
    };
    let dead = [make(format!(".run.ckpt-tmp-{pid_max}")), make(format!(".run.ckpt-old-{}", child.id()))];
    let kept = [make(format!(".run.ckpt-tmp-{live}")), make(format!(".other.ckpt-tmp-{pid_max}")), make(".run.ckpt-tmp-x1".into())];
    let e = ok(train(&out, &["--stop-after", "2"], &[]));
    for d in &dead {
        assert!(!d.exists(), "{} is left", d.display());
        assert!(e.lines().any(|l| l.starts_with("removed") && l.contains(p(d))), "{e}");
    }
    for k in &kept {
        assert!(k.is_dir(), "{} was removed", k.display());
    }
    assert_eq!(e.lines().filter(|l| l.starts_with("removed")).count(), 2, "{e}");
    assert_eq!(step(&out), 2);
}

#[test]
fn sigterm_stops_the_run_between_steps_with_a_complete_checkpoint() {
    let out = scratch("ckpt_sigterm").join("run");
    ok(train(&out, &["--stop-after", "2"], &[]));
    // SIGTERM while the checkpoint of step 4 is being written: that write is finished, then the
    // run stops before step 5.
    let r = resume(&out, &[("TTTC_SIGNAL_AT", "checkpoint-written")]);
    let e = stderr(&r);
    assert_eq!(r.status.code(), Some(143), "{e}");
    let errors: Vec<&str> = e.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors, [format!("error: interrupted at step 4; {} keeps the checkpoint of step 4", out.display())], "{e}");
    assert_eq!(e.lines().last(), Some(errors[0]));
    assert!(!e.contains("step     5/6"), "{e}");
    assert_eq!(step(&out), 4);
    assert_eq!(leftovers(&out), Vec::<String>::new());
    loads(&out);
    ok(resume(&out, &[]));
    matches_uninterrupted(&out);
}

#[test]
fn a_resumed_run_checks_the_options_of_trainer_json() {
    let out = scratch("ckpt_options").join("run");
    ok(train(&out, &["--stop-after", "2"], &[]));
    let path = out.join("trainer.json");
    let original = std::fs::read_to_string(&path).unwrap();
    for (key, value) in [("beta2", "1.0"), ("beta1", "-0.5"), ("beta1", "1.0"), ("eps", "0.0"), ("min_lr_ratio", "2.0"), ("lr", "-1.0")] {
        let mut trainer: Value = serde_json::from_str(&original).unwrap();
        trainer["options"][key] = serde_json::from_str(value).unwrap();
        std::fs::write(&path, trainer.to_string()).unwrap();
        let r = resume(&out, &[]);
        let e = stderr(&r);
        assert!(!r.status.success() && e.lines().count() == 1, "{key} = {value}: {e}");
        assert!(e.starts_with("error: ") && e.contains(&format!("{key} in {}", path.display())), "{key} = {value}: {e}");
    }
    std::fs::write(&path, &original).unwrap();
    // The optimizer's step is named as a number, or as missing.
    let opt = out.join("optimizer.safetensors");
    let moments = read_raw(&opt);
    let at = |step: Option<i64>| {
        let mut t: Vec<RawTensor> = moments.iter().filter(|t| t.0 != "step").cloned().collect();
        t.extend(step.map(|s| ("step".to_string(), safetensors::Dtype::I64, vec![], i64_bytes(&[s]))));
        write_raw(&opt, &t);
        let r = resume(&out, &[]);
        assert!(!r.status.success());
        stderr(&r)
    };
    assert!(at(Some(3)).contains("is at step 3 but trainer.json at step 2"), "{}", at(Some(3)));
    assert!(at(None).contains("is at no step but trainer.json at step 2"), "{}", at(None));
}

#[test]
fn a_data_file_that_is_not_a_regular_file_is_refused_at_once() {
    let dir = scratch("ckpt_fifo");
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let zero = dir.join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let out = dir.join("run");
    let model = repo().join("examples/ttt-linear-tiny.toml");
    for (data, kind) in [(&fifo, "a FIFO"), (&zero, "a device")] {
        // Nothing writes to the FIFO: reading it would block for ever.
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tttc"))
            .args(["train", p(&model), "--data", p(data), "-o", p(&out), "--steps", "2"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(30) {
                child.kill().unwrap();
                panic!("tttc train --data {} still runs after 30 s", data.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let r = child.wait_with_output().unwrap();
        let e = stderr(&r);
        assert!(!r.status.success() && e.lines().count() == 1, "{e}");
        assert!(e.starts_with("error: cannot read data file") && e.contains(kind), "{e}");
        assert!(!out.exists());
    }
}
