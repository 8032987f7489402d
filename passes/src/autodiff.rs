//! Reverse-mode automatic differentiation over the IR.
//!
//! [`expand_grads`] is the `inner-autodiff` pass: every `grad` op (the gradient of a body's scalar
//! output with respect to some of its arguments) is replaced by the body's ops, inlined, followed
//! by the ops of its reverse sweep. [`backprop`] is the reverse sweep itself: one vector-Jacobian
//! product rule per op, adjoints accumulated per value, broadcasting undone by summation.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, ensure, Context, Result};
use tttc_ir::{BinaryOp, DType, Dim, Graph, Node, Op, ReduceKind, Scan, Type, UnaryOp, ValueId};

use crate::attention::Chain;

/// Replaces every `grad` op (in scan bodies too) by explicit gradient ops.
pub fn expand_grads(g: &Graph) -> Result<Graph> {
    let mut out = Graph::new(&g.name);
    let mut map: Vec<Option<ValueId>> = vec![None; g.types.len()];
    for a in &g.args {
        map[a.value.index()] = Some(out.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    let at = |map: &[Option<ValueId>], v: ValueId| map[v.index()].context("operand used before it is defined");
    for node in &g.nodes {
        let ins: Vec<ValueId> = node.inputs.iter().map(|&v| at(&map, v)).collect::<Result<_>>()?;
        let outs = match &node.op {
            Op::Grad(grad) => {
                let body = expand_grads(&grad.body)?;
                inline_and_differentiate(&mut out, &body, &ins, &grad.wrt)?
            }
            Op::Scan(scan) => {
                let body = expand_grads(&scan.body)?;
                out.push(Op::Scan(Box::new(Scan { body, ..(**scan).clone() })), &ins)?
            }
            op => out.push(op.clone(), &ins)?,
        };
        for (&o, v) in node.outputs.iter().zip(outs) {
            map[o.index()] = Some(v);
        }
    }
    for (name, v) in &g.outputs {
        out.output(name, at(&map, *v)?);
    }
    Ok(out)
}

/// Copies `body` into `g` with its arguments bound to `args`, then appends the gradient of its
/// output with respect to the arguments `wrt`.
fn inline_and_differentiate(g: &mut Graph, body: &Graph, args: &[ValueId], wrt: &[usize]) -> Result<Vec<ValueId>> {
    let mut args = args.to_vec();
    // An operand passed for two arguments would mix their adjoints: give each its own value.
    for &i in wrt {
        if args.iter().filter(|&&a| a == args[i]).count() > 1 {
            let shape = g.ty(args[i]).shape.clone();
            args[i] = g.reshape(args[i], shape)?;
        }
    }
    let (outs, tape) = inline(g, body, &args)?;
    let targets: Vec<ValueId> = wrt.iter().map(|&i| args[i]).collect();
    let one = g.scalar(1.0)?;
    backprop(g, &tape, &[(outs[0], one)], &targets)
}

/// A node as recorded for the reverse sweep; a scan also keeps its carries at the start of every
/// chunk (one entry per chunk), which its reverse sweep starts each chunk from.
pub struct Recorded {
    pub node: Node,
    pub history: Vec<ValueId>,
}

/// Appends `op` to `g` for a later reverse sweep: a scan is emitted with its body also returning
/// the carries it starts each chunk from.
fn record(g: &mut Graph, op: &Op, ins: &[ValueId]) -> Result<(Vec<ValueId>, Recorded)> {
    let Op::Scan(scan) = op else {
        let outs = g.push(op.clone(), ins)?;
        return Ok((outs.clone(), Recorded { node: Node { op: op.clone(), inputs: ins.to_vec(), outputs: outs }, history: vec![] }));
    };
    let mut body = scan.body.clone();
    let carry_args = body.args[..scan.carries].to_vec(); // the body grows below
    for arg in carry_args {
        let mut shape = body.ty(arg.value).shape.clone();
        ensure!(scan.axis <= shape.len(), "a carry of rank {} cannot be stacked along axis {}", shape.len(), scan.axis);
        shape.insert(scan.axis, Dim::c(1));
        let start = body.reshape(arg.value, shape)?;
        body.output(&format!("{}_start", arg.name), start);
    }
    let all = g.push(Op::Scan(Box::new(Scan { body, ..(**scan).clone() })), ins)?;
    let visible = all.len() - scan.carries;
    let outs = all[..visible].to_vec();
    let node = Node { op: op.clone(), inputs: ins.to_vec(), outputs: outs.clone() };
    Ok((outs, Recorded { node, history: all[visible..].to_vec() }))
}

/// Copies `body`'s nodes into `g` (recorded), its arguments bound to `args`; returns its outputs.
fn inline(g: &mut Graph, body: &Graph, args: &[ValueId]) -> Result<(Vec<ValueId>, Vec<Recorded>)> {
    let mut map: Vec<Option<ValueId>> = vec![None; body.types.len()];
    for (a, &v) in body.args.iter().zip(args) {
        map[a.value.index()] = Some(v);
    }
    let mut tape = Vec::with_capacity(body.nodes.len());
    for node in &body.nodes {
        let ins: Vec<ValueId> = node.inputs.iter().map(|v| map[v.index()].context("undefined operand")).collect::<Result<_>>()?;
        let (outs, rec) = record(g, &node.op, &ins)?;
        for (&o, &v) in node.outputs.iter().zip(&outs) {
            map[o.index()] = Some(v);
        }
        tape.push(rec);
    }
    let outs = body.outputs.iter().map(|(_, v)| map[v.index()].context("body output undefined")).collect::<Result<_>>()?;
    Ok((outs, tape))
}

/// The gradient graph of `g`: its arguments, the output `loss`, and the gradient of `loss` with
/// respect to every parameter, named like the parameter. `g` must hold no `grad` op (expand
/// them first).
///
/// With `segments` > 1 the forward is rematerialised: its node list is cut into that many
/// contiguous segments, only the values that cross a segment boundary stay alive after the forward
/// pass, and the reverse sweep recomputes each segment but the last (from barriers, so that no
/// pass merges the recomputation back into the original) just before differentiating it; the
/// last is differentiated as soon as the forward has computed it. Peak memory is then about the
/// boundary values plus one segment's activations, for one more forward pass of all but the last
/// segment.
pub fn gradient_graph(g: &Graph, loss: &str, segments: usize) -> Result<Graph> {
    gradient_graph_wrt(g, loss, segments, &[])
}

/// [`gradient_graph`], with the gradients with respect to the f32 `inputs` named too, after the
/// parameters' and named like the input (a resumed run's `state.NAME`, say).
pub fn gradient_graph_wrt(g: &Graph, loss: &str, segments: usize, inputs: &[&str]) -> Result<Graph> {
    gradient_graph_with(g, loss, segments, inputs, false)
}

/// [`gradient_graph_wrt`]; with `primal`, `g`'s other outputs too, computed by the inlined forward
/// (before the loss; segments > 1 not supported with it).
fn gradient_graph_with(g: &Graph, loss: &str, segments: usize, inputs: &[&str], primal: bool) -> Result<Graph> {
    ensure!(!primal || segments <= 1, "a rematerialised gradient keeps no primal outputs");
    let mut out = Graph::new(&format!("{}_grad", g.name));
    let args: Vec<ValueId> = g.args.iter().map(|a| out.arg(&a.name, a.kind, g.ty(a.value).clone())).collect();
    let at = g.outputs.iter().position(|(n, _)| n == loss).with_context(|| format!("the graph has no output {loss}"))?;
    let mut params: Vec<(String, ValueId)> =
        g.args.iter().zip(&args).filter(|(a, _)| a.kind == tttc_ir::ArgKind::Param).map(|(a, &v)| (a.name.clone(), v)).collect();
    for &name in inputs {
        let (a, &v) = g
            .args
            .iter()
            .zip(&args)
            .find(|(a, _)| a.kind == tttc_ir::ArgKind::Input && a.name == name)
            .with_context(|| format!("the graph has no input {name}"))?;
        ensure!(g.ty(a.value).dtype == DType::F32, "input {name} is not f32: it has no gradient");
        params.push((name.to_string(), v));
    }
    let wrt: Vec<ValueId> = params.iter().map(|(_, v)| *v).collect();
    let (loss_value, grads) = if segments <= 1 {
        let (outs, tape) = inline(&mut out, g, &args)?;
        if primal {
            for (k, (name, _)) in g.outputs.iter().enumerate().filter(|&(k, _)| k != at) {
                out.output(name, outs[k]);
            }
        }
        let one = out.scalar(1.0)?;
        (outs[at], backprop(&mut out, &tape, &[(outs[at], one)], &wrt)?)
    } else {
        rematerialised(&mut out, g, &args, g.outputs[at].1, &wrt, segments)?
    };
    out.output(loss, loss_value);
    for ((name, _), d) in params.iter().zip(grads) {
        out.output(name, d);
    }
    // Reverse sweeps that can run inside the scans they differentiate do (the recorded carries
    // they do not read pruned first); transposed products are computed in the layout wanted.
    let out = crate::merge_scans::merge_reverse_scans(&crate::dce::dead_code_elimination(&out))?;
    Ok(crate::dce::dead_code_elimination(&crate::sink_transposes::sink_transposes(&out)?))
}

/// What a vector–Jacobian product calls the adjoint of a value `NAME`: `d.NAME` (an output's
/// cotangent given, an argument's gradient computed).
pub const ADJOINT: &str = "d.";

/// The vector–Jacobian product of `g` (a graph with no `grad` op: see `differentiable`): `g`'s
/// arguments, then an input `d.NAME` of the output's type for each f32 output `NAME` but those in
/// `constant` (a position, say). Its outputs are `g`'s own outputs (computed on the way), then the
/// gradients `d.NAME` of `Σ_NAME sum(NAME · d.NAME)` with respect to every parameter and every f32
/// input `NAME` of `g`. A framework's forward and backward pass of `g` in one graph, from the one
/// autodiff ([`gradient_graph_wrt`]); [`crate::split_at`] cuts it into the two.
pub fn vector_jacobian_product(g: &Graph, constant: &[&str]) -> Result<Graph> {
    let mut g = g.clone();
    let mut total = None;
    for (name, v) in g.outputs.clone() {
        if constant.contains(&name.as_str()) || g.ty(v).dtype != DType::F32 {
            continue;
        }
        let seed = g.input(&format!("{ADJOINT}{name}"), g.ty(v).clone());
        let mut term = g.mul(v, seed)?;
        while g.ty(term).rank() > 0 {
            term = g.reduce(ReduceKind::Sum, term, 0, false)?;
        }
        total = Some(match total {
            None => term,
            Some(t) => g.add(t, term)?,
        });
    }
    let loss = "loss";
    ensure!(g.outputs.iter().all(|(n, _)| n != loss), "an output is called {loss}");
    g.outputs.push((loss.to_string(), total.context("the graph has no f32 output to differentiate")?));
    let inputs: Vec<String> = g
        .args
        .iter()
        .filter(|a| a.kind == tttc_ir::ArgKind::Input && g.ty(a.value).dtype == DType::F32 && !a.name.starts_with(ADJOINT))
        .map(|a| a.name.clone())
        .collect();
    let mut grads = gradient_graph_with(&g, loss, 1, &inputs.iter().map(String::as_str).collect::<Vec<_>>(), true)?;
    let primal = g.outputs.len() - 1;
    grads.outputs.retain(|(n, _)| n != loss);
    for (name, _) in &mut grads.outputs[primal..] {
        *name = format!("{ADJOINT}{name}");
    }
    Ok(crate::dce::dead_code_elimination(&grads))
}

/// A [`vector_jacobian_product`] with only its gradients `d.NAME` as outputs (the backward
/// that computes the forward again inside, without handing on the forward's outputs).
pub fn gradients_only(vjp: &Graph) -> Graph {
    let gradients: Vec<&str> = vjp.outputs.iter().map(|(n, _)| n.as_str()).filter(|n| n.starts_with(ADJOINT)).collect();
    crate::keep_outputs(vjp, &gradients)
}

/// Where the `segments` rematerialisation segments of `g`'s node list start (the first at 0):
/// each cut is placed, within half a segment of even spacing, where the fewest bytes are live
/// (values defined before the cut and read after it, arguments aside). Between layers only the
/// residual stream crosses, inside one many activations do, and every value crossing a cut is
/// kept for the reverse sweep. Sizes are compared with every symbolic dimension at 1024.
fn segment_starts(g: &Graph, segments: usize) -> Vec<usize> {
    let n = g.nodes.len();
    let segments = segments.clamp(1, n.max(1));
    let mut env = tttc_ir::DimEnv::new();
    for t in &g.types {
        for s in t.shape.iter().filter_map(|d| d.sym.clone()) {
            env.insert(s, 1024);
        }
    }
    let size = |v: ValueId| g.ty(v).resolve(&env).map_or(0, |s| s.iter().product::<usize>());
    // live[p]: bytes live across a cut before node p (a difference array over definitions and
    // last uses).
    let mut last_use = vec![None; g.types.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in &node.inputs {
            last_use[v.index()] = Some(i);
        }
    }
    for (_, v) in &g.outputs {
        last_use[v.index()] = Some(n);
    }
    let mut delta = vec![0i64; n + 2];
    for (i, node) in g.nodes.iter().enumerate() {
        for &v in &node.outputs {
            if let Some(j) = last_use[v.index()].filter(|&j| j > i) {
                delta[i + 1] += size(v) as i64;
                delta[j + 1] -= size(v) as i64;
            }
        }
    }
    let live: Vec<i64> = delta
        .iter()
        .scan(0i64, |acc, d| {
            *acc += d;
            Some(*acc)
        })
        .collect();
    let per = n as f64 / segments as f64;
    let mut starts = vec![0];
    for k in 1..segments {
        let target = (k as f64 * per).round() as usize;
        let lo = (target as f64 - per / 2.0).ceil().max(1.0) as usize;
        let hi = ((target as f64 + per / 2.0).floor() as usize).min(n - 1);
        let best = (lo.max(starts[starts.len() - 1] + 1)..=hi).min_by_key(|&p| (live[p], p.abs_diff(target)));
        if let Some(p) = best {
            starts.push(p);
        }
    }
    starts
}

/// The forward of `g` in `out` (arguments `args`), then its reverse sweep segment by segment, each
/// segment recomputed from barriers on the values it reads from earlier segments. Returns the
/// loss and the gradients with respect to `wrt` (values of `out`).
fn rematerialised(out: &mut Graph, g: &Graph, args: &[ValueId], loss: ValueId, wrt: &[ValueId], segments: usize) -> Result<(ValueId, Vec<ValueId>)> {
    let mut fwd: Vec<Option<ValueId>> = vec![None; g.types.len()];
    for (a, &v) in g.args.iter().zip(args) {
        fwd[a.value.index()] = Some(v);
    }
    let defined = |fwd: &[Option<ValueId>], v: ValueId| fwd[v.index()].context("operand used before it is defined");
    let starts = segment_starts(g, segments);
    let ends: Vec<usize> = starts[1..].iter().copied().chain([g.nodes.len()]).collect();
    // The last segment is differentiated right after it runs: the forward computes it once, as
    // the reverse sweep records it, and nothing recomputes it.
    let last = *starts.last().expect("at least one segment");
    for node in &g.nodes[..last] {
        let ins: Vec<ValueId> = node.inputs.iter().map(|&v| defined(&fwd, v)).collect::<Result<_>>()?;
        for (o, n) in node.outputs.iter().zip(out.push(node.op.clone(), &ins)?) {
            fwd[o.index()] = Some(n);
        }
    }
    // Adjoints of the forward's values, by their value in `g`.
    let mut adj: HashMap<ValueId, ValueId> = HashMap::new();
    adj.insert(loss, out.scalar(1.0)?);
    for (&start, &end) in starts.iter().zip(&ends).rev() {
        let nodes = &g.nodes[start..end];
        let inside: std::collections::HashSet<ValueId> = nodes.iter().flat_map(|nd| nd.outputs.iter().copied()).collect();
        if start != last && !inside.iter().any(|v| adj.contains_key(v)) {
            continue;
        }
        // The values this segment reads from before it, each through a barrier (the last
        // segment, computed once, reads them as they are).
        let mut local: HashMap<ValueId, ValueId> = HashMap::new();
        let mut external: Vec<(ValueId, ValueId)> = Vec::new(); // (in g, its barrier in out)
        let mut tape = Vec::with_capacity(nodes.len());
        for node in nodes {
            let mut ins = Vec::with_capacity(node.inputs.len());
            for &v in &node.inputs {
                let x = match local.get(&v) {
                    Some(&x) => x,
                    None => {
                        let x = defined(&fwd, v)?;
                        let b = if start == last { x } else { out.push1(Op::Barrier, &[x])? };
                        local.insert(v, b);
                        external.push((v, b));
                        b
                    }
                };
                ins.push(x);
            }
            let (outs, rec) = record(out, &node.op, &ins)?;
            for (&o, &x) in node.outputs.iter().zip(&outs) {
                local.insert(o, x);
                if start == last {
                    fwd[o.index()] = Some(x);
                }
            }
            tape.push(rec);
        }
        let seeds: Vec<(ValueId, ValueId)> = inside.iter().filter_map(|v| adj.get(v).map(|&d| (local[v], d))).collect();
        // Only the values read before the segment that a seed depends on get adjoints: one that
        // none does (a count computed from positions, say, or one behind a stop_gradient) would
        // get a zero gradient, and its own segment would then differentiate what computed it.
        let mut reached: HashSet<ValueId> = seeds.iter().map(|(v, _)| *v).collect();
        for rec in tape.iter().rev() {
            if !matches!(rec.node.op, Op::StopGradient) && rec.node.outputs.iter().any(|o| reached.contains(o)) {
                reached.extend(rec.node.inputs.iter().copied());
            }
        }
        let floats: Vec<(ValueId, ValueId)> = external.into_iter().filter(|(_, b)| out.ty(*b).dtype == DType::F32 && reached.contains(b)).collect();
        let targets: Vec<ValueId> = floats.iter().map(|(_, b)| *b).collect();
        let grads = backprop(out, &tape, &seeds, &targets)?;
        for ((v, _), d) in floats.into_iter().zip(grads) {
            let total = match adj.get(&v) {
                Some(&prev) => out.add(prev, d)?,
                None => d,
            };
            adj.insert(v, total);
        }
    }
    let loss_value = defined(&fwd, loss)?;
    // In the order of `wrt`.
    let grads = wrt
        .iter()
        .map(|&v| {
            let (a, _) = g.args.iter().zip(args).find(|(_, &x)| x == v).context("differentiating with respect to a value that is not an argument")?;
            match adj.get(&a.value) {
                Some(&d) => Ok(d),
                None => zeros_like(out, v),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((loss_value, grads))
}

/// Appends to `g` the gradients of the `seeds`' values (each with its adjoint) with respect to
/// each of `wrt`, through the nodes of `tape` (already in `g`, in execution order). A value the
/// seeds do not depend on gets a zero gradient.
pub fn backprop(g: &mut Graph, tape: &[Recorded], seeds: &[(ValueId, ValueId)], wrt: &[ValueId]) -> Result<Vec<ValueId>> {
    let mut adj: HashMap<ValueId, ValueId> = HashMap::new();
    for &(v, d) in seeds {
        ensure!(g.ty(v).shape == g.ty(d).shape || g.ty(d).rank() == 0, "seed of {} has type {}", g.ty(v), g.ty(d));
        let d = if g.ty(d).shape == g.ty(v).shape { d } else { g.broadcast(d, g.ty(v).shape.clone())? };
        let total = match adj.get(&v) {
            Some(&prev) => g.add(prev, d)?,
            None => d,
        };
        adj.insert(v, total);
    }
    // Attention's chains, by their last node, whose inner values get no adjoint from elsewhere:
    // differentiated as one (`attention_vjp`).
    let nodes: Vec<&Node> = tape.iter().map(|r| &r.node).collect();
    let chains = crate::attention::chains(g, &nodes, &|v| adj.contains_key(&v));
    let inner: HashSet<usize> = chains.iter().flat_map(|c| c.inner.iter().copied()).collect();
    let mut chains: HashMap<usize, Chain> = chains.into_iter().map(|c| (c.node, c)).collect();
    for (i, rec) in tape.iter().enumerate().rev() {
        let node = &rec.node;
        let seeds: Vec<Option<ValueId>> = node.outputs.iter().map(|o| adj.get(o).copied()).collect();
        if seeds.iter().all(Option::is_none) || inner.contains(&i) {
            continue;
        }
        let (inputs, grads) = match (&node.op, chains.remove(&i)) {
            (_, Some(chain)) => {
                // kᵀ as the frontends write it, a transpose of k: the recomputation reads k.
                let k = nodes.iter().find(|n| n.outputs == [chain.kt] && matches!(&n.op, Op::Transpose { perm } if tttc_ir::swaps_last_two(perm)));
                let grads = attention_vjp(g, &chain, k.map(|n| n.inputs[0]), node.outputs[0], seeds[0].expect("seeded"));
                (vec![chain.q, chain.kt, chain.v], grads)
            }
            (Op::Scan(scan), _) => (node.inputs.clone(), scan_vjp(g, scan, rec, &seeds)),
            _ => (node.inputs.clone(), vjp(g, node, &seeds)),
        };
        let grads = grads.with_context(|| format!("differentiating {}", node.op.name()))?;
        for (&input, grad) in inputs.iter().zip(grads) {
            if let Some(d) = grad {
                let total = match adj.get(&input) {
                    Some(&prev) => g.add(prev, d)?,
                    None => d,
                };
                adj.insert(input, total);
            }
        }
    }
    wrt.iter()
        .map(|&w| match adj.get(&w) {
            Some(&d) => Ok(d),
            None => zeros_like(g, w),
        })
        .collect()
}

/// The adjoints of attention's `q`, `kᵀ` and `v` (as its products read them) from its result's,
/// `d_out`: the weights recomputed from the scores and the row log-sum-exp (kept from the
/// forward instead of the `[.., tq, tk]` weights), then FlashAttention's backward —
/// `dv = pᵀ·d_out`, `ds = p ⊙ (d_out·vᵀ − rowsum(d_out ⊙ out))` scaled as the scores were,
/// `dq = ds·k`, `dkᵀ = qᵀ·ds`. The recomputed scores start from barriers (on `k` when `kᵀ` is
/// its transpose), so that no pass merges them back into the forward's. A backend that can runs
/// it as one step (`tttc_lower::attention`); the others run these ops.
fn attention_vjp(g: &mut Graph, c: &Chain, k: Option<ValueId>, out: ValueId, d_out: ValueId) -> Result<Vec<Option<ValueId>>> {
    let last = g.ty(c.max).rank() as i64 - 1;
    let log_sum = g.unary(UnaryOp::Log, c.sum)?;
    let lse = g.add(c.max, log_sum)?;
    let q = g.push1(Op::Barrier, &[c.q])?;
    let kt = match k {
        Some(k) => {
            let k = g.push1(Op::Barrier, &[k])?;
            g.transpose_last2(k)?
        }
        None => g.push1(Op::Barrier, &[c.kt])?,
    };
    let scale = |g: &mut Graph, x: ValueId| -> Result<ValueId> {
        let Some((op, factor)) = c.scale else { return Ok(x) };
        let factor = g.scalar(factor)?;
        g.binary(op, x, factor)
    };
    let scores = g.matmul(q, kt)?;
    let mut scores = scale(g, scores)?;
    if c.causal {
        scores = g.tri_mask_window(scores, f64::NEG_INFINITY, c.window)?;
    }
    let shifted = g.sub(scores, lse)?;
    let p = g.unary(UnaryOp::Exp, shifted)?;
    let pt = g.transpose_last2(p)?;
    let dv = g.matmul(pt, d_out)?;
    let vt = g.transpose_last2(c.v)?;
    let dp = g.matmul(d_out, vt)?;
    let weighted = g.mul(d_out, out)?;
    let row = g.reduce(ReduceKind::Sum, weighted, last, true)?;
    let centred = g.sub(dp, row)?;
    let ds = g.mul(p, centred)?;
    let ds = scale(g, ds)?;
    let k = g.transpose_last2(kt)?;
    let dq = g.matmul(ds, k)?;
    let qt = g.transpose_last2(q)?;
    let dkt = g.matmul(qt, ds)?;
    Ok(vec![Some(unbroadcast(g, dq, c.q)?), Some(unbroadcast(g, dkt, c.kt)?), Some(unbroadcast(g, dv, c.v)?)])
}

/// The reverse sweep of a scan: a scan over the same chunks, last to first, carrying the carries'
/// adjoints (and the invariants' gradients, summed). Each step restarts the forward step from the
/// carry the forward scan recorded for that chunk, then runs its reverse sweep.
fn scan_vjp(g: &mut Graph, scan: &Scan, rec: &Recorded, seeds: &[Option<ValueId>]) -> Result<Vec<Option<ValueId>>> {
    let (nc, ns) = (scan.carries, scan.seqs);
    let ins = &rec.node.inputs;
    let body = &scan.body;
    ensure!(rec.history.len() == nc, "the scan was not recorded for differentiation");
    let is_float = |g: &Graph, v: ValueId| g.ty(v).dtype == DType::F32;
    let invariants: Vec<usize> = (nc + ns..ins.len()).filter(|&i| is_float(g, ins[i])).collect();
    let seqs: Vec<usize> = (nc..nc + ns).filter(|&i| is_float(g, ins[i])).collect();

    // The reverse scan's body.
    let mut rb = Graph::new(&format!("{}_reverse", body.name));
    let d_carry: Vec<ValueId> = (0..nc).map(|i| rb.input(&format!("d_{}", body.args[i].name), body.ty(body.args[i].value).clone())).collect();
    let acc: Vec<ValueId> = invariants.iter().map(|&i| rb.input(&format!("sum_d_{}", body.args[i].name), body.ty(body.args[i].value).clone())).collect();
    let seq_args: Vec<ValueId> = (nc..nc + ns).map(|i| rb.input(&body.args[i].name, body.ty(body.args[i].value).clone())).collect();
    // Only the per-chunk outputs with an adjoint are seeded (an unused output, such as the logits
    // of a loss scan, would otherwise cost a whole sequence of zeros).
    let outputs: Vec<usize> = (0..body.outputs.len() - nc).filter(|&k| seeds[nc + k].is_some()).collect();
    let d_out: Vec<ValueId> = outputs
        .iter()
        .map(|&k| {
            let (name, v) = &body.outputs[nc + k];
            rb.input(&format!("d_{name}"), body.ty(*v).clone())
        })
        .collect();
    let history: Vec<ValueId> = (0..nc)
        .map(|i| {
            let mut shape = body.ty(body.args[i].value).shape.clone();
            shape.insert(scan.axis, Dim::c(1));
            rb.input(&format!("{}_start", body.args[i].name), Type::new(DType::F32, shape))
        })
        .collect();
    let inv_args: Vec<ValueId> = (nc + ns..ins.len()).map(|i| rb.input(&body.args[i].name, body.ty(body.args[i].value).clone())).collect();
    let mut fwd_args: Vec<ValueId> = Vec::new();
    for (i, &h) in history.iter().enumerate() {
        let shape = body.ty(body.args[i].value).shape.clone();
        fwd_args.push(rb.reshape(h, shape)?);
    }
    fwd_args.extend(&seq_args);
    fwd_args.extend(&inv_args);
    let (outs, tape) = inline(&mut rb, body, &fwd_args)?;
    let mut step_seeds: Vec<(ValueId, ValueId)> = outs[..nc].iter().copied().zip(d_carry.iter().copied()).collect();
    step_seeds.extend(outputs.iter().map(|&k| outs[nc + k]).zip(d_out.iter().copied()));
    let mut wrt: Vec<ValueId> = fwd_args[..nc].to_vec();
    wrt.extend(seqs.iter().map(|&i| fwd_args[i]));
    wrt.extend(invariants.iter().map(|&i| fwd_args[i]));
    let grads = backprop(&mut rb, &tape, &step_seeds, &wrt)?;
    for (i, &d) in grads[..nc].iter().enumerate() {
        rb.output(&format!("d_{}", body.args[i].name), d);
    }
    for (k, (&a, &d)) in acc.iter().zip(&grads[nc + seqs.len()..]).enumerate() {
        let sum = rb.add(a, d)?;
        rb.output(&format!("sum_d_{}", body.args[invariants[k]].name), sum);
    }
    for (k, &d) in grads[nc..nc + seqs.len()].iter().enumerate() {
        rb.output(&format!("d_{}", body.args[seqs[k]].name), d);
    }

    // Its operands: the carries' adjoints (zero where none flows back), zero sums, the forward
    // sequences, the seeded outputs' adjoints, the recorded carries, the invariants.
    let mut operands = Vec::new();
    for (i, seed) in seeds[..nc].iter().enumerate() {
        operands.push(match seed {
            Some(d) => *d,
            None => zeros_like(g, rec.node.outputs[i])?,
        });
    }
    for &i in &invariants {
        operands.push(zeros_like(g, ins[i])?);
    }
    operands.extend(&ins[nc..nc + ns]);
    operands.extend(outputs.iter().filter_map(|&k| seeds[nc + k]));
    operands.extend(&rec.history);
    operands.extend(&ins[nc + ns..]);
    let carries = nc + invariants.len();
    let reverse = Scan { axis: scan.axis, chunk: scan.chunk, carries, seqs: ns + outputs.len() + nc, body: rb, reverse: true };
    let res = g.push(Op::Scan(Box::new(reverse)), &operands)?;

    let mut out: Vec<Option<ValueId>> = vec![None; ins.len()];
    for i in 0..nc {
        out[i] = Some(res[i]);
    }
    for (k, &i) in invariants.iter().enumerate() {
        out[i] = Some(res[nc + k]);
    }
    for (k, &i) in seqs.iter().enumerate() {
        out[i] = Some(res[carries + k]);
    }
    Ok(out)
}

fn zeros_like(g: &mut Graph, v: ValueId) -> Result<ValueId> {
    let shape = g.ty(v).shape.clone();
    let zero = g.scalar(0.0)?;
    g.broadcast(zero, shape)
}

/// The vector-Jacobian product of one node: the adjoint of each input (`None`: no gradient flows,
/// as into integer operands), given the adjoints of its outputs.
fn vjp(g: &mut Graph, node: &Node, seeds: &[Option<ValueId>]) -> Result<Vec<Option<ValueId>>> {
    if matches!(node.op, Op::Scan(_)) {
        bail!("scan must be differentiated by its recorded reverse sweep");
    }
    let ins = &node.inputs;
    let y = node.outputs.first().copied();
    let d = match seeds {
        [Some(d)] => *d,
        _ => bail!("{} is not differentiable yet", node.op.name()),
    };
    let y = y.expect("one seed, one output");
    let x = |i: usize| ins[i];
    Ok(match &node.op {
        Op::Unary(u) => vec![Some(unary_vjp(g, *u, x(0), y, d)?)],
        Op::Binary(b) => {
            let (a, c) = (x(0), x(1));
            if g.ty(a).dtype != DType::F32 {
                return Ok(vec![None, None]);
            }
            let (da, dc) = match b {
                BinaryOp::Add => (d, d),
                BinaryOp::Sub => (d, g.unary(UnaryOp::Neg, d)?),
                BinaryOp::Mul => (g.mul(d, c)?, g.mul(d, a)?),
                BinaryOp::Div => {
                    let da = g.div(d, c)?;
                    let q = g.div(y, c)?;
                    let dq = g.mul(d, q)?;
                    (da, g.unary(UnaryOp::Neg, dq)?)
                }
                BinaryOp::Max => {
                    // Ties go to the first operand.
                    let first = g.binary(BinaryOp::Ge, a, c)?;
                    let one = g.scalar(1.0)?;
                    let second = g.sub(one, first)?;
                    (g.mul(d, first)?, g.mul(d, second)?)
                }
                BinaryOp::Ge => return Ok(vec![None, None]),
            };
            vec![Some(unbroadcast(g, da, a)?), Some(unbroadcast(g, dc, c)?)]
        }
        Op::Const { .. } | Op::Iota { .. } | Op::OneHot { .. } => vec![None; ins.len()],
        Op::Cast { .. } => {
            let both_float = g.ty(x(0)).dtype == DType::F32 && g.ty(y).dtype == DType::F32;
            vec![if both_float { Some(d) } else { None }]
        }
        Op::Reduce { kind, axis, keepdim } => {
            let xt = g.ty(x(0)).clone();
            let mut kept = xt.shape.clone();
            kept[*axis] = Dim::c(1);
            let (dk, yk) = if *keepdim { (d, y) } else { (g.reshape(d, kept.clone())?, g.reshape(y, kept)?) };
            let spread = g.broadcast(dk, xt.shape.clone())?;
            vec![Some(match kind {
                ReduceKind::Sum => spread,
                ReduceKind::Mean => {
                    let count = axis_length(g, &xt, *axis)?;
                    g.div(spread, count)?
                }
                ReduceKind::Max => {
                    // The gradient goes to every position that attains the maximum.
                    let at_max = g.binary(BinaryOp::Ge, x(0), yk)?;
                    g.mul(spread, at_max)?
                }
            })]
        }
        Op::MatMul => {
            let (a, b) = (x(0), x(1));
            let bt = g.transpose_last2(b)?;
            let da = g.matmul(d, bt)?;
            let at = g.transpose_last2(a)?;
            let db = g.matmul(at, d)?;
            vec![Some(unbroadcast(g, da, a)?), Some(unbroadcast(g, db, b)?)]
        }
        Op::Reshape { .. } => {
            let shape = g.ty(x(0)).shape.clone();
            vec![Some(g.reshape(d, shape)?)]
        }
        Op::Transpose { perm } => {
            let mut inverse = vec![0; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                inverse[p] = i;
            }
            vec![Some(g.transpose(d, &inverse)?)]
        }
        Op::Broadcast { .. } => vec![Some(unbroadcast(g, d, x(0))?)],
        Op::Slice { axis, start, end } => vec![Some(slice_vjp(g, d, x(0), *axis, *start, *end)?)],
        Op::Concat { axis } => concat_vjp(g, d, ins, *axis)?,
        Op::Pad { axis, before, after } => {
            let end = if *after == 0 { None } else { Some(-(*after as i64)) };
            vec![Some(g.slice(d, *axis as i64, *before as i64, end)?)]
        }
        Op::TriMask { window, .. } => vec![Some(g.tri_mask_window(d, 0.0, *window)?)],
        Op::Barrier => vec![Some(d)],
        Op::StopGradient => vec![None],
        Op::Gather { axis } => vec![Some(gather_vjp(g, d, x(0), x(1), *axis)?), None],
        Op::ScatterAdd { .. } => vec![Some(g.gather(d, x(1), 0)?), None],
        Op::Scan(_) => unreachable!("handled above"),
        Op::Grad(_) => bail!("nested grad must be expanded first"),
        Op::Fused(_) => bail!("fused regions are not differentiable: differentiate before the fuse pass"),
    })
}

fn unary_vjp(g: &mut Graph, u: UnaryOp, x: ValueId, y: ValueId, d: ValueId) -> Result<ValueId> {
    let local = match u {
        UnaryOp::Neg => return g.unary(UnaryOp::Neg, d),
        UnaryOp::Exp => y,
        UnaryOp::Log => return g.div(d, x),
        UnaryOp::Sqrt => {
            let half = g.scalar(0.5)?;
            let h = g.mul(d, half)?;
            return g.div(h, y);
        }
        UnaryOp::Rsqrt => {
            // d/dx x^-½ = −½ y³
            let y2 = g.mul(y, y)?;
            let y3 = g.mul(y2, y)?;
            let k = g.scalar(-0.5)?;
            g.mul(k, y3)?
        }
        UnaryOp::Tanh => {
            let one = g.scalar(1.0)?;
            let y2 = g.mul(y, y)?;
            g.sub(one, y2)?
        }
        UnaryOp::Sigmoid => {
            let one = g.scalar(1.0)?;
            let c = g.sub(one, y)?;
            g.mul(y, c)?
        }
        UnaryOp::Silu => {
            // s + x·s·(1 − s), s = sigmoid(x)
            let s = g.unary(UnaryOp::Sigmoid, x)?;
            let one = g.scalar(1.0)?;
            let c = g.sub(one, s)?;
            let xc = g.mul(x, c)?;
            let t = g.add(one, xc)?;
            g.mul(s, t)?
        }
        UnaryOp::GeluTanh => gelu_tanh_derivative(g, x)?,
        UnaryOp::Softplus => g.unary(UnaryOp::Sigmoid, x)?,
        UnaryOp::Sin => g.unary(UnaryOp::Cos, x)?,
        UnaryOp::Cos => {
            let s = g.unary(UnaryOp::Sin, x)?;
            g.unary(UnaryOp::Neg, s)?
        }
    };
    g.mul(d, local)
}

/// d gelu_tanh(x) / dx through gelu_tanh(x) = x·σ(v), v = 2c(x + 0.044715x³), c = √(2/π) (as the
/// backends compute it): σ(v)·(1 + x(1 − σ(v))·2c(1 + 3·0.044715x²)), one sigmoid where the
/// tanh form needs a tanh and more products.
fn gelu_tanh_derivative(g: &mut Graph, x: ValueId) -> Result<ValueId> {
    let c2 = 2.0 * (2.0 / std::f64::consts::PI).sqrt();
    let one = g.scalar(1.0)?;
    let x2 = g.mul(x, x)?;
    let k = g.scalar(0.044715)?;
    let kx2 = g.mul(k, x2)?;
    let inner = g.add(one, kx2)?;
    let v = g.mul(x, inner)?;
    let two_c = g.scalar(c2)?;
    let v = g.mul(two_c, v)?;
    let s = g.unary(UnaryOp::Sigmoid, v)?;
    let k3 = g.scalar(3.0 * 0.044715)?;
    let k3x2 = g.mul(k3, x2)?;
    let dv = g.add(one, k3x2)?;
    let dv = g.mul(two_c, dv)?;
    let rest = g.sub(one, s)?;
    let rest = g.mul(x, rest)?;
    let rest = g.mul(rest, dv)?;
    let t = g.add(one, rest)?;
    g.mul(s, t)
}

/// The length of `axis` of a value of type `t`, as an f32 scalar (a `[…, 1, …]` tensor when the
/// length is symbolic: the sum of ones along the axis).
fn axis_length(g: &mut Graph, t: &Type, axis: usize) -> Result<ValueId> {
    if let Some(n) = t.shape[axis].as_const() {
        return g.scalar(n as f64);
    }
    let one = g.scalar(1.0)?;
    let ones = g.broadcast(one, vec![t.shape[axis].clone()])?;
    g.reduce(ReduceKind::Sum, ones, 0, false)
}

/// Sums `d` (the adjoint of a broadcast result) back to the shape of `x`.
fn unbroadcast(g: &mut Graph, d: ValueId, x: ValueId) -> Result<ValueId> {
    let want = g.ty(x).shape.clone();
    let mut d = d;
    while g.ty(d).rank() > want.len() {
        d = g.reduce(ReduceKind::Sum, d, 0, false)?;
    }
    for (axis, w) in want.iter().enumerate() {
        if w.is_one() && !g.ty(d).shape[axis].is_one() {
            d = g.reduce(ReduceKind::Sum, d, axis as i64, true)?;
        }
    }
    ensure!(g.ty(d).shape == want, "cannot sum {} back to {}", g.ty(d), g.ty(x));
    Ok(d)
}

/// The adjoint of `x[start:end]` along `axis`: `d` with zeros before and after, back to `x`'s
/// length (a symbolic length gives symbolic zero blocks, such as `n-1` before the last element).
fn slice_vjp(g: &mut Graph, d: ValueId, x: ValueId, axis: usize, start: i64, end: Option<i64>) -> Result<ValueId> {
    let len = g.ty(x).shape[axis].clone();
    let before = if start >= 0 { Dim::c(start as usize) } else { len.plus(start)? };
    let after = match end {
        None => Dim::c(0),
        Some(e) if e < 0 => Dim::c((-e) as usize),
        Some(e) => len.plus(-e)?,
    };
    let zeros = |g: &mut Graph, block: Dim| -> Result<Option<ValueId>> {
        if block.as_const() == Some(0) {
            return Ok(None);
        }
        let mut shape = g.ty(d).shape.clone();
        shape[axis] = block;
        let zero = g.scalar(0.0)?;
        Ok(Some(g.broadcast(zero, shape)?))
    };
    let mut parts: Vec<ValueId> = zeros(g, before)?.into_iter().collect();
    parts.push(d);
    parts.extend(zeros(g, after)?);
    if parts.len() == 1 {
        return Ok(d);
    }
    g.concat(&parts, axis as i64)
}

/// The adjoints of concatenated operands: the matching pieces of `d`, each bounded from the front
/// when the lengths before it are static and from the back when those after it are.
fn concat_vjp(g: &mut Graph, d: ValueId, ins: &[ValueId], axis: usize) -> Result<Vec<Option<ValueId>>> {
    let lens: Vec<Option<i64>> = ins.iter().map(|&x| g.ty(x).shape[axis].as_const().map(|n| n as i64)).collect();
    let sum = |r: &[Option<i64>]| r.iter().copied().sum::<Option<i64>>();
    let mut out = Vec::with_capacity(ins.len());
    for i in 0..ins.len() {
        let start = sum(&lens[..i]).or_else(|| sum(&lens[i..]).map(|n| -n));
        let end = match sum(&lens[..=i]) {
            Some(e) if i + 1 < ins.len() => Some(Some(e)),
            _ if i + 1 == ins.len() => Some(None),
            _ => sum(&lens[i + 1..]).map(|n| Some(-n)),
        };
        let (Some(start), Some(end)) = (start, end) else { bail!("the adjoint of concat needs the lengths before or after each operand to be static") };
        out.push(Some(g.slice(d, axis as i64, start, end)?));
    }
    Ok(out)
}

/// The adjoint of `table` in `gather(table, index)` along axis 0: the output adjoints summed into
/// the rows they were read from (`scatter_add`).
fn gather_vjp(g: &mut Graph, d: ValueId, table: ValueId, index: ValueId, axis: usize) -> Result<ValueId> {
    ensure!(axis == 0, "the adjoint of gather along axis {axis} is not supported (only 0)");
    let rows = g.ty(table).shape[0].as_const().context("the adjoint of gather needs a static table length")?;
    g.scatter_add(d, index, rows)
}
