//! The apply-then-update inner loop, shared by LaCT and the TTT learners with
//! `ttt_inner.update = "per_chunk"`: a chunk's tokens read the fast weights as the chunk found
//! them, then the chunk's summed step moves them once. The learner supplies the step of its own
//! loss (`Σ_t lr_t·∇…`, a direction to add); this module holds the state a chunk loop carries and
//! what the inner optimizer does with a step: momentum from the chunk's mean gate, Muon, decay,
//! the step itself and the renormalisation of every unit's weights to their initial norm.

use anyhow::{ensure, Result};
use tttc_ir::{BinaryOp, DType, Dim, Graph, ReduceKind, Scan, Type, UnaryOp, ValueId};

use crate::builder::{ModelBuilder, StateInit};
use crate::config::Renormalize;

/// Newton–Schulz's five steps `(a, b, c)`: `X ← a·X + (b·A + c·A²)·X` with `A = X·Xᵀ`
/// (SPEC-lact.md §6).
const NEWTON_SCHULZ: [(f64, f64, f64); 5] =
    [(4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037), (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)];

/// What the renormalisation adds to a norm before dividing by it.
const NORM_EPS: f64 = 1e-5;

/// How a chunk's step moves the fast weights.
#[derive(Clone, Copy, Debug)]
pub struct UpdateRule {
    /// The chunk length C: the gates' means divide by it (a shorter last chunk's too).
    pub chunk: usize,
    /// `M ← Δ + β̄·M`, the step M (β̄ the chunk's mean momentum gate).
    pub momentum: bool,
    /// `W ← (1 − ᾱ)·W + step` (ᾱ the chunk's mean forget gate).
    pub forget: bool,
    /// The step of each matrix orthogonalised ([`muon`]).
    pub muon: bool,
    /// Every unit of the weights given a norm back to it after the step (`Post`), or the
    /// unnormalised weights kept in the state's `raw` and renormalised into the weights (`Pre`).
    pub renormalize: Option<Renormalize>,
    /// The axis along which one unit's weights lie, whose norm the renormalisation keeps: −1 for
    /// weights stored `[out, in]` (LaCT's rows), −2 for `[in, out]` (TTT's columns).
    pub unit_axis: i64,
}

/// The chunk loop's recurrent values, in the order the loop carries them and a state lists them:
/// the weights; with momentum, each one's last step `M`; pre-norm, the unnormalised weights that
/// take the steps; and in a graph that hands on a state, the current chunk's step so far (`sums`,
/// before momentum) and its tokens' summed gates.
#[derive(Default)]
pub struct ChunkState {
    pub weights: Vec<ValueId>,
    pub momentum: Vec<ValueId>,
    pub raw: Vec<ValueId>,
    pub sums: Vec<ValueId>,
    pub beta_sum: Option<ValueId>,
    pub alpha_sum: Option<ValueId>,
}

/// One value of [`ChunkState::layout`]: its state name, type, part and, for a part kept per
/// weight, which weight.
pub struct Slot {
    pub name: String,
    pub ty: Type,
    pub part: Part,
    pub weight: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Weights,
    Momentum,
    Raw,
    Sums,
    BetaSum,
    AlphaSum,
}

impl ChunkState {
    pub fn values(&self) -> Vec<ValueId> {
        [&self.weights[..], &self.momentum, &self.raw, &self.sums, self.beta_sum.as_slice(), self.alpha_sum.as_slice()].concat()
    }

    /// The values of a state laid out as [`ChunkState::layout`] says.
    pub fn from_values(values: &[ValueId], layout: &[Slot]) -> ChunkState {
        let part = |p: Part| values.iter().zip(layout).filter(|(_, l)| l.part == p).map(|(&v, _)| v).collect::<Vec<_>>();
        ChunkState {
            weights: part(Part::Weights),
            momentum: part(Part::Momentum),
            raw: part(Part::Raw),
            sums: part(Part::Sums),
            beta_sum: part(Part::BetaSum).first().copied(),
            alpha_sum: part(Part::AlphaSum).first().copied(),
        }
    }

    /// Each value's state name, type and part for the fast weights `weights` (name, type
    /// `[B, H, rows, cols]`): what `rule` carries, and with `hand_on` what a state holds beside.
    /// A part's names are the weight's with a suffix; the summed gates are `{prefix}beta_sum`
    /// and `{prefix}alpha_sum` `[B, H, 1, 1]`.
    pub fn layout(rule: &UpdateRule, weights: &[(String, Type)], hand_on: bool, prefix: &str) -> Vec<Slot> {
        let mut layout = Vec::new();
        let pre = rule.renormalize == Some(Renormalize::Pre);
        let parts = [(Part::Weights, "", true), (Part::Momentum, ".momentum", rule.momentum), (Part::Raw, ".raw", pre), (Part::Sums, ".sum", hand_on)];
        for (part, suffix, on) in parts {
            if on {
                layout.extend(weights.iter().enumerate().map(|(j, (name, ty))| Slot {
                    name: format!("{name}{suffix}"),
                    ty: ty.clone(),
                    part,
                    weight: Some(j),
                }));
            }
        }
        let Some((_, ty)) = weights.first() else { return layout };
        let mut gate = ty.shape[..2].to_vec();
        gate.extend([Dim::c(1), Dim::c(1)]);
        for (part, name, on) in [(Part::BetaSum, "beta_sum", rule.momentum), (Part::AlphaSum, "alpha_sum", rule.forget)] {
            if hand_on && on {
                layout.push(Slot { name: format!("{prefix}{name}"), ty: Type::new(DType::F32, gate.clone()), part, weight: None });
            }
        }
        layout
    }
}

/// The chunk loop's starting values, laid out as `layout`: in a graph that takes a state, its
/// inputs (a weight, or pre-norm weight, from the parameter `param(j)` names when there is one,
/// else zeros); otherwise the `initial` weights broadcast over the batch, and zeros.
pub fn start_values(b: &mut ModelBuilder, layout: &[Slot], initial: &[ValueId], param: impl Fn(usize) -> Option<String>) -> Result<Vec<ValueId>> {
    if b.mode.takes_state() {
        return Ok(layout
            .iter()
            .map(|slot| {
                let from = match (slot.part, slot.weight.and_then(&param)) {
                    (Part::Weights | Part::Raw, Some(name)) => StateInit::Param(name),
                    _ => StateInit::Zeros,
                };
                b.state_input(&slot.name, slot.ty.clone(), from)
            })
            .collect());
    }
    let zero = b.scalar(0.0)?;
    layout
        .iter()
        .map(|slot| match (slot.part, slot.weight) {
            (Part::Weights | Part::Raw, Some(j)) => b.broadcast(initial[j], slot.ty.shape.clone()),
            _ => b.broadcast(zero, slot.ty.shape.clone()),
        })
        .collect()
}

/// The chunk loop over a sequence: a `Scan` of `body` along axis 2 in chunks of `chunk`,
/// carrying `start` (laid out as `layout`) over `seqs`, with `invariants` after them. A resumed
/// run's first `seen` tokens of its first chunk came before: the sequences are padded in front
/// with `seen` zeros (no learning rate, no gate), so that the chunks fall on the chunk
/// boundaries, and the outputs cut back. Each value of the state after it is handed on as its
/// slot's state; returns the outputs.
#[allow(clippy::too_many_arguments)]
pub fn scan_chunks(
    b: &mut ModelBuilder,
    layout: &[Slot],
    start: Vec<ValueId>,
    seqs: &[ValueId],
    invariants: &[ValueId],
    body: Graph,
    chunk: usize,
    seen: usize,
) -> Result<ValueId> {
    let carries = start.len();
    let mut inputs = start;
    for &x in seqs {
        inputs.push(if seen > 0 { b.pad(x, 2, seen, 0)? } else { x });
    }
    inputs.extend(invariants);
    let outs = b.scan(Scan { axis: 2, chunk, carries, seqs: seqs.len(), body, reverse: false }, &inputs)?;
    hand_on(b, layout, &outs[..carries]);
    let out = outs[carries];
    if seen > 0 {
        return b.slice(out, 2, seen as i64, None);
    }
    Ok(out)
}

/// Hands on `values` (laid out as `layout`) as the state after the graph.
pub fn hand_on(b: &mut ModelBuilder, layout: &[Slot], values: &[ValueId]) {
    for (slot, &v) in layout.iter().zip(values) {
        b.state_output(&slot.name, v);
    }
}

/// A chunk's per-token gates `[B, H, n, 1]`, those the rule has.
pub struct Gates {
    pub beta: Option<ValueId>,
    pub alpha: Option<ValueId>,
}

/// The state after a chunk whose step is `steps` (one per weight), gates `gates` (those the rule
/// has), the weights' initial unit norms `norms` (`None` for a weight not renormalised, a bias;
/// see [`unit_norms`]), and which weights are biases (`biases`: Muon leaves their steps as they
/// are). Without `ends` the update is made
/// (a forward pass, or a chunk known to be whole); with it (1 or 0), the chunk's step and gates
/// are added to the state's sums and the update is made only where it is 1, the sums then
/// emptied; else the sums go on.
#[allow(clippy::too_many_arguments)]
pub fn chunk_update(
    g: &mut Graph,
    rule: &UpdateRule,
    state: &ChunkState,
    mut steps: Vec<ValueId>,
    gates: Gates,
    norms: &[Option<ValueId>],
    biases: &[bool],
    ends: Option<ValueId>,
) -> Result<ChunkState> {
    ensure!(
        gates.beta.is_some() == rule.momentum && gates.alpha.is_some() == rule.forget,
        "a chunk update's gates do not match its rule (momentum {}, forget {})",
        rule.momentum,
        rule.forget
    );
    ensure!(state.raw.is_empty() != (rule.renormalize == Some(Renormalize::Pre)), "a pre-norm chunk update carries the unnormalised weights, and only it");
    for (step, &before) in steps.iter_mut().zip(&state.sums) {
        *step = g.add(before, *step)?;
    }
    let mut summed = |gate: Option<ValueId>, before: Option<ValueId>| -> Result<Option<ValueId>> {
        let Some(gate) = gate else { return Ok(None) };
        let sum = g.reduce(ReduceKind::Sum, gate, 2, true)?;
        Ok(Some(match before {
            Some(before) => g.add(before, sum)?,
            None => sum,
        }))
    };
    let beta_sum = summed(gates.beta, state.beta_sum)?;
    let alpha_sum = summed(gates.alpha, state.alpha_sum)?;
    let mut mean = |sum: Option<ValueId>| -> Result<Option<ValueId>> {
        let Some(sum) = sum else { return Ok(None) };
        let count = g.scalar(rule.chunk as f64)?;
        Ok(Some(g.div(sum, count)?))
    };
    let (mean_beta, mean_alpha) = (mean(beta_sum)?, mean(alpha_sum)?);
    let keep = match mean_alpha {
        Some(alpha) => {
            let one = g.scalar(1.0)?;
            Some(g.sub(one, alpha)?)
        }
        None => None,
    };

    let mut next = ChunkState::default();
    for (j, &sum) in steps.iter().enumerate() {
        let mut step = sum;
        if let Some(mean_beta) = mean_beta {
            let kept = g.mul(mean_beta, state.momentum[j])?;
            step = g.add(step, kept)?;
            next.momentum.push(step);
        }
        if rule.muon {
            step = muon(g, step, biases[j])?;
        }
        let from = state.raw.get(j).copied().unwrap_or(state.weights[j]);
        let from = match keep {
            Some(keep) => g.mul(keep, from)?,
            None => from,
        };
        let stepped = g.add(from, step)?;
        if !state.raw.is_empty() {
            next.raw.push(stepped);
        }
        next.weights.push(match (rule.renormalize, norms.get(j).copied().flatten()) {
            (Some(_), Some(target)) => renormalize(g, stepped, target, rule.unit_axis)?,
            _ => stepped,
        });
    }
    let Some(ends) = ends else { return Ok(next) };
    // Whole-number blends: the kept value is exact.
    let one = g.scalar(1.0)?;
    let goes_on = g.sub(one, ends)?;
    let mut blend = |new: &[ValueId], old: &[ValueId]| -> Result<Vec<ValueId>> {
        new.iter()
            .zip(old)
            .map(|(&new, &old)| {
                let new = g.mul(ends, new)?;
                let old = g.mul(goes_on, old)?;
                g.add(new, old)
            })
            .collect()
    };
    let weights = blend(&next.weights, &state.weights)?;
    let momentum = blend(&next.momentum, &state.momentum)?;
    let raw = blend(&next.raw, &state.raw)?;
    let mut kept = |v: ValueId| g.mul(goes_on, v);
    let sums = steps.into_iter().map(&mut kept).collect::<Result<_>>()?;
    let beta_sum = beta_sum.map(&mut kept).transpose()?;
    let alpha_sum = alpha_sum.map(&mut kept).transpose()?;
    Ok(ChunkState { weights, momentum, raw, sums, beta_sum, alpha_sum })
}

/// 1 when a chunk of `n` tokens is whole (C long), 0 for a shorter last one: a chunk loop's
/// body that hands on a state makes the update of a whole chunk and keeps a shorter one's in its
/// sums.
pub fn chunk_is_whole(g: &mut Graph, n: Dim, chunk: usize) -> Result<ValueId> {
    let one = g.scalar(1.0)?;
    let ones = g.broadcast(one, vec![n])?;
    let length = g.reduce(ReduceKind::Sum, ones, 0, false)?;
    let full = g.scalar(chunk as f64)?;
    g.binary(BinaryOp::Ge, length, full)
}

/// The norm of every unit's weights in `w`, along `axis` (kept, of size 1).
pub fn unit_norms(g: &mut Graph, w: ValueId, axis: i64) -> Result<ValueId> {
    let sq = g.mul(w, w)?;
    let sum = g.reduce(ReduceKind::Sum, sq, axis, true)?;
    g.unary(UnaryOp::Sqrt, sum)
}

/// Every unit of `w` (along `axis`) rescaled to the norm `target`: `w / (‖w‖ + 1e-5) · n`.
fn renormalize(g: &mut Graph, w: ValueId, target: ValueId, axis: i64) -> Result<ValueId> {
    let norms = unit_norms(g, w, axis)?;
    let eps = g.scalar(NORM_EPS)?;
    let norms = g.add(norms, eps)?;
    let unit = g.div(w, norms)?;
    g.mul(unit, target)
}

/// Muon's step for the steps `x` `[…, rows, cols]` of a weight: each matrix orthogonalised by
/// [`newton_schulz`] (one of a single row or column too, as LaCT's code does); a bias's as it
/// is, since orthogonalising a vector only normalises it, whatever its learning rate.
pub fn muon(g: &mut Graph, x: ValueId, bias: bool) -> Result<ValueId> {
    if bias {
        return Ok(x);
    }
    newton_schulz(g, x)
}

/// Muon's orthogonalisation of each `[rows, cols]` matrix of `x` `[…, rows, cols]` (§6): on
/// the transpose when rows > cols, `X = G / (‖G‖_F + 1e-7)`, then the five Newton–Schulz steps.
fn newton_schulz(g: &mut Graph, x: ValueId) -> Result<ValueId> {
    let r = g.ty(x).rank();
    let (rows, cols) = (g.ty(x).shape[r - 2].clone(), g.ty(x).shape[r - 1].clone());
    let tall = rows.as_const() > cols.as_const();
    let mut x = if tall { g.transpose_last2(x)? } else { x };
    let sq = g.mul(x, x)?;
    let sum = g.reduce(ReduceKind::Sum, sq, -1, true)?;
    let sum = g.reduce(ReduceKind::Sum, sum, -2, true)?;
    let norm = g.unary(UnaryOp::Sqrt, sum)?;
    let eps = g.scalar(1e-7)?;
    let norm = g.add(norm, eps)?;
    x = g.div(x, norm)?;
    for (a, bc, cc) in NEWTON_SCHULZ {
        let xt = g.transpose_last2(x)?;
        let gram = g.matmul(x, xt)?;
        let square = g.matmul(gram, gram)?;
        let (bs, cs) = (g.scalar(bc)?, g.scalar(cc)?);
        let lin = g.mul(bs, gram)?;
        let quad = g.mul(cs, square)?;
        let poly = g.add(lin, quad)?;
        let moved = g.matmul(poly, x)?;
        let a = g.scalar(a)?;
        let kept = g.mul(a, x)?;
        x = g.add(kept, moved)?;
    }
    if tall {
        return g.transpose_last2(x);
    }
    Ok(x)
}
