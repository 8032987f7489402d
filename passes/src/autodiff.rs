//! Reverse-mode automatic differentiation over the IR.

use anyhow::Result;
use tttc_ir::Graph;

/// Replaces every `grad` op by the explicit ops of its gradient (being written).
pub fn expand_grads(g: &Graph) -> Result<Graph> {
    Ok(g.clone())
}
