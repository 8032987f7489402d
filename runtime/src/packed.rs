//! Packed batches: N independent sequences laid end to end in one row (`input_ids` `[1, total]`)
//! with their boundaries in `cu_seqlens` (i64 `[N + 1]`, offsets from 0 to total, as
//! flash-attention and flash-linear-attention take them). Each sequence runs from a fresh state
//! on its own, so nothing is padded and nothing crosses a boundary (mini-batches and positions
//! restart with each sequence); the logits are laid end to end again and the loss is the mean over
//! every sequence's next-token targets. The model's graphs are compiled once for all sequences.

use anyhow::{bail, ensure, Context, Result};
use tttc_frontends::{Mode, Model};
use tttc_ir::Tensor;

use crate::{check_input_ids, split_outputs, without_loss, Backend, Executable, Forward, State};

/// A packed run's results: `logits` `[1, total, V]`, the loss over every sequence's targets
/// (none when every sequence has one token), and, when asked for, each sequence's state.
pub struct Packed {
    pub forward: Forward,
    /// Per sequence, in order: its state after its last token.
    pub states: Option<Vec<State>>,
}

/// The sequences' boundaries `cu_seqlens` describes for `input_ids`, checked: i64 `[N + 1]`,
/// starting at 0, strictly increasing, ending at the row's length; `input_ids` one row.
pub fn boundaries(cu_seqlens: &Tensor, ids: &Tensor) -> Result<Vec<usize>> {
    let cu = cu_seqlens.as_i64().with_context(|| format!("cu_seqlens must be i64, got {cu_seqlens}"))?;
    ensure!(cu_seqlens.shape.len() == 1 && cu.len() >= 2, "cu_seqlens must have shape [N + 1] with N ≥ 1, got {:?}", cu_seqlens.shape);
    ensure!(ids.shape.len() == 2 && ids.shape[0] == 1, "with cu_seqlens, input_ids must be one row [1, total], got {:?}", ids.shape);
    ensure!(cu[0] == 0, "cu_seqlens must start at 0, got {}", cu[0]);
    if let Some(i) = (1..cu.len()).find(|&i| cu[i] <= cu[i - 1]) {
        bail!("cu_seqlens must be strictly increasing: cu_seqlens[{}] = {} after {}", i, cu[i], cu[i - 1]);
    }
    let total = ids.shape[1];
    ensure!(cu[cu.len() - 1] == total as i64, "cu_seqlens must end at the {total} tokens of input_ids, got {}", cu[cu.len() - 1]);
    Ok(cu.iter().map(|&c| c as usize).collect())
}

/// Runs each sequence of a packed batch on its own (with its state after it when `with_state`).
pub fn forward_packed(model: &Model, ids: &Tensor, cu_seqlens: &Tensor, backend: Backend, with_state: bool) -> Result<Packed> {
    PackedRunner::new(model, with_state)?.run(model, ids, cu_seqlens, backend)
}

/// A model's graphs for packed batches, compiled once: the whole sequence's, and a one-token
/// sequence's (which has no target, so no loss).
pub struct PackedRunner {
    whole: Executable,
    single: Executable,
    with_state: bool,
}

impl PackedRunner {
    pub fn new(model: &Model, with_state: bool) -> Result<PackedRunner> {
        let mode = if with_state { Mode::Run } else { Mode::Forward };
        let built = tttc_frontends::build_for(&model.config, mode)?;
        let whole = tttc_passes::compile(&built.g)?;
        let single = without_loss(&whole);
        Ok(PackedRunner { whole: Executable::new(whole), single: Executable::new(single), with_state })
    }

    pub fn run(&self, model: &Model, ids: &Tensor, cu_seqlens: &Tensor, backend: Backend) -> Result<Packed> {
        let bounds = boundaries(cu_seqlens, ids)?;
        check_input_ids(ids, model.config.vocab_size())?;
        let row = ids.as_i64().expect("checked above");
        let (mut logits, mut vocab) = (Vec::new(), 0);
        let (mut loss_sum, mut targets) = (0f64, 0usize);
        let mut states = Vec::new();
        for (n, w) in bounds.windows(2).enumerate() {
            let len = w[1] - w[0];
            let seq = Tensor::i64(vec![1, len], row[w[0]..w[1]].to_vec());
            let exe = if len > 1 { &self.whole } else { &self.single };
            let outs = exe.run(&model.weights, &seq, backend).with_context(|| format!("sequence {n} (tokens {}..{})", w[0], w[1]))?;
            let (out, state) = split_outputs(&exe.graph, outs)?;
            vocab = out.logits.shape[2];
            logits.extend_from_slice(out.logits.as_f32().context("logits are not f32")?);
            if let Some(l) = out.loss {
                loss_sum += l.to_f64().context("loss is not a float")?[0] * (len - 1) as f64;
                targets += len - 1;
            }
            states.push(state);
        }
        let total = ids.shape[1];
        let loss = (targets > 0).then(|| Tensor::f32(vec![], vec![(loss_sum / targets as f64) as f32]));
        Ok(Packed { forward: Forward { logits: Tensor::f32(vec![1, total, vocab], logits), loss }, states: self.with_state.then_some(states) })
    }
}
