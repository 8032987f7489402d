//! Runs that start from a saved state (`tttc run --state-in`, docs/state.md): the model built in
//! `Mode::Resume` at the state's position, the state checked against the graph's `state.NAME`
//! inputs, and a packed batch's file split into one state per sequence.

use anyhow::{bail, ensure, Context, Result};
use tttc_frontends::{Mode, Model};
use tttc_ir::{ArgKind, Graph, Tensor};

use crate::State;

/// The prefix of a state input or output: `state.NAME`.
pub const PREFIX: &str = "state.";

/// The state's `position`: f32 `[1]`, a whole number of tokens.
pub fn position(state: &State) -> Result<usize> {
    let (_, t) = state.iter().find(|(n, _)| n == "position").context("the state has no position (is it a state file of tttc run --state-out?)")?;
    let v = t.to_f64().filter(|v| t.shape == [1] && v.len() == 1).with_context(|| format!("the state's position must be f32 [1], got {t}"))?[0];
    ensure!(v >= 0.0 && v.fract() == 0.0 && v < (1u64 << 24) as f64, "the state's position must be a whole number of tokens, got {v}");
    Ok(v as usize)
}

/// The model's graph for a sequence that continues from `state` (`Mode::Resume` at its position).
pub fn resumed_graph(model: &Model, state: &State) -> Result<Graph> {
    let mode = Mode::Resume { position: position(state)? };
    Ok(tttc_frontends::build_for(&model.config, mode)?.g)
}

/// The graph's `state.NAME` inputs, by name without the prefix.
pub fn inputs(graph: &Graph) -> Vec<&str> {
    graph.args.iter().filter(|a| a.kind == ArgKind::Input).filter_map(|a| a.name.strip_prefix(PREFIX)).collect()
}

/// Checks that `state` holds exactly the graph's state inputs (and `position`), each f32 of the
/// shape the graph expects at batch size `batch`, and returns them as the graph's inputs.
pub fn arguments<'a>(graph: &Graph, state: &'a State, batch: usize) -> Result<Vec<(String, &'a Tensor)>> {
    let env: tttc_ir::DimEnv = [("B".to_string(), batch)].into_iter().collect();
    let mut args = Vec::new();
    for a in graph.args.iter().filter(|a| a.kind == ArgKind::Input) {
        let Some(name) = a.name.strip_prefix(PREFIX) else { continue };
        let (_, t) = state.iter().find(|(n, _)| n == name).with_context(|| format!("the state has no {name}: is it another model's state?"))?;
        ensure!(t.as_f32().is_some(), "state {name} must be f32, got {t}");
        let want = graph.ty(a.value).resolve(&env)?;
        if t.shape != want {
            if t.shape.len() == want.len() && t.shape[1..] == want[1..] {
                bail!("state {name} is for a batch of {}, input_ids has B = {batch}", t.shape[0]);
            }
            bail!("state {name} has shape {:?} where this model's is {want:?}: is it another model's state?", t.shape);
        }
        args.push((a.name.clone(), t));
    }
    let taken = inputs(graph);
    if let Some((extra, _)) = state.iter().find(|(n, _)| n != "position" && !taken.contains(&n.as_str())) {
        bail!("the state holds {extra}, which this model has no state of: is it another model's state?");
    }
    Ok(args)
}

/// A packed batch's state file: `seq.{i}.NAME` for each of its `sequences`, split into one state
/// per sequence.
pub fn split_packed(file: State, sequences: usize) -> Result<Vec<State>> {
    let mut per: Vec<State> = vec![Vec::new(); sequences];
    for (name, t) in file {
        let parsed = name.strip_prefix("seq.").and_then(|rest| rest.split_once('.')).and_then(|(i, n)| Some((i.parse::<usize>().ok()?, n.to_string())));
        let Some((i, inner)) = parsed else { bail!("a packed batch's state names each tensor seq.{{i}}.NAME, got {name}") };
        ensure!(i < sequences, "the state holds {name}, but the batch has {sequences} sequences");
        per[i].push((inner, t));
    }
    if let Some(i) = per.iter().position(|s| s.is_empty()) {
        bail!("the state has no tensors for sequence {i} (seq.{i}.NAME) of the {sequences}");
    }
    Ok(per)
}
