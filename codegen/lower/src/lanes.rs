//! Splitting a scan into independent lanes: when every carry and sequence of a scan has a
//! second axis of one constant width (the heads of a TTT mini-batch loop, `[B, H, …]`) and the
//! body never mixes entries along it, the scan runs as several narrower scans, one per thread,
//! each over a slice of that axis. The body is checked op by op (which axis of each value is the
//! lane axis, and that no op reduces, contracts, reshapes or indexes across it), then re-typed
//! for the narrower width and verified; any doubt keeps the scan whole.

use tttc_ir::{Dim, Graph, Op, Scan};

/// How to run a scan as `parts` narrower scans.
pub struct LaneSplit {
    pub parts: usize,
    /// Per scan operand (carries, sequences, invariants): its lane axis, or `None` when it is the
    /// same for every lane.
    pub operand_lanes: Vec<Option<usize>>,
    /// Per scan result: its lane axis.
    pub result_lanes: Vec<usize>,
    /// The body for one part.
    pub body: Graph,
}

/// The heads of a `[B, H, …]` scan: the axis the CPU backend splits over its threads.
const LANE_AXIS: usize = 1;

/// The split of `scan` into `parts` lanes along its second axis, when it is safe and that axis
/// has a constant width.
pub fn split(scan: &Scan, parts: usize) -> Option<LaneSplit> {
    let width = scan.body.ty(scan.body.args.first()?.value).shape.get(LANE_AXIS)?.as_const()?;
    split_at(scan, LANE_AXIS, width, parts)
}

/// The split of `scan` into `parts` lanes along `axis` (`width` wide: the resolved size of the
/// body's axis, which may be a symbol such as `B`), when it is safe: every carry and sequence
/// has the lane at `axis`.
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
        if i < chunked && !spans {
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
/// (`None`: the same for every lane; every carry has one), `width` wide, when it is safe: the
/// body never mixes lanes and returns each carry with its lane where it came in.
pub fn split_along(scan: &Scan, arg_axes: &[Option<usize>], width: usize, parts: usize) -> Option<LaneSplit> {
    let body = &scan.body;
    if parts < 2 || !width.is_multiple_of(parts) || width < parts || arg_axes.len() != body.args.len() {
        return None;
    }
    let (j, p) = arg_axes.iter().enumerate().find_map(|(j, a)| a.map(|p| (j, p)))?;
    let lane_dim = body.ty(body.args[j].value).shape.get(p)?.clone();
    let mut lanes: Vec<Option<Option<usize>>> = vec![None; body.types.len()]; // None: not yet known
    for (i, (a, &axis)) in body.args.iter().zip(arg_axes).enumerate() {
        let shape = &body.ty(a.value).shape;
        if axis.is_some_and(|q| shape.get(q) != Some(&lane_dim) || q == scan.axis && i >= scan.carries && i < scan.carries + scan.seqs)
            || (i < scan.carries && axis.is_none())
        {
            return None;
        }
        lanes[a.value.index()] = Some(axis);
    }
    for node in &body.nodes {
        let ins: Vec<Option<usize>> = node.inputs.iter().map(|v| lanes[v.index()].flatten()).collect();
        let out = lane_of(body, node, &ins, &lane_dim)?;
        for &o in &node.outputs {
            lanes[o.index()] = Some(out);
        }
    }
    let mut result_lanes = Vec::new();
    for (k, (_, v)) in body.outputs.iter().enumerate() {
        let lane = lanes[v.index()].flatten()?;
        if k < scan.carries && Some(lane) != arg_axes[k] {
            return None;
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
        Op::Unary(_) | Op::Cast { .. } | Op::Barrier | Op::OneHot { .. } => Some(single),
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
