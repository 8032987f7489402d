//! Side-by-side validation losses of finished training runs (the family comparison): a Markdown
//! table and a PNG of the validation curves.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::plot::{loss_curves, Series};

/// One run's log: (step, validation loss) points and the logged speed.
struct Run {
    name: String,
    val: Vec<(f64, f64)>,
    tokens_per_s: Vec<f64>,
}

fn read_run(dir: &Path) -> Result<Run> {
    let path = dir.join("log.jsonl");
    let text = tttc_files::read_text(&path, tttc_files::Cap::new("a training log", tttc_files::memory::budget()))?;
    let mut run = Run { name: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), val: vec![], tokens_per_s: vec![] };
    for (i, line) in text.lines().enumerate() {
        let e: Value = serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        if let (Some(s), Some(v)) = (e["step"].as_f64(), e["val_loss"].as_f64()) {
            run.val.push((s, v));
        }
        if let Some(t) = e["tokens_per_s"].as_f64() {
            run.tokens_per_s.push(t);
        }
    }
    if run.val.is_empty() {
        bail!("{} has no validation loss", path.display());
    }
    Ok(run)
}

/// Reads each run folder's log.jsonl, draws the validation curves into `png` and returns a
/// Markdown table: start, final and best validation loss and the mean speed per run.
pub fn compare_runs(runs: &[PathBuf], png: &Path, title: &str) -> Result<String> {
    let mut outputs = tttc_files::Outputs::new();
    for dir in runs {
        outputs.reads("the log", &dir.join("log.jsonl"));
    }
    let out = outputs.file("--output", png)?;
    let runs: Vec<Run> = runs.iter().map(|d| read_run(d)).collect::<Result<_>>()?;
    let series: Vec<Series> = runs.iter().map(|r| Series { label: r.name.clone(), points: r.val.clone() }).collect();
    outputs.write_with(out, |path| loss_curves(path, title, &series))?;
    outputs.commit()?;
    let mut table = String::from("| run | steps | validation loss at start | final | best | tokens/s |\n|---|---|---|---|---|---|\n");
    for r in &runs {
        let (first, last) = (r.val[0], r.val[r.val.len() - 1]);
        let best = r.val.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        let speed = if r.tokens_per_s.is_empty() { f64::NAN } else { r.tokens_per_s.iter().sum::<f64>() / r.tokens_per_s.len() as f64 };
        table += &format!("| {} | {} | {:.4} | {:.4} | {:.4} | {:.0} |\n", r.name, last.0, first.1, last.1, best, speed);
    }
    Ok(table)
}
