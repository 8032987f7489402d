//! The `simplify` pass: local clean-ups of what the autodiff and the dual-form lifting emit.
//!
//! - common subexpressions are computed once (same op, same attributes, same operands);
//! - a reshape, broadcast or transpose that changes nothing is dropped;
//! - a reshape of a reshape reads the original, a transpose of a transpose is one transpose.
//!
//! Scan bodies are simplified too. Every rewrite keeps the values bit for bit.

use std::collections::HashMap;

use anyhow::{Context, Result};
use tttc_ir::{Graph, Op, ValueId};

pub fn simplify(g: &Graph) -> Result<Graph> {
    let mut out = Graph::new(&g.name);
    let mut map: Vec<Option<ValueId>> = vec![None; g.types.len()];
    for a in &g.args {
        map[a.value.index()] = Some(out.arg(&a.name, a.kind, g.ty(a.value).clone()));
    }
    // What made each value of `out`: its op and operands (for folding chains).
    let mut made_by: HashMap<ValueId, (Op, Vec<ValueId>)> = HashMap::new();
    let mut seen: HashMap<(String, Vec<ValueId>), Vec<ValueId>> = HashMap::new();
    for node in &g.nodes {
        let mut ins: Vec<ValueId> = node.inputs.iter().map(|v| map[v.index()].context("operand undefined")).collect::<Result<_>>()?;
        let mut op = node.op.clone();
        if let Some(body) = op.body_mut() {
            *body = simplify(body)?;
        }
        // Identities and chains.
        let same_shape = |v: ValueId| out.ty(v).shape == g.ty(node.outputs[0]).shape;
        match &op {
            Op::Reshape { .. } | Op::Broadcast { .. } if same_shape(ins[0]) => {
                map[node.outputs[0].index()] = Some(ins[0]);
                continue;
            }
            Op::Transpose { perm } if perm.iter().enumerate().all(|(i, &p)| i == p) => {
                map[node.outputs[0].index()] = Some(ins[0]);
                continue;
            }
            Op::Reshape { .. } => {
                if let Some((Op::Reshape { .. }, src)) = made_by.get(&ins[0]) {
                    ins = src.clone();
                    if same_shape(ins[0]) {
                        map[node.outputs[0].index()] = Some(ins[0]);
                        continue;
                    }
                }
            }
            Op::Transpose { perm } => {
                if let Some((Op::Transpose { perm: inner }, src)) = made_by.get(&ins[0]) {
                    let composed: Vec<usize> = perm.iter().map(|&p| inner[p]).collect();
                    ins = src.clone();
                    if composed.iter().enumerate().all(|(i, &p)| i == p) {
                        map[node.outputs[0].index()] = Some(ins[0]);
                        continue;
                    }
                    op = Op::Transpose { perm: composed };
                }
            }
            _ => {}
        }
        // Common subexpressions (ops with bodies are left alone).
        let key = (op.body().is_none()).then(|| (format!("{op:?}"), ins.clone()));
        if let Some(prev) = key.as_ref().and_then(|k| seen.get(k)) {
            for (o, p) in node.outputs.iter().zip(prev) {
                map[o.index()] = Some(*p);
            }
            continue;
        }
        let outs = out.push(op.clone(), &ins)?;
        if let [one] = outs[..] {
            made_by.insert(one, (op, ins));
        }
        if let Some(k) = key {
            seen.insert(k, outs.clone());
        }
        for (o, n) in node.outputs.iter().zip(outs) {
            map[o.index()] = Some(n);
        }
    }
    for (name, v) in &g.outputs {
        out.output(name, map[v.index()].context("output undefined")?);
    }
    Ok(out)
}
