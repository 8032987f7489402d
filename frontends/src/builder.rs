//! A graph under construction plus how each of its parameters is initialised, and the layers the
//! model families share (norms, projections, SwiGLU, causal convolution, the language-model head).

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};

use anyhow::Result;
use tttc_ir::{DType, Dim, Graph, Op, ReduceKind, Scan, Type, UnaryOp, ValueId};

/// How a parameter is initialised when a model has no weights file (as the references do).
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Normal {
        std: f64,
    },
    Uniform {
        bound: f64,
    },
    /// `ln(j + 1)` at index j of the last axis (Mamba's `A_log`, S4D-real), drawn when weights
    /// are, so that building a graph allocates nothing of a weight's size.
    LogIndex,
    /// Mamba's `dt_proj.bias`: softplus⁻¹ of a time step drawn log-uniformly in [min, max], floored.
    InverseSoftplusTimeStep {
        min: f64,
        max: f64,
        floor: f64,
    },
}

/// Which graph a frontend builds (SPEC §2–4, "Decoding").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The whole sequence from a fresh state: `logits` for every position and `loss`.
    Forward,
    /// A prompt from a fresh state: the last position's `logits` `[B, 1, V]` and the state after
    /// the prompt, as outputs `state.NAME`.
    Prefill,
    /// One token per sequence (`input_ids` `[B, 1]`) from the state given as inputs `state.NAME`:
    /// its `logits` and the next state, as outputs `state.NAME`.
    Step,
    /// The whole sequence from a fresh state, as `Forward` (`logits` for every position, `loss`),
    /// and the state after it, as `Prefill` gives it (`tttc run --state-out`).
    Run,
    /// The whole sequence from the state given as inputs `state.NAME` (as a step takes it), as
    /// `Run` otherwise: `logits`, `loss` and the state after it (`tttc run --state-in`).
    /// `position` is the state's: the tokens before this sequence (a KV cache's length), or for
    /// TTT the tokens of the current mini-batch already seen, by which it aligns its mini-batches.
    Resume { position: usize },
}

impl Mode {
    /// Whether the graph starts from a state given as inputs (a step, a resumed run).
    pub fn takes_state(self) -> bool {
        matches!(self, Mode::Step | Mode::Resume { .. })
    }

    /// The tokens seen before this graph's first one that its shapes depend on: a resumed run's
    /// position, otherwise 0 (a step reads its position as data).
    pub fn resumed_at(self) -> usize {
        match self {
            Mode::Resume { position } => position,
            _ => 0,
        }
    }
}

/// A recurrent value the step graph takes and gives back: `state.{name}` of type `ty` (its
/// symbolic dimensions: `B`, and `L` for a KV cache's length).
#[derive(Clone, Debug, PartialEq)]
pub struct StateSpec {
    pub name: String,
    pub ty: Type,
    pub init: StateInit,
}

/// A state's value for a fresh sequence.
#[derive(Clone, Debug, PartialEq)]
pub enum StateInit {
    Zeros,
    /// The parameter of that name, the same for every sequence of the batch.
    Param(String),
}

pub struct ModelBuilder {
    pub g: Graph,
    pub inits: BTreeMap<String, Init>,
    /// The token embedding's parameter name (a tied head reads it).
    pub embedding: Option<String>,
    pub mode: Mode,
    /// The states a step graph takes, in input order.
    pub states: Vec<StateSpec>,
    /// The position of the token a step graph reads (`state.position`, f32 `[1]`): absolute, or
    /// within its mini-batch for TTT.
    pub position: Option<ValueId>,
}

impl Deref for ModelBuilder {
    type Target = Graph;
    fn deref(&self) -> &Graph {
        &self.g
    }
}

impl DerefMut for ModelBuilder {
    fn deref_mut(&mut self) -> &mut Graph {
        &mut self.g
    }
}

impl ModelBuilder {
    pub fn new(name: &str) -> ModelBuilder {
        ModelBuilder::with_mode(name, Mode::Forward)
    }

    pub fn with_mode(name: &str, mode: Mode) -> ModelBuilder {
        ModelBuilder { g: Graph::new(name), inits: BTreeMap::new(), embedding: None, mode, states: Vec::new(), position: None }
    }

    /// A state input `state.{name}` (only in the modes that [take one](Mode::takes_state)).
    pub fn state_input(&mut self, name: &str, ty: Type, init: StateInit) -> ValueId {
        debug_assert!(self.mode.takes_state(), "state inputs belong to step and resumed graphs");
        self.states.push(StateSpec { name: name.to_string(), ty: ty.clone(), init });
        self.g.input(&format!("state.{name}"), ty)
    }

    /// The state after this graph, output `state.{name}` (nothing in [`Mode::Forward`]).
    pub fn state_output(&mut self, name: &str, v: ValueId) {
        if self.mode != Mode::Forward {
            self.g.output(&format!("state.{name}"), v);
        }
    }

    pub fn weight(&mut self, name: &str, shape: &[usize], init: Init) -> ValueId {
        self.inits.insert(name.to_string(), init);
        self.g.param(name, shape)
    }

    /// A layer's input `x`, f32 `[B, T, dim]`.
    pub fn hidden_input(&mut self, dim: usize) -> ValueId {
        self.g.input("x", Type::new(DType::F32, vec![Dim::sym("B"), Dim::sym("T"), Dim::c(dim)]))
    }

    /// `input_ids`: i64 `[B, T]` (`[B, 1]` in a step graph).
    pub fn token_input(&mut self) -> ValueId {
        // A step reads one token per sequence.
        let len = if self.mode == Mode::Step { Dim::c(1) } else { Dim::sym("T") };
        self.g.input("input_ids", Type::new(DType::I64, vec![Dim::sym("B"), len]))
    }

    /// `x Wᵀ (+ b)` with a PyTorch-layout weight `[out, in]` named `{prefix}.weight` and, when
    /// `bias` gives its initialiser, a bias `{prefix}.bias` `[out]`.
    pub fn linear(&mut self, x: ValueId, prefix: &str, inp: usize, out: usize, weight: Init, bias: Option<Init>) -> Result<ValueId> {
        let w = self.weight(&format!("{prefix}.weight"), &[out, inp], weight);
        let wt = self.transpose_last2(w)?;
        let y = self.matmul(x, wt)?;
        match bias {
            Some(init) => {
                let b = self.weight(&format!("{prefix}.bias"), &[out], init);
                self.add(y, b)
            }
            None => Ok(y),
        }
    }

    /// `w · x / sqrt(mean(x²) + eps)` over the last axis, weight `{name}` `[dim]`.
    pub fn rms_norm(&mut self, x: ValueId, name: &str, dim: usize, eps: f64) -> Result<ValueId> {
        let w = self.weight(name, &[dim], Init::Ones);
        let sq = self.mul(x, x)?;
        let ms = self.reduce(ReduceKind::Mean, sq, -1, true)?;
        let e = self.scalar(eps)?;
        let ms = self.add(ms, e)?;
        let r = self.unary(UnaryOp::Rsqrt, ms)?;
        let y = self.mul(x, r)?;
        self.mul(w, y)
    }

    /// `down(silu(gate(x)) ⊙ up(x))` with weights under `{prefix}.{gate,up,down}_proj`.
    /// Weights normal with `std`, biases (when `bias`) zero.
    pub fn swiglu(&mut self, x: ValueId, prefix: &str, dim: usize, inter: usize, bias: bool, std: f64) -> Result<ValueId> {
        let (w, b) = (Init::Normal { std }, bias.then_some(Init::Zeros));
        let gate = self.linear(x, &format!("{prefix}.gate_proj"), dim, inter, w.clone(), b.clone())?;
        let gate = self.unary(UnaryOp::Silu, gate)?;
        let up = self.linear(x, &format!("{prefix}.up_proj"), dim, inter, w.clone(), b.clone())?;
        let h = self.mul(gate, up)?;
        self.linear(h, &format!("{prefix}.down_proj"), inter, dim, w, b)
    }

    /// Depthwise causal convolution over axis 1 of `x` `[B, T, C]`, weight `{prefix}.weight`
    /// `[C, 1, K]` (PyTorch conv1d, a correlation): `y[t,c] = bias[c] + Σ_k w[c,0,k] · x[t−K+1+k, c]`.
    /// Initialised as PyTorch's default `Conv1d` (the references keep it): `U(±1/√K)`, bias too.
    /// Its state is the window of the last K − 1 inputs, `{prefix}.window` `[B, K−1, C]`.
    pub fn causal_conv(&mut self, x: ValueId, prefix: &str, channels: usize, kernel: usize, bias: bool) -> Result<ValueId> {
        let default = Init::Uniform { bound: 1.0 / (kernel as f64).sqrt() };
        let w = self.weight(&format!("{prefix}.weight"), &[channels, 1, kernel], default.clone());
        let w = self.reshape(w, vec![Dim::c(channels), Dim::c(kernel)])?;
        let w = self.transpose_last2(w)?; // [K, C]
        let window = format!("{prefix}.window");
        // A kernel of 1 looks back at nothing: no window to carry.
        let carries = kernel > 1 && self.mode != Mode::Forward;
        let padded = if carries && self.mode.takes_state() {
            let ty = Type::new(DType::F32, vec![Dim::sym("B"), Dim::c(kernel - 1), Dim::c(channels)]);
            let past = self.state_input(&window, ty, StateInit::Zeros);
            self.concat(&[past, x], 1)?
        } else {
            self.pad(x, 1, kernel - 1, 0)?
        };
        if carries {
            let last = self.slice(padded, 1, -(kernel as i64 - 1), None)?;
            self.state_output(&window, last);
        }
        let mut acc: Option<ValueId> = None;
        for k in 0..kernel {
            let back = k as i64 - (kernel as i64 - 1);
            let xs = self.slice(padded, 1, k as i64, if back < 0 { Some(back) } else { None })?;
            let wk = self.slice(w, 0, k as i64, Some(k as i64 + 1))?; // [1, C]
            let term = self.mul(xs, wk)?;
            acc = Some(match acc {
                None => term,
                Some(a) => self.add(a, term)?,
            });
        }
        let y = acc.expect("kernel size is at least 1");
        if bias {
            let b = self.weight(&format!("{prefix}.bias"), &[channels], default);
            return self.add(y, b);
        }
        Ok(y)
    }

    /// Logits `h · headᵀ` (`head` `[V, D]`) and the mean next-token cross-entropy, as the graph's
    /// `logits` and `loss` outputs, computed in a scan over chunks of positions so that no
    /// `[T, V]` intermediate exists (a gradient step keeps none of them alive either).
    pub fn lm_head_and_loss(&mut self, h: ValueId, head: ValueId, ids: ValueId, vocab: usize) -> Result<()> {
        let (batch, len) = (Dim::sym("B"), Dim::sym("T"));
        // Each position's next token and weight: the last position has none (token 0, weight 0).
        let next = self.slice(ids, 1, 1, None)?;
        let zero = self.push1(Op::Const { value: 0.0, dtype: DType::I64 }, &[])?;
        let zero = self.broadcast(zero, vec![batch.clone(), Dim::c(1)])?;
        let target = self.concat(&[next, zero], 1)?;
        let (one, nothing) = (self.scalar(1.0)?, self.scalar(0.0)?);
        let ones = self.broadcast(one, vec![batch.clone(), len.plus(-1)?])?;
        let last = self.broadcast(nothing, vec![batch.clone(), Dim::c(1)])?;
        let weight = self.concat(&[ones, last], 1)?;
        let count = self.reduce(ReduceKind::Sum, weight, 1, false)?; // [B]: T − 1 targets per row
        let start = self.broadcast(nothing, vec![batch])?;
        let body = head_and_loss_chunk(self.ty(h), self.ty(head), vocab)?;
        let scan = Scan { axis: 1, chunk: loss_chunk(vocab), carries: 1, seqs: 3, body, reverse: false };
        let outs = self.scan(scan, &[start, h, target, weight, head])?;
        self.output("logits", outs[1]);
        let per_row = self.div(outs[0], count)?;
        let loss = self.reduce(ReduceKind::Mean, per_row, 0, false)?;
        self.output("loss", loss);
        Ok(())
    }
}

/// Positions per chunk of the head and loss scan: a chunk's `[positions, V]` logits and their
/// softmax stay near 64 MB however long the sequence, where whole-sequence ones at T = 8192 and a
/// 32k vocabulary would be 1 GB each. Smaller chunks cost time: the head's products run below
/// the GEMM rate with fewer than ~500 rows, and the gradient's `[V, D]` accumulation is paid
/// once per chunk.
fn loss_chunk(vocab: usize) -> usize {
    ((1usize << 24) / vocab.max(1)).max(1)
}

/// One chunk of positions: logits `h · headᵀ`, and the summed weighted cross-entropy
/// `Σ w · (logsumexp(logits) − logits[target])` added to the carried per-row total.
/// Arguments: total `[B]`, h `[B, p, D]`, target i64 `[B, p]`, weight `[B, p]`, head `[V, D]` (read
/// transposed by the product, in place: the gradient's products read it as stored).
/// Returns the new total and the chunk's logits `[B, p, V]`.
fn head_and_loss_chunk(h: &Type, head: &Type, vocab: usize) -> Result<Graph> {
    let (batch, p) = (Dim::sym("B"), Dim::sym("p"));
    let mut g = Graph::new("head_and_loss");
    let total = g.input("total", Type::new(DType::F32, vec![batch.clone()]));
    let h = g.input("h", Type::new(DType::F32, vec![batch.clone(), p.clone(), h.shape[2].clone()]));
    let target = g.input("target", Type::new(DType::I64, vec![batch.clone(), p.clone()]));
    let weight = g.input("weight", Type::new(DType::F32, vec![batch, p]));
    let head = g.input("head", head.clone());
    let head_t = g.transpose_last2(head)?;
    let logits = g.matmul(h, head_t)?;
    // The log-sum-exp's shift: its derivative cancels (lse − m does not depend on m), so no
    // gradient goes through it, as through PyTorch's.
    let m = g.reduce(ReduceKind::Max, logits, -1, true)?;
    let m = g.stop_gradient(m)?;
    let shifted = g.sub(logits, m)?;
    let e = g.unary(UnaryOp::Exp, shifted)?;
    let s = g.reduce(ReduceKind::Sum, e, -1, false)?;
    let lse = g.unary(UnaryOp::Log, s)?;
    let m = g.reduce(ReduceKind::Sum, m, -1, false)?; // [B, p, 1] → [B, p]
    let lse = g.add(lse, m)?;
    let onehot = g.one_hot(target, vocab)?;
    let picked = g.mul(onehot, logits)?;
    let picked = g.reduce(ReduceKind::Sum, picked, -1, false)?;
    let nll = g.sub(lse, picked)?;
    let nll = g.mul(nll, weight)?;
    let chunk_total = g.reduce(ReduceKind::Sum, nll, 1, false)?;
    let total = g.add(total, chunk_total)?;
    g.output("total", total);
    g.output("logits", logits);
    Ok(g)
}

/// Names and sizes of the parts every causal language model here shares.
pub struct LmShape<'a> {
    pub embed: &'a str,
    pub final_norm: &'a str,
    pub norm_eps: f64,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub tied: bool,
    pub init_std: f64,
    /// TTT's mini-batch size: positions count within mini-batches. `None`: absolute positions.
    pub position_period: Option<usize>,
    /// The embedding row whose lookups give it no gradient (PyTorch's `padding_idx`).
    pub pad_token: Option<usize>,
}

impl ModelBuilder {
    /// `input_ids` → embedding → `block` per layer → final RMSNorm → head (`lm_head.weight` or the
    /// tied embedding) → `logits` and `loss`.
    pub fn language_model(&mut self, lm: &LmShape, mut block: impl FnMut(&mut ModelBuilder, ValueId, usize) -> Result<ValueId>) -> Result<()> {
        let ids = self.token_input();
        if self.mode == Mode::Step {
            let p = self.state_input("position", Type::f32(&[1]), StateInit::Zeros);
            self.position = Some(p);
        }
        let table = self.weight(lm.embed, &[lm.vocab, lm.hidden], Init::Normal { std: lm.init_std });
        self.embedding = Some(lm.embed.to_string());
        let lookup = match lm.pad_token {
            Some(pad) => self.without_row_gradient(table, pad, lm.vocab)?,
            None => table,
        };
        let mut h = self.gather(lookup, ids, 0)?;
        for layer in 0..lm.layers {
            h = block(self, h, layer)?;
        }
        let h = self.rms_norm(h, lm.final_norm, lm.hidden, lm.norm_eps)?;
        let head = if lm.tied { table } else { self.weight("lm_head.weight", &[lm.vocab, lm.hidden], Init::Normal { std: lm.init_std }) };
        if self.mode == Mode::Forward {
            return self.lm_head_and_loss(h, head, ids, lm.vocab);
        }
        if matches!(self.mode, Mode::Run | Mode::Resume { .. }) {
            self.lm_head_and_loss(h, head, ids, lm.vocab)?;
            let next = self.next_position(lm.position_period)?;
            self.state_output("position", next);
            return Ok(());
        }
        // The last position's logits, and the position of the next token.
        let last = self.slice(h, 1, -1, None)?;
        let head_t = self.transpose_last2(head)?;
        let logits = self.matmul(last, head_t)?;
        self.output("logits", logits);
        let next = self.next_position(lm.position_period)?;
        self.state_output("position", next);
        Ok(())
    }

    /// `table` `[rows, …]` with the same values, through whose row `row` no gradient flows:
    /// `table·keep + stop_gradient(table)·(1 − keep)`, exact as `keep` is 0 or 1.
    fn without_row_gradient(&mut self, table: ValueId, row: usize, rows: usize) -> Result<ValueId> {
        let index = self.push1(Op::Const { value: row as f64, dtype: DType::I64 }, &[])?;
        let chosen = self.one_hot(index, rows)?; // [rows]
        let mut column = vec![Dim::c(rows)];
        column.extend(std::iter::repeat_n(Dim::c(1), self.ty(table).rank() - 1));
        let chosen = self.reshape(chosen, column)?;
        let one = self.scalar(1.0)?;
        let keep = self.sub(one, chosen)?;
        let live = self.mul(table, keep)?;
        let frozen = self.stop_gradient(table)?;
        let frozen = self.mul(frozen, chosen)?;
        self.add(live, frozen)
    }

    /// The position after this graph's tokens: a prefill's length T (a resumed run's position
    /// plus T), or a step's position plus one; with a `period` (TTT's mini-batch), counted within
    /// it (back to 0 at its end).
    pub(crate) fn next_position(&mut self, period: Option<usize>) -> Result<ValueId> {
        let one = self.scalar(1.0)?;
        let seen = Dim::sym("T").plus(self.mode.resumed_at() as i64)?;
        let next = match self.position {
            Some(p) => self.add(p, one)?,
            None => {
                let upto = self.iota(seen.plus(1)?, DType::F32)?;
                self.slice(upto, 0, -1, None)?
            }
        };
        let Some(b) = period else { return Ok(next) };
        let wraps = self.scalar(b as f64)?;
        let within = match self.position {
            Some(_) => next,
            None => {
                // T − b·(⌈T/b⌉ − 1): the length of the last mini-batch, 1 … b.
                let chunks = self.iota(seen.chunks(b)?, DType::F32)?;
                let before = self.slice(chunks, 0, -1, None)?;
                let full = self.mul(before, wraps)?;
                self.sub(next, full)?
            }
        };
        // within · (1 − [within ≥ b]): exact, as both factors are whole numbers.
        let wrapped = self.binary(tttc_ir::BinaryOp::Ge, within, wraps)?;
        let keep = self.sub(one, wrapped)?;
        self.mul(within, keep)
    }
}
