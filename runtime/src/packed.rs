//! Packed batches: N independent sequences laid end to end in one row (`input_ids` `[1, total]`)
//! with their boundaries in `cu_seqlens` (i64 `[N + 1]`, offsets from 0 to total, as
//! flash-attention and flash-linear-attention take them). Each sequence runs from a fresh state
//! on its own, so nothing is padded and nothing crosses a boundary (mini-batches and positions
//! restart with each sequence); the logits are laid end to end again and the loss is the mean over
//! every sequence's next-token targets. The model's graphs are compiled once for all sequences.
//! With a state per sequence (`--state-in`), each continues from its own.

use anyhow::{bail, ensure, Context, Result};
use tttc_frontends::{Mode, Model};
use tttc_ir::Tensor;

use std::collections::BTreeMap;

use crate::{check_input_ids, run_compiled, state, without_loss, Backend, Executable, Forward, State};

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

/// Runs each sequence of a packed batch on its own (with its state after it when `with_state`),
/// each from a fresh state or, with `start` (a state file with one state per sequence,
/// `seq.{i}.NAME`), from its own.
pub fn forward_packed(model: &Model, ids: &Tensor, cu_seqlens: &Tensor, backend: &dyn Backend, with_state: bool, start: Option<State>) -> Result<Packed> {
    let Some(file) = start else { return PackedRunner::new(model, with_state)?.run(model, ids, cu_seqlens, backend) };
    let bounds = boundaries(cu_seqlens, ids)?;
    let starts = state::split_packed(file, bounds.len() - 1)?;
    // One graph per state position, compiled once for the sequences that share it.
    let mut graphs: BTreeMap<usize, SequenceGraphs> = BTreeMap::new();
    let (forward, states) = each_sequence(model, ids, &bounds, |n, seq| {
        let start = &starts[n];
        let at = state::position(start)?;
        if let std::collections::btree_map::Entry::Vacant(e) = graphs.entry(at) {
            e.insert(SequenceGraphs::new(&state::resumed_graph(model, start)?)?);
        }
        let exe = graphs[&at].for_length(seq.shape[1]);
        run_compiled(exe, &model.weights, seq, state::arguments(&exe.graph, start, 1)?, backend)
    })?;
    Ok(Packed { forward, states: with_state.then_some(states) })
}

/// A graph for whole sequences, compiled, and its variant for one-token sequences (which have no
/// target, so no loss).
struct SequenceGraphs {
    whole: Executable,
    single: Executable,
}

impl SequenceGraphs {
    fn new(graph: &tttc_ir::Graph) -> Result<SequenceGraphs> {
        let whole = tttc_passes::compile(graph)?;
        let single = without_loss(&whole);
        Ok(SequenceGraphs { whole: Executable::new(whole), single: Executable::new(single) })
    }

    fn for_length(&self, len: usize) -> &Executable {
        if len > 1 {
            &self.whole
        } else {
            &self.single
        }
    }
}

/// A model's graphs for packed batches from fresh states, compiled once.
pub struct PackedRunner {
    graphs: SequenceGraphs,
    with_state: bool,
}

impl PackedRunner {
    pub fn new(model: &Model, with_state: bool) -> Result<PackedRunner> {
        let mode = if with_state { Mode::Run } else { Mode::Forward };
        let built = tttc_frontends::build_for(&model.config, mode)?;
        Ok(PackedRunner { graphs: SequenceGraphs::new(&built.g)?, with_state })
    }

    pub fn run(&self, model: &Model, ids: &Tensor, cu_seqlens: &Tensor, backend: &dyn Backend) -> Result<Packed> {
        let bounds = boundaries(cu_seqlens, ids)?;
        let (forward, states) =
            each_sequence(model, ids, &bounds, |_, seq| run_compiled(self.graphs.for_length(seq.shape[1]), &model.weights, seq, Vec::new(), backend))?;
        Ok(Packed { forward, states: self.with_state.then_some(states) })
    }
}

/// Runs `sequence` on each sequence of the packed batch (its index and its `input_ids`
/// `[1, len]`) between the `bounds` [`boundaries`] gives, lays the logits end to end and averages
/// the loss over every target.
fn each_sequence(
    model: &Model,
    ids: &Tensor,
    bounds: &[usize],
    mut sequence: impl FnMut(usize, &Tensor) -> Result<(Forward, State)>,
) -> Result<(Forward, Vec<State>)> {
    check_input_ids(ids, model.config.vocab_size())?;
    let row = ids.as_i64().expect("checked above");
    let (mut logits, mut vocab) = (Vec::new(), 0);
    let (mut loss_sum, mut targets) = (0f64, 0usize);
    let mut states = Vec::new();
    for (n, w) in bounds.windows(2).enumerate() {
        let len = w[1] - w[0];
        let seq = Tensor::i64(vec![1, len], row[w[0]..w[1]].to_vec());
        let (out, state) = sequence(n, &seq).with_context(|| format!("sequence {n} (tokens {}..{})", w[0], w[1]))?;
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
    Ok((Forward { logits: Tensor::f32(vec![1, total, vocab], logits), loss }, states))
}
