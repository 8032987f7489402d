//! Decoding (`tttc generate`). A prompt runs through the model's prefill graph (the parallel
//! form: TTT's dual form), whose `state.*` outputs hand over to the step graph (the primal form,
//! one token per call); each step's state outputs feed the next call, so a step costs the same
//! at any context for TTT and Mamba (Llama's KV cache grows). A prompt may also continue a saved
//! state (`tttc generate --state-in`): it then runs from that state in the parallel form too.

use std::borrow::Cow;
use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};
use tttc_frontends::rng::SplitMix64;
use tttc_frontends::weights::Weights;
use tttc_frontends::{Mode, Model, StateInit, StateSpec};
use tttc_ir::Tensor;

use crate::{check_input_ids, run_graph, state, Backend, Executable, State};

/// How the next token is chosen from its logits: greedily (`temperature` 0), or sampled from the
/// softmax of `logits / temperature` restricted to the `top_k` likeliest tokens and to the
/// smallest set whose probability reaches `top_p`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Sampling {
        Sampling { temperature: 0.0, top_k: None, top_p: None, seed: 0 }
    }

    /// One-line errors for options outside their ranges.
    pub fn check(&self) -> Result<()> {
        ensure!(self.temperature >= 0.0 && self.temperature.is_finite(), "--temperature must be a finite number, 0 or more (got {})", self.temperature);
        ensure!(self.top_k != Some(0), "--top-k must be at least 1");
        ensure!(self.top_p.is_none_or(|p| p > 0.0 && p <= 1.0), "--top-p must be in (0, 1]");
        Ok(())
    }
}

/// The most tokens one call generates (the logits of every new token are kept).
pub const MAX_NEW_TOKENS: usize = 1 << 20;

/// A generation's result: the prompts followed by the new tokens `[B, P + N]`, and the logits
/// each new token was chosen from `[B, N, V]`.
pub struct Generated {
    pub tokens: Tensor,
    pub logits: Tensor,
}

/// A model's prefill and step graphs, through the pass pipeline, compiled on first use. The
/// step's weight-only work (`tttc_passes::hoist_invariants`) runs once per generation.
pub struct Decoder {
    prefill: Executable,
    step: Executable,
    /// Parameters → the step's `hoisted.K` inputs.
    prep: Option<Executable>,
    states: Vec<StateSpec>,
    /// The step's input names of the states, `state.NAME`, in the order of `states`.
    state_inputs: Vec<String>,
    vocab: usize,
    /// For prompts that continue a saved state (built at its position when one comes).
    config: tttc_frontends::ModelConfig,
}

impl Decoder {
    pub fn new(model: &Model) -> Result<Decoder> {
        let prefill = tttc_frontends::build_for(&model.config, Mode::Prefill)?;
        let step = tttc_frontends::build_for(&model.config, Mode::Step)?;
        let compile = |g: &tttc_ir::Graph, what: &str| -> Result<Executable> {
            Ok(Executable::new(tttc_passes::compile(g).with_context(|| format!("compiling the {what} graph"))?))
        };
        let (prep, step_graph) = match tttc_passes::hoist_invariants(&step.g)? {
            Some(h) => (Some(compile(&h.prep, "step's weight-only")?), h.main),
            None => (None, step.g),
        };
        Ok(Decoder {
            prefill: compile(&prefill.g, "prefill")?,
            step: compile(&step_graph, "step")?,
            prep,
            state_inputs: step.states.iter().map(|s| format!("state.{}", s.name)).collect(),
            states: step.states,
            vocab: model.config.vocab_size(),
            config: model.config.clone(),
        })
    }

    /// The states a step takes, in input order.
    pub fn state_specs(&self) -> &[StateSpec] {
        &self.states
    }

    /// Generates `new_tokens` tokens after each row of `prompt` (`input_ids` `[B, P]`), calling
    /// `on_token(k, tokens)` with the k-th new token of every row as soon as it is chosen. With
    /// `start` (a saved state, docs/state.md) the prompt continues the sequence that state ended.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        weights: &Weights,
        prompt: &Tensor,
        start: Option<&State>,
        new_tokens: usize,
        sampling: &Sampling,
        backend: &dyn Backend,
        mut on_token: impl FnMut(usize, &[i64]),
    ) -> Result<Generated> {
        check_input_ids(prompt, self.vocab)?;
        ensure!(new_tokens > 0, "--max-new-tokens must be at least 1");
        ensure!(new_tokens <= MAX_NEW_TOKENS, "--max-new-tokens is at most {MAX_NEW_TOKENS}");
        sampling.check()?;
        let (rows, len) = (prompt.shape[0], prompt.shape[1]);
        // Every new token's logits are kept: checked before the first is computed.
        let kept = (rows as u64).saturating_mul(new_tokens as u64).saturating_mul(self.vocab as u64).saturating_mul(4);
        tttc_files::memory::check(&format!("keeping the logits of {rows} × {new_tokens} new tokens over {} ids", self.vocab), kept)?;
        let ids = prompt.as_i64().expect("checked above");

        // The whole prompt in the parallel form; its state continues token by token.
        let hoisted: Vec<(String, Tensor)> = match &self.prep {
            Some(prep) => {
                let names = prep.graph.outputs.iter().map(|(n, _)| n.clone());
                names.zip(prep.run_with(weights, &[], backend).context("the step's weight-only work")?).collect()
            }
            None => Vec::new(),
        };
        let (first, mut state) = match start {
            None => {
                let mut state = self.fresh_state(weights, rows)?;
                let outs = self.prefill.run_with(weights, &[("input_ids", prompt)], backend).context("prefill")?;
                (take_outputs(&self.prefill, outs, &mut state)?, state)
            }
            Some(start) => self.resume(weights, prompt, start, backend)?,
        };
        let mut logits = Some(first);

        let mut rng = SplitMix64::keyed(sampling.seed, "generate");
        let mut chosen: Vec<Vec<i64>> = Vec::with_capacity(new_tokens);
        let mut chosen_from: Vec<Tensor> = Vec::with_capacity(new_tokens);
        for k in 0..new_tokens {
            let l = logits.take().expect("a prompt has at least one token");
            let v = l.as_f32().context("logits are not f32")?;
            let next: Vec<i64> = v.chunks(self.vocab).map(|row| pick(row, sampling, &mut rng) as i64).collect();
            on_token(k, &next);
            if k + 1 < new_tokens {
                logits = Some(self.step(weights, &hoisted, &next, &mut state, backend)?);
            }
            chosen.push(next);
            chosen_from.push(l);
        }

        let mut tokens = Vec::with_capacity(rows * (len + new_tokens));
        let mut all_logits = Vec::with_capacity(rows * new_tokens * self.vocab);
        for r in 0..rows {
            tokens.extend_from_slice(&ids[r * len..(r + 1) * len]);
            tokens.extend(chosen.iter().map(|c| c[r]));
            for l in &chosen_from {
                all_logits.extend_from_slice(&l.as_f32().expect("checked above")[r * self.vocab..(r + 1) * self.vocab]);
            }
        }
        Ok(Generated { tokens: Tensor::i64(vec![rows, len + new_tokens], tokens), logits: Tensor::f32(vec![rows, new_tokens, self.vocab], all_logits) })
    }

    /// The prompt from the saved state `start`, in the parallel form (the model built at the
    /// state's position, `Mode::Resume`): the last position's logits `[B, 1, V]` and the state
    /// after the prompt.
    fn resume(&self, weights: &Weights, prompt: &Tensor, start: &State, backend: &dyn Backend) -> Result<(Tensor, BTreeMap<String, Tensor>)> {
        let graph = tttc_frontends::build_for(&self.config, Mode::Resume { position: state::position(start)? })?.g;
        let (out, after) = run_graph(weights, &graph, prompt, start, backend).context("the prompt from the state")?;
        let (rows, len, v) = (out.logits.shape[0], out.logits.shape[1], out.logits.shape[2]);
        let values = out.logits.as_f32().context("logits are not f32")?;
        let last = (0..rows).flat_map(|r| values[(r * len + len - 1) * v..(r * len + len) * v].to_vec()).collect();
        Ok((Tensor::f32(vec![rows, 1, v], last), after.into_iter().collect()))
    }

    /// One token per row through the step graph (with the `hoisted` weight-only values): its
    /// logits `[B, 1, V]`; `state` moves on.
    fn step(
        &self,
        weights: &Weights,
        hoisted: &[(String, Tensor)],
        tokens: &[i64],
        state: &mut BTreeMap<String, Tensor>,
        backend: &dyn Backend,
    ) -> Result<Tensor> {
        let ids = Tensor::i64(vec![tokens.len(), 1], tokens.to_vec());
        let mut inputs: Vec<(&str, Cow<Tensor>)> = vec![("input_ids", Cow::Owned(ids))];
        inputs.extend(hoisted.iter().map(|(n, t)| (n.as_str(), Cow::Borrowed(t))));
        // The state is given up to the step, which hands on the next: a KV cache grows in place.
        for (name, spec) in self.state_inputs.iter().zip(&self.states) {
            inputs.push((name, Cow::Owned(state.remove(&spec.name).with_context(|| format!("no state {}", spec.name))?)));
        }
        let outs = self.step.run_taking(weights, inputs, backend).context("decoding step")?;
        take_outputs(&self.step, outs, state)
    }

    /// The state of `rows` fresh sequences: zeros (a KV cache of length 0), or a parameter
    /// repeated for every row.
    fn fresh_state(&self, weights: &Weights, rows: usize) -> Result<BTreeMap<String, Tensor>> {
        let env: tttc_ir::DimEnv = [("B".to_string(), rows), ("L".to_string(), 0)].into_iter().collect();
        self.states
            .iter()
            .map(|spec| {
                let shape = spec.ty.resolve(&env)?;
                let n: usize = shape.iter().product();
                let values = match &spec.init {
                    StateInit::Zeros => vec![0.0; n],
                    StateInit::Param(p) => {
                        let w = weights.get(p).and_then(|t| t.as_f32()).with_context(|| format!("no weight {p}"))?;
                        ensure!(w.len() * rows == n, "weight {p} does not fit state {} {:?}", spec.name, shape);
                        w.repeat(rows)
                    }
                };
                Ok((spec.name.clone(), Tensor::f32(shape, values)))
            })
            .collect()
    }
}

/// A prefill's or step's outputs: the `logits` returned, every `state.NAME` stored under NAME.
fn take_outputs(exe: &Executable, outs: Vec<Tensor>, state: &mut BTreeMap<String, Tensor>) -> Result<Tensor> {
    let mut logits = None;
    for ((name, _), t) in exe.graph.outputs.iter().zip(outs) {
        match name.strip_prefix("state.") {
            Some(s) => {
                state.insert(s.to_string(), t);
            }
            None if name == "logits" => logits = Some(t),
            None => {}
        }
    }
    logits.context("the graph has no logits output")
}

/// The next token from one row of logits.
fn pick(logits: &[f32], s: &Sampling, rng: &mut SplitMix64) -> usize {
    let argmax = || logits.iter().enumerate().fold(0, |best, (i, &x)| if x > logits[best] { i } else { best });
    if s.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(s.top_k.unwrap_or(order.len()).min(order.len()));
    let top = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - top) / s.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(p) = s.top_p {
        let mut mass = 0.0;
        let keep = probs.iter().take_while(|&&q| {
            let before = mass;
            mass += q;
            before < p
        });
        let keep = keep.count().max(1);
        order.truncate(keep);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.uniform() * total;
    for (&i, &q) in order.iter().zip(&probs) {
        if u < q {
            return i;
        }
        u -= q;
    }
    *order.last().expect("at least one token")
}
