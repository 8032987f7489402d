//! Splitting a scan into independent lanes: when every carry and sequence of a scan has a
//! second axis of one constant width (the heads of a TTT mini-batch loop, `[B, H, …]`) and the
//! body never mixes entries along it, the scan runs as several narrower scans, one per thread,
//! each over a slice of that axis. The body is checked op by op (which axis of each value is the
//! lane axis, and that no op reduces, contracts, reshapes or indexes across it), then re-typed
//! for the narrower width and verified; any doubt keeps the scan whole.
//!
//! One exception lets a body sum across its lanes: a carry without a lane that only accumulates
//! such sums (`acc + Σ_lanes …`, through linear steps: a gradient shared by the heads, which the
//! reverse scan of a TTT layer's backward pass carries) is an accumulator. Each part keeps its
//! own, summing its own lanes' share; the first part starts from the carry's initial value and the
//! others from zero, and the parts' results are added together after they finish.

use tttc_ir::{BinaryOp, DType, Dim, Graph, Op, ReduceKind, Scan, UnaryOp};

/// How to run a scan as `parts` narrower scans.
pub struct LaneSplit {
    pub parts: usize,
    /// Per scan operand (carries, sequences, invariants): its lane axis, or `None` when it is the
    /// same for every lane.
    pub operand_lanes: Vec<Option<usize>>,
    /// Per scan result: its lane axis, or `None` for an accumulator (a carry; its initial value
    /// goes to the first part, zero to the others, and the parts' results are summed).
    pub result_lanes: Vec<Option<usize>>,
    /// The body for one part.
    pub body: Graph,
}

/// The heads of a `[B, H, …]` scan: the axis the CPU backend splits over its threads.
const LANE_AXIS: usize = 1;

/// The split of `scan` for `threads` threads along its second axis, when it is safe and that
/// axis has a constant width: into the fewest parts of equal width, at least one per thread (one
/// per lane where there are fewer lanes than threads: 12 heads on 16 threads run as 12 parts).
pub fn split(scan: &Scan, threads: usize) -> Option<LaneSplit> {
    let width = scan.body.ty(scan.body.args.first()?.value).shape.get(LANE_AXIS)?.as_const()?;
    let parts = (threads.min(width)..=width).find(|p| width.is_multiple_of(*p))?;
    split_at(scan, LANE_AXIS, width, parts)
}

/// The split of `scan` into `parts` lanes along `axis` (`width` wide: the resolved size of the
/// body's axis, which may be a symbol such as `B`), when it is safe: every carry and sequence
/// has the lane at `axis` (or is an accumulator).
pub fn split_at(scan: &Scan, axis: usize, width: usize, parts: usize) -> Option<LaneSplit> {
    let body = &scan.body;
    if scan.axis == axis {
        return None;
    }
    let chunked = scan.carries + scan.seqs;
    let lane_dim = body.ty(body.args.first()?.value).shape.get(axis)?.clone();
    let mut arg_axes = Vec::new();
    for (i, a) in body.args.iter().enumerate() {
        let spans = body.ty(a.value).shape.get(axis) == Some(&lane_dim);
        if i < chunked && !spans && i >= scan.carries {
            return None;
        }
        arg_axes.push(spans.then_some(axis));
    }
    split_along(scan, &arg_axes, width, parts)
}

/// For each of the body's arguments, the one axis whose size is `dim` (`None` when it has none);
/// `None` overall when some argument has several.
pub fn axes_of_dim(body: &Graph, dim: &Dim) -> Option<Vec<Option<usize>>> {
    body.args
        .iter()
        .map(|a| {
            let mut at = body.ty(a.value).shape.iter().enumerate().filter(|(_, d)| *d == dim).map(|(q, _)| q);
            match (at.next(), at.next()) {
                (q, None) => Some(q),
                _ => None,
            }
        })
        .collect()
}

/// The split of `scan` into `parts` lanes with the lane of each body argument at `arg_axes`
/// (`None`: the same for every lane, or for a carry an accumulator), `width` wide, when it is
/// safe: the body never mixes lanes but into accumulators, and returns each carry with its lane
/// where it came in.
pub fn split_along(scan: &Scan, arg_axes: &[Option<usize>], width: usize, parts: usize) -> Option<LaneSplit> {
    let body = &scan.body;
    if parts < 2 || !width.is_multiple_of(parts) || width < parts || arg_axes.len() != body.args.len() {
        return None;
    }
    let (j, p) = arg_axes.iter().enumerate().find_map(|(j, a)| a.map(|p| (j, p)))?;
    let lane_dim = body.ty(body.args[j].value).shape.get(p)?.clone();
    let mut lanes: Vec<Option<Option<usize>>> = vec![None; body.types.len()]; // None: not yet known
    let mut sums = vec![Sum::No; body.types.len()];
    for (i, (a, &axis)) in body.args.iter().zip(arg_axes).enumerate() {
        let shape = &body.ty(a.value).shape;
        if axis.is_some_and(|q| shape.get(q) != Some(&lane_dim) || q == scan.axis && i >= scan.carries && i < scan.carries + scan.seqs) {
            return None;
        }
        if i < scan.carries && axis.is_none() {
            if body.ty(a.value).dtype != DType::F32 {
                return None;
            }
            sums[a.value.index()] = Sum::Accumulator(i);
        }
        lanes[a.value.index()] = Some(axis);
    }
    for node in &body.nodes {
        let ins: Vec<Option<usize>> = node.inputs.iter().map(|v| lanes[v.index()].flatten()).collect();
        let in_sums: Vec<Sum> = node.inputs.iter().map(|v| sums[v.index()]).collect();
        let (out, sum) = if in_sums.iter().any(|&s| s != Sum::No) {
            (None, sum_of(node, &ins, &in_sums)?)
        } else if matches!(node.op, Op::Reduce { kind: ReduceKind::Sum, axis, .. } if ins[0] == Some(axis)) {
            (None, Sum::Partial)
        } else {
            (lane_of(body, node, &ins, &lane_dim)?, Sum::No)
        };
        for &o in &node.outputs {
            lanes[o.index()] = Some(out);
            sums[o.index()] = sum;
        }
    }
    let mut result_lanes = Vec::new();
    for (k, (_, v)) in body.outputs.iter().enumerate() {
        let lane = lanes[v.index()].flatten();
        match sums[v.index()] {
            Sum::Accumulator(j) | Sum::Accumulated(j) if j == k => {}
            Sum::No if k < scan.carries && lane.is_some() && lane == arg_axes[k] => {}
            Sum::No if k >= scan.carries && lane.is_some() => {}
            _ => return None,
        }
        result_lanes.push(lane);
    }
    let narrow = Dim::c(width / parts);
    let mut part = body.clone();
    for (v, lane) in lanes.iter().enumerate() {
        if let Some(Some(p)) = lane {
            part.types[v].shape[*p] = narrow.clone();
        }
    }
    for node in part.nodes.iter_mut() {
        let lane = lanes[node.outputs[0].index()].flatten();
        if let (Op::Reshape { shape } | Op::Broadcast { shape }, Some(p)) = (&mut node.op, lane) {
            shape[p] = narrow.clone();
        }
    }
    tttc_ir::verify(&part).ok()?;
    let operand_lanes = body.args.iter().map(|a| lanes[a.value.index()].flatten()).collect();
    Some(LaneSplit { parts, operand_lanes, result_lanes, body: part })
}

/// What a value of a body is to the sums across its lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sum {
    /// None of them.
    No,
    /// A share of a sum across the lanes: each part computes its own lanes' (a sum along the
    /// lane axis, then linear steps only).
    Partial,
    /// The accumulator carry `k` as it comes in.
    Accumulator(usize),
    /// Accumulator `k` plus a share: the carry's new value, to be returned and nothing else.
    Accumulated(usize),
}

/// What a node makes of shares of sums across the lanes (at least one operand is one of them),
/// or `None` when the parts' results would not add up to the whole scan's: only linear steps
/// keep a share one (sums and differences of shares, a share scaled by a value the same for
/// every lane, negated, reshaped, transposed, summed further or scattered), and an accumulator
/// may only be added to a share.
fn sum_of(node: &tttc_ir::Node, ins: &[Option<usize>], sums: &[Sum]) -> Option<Sum> {
    let same = |k: usize| sums[k] == Sum::No && ins[k].is_none();
    match (&node.op, sums) {
        (Op::Binary(BinaryOp::Add), [Sum::Accumulator(j), Sum::Partial] | [Sum::Partial, Sum::Accumulator(j)]) => Some(Sum::Accumulated(*j)),
        (Op::Binary(BinaryOp::Add | BinaryOp::Sub), [Sum::Partial, Sum::Partial]) => Some(Sum::Partial),
        (Op::Binary(BinaryOp::Mul | BinaryOp::Div), [Sum::Partial, Sum::No]) if same(1) => Some(Sum::Partial),
        (Op::Binary(BinaryOp::Mul), [Sum::No, Sum::Partial]) if same(0) => Some(Sum::Partial),
        // Shares added into rows picked by indices the same for every lane.
        (Op::ScatterAdd { .. }, [Sum::Partial, Sum::No]) if same(1) => Some(Sum::Partial),
        (Op::Unary(UnaryOp::Neg) | Op::Reshape { .. } | Op::Transpose { .. } | Op::Reduce { kind: ReduceKind::Sum, .. }, [Sum::Partial]) => Some(Sum::Partial),
        _ => None,
    }
}

/// The lane axis of a node's results given its operands' (`None`: the same for every lane), or
/// `None` (the outer option) when the op would mix lanes or the types do not show it does not.
fn lane_of(g: &Graph, node: &tttc_ir::Node, ins: &[Option<usize>], lane_dim: &Dim) -> Option<Option<usize>> {
    let rank = |k: usize| g.ty(node.inputs[k]).rank();
    let out_rank = node.outputs.first().map_or(0, |&v| g.ty(v).rank());
    let dim_at = |k: usize, axis: usize| g.ty(node.inputs[k]).shape.get(axis).cloned();
    // Operands aligned at the right (NumPy broadcasting): every lane operand must put its lane
    // axis at one output position, and every other operand must be 1 there (or not reach it).
    let aligned = |skip_last: usize| -> Option<Option<usize>> {
        let mut at: Option<usize> = None;
        for (k, lane) in ins.iter().enumerate() {
            if let Some(p) = lane {
                let pos = p + out_rank - rank(k);
                if *p + skip_last >= rank(k) || at.is_some_and(|a| a != pos) {
                    return None;
                }
                at = Some(pos);
            }
        }
        if let Some(pos) = at {
            for (k, lane) in ins.iter().enumerate() {
                if lane.is_none() && pos + rank(k) >= out_rank {
                    let d = dim_at(k, pos + rank(k) - out_rank)?;
                    if !d.is_one() {
                        return None;
                    }
                }
            }
        }
        Some(at)
    };
    let single = ins.first().copied().flatten();
    match &node.op {
        Op::Const { .. } | Op::Iota { .. } => Some(None),
        Op::Unary(_) | Op::Cast { .. } | Op::Barrier | Op::StopGradient | Op::OneHot { .. } => Some(single),
        Op::Binary(_) => aligned(0),
        // Lanes in the batch axes; or the left operand's rows (the right one the same for
        // every lane), or the right operand's columns (the left one the same).
        Op::MatMul => match (ins[0], ins[1]) {
            (Some(p), None) if p + 2 == rank(0) => Some(Some(out_rank - 2)),
            (None, Some(p)) if p + 1 == rank(1) => Some(Some(out_rank - 1)),
            _ => aligned(2),
        },
        Op::TriMask { .. } => match single {
            Some(p) if p + 2 < rank(0) => Some(Some(p)),
            Some(_) => None,
            None => Some(None),
        },
        Op::Reduce { axis, keepdim, .. } => match single {
            Some(p) if *axis == p => None,
            Some(p) if !keepdim && *axis < p => Some(Some(p - 1)),
            other => Some(other),
        },
        Op::Slice { axis, .. } | Op::Pad { axis, .. } => match single {
            Some(p) if *axis == p => None,
            other => Some(other),
        },
        Op::Concat { axis } => {
            let first = ins[0];
            if ins.iter().any(|&l| l != first) || first == Some(*axis) {
                return None;
            }
            Some(first)
        }
        Op::Transpose { perm } => Some(single.map(|p| perm.iter().position(|&q| q == p).expect("a permutation"))),
        Op::Reshape { shape } => match single {
            // The axes before the lane axis stay as they are, up to axes of length 1.
            Some(p) => {
                let real = |ds: &[Dim]| ds.iter().filter(|d| !d.is_one()).cloned().collect::<Vec<_>>();
                let before = real(&g.ty(node.inputs[0]).shape[..p]);
                let q = (0..shape.len()).find(|&q| shape[q] == *lane_dim && real(&shape[..q]) == before)?;
                Some(Some(q))
            }
            None => Some(None),
        },
        Op::Broadcast { shape } => match single {
            Some(p) => Some(Some(p + shape.len() - rank(0))),
            // A value the same for every lane, broadcast across the lane width: lane-shaped from
            // here on (each part takes its slice of identical entries), when one axis is it.
            None => {
                let mut at = shape.iter().enumerate().filter(|(_, d)| *d == lane_dim).map(|(q, _)| q);
                match (at.next(), at.next()) {
                    (Some(q), None) if q + rank(0) < shape.len() || dim_at(0, q + rank(0) - shape.len()).is_some_and(|d| d.is_one()) => Some(Some(q)),
                    (None, _) => Some(None),
                    _ => None,
                }
            }
        },
        Op::Gather { axis } => match (ins[0], ins.get(1).copied().flatten()) {
            (None, None) => Some(None),
            (None, Some(q)) => Some(Some(axis + q)),
            (Some(p), None) if p < *axis => Some(Some(p)),
            (Some(p), None) if p > *axis => Some(Some(p - 1 + rank(1))),
            _ => None,
        },
        // Scattering within one lane is possible but not needed by any body yet.
        Op::ScatterAdd { .. } => ins.iter().all(Option::is_none).then_some(None),
        Op::Scan(_) | Op::Grad(_) | Op::Fused(_) => None,
    }
}
