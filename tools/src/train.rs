//! `tttc train`: trains a model on a file of text with byte tokens, AdamW, gradient clipping and a
//! warmup + cosine learning-rate schedule, and writes checkpoints that `tttc run` loads as a model
//! folder. The gradient graph is compiled once (`GradientStep`) and run every step. Batches are
//! random windows of the training split drawn with a small seeded generator (splitmix64) whose
//! state is saved with every checkpoint, so a resumed run reproduces an uninterrupted one exactly.
//! docs/training.md describes the command, the checkpoint layout and the log.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tttc_files::interrupt::{test_point, Interrupts};
use tttc_files::swap::{self, Swap};
use tttc_files::Cap;
use tttc_frontends::rng::SplitMix64;
use tttc_frontends::Model;
use tttc_ir::{Data, Tensor};

use tttc_runtime::{Backend, Executable, GradientStep};

/// The byte tokenizer's vocabulary: token id = byte value.
pub const BYTE_VOCAB: usize = 256;

/// Everything that determines a run's numbers (saved in trainer.json), plus how often it logs,
/// evaluates and checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainOptions {
    /// Total optimizer steps (the schedule runs over them).
    pub steps: usize,
    pub batch_size: usize,
    /// Tokens per window (`input_ids` is `[batch_size, context]`).
    pub context: usize,
    pub seed: u64,
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay, applied to parameters of rank ≥ 2.
    pub weight_decay: f64,
    /// Global gradient-norm bound; 0 turns clipping off.
    pub clip: f64,
    /// Linear warmup steps; then cosine decay to `min_lr_ratio · lr` at the last step.
    pub warmup: usize,
    pub min_lr_ratio: f64,
    /// The last part of the data file, as a fraction of its bytes, is the validation split.
    pub val_fraction: f64,
    /// Validation every this many steps (0: never).
    pub eval_every: usize,
    /// Batches (of `batch_size` windows) in the fixed validation set.
    pub eval_batches: usize,
    pub log_every: usize,
    /// A checkpoint every this many steps (0: only at the end).
    pub checkpoint_every: usize,
}

/// The options given on the command line; `None` takes the default (a new run) or the
/// checkpoint's value (`--resume`).
#[derive(Clone, Debug, Default)]
pub struct OptionChoices {
    pub steps: Option<usize>,
    pub batch_size: Option<usize>,
    pub context: Option<usize>,
    pub seed: Option<u64>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    pub clip: Option<f64>,
    pub warmup: Option<usize>,
    pub val_fraction: Option<f64>,
    pub eval_every: Option<usize>,
    pub eval_batches: Option<usize>,
    pub log_every: Option<usize>,
    pub checkpoint_every: Option<usize>,
}

/// A `tttc train` invocation.
pub struct TrainRequest {
    /// The model to train (a folder or model.toml); optional with `resume`.
    pub model: Option<PathBuf>,
    /// The training text; optional with `resume` (the checkpoint names its file).
    pub data: Option<PathBuf>,
    /// The run's folder: checkpoints and log.jsonl.
    pub out: PathBuf,
    /// A checkpoint folder to continue from.
    pub resume: Option<PathBuf>,
    /// Stop (with a checkpoint) after this step, as if interrupted; the schedule still runs over
    /// all `steps`.
    pub stop_after: Option<usize>,
    pub choices: OptionChoices,
    pub backend: &'static dyn Backend,
}

/// What a finished run reports.
pub struct TrainSummary {
    pub step: usize,
    pub loss: f64,
    pub val_loss: Option<f64>,
    pub seconds_per_step: f64,
}

/// trainer.json: where a checkpoint stands and how it was trained.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainerState {
    format: String,
    tttc_version: String,
    step: usize,
    seed: u64,
    /// The batch generator's state after `step` steps.
    rng_state: u64,
    data: DataInfo,
    tokenizer: String,
    options: TrainOptions,
    /// The model the run started from (for people).
    model: String,
    loss: Option<f64>,
    val_loss: Option<f64>,
}

const FORMAT: &str = "tttc-train-1";

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataInfo {
    path: PathBuf,
    bytes: usize,
    /// FNV-1a 64 of the file's bytes, in hex: a resumed run must see the same data.
    fnv1a64: String,
    train_bytes: usize,
    val_bytes: usize,
}

/// The batch generator's state before the first step.
fn train_rng(seed: u64) -> SplitMix64 {
    SplitMix64(seed ^ 0x7472_6169_6E00_0001)
}

/// The generator of the fixed validation windows.
fn eval_rng(seed: u64) -> SplitMix64 {
    SplitMix64(seed ^ 0x6576_616C_0000_0002)
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}

/// The learning rate of step `s` (1-based): linear warmup to `lr`, then cosine decay to
/// `min_lr_ratio · lr` at the last step.
pub fn lr_at(o: &TrainOptions, s: usize) -> f64 {
    if s <= o.warmup {
        return o.lr * s as f64 / o.warmup as f64;
    }
    let decay = o.steps.saturating_sub(o.warmup);
    if decay == 0 {
        return o.lr;
    }
    let p = ((s - o.warmup) as f64 / decay as f64).min(1.0);
    let min = o.lr * o.min_lr_ratio;
    min + (o.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

fn resolve_new(c: &OptionChoices) -> Result<TrainOptions> {
    let steps = c.steps.context("--steps is required (the number of optimizer steps)")?;
    Ok(TrainOptions {
        steps,
        batch_size: c.batch_size.unwrap_or(8),
        context: c.context.unwrap_or(64),
        seed: c.seed.unwrap_or(0),
        lr: c.lr.unwrap_or(3e-3),
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        weight_decay: c.weight_decay.unwrap_or(0.1),
        clip: c.clip.unwrap_or(1.0),
        warmup: c.warmup.unwrap_or((steps as f64 * 0.1).round() as usize),
        min_lr_ratio: 0.1,
        val_fraction: c.val_fraction.unwrap_or(0.1),
        eval_every: c.eval_every.unwrap_or(50),
        eval_batches: c.eval_batches.unwrap_or(8),
        log_every: c.log_every.unwrap_or(10),
        checkpoint_every: c.checkpoint_every.unwrap_or(0),
    })
}

/// A resumed run keeps the checkpoint's options; the ones that change its numbers may only be
/// repeated, not changed. `--steps` may grow (a longer schedule).
fn resolve_resume(c: &OptionChoices, saved: &TrainOptions) -> Result<TrainOptions> {
    fn same<T: PartialEq + std::fmt::Display>(flag: &str, given: Option<T>, saved: T) -> Result<T> {
        match given {
            Some(v) if v != saved => bail!("{flag} {v} differs from the checkpoint's {saved}: a resumed run keeps the options it was trained with"),
            _ => Ok(saved),
        }
    }
    Ok(TrainOptions {
        steps: c.steps.unwrap_or(saved.steps),
        batch_size: same("--batch-size", c.batch_size, saved.batch_size)?,
        context: same("--context", c.context, saved.context)?,
        seed: same("--seed", c.seed, saved.seed)?,
        lr: same("--lr", c.lr, saved.lr)?,
        beta1: saved.beta1,
        beta2: saved.beta2,
        eps: saved.eps,
        weight_decay: same("--weight-decay", c.weight_decay, saved.weight_decay)?,
        clip: same("--clip", c.clip, saved.clip)?,
        warmup: same("--warmup", c.warmup, saved.warmup)?,
        min_lr_ratio: saved.min_lr_ratio,
        val_fraction: same("--val-fraction", c.val_fraction, saved.val_fraction)?,
        eval_every: c.eval_every.unwrap_or(saved.eval_every),
        eval_batches: same("--eval-batches", c.eval_batches, saved.eval_batches)?,
        log_every: c.log_every.unwrap_or(saved.log_every),
        checkpoint_every: c.checkpoint_every.unwrap_or(saved.checkpoint_every),
    })
}

/// Checks options given on the command line or read from a checkpoint; `key` names an option in
/// the messages (`--lr`, or `lr in runs/x/trainer.json`).
fn check_options(o: &TrainOptions, key: &dyn Fn(&str) -> String) -> Result<()> {
    ensure!(o.steps >= 1, "{} must be at least 1", key("steps"));
    ensure!(o.batch_size >= 1, "{} must be at least 1", key("batch_size"));
    ensure!(o.context >= 2, "{} must be at least 2 (the loss predicts each next token)", key("context"));
    ensure!(o.lr.is_finite() && o.lr > 0.0, "{} must be a positive number, got {}", key("lr"), o.lr);
    // β = 1 divides by zero in the bias correction.
    for (name, beta) in [("beta1", o.beta1), ("beta2", o.beta2)] {
        ensure!((0.0..1.0).contains(&beta), "{} must be in [0, 1), got {beta}", key(name));
    }
    ensure!(o.eps.is_finite() && o.eps > 0.0, "{} must be a positive number, got {}", key("eps"), o.eps);
    ensure!(o.weight_decay.is_finite() && o.weight_decay >= 0.0, "{} must be ≥ 0, got {}", key("weight_decay"), o.weight_decay);
    ensure!(o.clip.is_finite() && o.clip >= 0.0, "{} must be ≥ 0 (0 turns clipping off), got {}", key("clip"), o.clip);
    ensure!(o.warmup <= o.steps, "{} {} is longer than {} {}", key("warmup"), o.warmup, key("steps"), o.steps);
    ensure!((0.0..=1.0).contains(&o.min_lr_ratio), "{} must be in [0, 1], got {}", key("min_lr_ratio"), o.min_lr_ratio);
    ensure!(o.val_fraction > 0.0 && o.val_fraction < 1.0, "{} must be between 0 and 1 (exclusive), got {}", key("val_fraction"), o.val_fraction);
    ensure!(o.eval_batches >= 1, "{} must be at least 1", key("eval_batches"));
    ensure!(o.log_every >= 1, "{} must be at least 1", key("log_every"));
    Ok(())
}

/// An option as a flag: `batch_size` → `--batch-size`.
fn flag(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The data file, split into its training part and (the last `val_fraction`) validation part.
struct Corpus {
    bytes: Vec<u8>,
    n_train: usize,
    info: DataInfo,
}

fn read_corpus(path: &Path, o: &TrainOptions) -> Result<Corpus> {
    let cap = Cap::new("a data file tttc can hold in memory", tttc_files::memory::budget());
    let bytes = tttc_files::read(path, cap).with_context(|| format!("cannot read data file {}", path.display()))?;
    ensure!(!bytes.is_empty(), "data file {} is empty", path.display());
    let n_val = (bytes.len() as f64 * o.val_fraction).round() as usize;
    let n_train = bytes.len() - n_val;
    ensure!(o.context <= n_train, "--context {} is longer than the training split of {} ({n_train} of its {} bytes)", o.context, path.display(), bytes.len());
    ensure!(
        o.eval_every == 0 || o.context <= n_val,
        "--context {} is longer than the validation split of {} ({n_val} of its {} bytes; see --val-fraction)",
        o.context,
        path.display(),
        bytes.len()
    );
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let info = DataInfo { path: abs, bytes: bytes.len(), fnv1a64: fnv1a64(&bytes), train_bytes: n_train, val_bytes: n_val };
    Ok(Corpus { bytes, n_train, info })
}

/// `batch` windows of `context` tokens starting at offsets drawn from `rng` in `bytes`.
fn windows(bytes: &[u8], rng: &mut SplitMix64, batch: usize, context: usize) -> Tensor {
    let mut ids = Vec::with_capacity(batch * context);
    for _ in 0..batch {
        let start = rng.below(bytes.len() - context + 1);
        ids.extend(bytes[start..start + context].iter().map(|&b| b as i64));
    }
    Tensor::i64(vec![batch, context], ids)
}

/// AdamW's moments, one pair per parameter, and the step count.
struct Optimizer {
    m: BTreeMap<String, Vec<f32>>,
    v: BTreeMap<String, Vec<f32>>,
}

/// The run's state that a checkpoint saves beyond the weights.
struct State {
    step: usize,
    rng: SplitMix64,
    opt: Optimizer,
    loss: Option<f64>,
    val_loss: Option<f64>,
}

fn f32_data(t: &mut Tensor) -> &mut Vec<f32> {
    if let Data::F64(v) = &t.data {
        t.data = Data::F32(v.iter().map(|&x| x as f32).collect());
    }
    match &mut t.data {
        Data::F32(v) => v,
        _ => panic!("weights are float tensors"),
    }
}

/// One AdamW step (decoupled weight decay on rank ≥ 2 parameters) after global-norm clipping.
/// Returns the gradient norm before clipping.
fn adamw(model: &mut Model, opt: &mut Optimizer, grads: &BTreeMap<String, Vec<f32>>, o: &TrainOptions, s: usize, lr: f64) -> Result<f64> {
    let norm = grads.values().flat_map(|g| g.iter()).map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    ensure!(norm.is_finite(), "the gradient norm is {norm}");
    let scale = if o.clip > 0.0 && norm > o.clip { o.clip / norm } else { 1.0 };
    let bc1 = 1.0 - o.beta1.powi(s as i32);
    let bc2 = 1.0 - o.beta2.powi(s as i32);
    for (name, w) in model.weights.iter_mut() {
        let decay = if w.shape.len() >= 2 { o.weight_decay } else { 0.0 };
        let w = f32_data(w);
        let g = grads.get(name);
        let m = opt.m.get_mut(name).expect("moments for every weight");
        let v = opt.v.get_mut(name).expect("moments for every weight");
        for i in 0..w.len() {
            let gi = g.map_or(0.0, |g| g[i] as f64) * scale;
            m[i] = (o.beta1 * m[i] as f64 + (1.0 - o.beta1) * gi) as f32;
            v[i] = (o.beta2 * v[i] as f64 + (1.0 - o.beta2) * gi * gi) as f32;
            let update = (m[i] as f64 / bc1) / ((v[i] as f64 / bc2).sqrt() + o.eps);
            w[i] = (w[i] as f64 * (1.0 - lr * decay) - lr * update) as f32;
        }
    }
    Ok(norm)
}

/// The forward graph compiled once, for the validation loss.
struct Evaluator {
    graph: Executable,
    loss_index: usize,
    batches: Vec<Tensor>,
}

impl Evaluator {
    fn new(model: &Model, corpus: &Corpus, o: &TrainOptions) -> Result<Option<Evaluator>> {
        if o.eval_every == 0 {
            return Ok(None);
        }
        let graph = tttc_passes::compile(&model.builder.g)?;
        let loss_index = graph.outputs.iter().position(|(n, _)| n == "loss").context("the model's graph has no loss output")?;
        let mut rng = eval_rng(o.seed);
        let val = &corpus.bytes[corpus.n_train..];
        let batches = (0..o.eval_batches).map(|_| windows(val, &mut rng, o.batch_size, o.context)).collect();
        Ok(Some(Evaluator { graph: Executable::new(graph), loss_index, batches }))
    }

    /// The mean loss over the fixed validation batches.
    fn loss(&self, model: &Model, backend: &dyn Backend) -> Result<f64> {
        let mut sum = 0.0;
        for ids in &self.batches {
            let outs = self.graph.run(&model.weights, ids, backend)?;
            sum += outs[self.loss_index].to_f64().context("loss is a float")?[0];
        }
        Ok(sum / self.batches.len() as f64)
    }
}

/// Where a resumed run comes from.
struct Resumed {
    dir: PathBuf,
    trainer: TrainerState,
    model: Model,
    opt: Optimizer,
    log: Vec<String>,
}

/// Whether the model at `path` has the byte tokenizer (a folder with the tokenizer.json that
/// `train` writes); another tokenizer there is an error.
pub fn byte_tokenizer(path: &Path) -> Result<bool> {
    let tok_path = path.join("tokenizer.json");
    if !path.is_dir() || !tok_path.exists() {
        return Ok(false);
    }
    let tok: Value = serde_json::from_str(&tttc_files::read_text(&tok_path, Cap::CONFIG)?).with_context(|| format!("{} is malformed", tok_path.display()))?;
    ensure!(tok["kind"] == "bytes", "{} is not a byte tokenizer (kind {})", tok_path.display(), tok["kind"]);
    Ok(true)
}

fn read_checkpoint(dir: &Path) -> Result<Resumed> {
    ensure!(dir.is_dir(), "checkpoint {} is not a folder", dir.display());
    let tpath = dir.join("trainer.json");
    let text =
        tttc_files::read_text(&tpath, Cap::CONFIG).with_context(|| format!("{} is not a tttc train checkpoint (cannot read trainer.json)", dir.display()))?;
    let trainer: TrainerState = serde_json::from_str(&text).with_context(|| format!("{} is malformed", tpath.display()))?;
    ensure!(trainer.format == FORMAT, "{} has format {:?}, expected {FORMAT:?}", tpath.display(), trainer.format);
    check_options(&trainer.options, &|key| format!("{key} in {}", tpath.display()))?;
    ensure!(byte_tokenizer(dir)?, "cannot read {}", dir.join("tokenizer.json").display());
    let model = tttc_frontends::load(dir, None)?;
    let opt_path = dir.join("optimizer.safetensors");
    let mut saved = tttc_runtime::read_tensors(&opt_path)?;
    let step = saved.get("step").and_then(|t| t.as_i64()).and_then(|v| v.first().copied());
    ensure!(
        step == Some(trainer.step as i64),
        "{} is at {} but trainer.json at step {}: the checkpoint is inconsistent",
        opt_path.display(),
        step.map_or("no step".into(), |s| format!("step {s}")),
        trainer.step
    );
    let mut opt = Optimizer { m: BTreeMap::new(), v: BTreeMap::new() };
    for (name, w) in &model.weights {
        for (kind, map) in [("m", &mut opt.m), ("v", &mut opt.v)] {
            let key = format!("{kind}.{name}");
            let t = saved.remove(&key).with_context(|| format!("{} has no tensor {key}", opt_path.display()))?;
            ensure!(t.shape == w.shape, "{} tensor {key} has shape {:?}, expected {:?}", opt_path.display(), t.shape, w.shape);
            map.insert(name.clone(), t.to_f32().context("moments are float tensors")?);
        }
    }
    let log_path = dir.join("log.jsonl");
    let log = if log_path.exists() {
        tttc_files::read_text(&log_path, Cap::new("a training log tttc can hold in memory", tttc_files::memory::budget()))?
            .lines()
            .filter(|l| serde_json::from_str::<Value>(l).ok().and_then(|v| v["step"].as_u64()).is_some_and(|s| s as usize <= trainer.step))
            .map(str::to_string)
            .collect()
    } else {
        Vec::new()
    };
    Ok(Resumed { dir: dir.to_path_buf(), trainer, model, opt, log })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The run folder may be new, empty, hold only the log of a run that never checkpointed, or be
/// the checkpoint being resumed.
fn check_out(out: &Path, resume: Option<&Path>) -> Result<()> {
    if resume.is_some_and(|r| same_dir(r, out)) {
        if let Some(other) = foreign_entries(out)?.first() {
            bail!(
                "{} holds {other}, which tttc train did not write; a checkpoint replaces the whole folder, so move it out first (or resume into another -o)",
                out.display()
            );
        }
        return Ok(());
    }
    match std::fs::metadata(out) {
        Err(_) => {
            if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
                ensure!(parent.is_dir(), "cannot create {}: folder {} does not exist", out.display(), parent.display());
            }
            Ok(())
        }
        Ok(m) if !m.is_dir() => bail!("{} exists and is not a folder", out.display()),
        Ok(_) => {
            let entries: Vec<String> = std::fs::read_dir(out)
                .with_context(|| format!("cannot read {}", out.display()))?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<std::io::Result<_>>()?;
            if entries.iter().any(|e| e == "trainer.json") {
                bail!("{} already holds a training checkpoint: pass --resume {} to continue it, or choose another -o", out.display(), out.display());
            }
            ensure!(entries.iter().all(|e| e == "log.jsonl"), "{} exists and is not empty; not writing a run into it", out.display());
            Ok(())
        }
    }
}

/// The files a checkpoint is made of: a checkpoint replaces the whole run folder.
const CHECKPOINT_FILES: [&str; 7] = ["config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "trainer.json", "log.jsonl", "loss.png"];

/// The names in the run folder `dir` that are not a checkpoint's.
fn foreign_entries(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let name = entry.with_context(|| format!("cannot read {}", dir.display()))?.file_name().to_string_lossy().into_owned();
        if !CHECKPOINT_FILES.contains(&name.as_str()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The run's folder and what it has written.
struct Run<'a> {
    out: &'a Path,
    log: Vec<String>,
    last_checkpoint: Option<usize>,
}

impl Run<'_> {
    fn log(&mut self, entry: Value) -> Result<()> {
        let line = entry.to_string();
        let path = self.out.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        writeln!(f, "{line}").with_context(|| format!("cannot write {}", path.display()))?;
        self.log.push(line);
        Ok(())
    }

    /// loss.png: the logged training and validation losses against the step.
    fn plot(&self, path: &Path) -> Result<()> {
        let entries: Vec<Value> = self.log.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let series = |key: &str, label: &str| crate::plot::Series {
            label: label.into(),
            points: entries.iter().filter_map(|e| Some((e["step"].as_f64()?, e[key].as_f64()?))).collect(),
        };
        let title = format!("training loss ({})", self.out.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
        crate::plot::loss_curves(path, &title, &[series("loss", "train (batch)"), series("val_loss", "validation")])
    }

    /// Builds the checkpoint in a sibling folder, then swaps it in for the run folder.
    fn checkpoint(&mut self, model: &Model, state: &State, trainer: TrainerState) -> Result<()> {
        let swap = Swap::begin(self.out, CKPT)?;
        let tmp = swap.tmp();
        let fill = || -> Result<()> {
            let text = |v: &Value| serde_json::to_string_pretty(v).expect("JSON") + "\n";
            std::fs::write(tmp.join("config.json"), text(&model.config_json))?;
            let weights: Vec<(&str, &Tensor)> = model.weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
            tttc_runtime::write_tensors(&tmp.join("model.safetensors"), &weights)?;
            std::fs::write(tmp.join("tokenizer.json"), text(&json!({"kind": "bytes", "vocab_size": BYTE_VOCAB})))?;
            let shaped = |map: &BTreeMap<String, Vec<f32>>, kind: &str| -> Vec<(String, Tensor)> {
                map.iter().map(|(n, v)| (format!("{kind}.{n}"), Tensor::f32(model.weights[n].shape.clone(), v.clone()))).collect()
            };
            let mut moments = shaped(&state.opt.m, "m");
            moments.extend(shaped(&state.opt.v, "v"));
            moments.push(("step".into(), Tensor::i64(vec![], vec![state.step as i64])));
            let refs: Vec<(&str, &Tensor)> = moments.iter().map(|(n, t)| (n.as_str(), t)).collect();
            tttc_runtime::write_tensors(&tmp.join("optimizer.safetensors"), &refs)?;
            std::fs::write(tmp.join("log.jsonl"), self.log.iter().map(|l| format!("{l}\n")).collect::<String>())?;
            std::fs::write(tmp.join("trainer.json"), serde_json::to_string_pretty(&trainer)? + "\n")?;
            // The loss curves are for people: a failure to draw them does not stop training.
            let _ = self.plot(&tmp.join("loss.png"));
            // A file put into the run folder while it trains is carried over (hard-linked: if
            // the process dies before the swap, it is still in the folder); anything else stops
            // the checkpoint before the folder is touched.
            if self.out.exists() {
                for name in foreign_entries(self.out)? {
                    let (from, to) = (self.out.join(&name), tmp.join(&name));
                    ensure!(
                        std::fs::symlink_metadata(&from)?.is_file(),
                        "{} holds {name}, which tttc train did not write and cannot carry over; move it out",
                        self.out.display()
                    );
                    std::fs::hard_link(&from, &to).with_context(|| format!("cannot carry {} over", from.display()))?;
                }
            }
            Ok(())
        };
        // On an error the swap, dropped, removes its temporary folder.
        fill()
            .and_then(|()| {
                test_point("checkpoint-written");
                swap.commit(|point| test_point(&format!("checkpoint-{point}")))
            })
            .with_context(|| format!("cannot write the checkpoint {}", self.out.display()))?;
        self.last_checkpoint = Some(state.step);
        Ok(())
    }
}

/// The tag of a run folder's temporary siblings: `.DIR.ckpt-tmp-PID`, `.DIR.ckpt-old-PID`.
const CKPT: &str = "ckpt";

/// A run stopped by SIGINT or SIGTERM between two steps (the exit status is 128 + `signal`).
#[derive(Debug)]
pub struct Interrupted {
    pub signal: i32,
    message: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

/// Trains as `req` asks; progress goes to stderr.
pub fn train(req: &TrainRequest) -> Result<TrainSummary> {
    // A run killed while swapping in a checkpoint leaves its temporary folders, or (without
    // RENAME_EXCHANGE) its checkpoint set aside: set things right before reading anything.
    for dir in req.resume.iter().chain([&req.out]) {
        for line in swap::recover(dir, CKPT)? {
            eprintln!("{line}");
        }
    }
    // Everything is read and checked before anything is written.
    let resumed = req.resume.as_deref().map(read_checkpoint).transpose()?;
    let o = match &resumed {
        Some(r) => resolve_resume(&req.choices, &r.trainer.options)?,
        None => resolve_new(&req.choices)?,
    };
    check_options(&o, &flag)?;
    let (mut model, model_name) = match (&resumed, &req.model) {
        (None, None) => bail!("give the MODEL to train (or --resume a checkpoint)"),
        (None, Some(path)) => (tttc_frontends::load(path, None)?, path.display().to_string()),
        (Some(r), given) => {
            if let Some(path) = given {
                let config = tttc_frontends::load_config(path)?;
                ensure!(config == r.model.config, "model {} differs from the checkpoint {}'s config.json", path.display(), r.dir.display());
            }
            (tttc_frontends::load(&r.dir, None)?, r.trainer.model.clone())
        }
    };
    let vocab = model.config.vocab_size();
    ensure!(vocab >= BYTE_VOCAB, "the model's vocab_size is {vocab}, below the {BYTE_VOCAB} ids of the byte tokenizer");
    let data_path = match (&req.data, &resumed) {
        (Some(d), _) => d.clone(),
        (None, Some(r)) => r.trainer.data.path.clone(),
        (None, None) => bail!("--data FILE is required (the training text)"),
    };
    // Checkpoints replace the run folder: the data must live elsewhere.
    if let (Ok(data), Ok(out)) = (std::fs::canonicalize(&data_path), std::fs::canonicalize(&req.out)) {
        ensure!(
            !data.starts_with(&out),
            "--data {} is inside the run folder {}, which every checkpoint replaces; keep the data elsewhere",
            data_path.display(),
            req.out.display()
        );
    }
    let corpus = read_corpus(&data_path, &o)?;
    let mut state = match &resumed {
        Some(r) => {
            ensure!(
                corpus.info.bytes == r.trainer.data.bytes && corpus.info.fnv1a64 == r.trainer.data.fnv1a64,
                "data file {} differs from the one the checkpoint was trained on ({})",
                data_path.display(),
                r.trainer.data.path.display()
            );
            ensure!(o.steps > r.trainer.step, "nothing to train: the checkpoint is at step {} and --steps is {}", r.trainer.step, o.steps);
            State {
                step: r.trainer.step,
                rng: SplitMix64(r.trainer.rng_state),
                opt: Optimizer { m: r.opt.m.clone(), v: r.opt.v.clone() },
                loss: r.trainer.loss,
                val_loss: r.trainer.val_loss,
            }
        }
        None => {
            let zeros = |m: &Model| m.weights.iter().map(|(n, t)| (n.clone(), vec![0f32; t.len()])).collect::<BTreeMap<_, _>>();
            State { step: 0, rng: train_rng(o.seed), opt: Optimizer { m: zeros(&model), v: zeros(&model) }, loss: None, val_loss: None }
        }
    };
    let stop = req.stop_after.unwrap_or(o.steps).min(o.steps);
    ensure!(stop > state.step, "--stop-after {stop} is not after the checkpoint's step {}", state.step);
    check_out(&req.out, req.resume.as_deref())?;

    let t0 = Instant::now();
    let step_fn = GradientStep::new(&model)?;
    // Before any batch is drawn: AdamW's two moments and the validation batches stay beside a step.
    let n_params: usize = model.weights.values().map(Tensor::len).sum();
    let batch_bytes = (o.batch_size as u64).saturating_mul(o.context as u64).saturating_mul(8);
    step_fn.check_memory(o.batch_size, o.context, (n_params as u64 * 8).saturating_add(batch_bytes.saturating_mul(o.eval_batches as u64)))?;
    let evaluator = Evaluator::new(&model, &corpus, &o)?;
    eprintln!(
        "training {model_name} ({n_params} parameters) on {}: {} train + {} validation bytes; batch {} × context {}, steps {}..{stop} of {}; gradient graph compiled in {:.2} s",
        data_path.display(),
        corpus.n_train,
        corpus.bytes.len() - corpus.n_train,
        o.batch_size,
        o.context,
        state.step + 1,
        o.steps,
        t0.elapsed().as_secs_f64()
    );

    // From here on a signal stops the run at the next step boundary, never inside a checkpoint.
    let interrupts = Interrupts::catch();
    let same_as_resume = req.resume.as_deref().is_some_and(|r| same_dir(r, &req.out));
    let mut run = Run { out: &req.out, log: resumed.as_ref().map(|r| r.log.clone()).unwrap_or_default(), last_checkpoint: None };
    std::fs::create_dir_all(&req.out).with_context(|| format!("cannot create {}", req.out.display()))?;
    if same_as_resume {
        run.last_checkpoint = Some(state.step);
    }
    // The log holds the entries up to the starting step (a resumed run drops any written after
    // its checkpoint).
    tttc_files::write_atomic(&req.out.join("log.jsonl"), run.log.iter().map(|l| format!("{l}\n")).collect::<String>().as_bytes())?;
    if resumed.is_none() {
        if let Some(ev) = &evaluator {
            let val = ev.loss(&model, req.backend)?;
            eprintln!("step {:>5}/{}  val_loss {val:.4}", 0, o.steps);
            run.log(json!({"step": 0, "val_loss": val}))?;
            state.val_loss = Some(val);
        }
    }
    let trainer_state = |state: &State| TrainerState {
        format: FORMAT.into(),
        tttc_version: env!("CARGO_PKG_VERSION").into(),
        step: state.step,
        seed: o.seed,
        rng_state: state.rng.0,
        data: corpus.info.clone(),
        tokenizer: "bytes".into(),
        options: o.clone(),
        model: model_name.clone(),
        loss: state.loss,
        val_loss: state.val_loss,
    };

    let first = state.step + 1;
    let progress = Progress::new(state.step, o.steps);
    let tokens_per_step = (o.batch_size * o.context) as f64;
    let (mut interval_time, mut interval_steps, mut train_time) = (0.0f64, 0usize, 0.0f64);
    for s in first..=stop {
        let kept = match run.last_checkpoint {
            Some(c) => format!("{} keeps the checkpoint of step {c}", req.out.display()),
            None => "no checkpoint was written".to_string(),
        };
        if let Some(signal) = interrupts.pending() {
            progress.finish();
            let message = format!("interrupted at step {}; {kept}", state.step);
            return Err(Interrupted { signal, message }.into());
        }
        let started = Instant::now();
        let ids = windows(&corpus.bytes[..corpus.n_train], &mut state.rng, o.batch_size, o.context);
        let g = step_fn.run(&model.weights, &ids, req.backend)?;
        let loss = g.loss.to_f64().context("loss is a float")?[0];
        ensure!(loss.is_finite(), "step {s}: the loss is {loss}; training stopped ({kept}; try a lower --lr)");
        let grads: BTreeMap<String, Vec<f32>> = g.grads.into_iter().map(|(n, t)| (n, t.to_f32().expect("float gradients"))).collect();
        let lr = lr_at(&o, s);
        adamw(&mut model, &mut state.opt, &grads, &o, s, lr).with_context(|| format!("step {s}: training stopped ({kept}; try a lower --lr)"))?;
        state.step = s;
        state.loss = Some(loss);
        let dt = started.elapsed().as_secs_f64();
        interval_time += dt;
        train_time += dt;
        interval_steps += 1;

        let last = s == stop;
        let evaluate = evaluator.is_some() && (s % o.eval_every.max(1) == 0 || last);
        if s % o.log_every == 0 || s == 1 || evaluate || last {
            let tps = interval_steps as f64 * tokens_per_step / interval_time.max(1e-9);
            let mut entry = json!({"step": s, "loss": loss, "lr": lr, "tokens_per_s": (tps * 10.0).round() / 10.0});
            let mut line = format!("step {s:>5}/{}  loss {loss:.4}  lr {lr:.2e}  {tps:.0} tok/s", o.steps);
            if evaluate {
                let val = evaluator.as_ref().unwrap().loss(&model, req.backend)?;
                ensure!(val.is_finite(), "step {s}: the validation loss is {val}; training stopped ({kept}; try a lower --lr)");
                state.val_loss = Some(val);
                entry["val_loss"] = json!(val);
                line += &format!("  val_loss {val:.4}");
            }
            progress.line(&line);
            run.log(entry)?;
            (interval_time, interval_steps) = (0.0, 0);
        }
        if last || (o.checkpoint_every > 0 && s % o.checkpoint_every == 0) {
            run.checkpoint(&model, &state, trainer_state(&state))?;
            progress.line(&format!("checkpoint: step {s} in {}", req.out.display()));
        }
        progress.step(s, loss, lr);
    }
    progress.finish();
    Ok(TrainSummary {
        step: state.step,
        loss: state.loss.unwrap_or(f64::NAN),
        val_loss: state.val_loss,
        seconds_per_step: train_time / (stop + 1 - first) as f64,
    })
}

/// Progress on stderr: a bar with the step, loss and learning rate when stderr is a terminal
/// (the logged lines above it), the logged lines alone otherwise (CI logs, pipes).
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(done: usize, steps: usize) -> Progress {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new(steps as u64).with_position(done as u64);
        let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]").expect("a valid template");
        bar.set_style(style);
        Progress(Some(bar))
    }

    fn line(&self, text: &str) {
        match &self.0 {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn step(&self, step: usize, loss: f64, lr: f64) {
        if let Some(bar) = &self.0 {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4}  lr {lr:.2e}"));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_a_tenth() {
        let o = resolve_new(&OptionChoices { steps: Some(100), ..Default::default() }).unwrap();
        assert_eq!(o.warmup, 10);
        assert!((lr_at(&o, 1) - 3e-4).abs() < 1e-12);
        assert!((lr_at(&o, 10) - 3e-3).abs() < 1e-12);
        assert!((lr_at(&o, 100) - 3e-4).abs() < 1e-12);
        let lrs: Vec<f64> = (10..=100).map(|s| lr_at(&o, s)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]));
        let none = TrainOptions { warmup: 0, ..o };
        assert!(lr_at(&none, 1) < 3e-3 && lr_at(&none, 1) > 2.99e-3);
    }

    #[test]
    fn windows_are_reproducible_from_the_generator_state() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut a = train_rng(7);
        let first = windows(&bytes, &mut a, 3, 5);
        let state = a.0;
        let second = windows(&bytes, &mut a, 3, 5);
        assert_ne!(first, second);
        assert_eq!(windows(&bytes, &mut SplitMix64(state), 3, 5), second);
        let ids = first.as_i64().unwrap();
        assert!(ids.chunks(5).all(|w| w.windows(2).all(|p| p[1] == p[0] + 1)));
    }
}
