//! Cost estimates: FLOPs and bytes moved per node, for concrete values of the symbolic dimensions
//! (`B`, `T`, …). They describe the graph as written — each node executed on its own, every result
//! materialised — which is what fusion and the dual form later improve on.
//!
//! Rules, per op (elements are counted on the concrete shapes):
//!
//! | op | FLOPs |
//! |---|---|
//! | unary (`exp`, `tanh`, `gelu_tanh`, … transcendentals included), binary, `cast`, `tri_mask`, `one_hot` | one per output element |
//! | `reduce_sum`, `reduce_mean`, `reduce_max`, `scatter_add` | one per input element |
//! | `matmul` `[…, M, K] × […, K, N]` | `2·M·N·K·batch` (batch: the product of the output's leading dimensions) |
//! | `const`, `iota`, `reshape`, `transpose`, `broadcast`, `slice`, `concat`, `pad`, `gather` | 0 |
//! | `scan` | its body's cost once per chunk (below) |
//! | `grad` | the cost of the ops it expands to (below) |
//! | `fused` | the FLOPs of its body's nodes (below) |
//!
//! Bytes moved are the bytes of the operands read plus the results written (4 per f32 element,
//! 8 per i64), except that `slice` and `gather` read only the elements they copy (plus `gather`'s
//! index), not their whole table. Intermediate bytes are the bytes of every node result.
//!
//! A scan over a sequence of length L in chunks of c costs its body with the body's chunk symbol
//! bound to c, ⌊L/c⌋ times, plus the body with the symbol bound to L mod c once when c does not
//! divide L (the last, shorter chunk): exactly ⌈L/c⌉ iterations. The scan's own results (final
//! carries, concatenated outputs) add to the intermediate bytes; the scan moves no bytes beyond
//! what its body's nodes read and write.
//!
//! A `grad` node costs what the `inner-autodiff` pass turns it into: the node alone in a graph is
//! expanded and dead code removed, and that graph's cost is the node's (the forward ops of the body
//! the gradient needs, and the reverse sweep). Should the expansion fail, or an op have no rule,
//! the node counts 0 FLOPs (its operand and result bytes still count) and `Cost::unestimated`
//! says how many such nodes there are.
//!
//! A `fused` region (built by the `fuse` pass) executes as one kernel: its FLOPs are its body's,
//! but it moves only what crosses its boundary, each operand read once (only the elements that
//! slices and gathers copy, when those are an operand's only readers in the body) and each result
//! written once, and its intermediate bytes are its results alone: the values inside the body are
//! never materialised. So the intermediate bytes of a fused graph are the bytes of the values that
//! exist at the top level (region results and the results of the plain nodes between them, scans
//! included as above).

use anyhow::{bail, Context, Result};
use tttc_ir::{DType, DimEnv, Graph, Node, Op, Scan, Type, ValueId};

/// The cost of a node, a region or a graph.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Floating-point (and integer) operations.
    pub flops: u64,
    /// Bytes read and written by the nodes.
    pub bytes: u64,
    /// Bytes of every node result (the intermediates, were each node executed on its own).
    pub intermediate_bytes: u64,
    /// Nodes whose op has no FLOP rule (counted as 0 FLOPs; their bytes are counted). Each such
    /// node counts once, however many times a scan runs it.
    pub unestimated: u64,
}

impl Cost {
    /// The cost of doing this `k` times (`unestimated` stays: it counts nodes, not executions).
    pub fn times(self, k: u64) -> Result<Cost> {
        Ok(Cost { flops: mul(self.flops, k)?, bytes: mul(self.bytes, k)?, intermediate_bytes: mul(self.intermediate_bytes, k)?, unestimated: self.unestimated })
    }

    /// `self + o`, failing on overflow.
    pub fn plus(self, o: Cost) -> Result<Cost> {
        Ok(Cost {
            flops: add(self.flops, o.flops)?,
            bytes: add(self.bytes, o.bytes)?,
            intermediate_bytes: add(self.intermediate_bytes, o.intermediate_bytes)?,
            unestimated: add(self.unestimated, o.unestimated)?,
        })
    }
}

fn add(a: u64, b: u64) -> Result<u64> {
    a.checked_add(b).context("cost overflows 64 bits")
}

fn mul(a: u64, b: u64) -> Result<u64> {
    a.checked_mul(b).context("cost overflows 64 bits")
}

/// Bytes per element: 4 for f32, 8 for i64.
pub fn dtype_bytes(d: DType) -> u64 {
    match d {
        DType::F32 => 4,
        DType::I64 => 8,
    }
}

/// The number of elements of a value of type `t` under `env`.
pub fn elements(t: &Type, env: &DimEnv) -> Result<u64> {
    let shape = t.resolve(env)?;
    shape.iter().try_fold(1u64, |acc, &n| mul(acc, n as u64))
}

/// The bytes of a value of type `t` under `env`.
pub fn bytes(t: &Type, env: &DimEnv) -> Result<u64> {
    mul(elements(t, env)?, dtype_bytes(t.dtype))
}

/// The total cost of `g`'s nodes (scan bodies included) with the symbols bound by `env`.
pub fn graph_cost(g: &Graph, env: &DimEnv) -> Result<Cost> {
    g.nodes.iter().try_fold(Cost::default(), |acc, n| acc.plus(node_cost(g, n, env)?))
}

/// The cost of one node of `g` with the symbols bound by `env`. The error names the node.
pub fn node_cost(g: &Graph, node: &Node, env: &DimEnv) -> Result<Cost> {
    node_cost_inner(g, node, env).with_context(|| match node.outputs.first() {
        Some(v) => format!("cost of {} defining %{} in {}", node.op.name(), v.0, g.name),
        None => format!("cost of {} in {}", node.op.name(), g.name),
    })
}

fn node_cost_inner(g: &Graph, node: &Node, env: &DimEnv) -> Result<Cost> {
    let sum_bytes = |vs: &[ValueId]| vs.iter().try_fold(0u64, |acc, &v| add(acc, bytes(g.ty(v), env)?));
    let (in_bytes, out_bytes) = (sum_bytes(&node.inputs)?, sum_bytes(&node.outputs)?);
    let out_elems = match node.outputs.first() {
        Some(&v) => elements(g.ty(v), env)?,
        None => 0,
    };
    let in_elems = match node.inputs.first() {
        Some(&v) => elements(g.ty(v), env)?,
        None => 0,
    };
    let plain = |flops: u64, read: u64| -> Result<Cost> { Ok(Cost { flops, bytes: add(read, out_bytes)?, intermediate_bytes: out_bytes, unestimated: 0 }) };
    #[allow(unreachable_patterns)] // a new op without a rule lands in the last arm
    match &node.op {
        Op::Unary(_) | Op::Binary(_) | Op::Cast { .. } | Op::TriMask { .. } | Op::OneHot { .. } => plain(out_elems, in_bytes),
        // One addition per update element.
        Op::ScatterAdd { .. } => plain(in_elems, in_bytes),
        Op::Reduce { .. } => plain(in_elems, in_bytes),
        Op::MatMul => {
            let a = g.ty(node.inputs[0]).resolve(env)?;
            let k = *a.last().context("matmul operand of rank 0")? as u64;
            plain(mul(mul(out_elems, k)?, 2)?, in_bytes)
        }
        Op::Const { .. } | Op::Iota { .. } => plain(0, 0),
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Broadcast { .. } | Op::Concat { .. } | Op::Pad { .. } | Op::Barrier | Op::StopGradient => {
            plain(0, in_bytes)
        }
        // Only the copied elements are read.
        Op::Slice { .. } => plain(0, out_bytes),
        Op::Gather { .. } => {
            let index = bytes(g.ty(node.inputs[1]), env)?;
            plain(0, add(out_bytes, index)?)
        }
        Op::Scan(scan) => {
            let mut c = scan_cost(g, node, scan, env)?;
            c.intermediate_bytes = add(c.intermediate_bytes, out_bytes)?;
            Ok(c)
        }
        Op::Grad(_) => match grad_cost(g, node, env)? {
            Some(c) => Ok(c),
            None => Ok(Cost { unestimated: 1, ..plain(0, in_bytes)? }),
        },
        Op::Fused(f) => {
            let body = graph_cost(&f.body, env).with_context(|| format!("fused body {}", f.body.name))?;
            let read = fused_reads(&f.body, env)?;
            Ok(Cost { flops: body.flops, bytes: add(read, out_bytes)?, intermediate_bytes: out_bytes, unestimated: body.unestimated })
        }
        _ => Ok(Cost { unestimated: 1, ..plain(0, in_bytes)? }),
    }
}

/// A `grad` node costs what it expands to: the node alone in a graph, expanded by the
/// inner-autodiff pass and pruned by dead-code elimination (the forward ops of the body that the
/// gradient needs, then its reverse sweep). `None` when it does not expand.
fn grad_cost(g: &Graph, node: &Node, env: &DimEnv) -> Result<Option<Cost>> {
    let mut alone = Graph::new("grad");
    let args: Vec<ValueId> = node.inputs.iter().enumerate().map(|(i, &v)| alone.input(&format!("x{i}"), g.ty(v).clone())).collect();
    let results = alone.push(node.op.clone(), &args)?;
    for (i, r) in results.into_iter().enumerate() {
        alone.output(&format!("d{i}"), r);
    }
    let Ok(expanded) = crate::autodiff::expand_grads(&alone) else { return Ok(None) };
    if has_grad(&expanded) {
        return Ok(None);
    }
    let simplified = crate::simplify::simplify(&expanded)?;
    graph_cost(&crate::dce::dead_code_elimination(&simplified), env).map(Some)
}

/// The bytes a fused body reads from its arguments: each argument once, in full, unless its only
/// readers in the body are slices and gather tables, which read only what they copy (at most the
/// whole argument).
fn fused_reads(body: &Graph, env: &DimEnv) -> Result<u64> {
    let mut total = 0u64;
    for a in &body.args {
        let full = bytes(body.ty(a.value), env)?;
        let mut partial = Some(0u64);
        for n in &body.nodes {
            for (i, &v) in n.inputs.iter().enumerate() {
                if v != a.value {
                    continue;
                }
                let copied = match (&n.op, i) {
                    (Op::Slice { .. } | Op::Gather { .. }, 0) => bytes(body.ty(n.outputs[0]), env)?,
                    _ => {
                        partial = None;
                        continue;
                    }
                };
                partial = partial.map(|p| p.saturating_add(copied));
            }
        }
        // An argument that is only returned (or not read at all) is read in full: it is copied out.
        let read = match partial {
            Some(p) if p > 0 => p.min(full),
            _ => full,
        };
        total = add(total, read)?;
    }
    Ok(total)
}

/// The bytes of the values `g` materialises: every node result, with a fused region's internal
/// values left out ([`Cost::intermediate_bytes`] of the whole graph). Comparing a graph before and
/// after the `fuse` pass shows what fusion saves.
pub fn intermediate_bytes(g: &Graph, env: &DimEnv) -> Result<u64> {
    Ok(graph_cost(g, env)?.intermediate_bytes)
}

fn has_grad(g: &Graph) -> bool {
    g.nodes.iter().any(|n| matches!(n.op, Op::Grad(_)) || n.op.body().is_some_and(has_grad))
}

/// The length of the scanned axis and the chunk symbol of the body (None when chunk 1 with a
/// constant chunk axis).
fn scan_shape(g: &Graph, node: &Node, scan: &Scan, env: &DimEnv) -> Result<(usize, Option<String>)> {
    let seq = node.inputs.get(scan.carries).context("scan has no sequence operand")?;
    let len = g.ty(*seq).resolve(env)?[scan.axis];
    let arg = scan.body.args.get(scan.carries).context("scan body has no sequence argument")?;
    let sym = scan.body.ty(arg.value).shape.get(scan.axis).and_then(|d| d.sym.clone());
    Ok((len, sym))
}

/// The number of chunks (body iterations) of a scan node: ⌈L / chunk⌉.
pub fn scan_iterations(g: &Graph, node: &Node, env: &DimEnv) -> Result<u64> {
    let Op::Scan(scan) = &node.op else { bail!("{} is not a scan", node.op.name()) };
    let (len, _) = scan_shape(g, node, scan, env)?;
    Ok(len.div_ceil(scan.chunk) as u64)
}

fn scan_cost(g: &Graph, node: &Node, scan: &Scan, env: &DimEnv) -> Result<Cost> {
    let (len, sym) = scan_shape(g, node, scan, env)?;
    let body_with = |n: usize| -> Result<Cost> {
        let mut inner = env.clone();
        if let Some(s) = &sym {
            inner.insert(s.clone(), n);
        }
        graph_cost(&scan.body, &inner).with_context(|| format!("scan body with {} = {n}", sym.as_deref().unwrap_or("chunk")))
    };
    let (full, rem) = (len / scan.chunk, len % scan.chunk);
    let mut total = Cost::default();
    let mut unestimated = 0;
    if full > 0 {
        let body = body_with(scan.chunk)?;
        unestimated = body.unestimated;
        total = total.plus(body.times(full as u64)?)?;
    }
    if rem > 0 {
        let body = body_with(rem)?;
        unestimated = body.unestimated;
        total = total.plus(body)?;
    }
    Ok(Cost { unestimated, ..total })
}

/// The peak of live memory while `g` executes node by node, each value freed after its last use
/// (as the interpreter does), with the symbols bound by `env`: arguments count while they are
/// live, and a scan or fused node adds its body's own peak while it runs (a scan's for one
/// chunk; a fused region's without its arguments, which it reads in place).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LivePeak {
    pub bytes: u64,
    /// The node executing at the peak (an index into `g.nodes`).
    pub node: usize,
    /// The largest values live at the peak, largest first (at most 8).
    pub largest: Vec<(ValueId, u64)>,
}

/// See [`LivePeak`].
pub fn live_peak(g: &Graph, env: &DimEnv) -> Result<LivePeak> {
    let mut last_use = vec![usize::MAX; g.types.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in &node.inputs {
            last_use[v.index()] = i;
        }
    }
    for (_, v) in &g.outputs {
        last_use[v.index()] = usize::MAX;
    }
    let mut live: std::collections::BTreeMap<ValueId, u64> = std::collections::BTreeMap::new();
    for a in &g.args {
        live.insert(a.value, bytes(g.ty(a.value), env)?);
    }
    let mut total: u64 = live.values().sum();
    let mut peak = LivePeak::default();
    for (i, node) in g.nodes.iter().enumerate() {
        let transient = match &node.op {
            Op::Scan(scan) => {
                let (len, sym) = scan_shape(g, node, scan, env)?;
                let mut inner = env.clone();
                if let Some(s) = &sym {
                    inner.insert(s.clone(), scan.chunk.min(len));
                }
                live_peak(&scan.body, &inner)?.bytes
            }
            // A region reads its operands in place: its arguments are already counted here.
            Op::Fused(f) => {
                let args = f.body.args.iter().try_fold(0u64, |acc, a| add(acc, bytes(f.body.ty(a.value), env)?))?;
                live_peak(&f.body, env)?.bytes.saturating_sub(args)
            }
            _ => 0,
        };
        for &v in &node.outputs {
            let b = bytes(g.ty(v), env)?;
            live.insert(v, b);
            total += b;
        }
        if total + transient > peak.bytes {
            let mut largest: Vec<(ValueId, u64)> = live.iter().map(|(&v, &b)| (v, b)).collect();
            largest.sort_by_key(|l| std::cmp::Reverse(l.1));
            largest.truncate(8);
            peak = LivePeak { bytes: total + transient, node: i, largest };
        }
        for v in &node.inputs {
            if last_use[v.index()] == i {
                if let Some(b) = live.remove(v) {
                    total -= b;
                }
            }
        }
    }
    Ok(peak)
}
