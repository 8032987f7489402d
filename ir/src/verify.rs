//! The verifier: single assignment, definition before use, and every recorded type equal to the
//! type the op's rules infer (scan, grad and fused bodies included).

use anyhow::{bail, ensure, Context, Result};

use crate::graph::Graph;
use crate::infer::infer;

pub fn verify(graph: &Graph) -> Result<()> {
    verify_inner(graph).with_context(|| format!("graph {} does not verify", graph.name))
}

fn verify_inner(g: &Graph) -> Result<()> {
    let mut defined = vec![false; g.types.len()];
    let mut define = |v: crate::ValueId, what: &str| -> Result<()> {
        ensure!(v.index() < defined.len(), "{what} defines %{} which has no type", v.0);
        ensure!(!defined[v.index()], "%{} is assigned twice ({what})", v.0);
        defined[v.index()] = true;
        Ok(())
    };
    for (i, t) in g.types.iter().enumerate() {
        ensure!(t.shape.iter().all(|d| d.sym.is_some() || d.offset >= 0), "%{i} has a negative dimension: {t}");
        ensure!(
            t.shape.iter().all(|d| d.per >= 1 && (d.sym.is_some() || d.per == 1)),
            "%{i} has a chunk count that is not a symbol divided by a positive length: {t:?}"
        );
    }
    let mut names = std::collections::HashSet::new();
    for a in &g.args {
        define(a.value, &format!("argument {}", a.name))?;
        ensure!(names.insert(&a.name), "argument name {} is used twice", a.name);
    }
    for node in &g.nodes {
        let what = format!("{} defining %{}", node.op.name(), node.outputs.first().map_or(0, |v| v.0));
        let mut in_types = Vec::new();
        for v in &node.inputs {
            ensure!(v.index() < g.types.len(), "{what}: operand %{} does not exist", v.0);
            in_types.push(g.ty(*v));
        }
        for v in &node.outputs {
            define(*v, &what)?;
        }
        let _ = &in_types;
        if let Some(body) = node.op.body() {
            verify(body).with_context(|| format!("{what}: body"))?;
        }
        let inferred = infer(&node.op, &in_types).with_context(|| what.clone())?;
        ensure!(inferred.len() == node.outputs.len(), "{what}: returns {} values, op gives {}", node.outputs.len(), inferred.len());
        for (v, t) in node.outputs.iter().zip(&inferred) {
            ensure!(g.ty(*v) == t, "{what}: %{} is typed {}, op gives {t}", v.0, g.ty(*v));
        }
    }
    // Operands must be defined before use: check in a second sweep with definition order.
    let mut seen = vec![false; g.types.len()];
    for a in &g.args {
        seen[a.value.index()] = true;
    }
    for node in &g.nodes {
        for v in &node.inputs {
            if !seen[v.index()] {
                bail!("{} uses %{} before it is defined", node.op.name(), v.0);
            }
        }
        for v in &node.outputs {
            seen[v.index()] = true;
        }
    }
    for (name, v) in &g.outputs {
        ensure!(v.index() < seen.len() && seen[v.index()], "output {name} (%{}) is never defined", v.0);
    }
    Ok(())
}
