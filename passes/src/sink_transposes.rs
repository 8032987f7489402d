//! Transposes moved onto the operands of the products they transpose, `(a·b)ᵀ = bᵀ·aᵀ`, and of
//! elementwise ops whose operands transpose for free, `(a − b)ᵀ = aᵀ − bᵀ`. Reverse
//! mode differentiates `x · Wᵀ` into a `[D, V]` gradient that is then transposed to `W`'s `[V, D]`
//! (per chunk, for the LM head); computed as `dyᵀ · x` it comes out in `W`'s layout, and the
//! products read their operands' transposes as strides. The other way round, elementwise ops
//! whose results are read only through transposes are computed in the transposed layout, the
//! transposes of their operands undone.

use std::collections::HashMap;

use anyhow::Result;
use tttc_ir::{swaps_last_two, Graph, Op, ValueId};

/// `g` (scan and region bodies too) with each transpose of the last two axes of a product moved
/// onto its operands: `(a·b)ᵀ = bᵀ·aᵀ`, through reshapes that only add or drop leading unit axes
/// and reductions over a leading axis, where every value on the way is read only there (by
/// anything that an output needs). A gradient's `dWᵀ` (the LM head's, `[V, D]`) is then
/// computed in the layout it is summed in, with its operands' transposes read as strides,
/// instead of computed and then transposed. Then elementwise ops read only through transposes
/// are computed transposed ([`flip_layouts`]).
pub fn sink_transposes(g: &Graph) -> Result<Graph> {
    let readers = Readers::of(g);
    let uses: Vec<usize> = (0..g.types.len()).map(|v| readers.by[v].len() + readers.outputs[v]).collect();
    let producer: HashMap<ValueId, usize> = g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |&o| (o, i))).collect();
    let mut out = Graph::new(&g.name);
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for a in &g.args {
        map.insert(a.value, out.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    for node in &g.nodes {
        let mut op = node.op.clone();
        if let Some(body) = op.body_mut() {
            *body = sink_transposes(body)?;
        }
        let sunk = match &op {
            Op::Transpose { perm } if swaps_last_two(perm) => transposed(&mut out, g, &producer, &uses, &map, node.inputs[0])?,
            _ => None,
        };
        let outs = match sunk {
            Some(v) => vec![v],
            None => out.push(op, &node.inputs.iter().map(|v| map[v]).collect::<Vec<_>>())?,
        };
        for (o, n) in node.outputs.iter().zip(outs) {
            map.insert(*o, n);
        }
    }
    for (name, v) in &g.outputs {
        out.output(name, map[v]);
    }
    flip_layouts(&out)
}

/// Who reads each value among the nodes something needs (a reader only dead code has is not
/// counted: `dce` removes it).
struct Readers {
    /// Per value, the needed nodes that read it (once per operand).
    by: Vec<Vec<usize>>,
    /// Per value, how many of the outputs it is.
    outputs: Vec<usize>,
    /// Per node, whether an output depends on it.
    needed: Vec<bool>,
}

impl Readers {
    fn of(g: &Graph) -> Readers {
        let mut wanted = vec![false; g.types.len()];
        let mut outputs = vec![0; g.types.len()];
        for (_, v) in &g.outputs {
            wanted[v.index()] = true;
            outputs[v.index()] += 1;
        }
        let mut by = vec![Vec::new(); g.types.len()];
        let mut needed = vec![false; g.nodes.len()];
        for (i, n) in g.nodes.iter().enumerate().rev() {
            if n.outputs.iter().any(|o| wanted[o.index()]) {
                needed[i] = true;
                for v in &n.inputs {
                    wanted[v.index()] = true;
                    by[v.index()].push(i);
                }
            }
        }
        Readers { by, outputs, needed }
    }
}

/// `g` with the elementwise ops whose results are read only by transposes of their last two
/// axes, directly or through each other, computed in the transposed layout: their operands
/// taken as transposes undone, vectors and values with a unit axis among the last two reshaped,
/// scalars as they are, and the transposes reading them replaced by their results. Reverse mode
/// builds the adjoints of TTT-MLP's GELU from a `[256, 1] ⊙ [1, n]` outer product, in the
/// transposed layout of the `[n, 256]` values it combines them with, and transposes the result
/// back: a copy per operand, none once flipped.
fn flip_layouts(g: &Graph) -> Result<Graph> {
    let readers = Readers::of(g);
    let producer: HashMap<ValueId, usize> = g.nodes.iter().enumerate().flat_map(|(i, n)| n.outputs.iter().map(move |&o| (o, i))).collect();
    let swap = |i: usize| matches!(&g.nodes[i].op, Op::Transpose { perm } if swaps_last_two(perm));
    // The transpose `x` is of, when it is one.
    let untransposed = |x: &ValueId| producer.get(x).filter(|&&p| swap(p)).map(|&p| g.nodes[p].inputs[0]);
    let reshapes = |x: &ValueId| {
        let shape = &g.ty(*x).shape;
        let r = shape.len();
        r < 2 || shape[r - 1].is_one() || shape[r - 2].is_one()
    };
    // An operand of a member transposes without a copy: a member's result, a transpose of a
    // value that keeps its layout, or a reshape. (A transpose of a member is the member's
    // flipped result, not its transpose.)
    let free = |x: &ValueId, flip: &[bool]| {
        let member = |v: &ValueId| producer.get(v).is_some_and(|&p| flip[p]);
        member(x) || untransposed(x).is_some_and(|y| !member(&y)) || reshapes(x)
    };
    // A set whose members' operands are free, and whose results only members and transposes
    // read: all candidates, less those that break either until none does.
    let mut flip: Vec<bool> = (0..g.nodes.len())
        .map(|i| readers.needed[i] && matches!(g.nodes[i].op, Op::Unary(_) | Op::Binary(_)) && g.ty(g.nodes[i].outputs[0]).rank() >= 2)
        .collect();
    loop {
        let mut changed = false;
        for (i, node) in g.nodes.iter().enumerate() {
            if !flip[i] {
                continue;
            }
            let out = node.outputs[0].index();
            let operands = node.inputs.iter().all(|x| free(x, &flip));
            let read = readers.outputs[out] == 0 && readers.by[out].iter().all(|&u| flip[u] || swap(u));
            if !operands || !read {
                flip[i] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    if !flip.contains(&true) {
        return Ok(g.clone());
    }
    let mut out = Graph::new(&g.name);
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for a in &g.args {
        map.insert(a.value, out.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    // The flipped members' results, transposed.
    let mut flipped: HashMap<ValueId, ValueId> = HashMap::new();
    for (i, node) in g.nodes.iter().enumerate() {
        if flip[i] {
            let mut operands = Vec::with_capacity(node.inputs.len());
            for x in &node.inputs {
                let operand = if let Some(&y) = flipped.get(x) {
                    y
                } else if let Some(y) = untransposed(x).filter(|y| !flipped.contains_key(y)) {
                    map[&y]
                } else {
                    let mut shape = g.ty(*x).shape.clone();
                    match shape.len() {
                        0 => map[x],
                        1 => out.reshape(map[x], vec![shape[0].clone(), tttc_ir::Dim::c(1)])?,
                        r => {
                            shape.swap(r - 2, r - 1);
                            out.reshape(map[x], shape)?
                        }
                    }
                };
                operands.push(operand);
            }
            flipped.insert(node.outputs[0], out.push1(node.op.clone(), &operands)?);
        } else if swap(i) && flipped.contains_key(&node.inputs[0]) {
            map.insert(node.outputs[0], flipped[&node.inputs[0]]);
        } else if readers.needed[i] {
            // (Dead code may read a member's result in the layout no longer computed.)
            for (o, n) in node.outputs.iter().zip(out.push(node.op.clone(), &node.inputs.iter().map(|v| map[v]).collect::<Vec<_>>())?) {
                map.insert(*o, n);
            }
        }
    }
    for (name, v) in &g.outputs {
        out.output(name, map[v]);
    }
    Ok(out)
}

/// A value of `out` equal to `v`ᵀ (its last two axes swapped) built from `v`'s operands, when `v`
/// is a product, a leading-unit-axes reshape or a leading-axis reduction of one, or an
/// elementwise op whose operands transpose without a copy ([`free_transpose`]), each read only
/// on the way; `None` otherwise (with dead nodes left in `out` when an elementwise op's later
/// operand failed: `dce` removes them).
fn transposed(
    out: &mut Graph,
    g: &Graph,
    producer: &HashMap<ValueId, usize>,
    uses: &[usize],
    map: &HashMap<ValueId, ValueId>,
    v: ValueId,
) -> Result<Option<ValueId>> {
    let Some(&i) = producer.get(&v) else { return Ok(None) };
    let node = &g.nodes[i];
    if uses[v.index()] != 1 || g.ty(v).rank() < 2 {
        return Ok(None);
    }
    // xᵀ: sunk further when it can be, else a transpose (`simplify` folds transposes of
    // transposes, and products read a transposed operand as strides).
    let t = |out: &mut Graph, x: ValueId| -> Result<ValueId> {
        match transposed(out, g, producer, uses, map, x)? {
            Some(y) => Ok(y),
            None => out.transpose_last2(map[&x]),
        }
    };
    let rank = g.ty(v).rank();
    Ok(match &node.op {
        Op::MatMul => {
            let (ta, tb) = (t(out, node.inputs[0])?, t(out, node.inputs[1])?);
            Some(out.matmul(tb, ta)?)
        }
        Op::Reshape { shape } => {
            let from = &g.ty(node.inputs[0]).shape;
            let (r, f) = (shape.len(), from.len());
            let leading_units = |s: &[tttc_ir::Dim]| s.iter().all(|d| d.is_one());
            if f < 2 || shape[r - 2..] != from[f - 2..] || !leading_units(&shape[..r - 2]) || !leading_units(&from[..f - 2]) {
                return Ok(None);
            }
            let Some(x) = transposed(out, g, producer, uses, map, node.inputs[0])? else { return Ok(None) };
            let mut swapped = shape.clone();
            swapped.swap(r - 2, r - 1);
            Some(out.reshape(x, swapped)?)
        }
        Op::Reduce { kind, axis, keepdim } if *axis + 2 < g.ty(node.inputs[0]).rank() && rank >= 2 => {
            let Some(x) = transposed(out, g, producer, uses, map, node.inputs[0])? else { return Ok(None) };
            Some(out.reduce(*kind, x, *axis as i64, *keepdim)?)
        }
        // (f(a, b))ᵀ = f(aᵀ, bᵀ): the dual form's `(b₁ᵀ − (η·Z)ᵀ)ᵀ` is `b₁ − η·Z`.
        Op::Unary(_) | Op::Binary(_) => {
            let mut operands = Vec::with_capacity(node.inputs.len());
            for &x in &node.inputs {
                let Some(y) = free_transpose(out, g, producer, uses, map, x)? else { return Ok(None) };
                operands.push(y);
            }
            Some(out.push1(node.op.clone(), &operands)?)
        }
        _ => None,
    })
}

/// `x`ᵀ as an operand of an elementwise op transposed (broadcasting from the right), when it
/// needs no copy: sunk further by [`transposed`], a transpose undone, a reshape where the last
/// two axes hold at most one that is not 1 (a vector `[k]` becomes the column `[k, 1]`), or a
/// scalar as it is.
fn free_transpose(
    out: &mut Graph,
    g: &Graph,
    producer: &HashMap<ValueId, usize>,
    uses: &[usize],
    map: &HashMap<ValueId, ValueId>,
    x: ValueId,
) -> Result<Option<ValueId>> {
    let shape = &g.ty(x).shape;
    let r = shape.len();
    if r == 0 {
        return Ok(Some(map[&x]));
    }
    if r == 1 {
        return Ok(Some(out.reshape(map[&x], vec![shape[0].clone(), tttc_ir::Dim::c(1)])?));
    }
    if let Some(y) = transposed(out, g, producer, uses, map, x)? {
        return Ok(Some(y));
    }
    if let Some(node) = producer.get(&x).map(|&i| &g.nodes[i]) {
        if matches!(&node.op, Op::Transpose { perm } if swaps_last_two(perm)) {
            return Ok(Some(map[&node.inputs[0]]));
        }
    }
    if shape[r - 1].is_one() || shape[r - 2].is_one() {
        let mut swapped = shape.clone();
        swapped.swap(r - 2, r - 1);
        return Ok(Some(out.reshape(map[&x], swapped)?));
    }
    Ok(None)
}
