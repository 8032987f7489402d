//! The pass manager: the default pipeline of IR-to-IR passes, run in order, with the graph verified
//! after each pass and what each pass did recorded (time, node counts).
//!
//! A later pass (e-graph dual-form derivation, fusion) slots in by adding one [`Pass`] line to
//! [`pipeline`]; `tttc ir --after`, `tttc compile` and the runtime pick it up from there.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tttc_ir::Graph;

/// A named IR-to-IR function.
#[derive(Clone, Copy, Debug)]
pub struct Pass {
    /// The name used by `tttc ir --after` and in `tttc compile`'s file names (lowercase, dashes).
    pub name: &'static str,
    /// One line: what the pass does.
    pub about: &'static str,
    pub run: fn(&Graph) -> Result<Rewrite>,
}

/// A pass's result: the new graph and what the pass has to say about it (one line each, for
/// people: `tttc compile` prints them and records them in the manifest).
#[derive(Clone, Debug)]
pub struct Rewrite {
    pub graph: Graph,
    pub notes: Vec<String>,
}

impl From<Graph> for Rewrite {
    fn from(graph: Graph) -> Rewrite {
        Rewrite { graph, notes: Vec::new() }
    }
}

/// The default pipeline, in the order the passes run.
pub fn pipeline() -> Vec<Pass> {
    vec![
        Pass {
            name: "inner-autodiff",
            about: "replaces every grad op by the explicit ops of its reverse-mode gradient",
            run: |g| Ok(crate::autodiff::expand_grads(g)?.into()),
        },
        Pass {
            name: "dual-form",
            about: "re-derives each scan body's linear algebra with equality saturation (the mini-batch dual form)",
            run: crate::dual_form::derive_with_notes,
        },
        Pass {
            name: "simplify",
            about: "moves transposes of products and of elementwise ops onto their operands ((a·b)ᵀ = bᵀ·aᵀ, read as strides) and computes elementwise ops read only through transposes in the transposed layout, computes common subexpressions once and folds reshape, transpose and broadcast chains",
            run: simplify,
        },
        Pass { name: "dce", about: "removes the nodes that no graph output depends on", run: dce },
        Pass {
            name: "fuse",
            about: "groups the top-level nodes into fused regions: each matmul or gather with its elementwise epilogue; each scan alone",
            run: crate::fuse::fuse_with_notes,
        },
    ]
}

/// Transposes are sunk once common subexpressions are merged (a product that something else
/// reads is not computed a second time, transposed); the transposes sinking makes are then folded.
fn simplify(g: &Graph) -> Result<Rewrite> {
    Ok(crate::simplify::simplify(&crate::sink_transposes(&crate::simplify::simplify(g)?)?)?.into())
}

fn dce(g: &Graph) -> Result<Rewrite> {
    Ok(crate::dce::dead_code_elimination(g).into())
}

/// The names of the default pipeline's passes, in order.
pub fn pass_names() -> Vec<&'static str> {
    pipeline().iter().map(|p| p.name).collect()
}

/// What one pass did.
#[derive(Clone, Debug)]
pub struct PassResult {
    pub name: &'static str,
    pub about: &'static str,
    /// The graph after the pass: verified, values numbered in definition order
    /// (`Graph::canonical`).
    pub graph: Graph,
    /// Wall time of the pass itself (verification not included).
    pub elapsed: Duration,
    /// Nodes before and after the pass, scan-body nodes included ([`count_nodes`]).
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// What the pass reported ([`Rewrite::notes`]).
    pub notes: Vec<String>,
}

/// Runs the default [`pipeline`] on `g`; see [`run_passes`].
pub fn run_pipeline(g: &Graph, stop_after: Option<&str>) -> Result<Vec<PassResult>> {
    run_passes(&pipeline(), g, stop_after)
}

/// The graph after the whole default pipeline (`g` itself, verified, when the pipeline is empty).
pub fn compile(g: &Graph) -> Result<Graph> {
    Ok(run_pipeline(g, None)?.pop().map_or_else(|| g.clone(), |r| r.graph))
}

/// The graph a gradient differentiates: the default pipeline up to `dce` (`grad` ops expanded,
/// the dual form derived, simplified, pruned), before `fuse`. Reverse mode through the dual form
/// gives the adjoint of its mini-batch products, not of the primal form's per-token weights.
pub fn differentiable(g: &Graph) -> Result<Graph> {
    Ok(run_pipeline(g, Some("dce"))?.pop().map_or_else(|| g.clone(), |r| r.graph))
}

/// Runs `passes` in order on `g`, stopping after the pass named `stop_after` (when given). The
/// input graph is verified first, and each pass's result after the pass (then renumbered by
/// `Graph::canonical`); an error names the pass. A `stop_after` that names none of the passes is
/// an error listing the valid names (checked before anything runs).
pub fn run_passes(passes: &[Pass], g: &Graph, stop_after: Option<&str>) -> Result<Vec<PassResult>> {
    run_passes_observed(passes, g, stop_after, |_| {})
}

/// [`run_passes`], calling `observe` with each pass's result as soon as the pass is done (for
/// progress output).
pub fn run_passes_observed(passes: &[Pass], g: &Graph, stop_after: Option<&str>, mut observe: impl FnMut(&PassResult)) -> Result<Vec<PassResult>> {
    let last = match stop_after {
        None => passes.len(),
        Some(name) => match passes.iter().position(|p| p.name == name) {
            Some(i) => i + 1,
            None => {
                let names: Vec<&str> = passes.iter().map(|p| p.name).collect();
                bail!("unknown pass {name:?} (the passes are: {})", names.join(", "));
            }
        },
    };
    tttc_ir::verify(g).context("the input graph, before any pass")?;
    let mut results: Vec<PassResult> = Vec::with_capacity(last);
    for pass in &passes[..last] {
        let before = results.last().map_or(g, |r| &r.graph);
        let nodes_before = count_nodes(before);
        let start = Instant::now();
        let Rewrite { graph, notes } = (pass.run)(before).with_context(|| format!("pass {}", pass.name))?;
        let elapsed = start.elapsed();
        tttc_ir::verify(&graph).with_context(|| format!("pass {} produced an invalid graph", pass.name))?;
        // Values renumbered in definition order, unused types dropped: the form the text parser
        // produces, so the printed IR after a pass parses back to the same graph.
        let graph = graph.canonical();
        let nodes_after = count_nodes(&graph);
        let result = PassResult { name: pass.name, about: pass.about, graph, elapsed, nodes_before, nodes_after, notes };
        observe(&result);
        results.push(result);
    }
    Ok(results)
}

/// The number of nodes in `g`, the nodes of nested graphs (scan and grad bodies, recursively)
/// included.
pub fn count_nodes(g: &Graph) -> usize {
    g.nodes.iter().map(|n| 1 + n.op.body().map_or(0, count_nodes)).sum()
}
