//! The inner learner from parts (`ttt_inner`, docs/model-toml.md): the fast weights' model, its
//! self-supervised loss and that loss's gradients as `grad` ops, which the passes' autodiff
//! expands. TTT's layer (per token and per chunk) and LaCT's layers build through it; LaCT's fast
//! weights are the spec [`InnerSpec::lact`], stored as PyTorch's Linear stores them.

use anyhow::{ensure, Context, Result};
use tttc_ir::{BinaryOp, Grad, Graph, Op, ReduceKind, Type, UnaryOp, ValueId};

use crate::config::{Activation, InnerLoss, InnerSpec};
use crate::math::layer_norm;

/// The inner LayerNorm's epsilon (SPEC §2).
const NORM_EPS: f64 = 1e-6;

/// How a learner's matrices are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    /// `[in, out]`: `x·W` (TTT's `W{l}`).
    InOut,
    /// `[out, in]`: `x·Wᵀ` (LaCT's `w0`, `w1`, `w2`, PyTorch's Linear layout).
    OutIn,
}

/// An inner learner: its spec, and how its weights are stored. The weights come in the order of
/// [`InnerSpec::tensors`]: `[W1, b1, W1_gate, b1_gate, W2, b2, …]` (no `b{l}` without bias,
/// gates only with glu), each `[B, H, rows, cols]` shared by a chunk's tokens or
/// `[B, H, n, rows, cols]` per token.
#[derive(Clone, Copy)]
pub struct Learner<'a> {
    pub spec: &'a InnerSpec,
    pub stored: Stored,
}

impl Learner<'_> {
    /// The layers `Z(x)` on `x` `[B, H, n, d]`: linear layers with the spec's activation (or
    /// GLU) between them. Returns `[B, H, n, d_out]`.
    fn layers(&self, g: &mut Graph, x: ValueId, weights: &[ValueId]) -> Result<ValueId> {
        let spec = self.spec;
        let mut shape = g.ty(x).shape.clone();
        let shared = g.ty(weights[0]).rank() == shape.len();
        let mut row_shape = shape.clone();
        row_shape.insert(3, tttc_ir::Dim::c(1));
        let mut a = if shared { x } else { g.reshape(x, row_shape)? }; // [B, H, n, 1, d] per token
        let mut next = weights.iter().copied();
        let mut affine = |g: &mut Graph, a: ValueId| -> Result<ValueId> {
            let w = next.next().context("too few inner weights")?;
            let w = match self.stored {
                Stored::InOut => w,
                Stored::OutIn => g.transpose_last2(w)?,
            };
            let z = g.matmul(a, w)?;
            match spec.bias {
                true => g.add(z, next.next().context("too few inner weights")?),
                false => Ok(z),
            }
        };
        for l in 0..spec.depth() {
            let z = affine(g, a)?;
            a = match (l + 1 < spec.depth(), spec.gated(l)) {
                (false, _) => z,
                (true, false) => activate(g, spec.activation, z)?,
                (true, true) => {
                    let gate = affine(g, a)?;
                    let gate = activate(g, spec.activation, gate)?;
                    g.mul(gate, z)?
                }
            };
        }
        if shared {
            return Ok(a);
        }
        *shape.last_mut().unwrap() = g.dim(a, -1)?;
        g.reshape(a, shape)
    }

    /// The layers followed by the inner LayerNorm (when it has one): `N(Z_W(x))`.
    fn normed(&self, g: &mut Graph, x: ValueId, weights: &[ValueId], norm: Option<[ValueId; 2]>) -> Result<ValueId> {
        let z = self.layers(g, x, weights)?;
        match norm {
            Some([ln_w, ln_b]) => layer_norm(g, z, ln_w, ln_b, NORM_EPS),
            None => Ok(z),
        }
    }

    /// A token's output `f_W(q)`: `q + N(Z_W(q))` for a residual learner, `N(Z_W(q))` otherwise.
    pub fn output(&self, g: &mut Graph, q: ValueId, weights: &[ValueId], norm: Option<[ValueId; 2]>) -> Result<ValueId> {
        let normed = self.normed(g, q, weights, norm)?;
        if self.spec.residual {
            g.add(q, normed)
        } else {
            Ok(normed)
        }
    }

    /// The gradients of the inner loss summed over the keys and values with respect to every
    /// one of `weights`.
    pub fn gradients(&self, g: &mut Graph, weights: &[ValueId], k: ValueId, v: ValueId, norm: Option<[ValueId; 2]>) -> Result<Vec<ValueId>> {
        self.grad(g, weights, (0..weights.len()).collect(), [k, v], norm, None, false)
    }

    /// The gradients with respect to the `wrt` of `weights` of the loss (of `−ℓ` when `descend`:
    /// the step's direction), each token's term weighted by `scale` `[B, H, n, 1]` when given.
    #[allow(clippy::too_many_arguments)]
    fn grad(
        &self,
        g: &mut Graph,
        weights: &[ValueId],
        wrt: Vec<usize>,
        [k, v]: [ValueId; 2],
        norm: Option<[ValueId; 2]>,
        scale: Option<ValueId>,
        descend: bool,
    ) -> Result<Vec<ValueId>> {
        // The reconstruction's descent negates its scale.
        ensure!(scale.is_some() || !descend, "a descent needs its learning rates");
        let mut operands = weights.to_vec();
        operands.extend([k, v]);
        operands.extend(norm.into_iter().flatten());
        operands.extend(scale);
        let norm_type = norm.map(|[w, _]| g.ty(w).clone());
        let scale_type = scale.map(|s| g.ty(s).clone());
        let types: Vec<Type> = weights.iter().map(|&w| g.ty(w).clone()).collect();
        let loss = self.loss(&types, g.ty(k), norm_type.as_ref(), scale_type.as_ref(), descend)?;
        g.push(Op::Grad(Box::new(Grad { wrt, body: loss })), &operands)
    }

    /// A chunk's step of every weight, `−Σ_j lr_j·∇ℓ_j` at the shared `weights`, by one learning
    /// rate per token (`rates` holds one `[B, H, n, 1]`) or one per matrix (`rates` holds one
    /// per matrix, in the weights' order; a bias takes its matrix's): a gradient of the loss
    /// weighted by each matrix's rates.
    pub fn steps(&self, g: &mut Graph, weights: &[ValueId], k: ValueId, v: ValueId, norm: Option<[ValueId; 2]>, rates: &[ValueId]) -> Result<Vec<ValueId>> {
        let matrix_of = self.spec.matrix_of_tensors();
        let mut steps = vec![None; weights.len()];
        for (m, &rate) in rates.iter().enumerate() {
            let wrt: Vec<usize> = (0..weights.len()).filter(|&i| rates.len() == 1 || matrix_of[i] == m).collect();
            let grads = self.grad(g, weights, wrt.clone(), [k, v], norm, Some(rate), true)?;
            for (i, step) in wrt.into_iter().zip(grads) {
                steps[i] = Some(step);
            }
        }
        steps.into_iter().map(|s| s.context("an inner weight with no learning rate")).collect()
    }

    /// The inner self-supervised loss summed over the tokens, `Σ_j ½‖f_{W_j}(k_j) − v_j‖²`, built
    /// as `Σ_j ½‖N(Z_{W_j}(k_j)) − t_j‖²` with `t_j = v_j − k_j` when the learner is residual and
    /// `t_j = v_j` otherwise (N the inner LayerNorm or the identity), or `Σ_j −v_j · N(Z_{W_j}(k_j))`
    /// for the dot product (a residual's `v_j · k_j` has no gradient), each token's term times its
    /// `scale` when given, as a graph of (weights…, k, v[, LN weight, LN bias][, scale]). With
    /// `descend`, `−ℓ` instead: the dot product without its sign, the others by a negated scale.
    fn loss(&self, weight_types: &[Type], kv: &Type, ln: Option<&Type>, scale: Option<&Type>, descend: bool) -> Result<Graph> {
        let mut g = Graph::new("inner_loss");
        let weights: Vec<ValueId> = weight_types.iter().enumerate().map(|(i, t)| g.input(&format!("w{i}"), t.clone())).collect();
        let k = g.input("k", kv.clone());
        let v = g.input("v", kv.clone());
        let norm = ln.map(|ln| [g.input("ln_weight", ln.clone()), g.input("ln_bias", ln.clone())]);
        let mut scale = scale.map(|s| g.input("scale", s.clone()));
        let y = self.normed(&mut g, k, &weights, norm)?;
        let mut loss = match self.spec.loss {
            InnerLoss::Reconstruction => {
                let target = if self.spec.residual { g.sub(v, k)? } else { v };
                let diff = g.sub(y, target)?;
                let sq = g.mul(diff, diff)?;
                let half = g.scalar(0.5)?;
                if descend {
                    scale = scale.map(|s| g.unary(UnaryOp::Neg, s)).transpose()?;
                }
                g.mul(half, sq)?
            }
            InnerLoss::DotProduct => {
                let gain = g.mul(v, y)?;
                if descend {
                    gain
                } else {
                    g.unary(UnaryOp::Neg, gain)?
                }
            }
        };
        if let Some(scale) = scale {
            loss = g.mul(loss, scale)?;
        }
        while g.ty(loss).rank() > 0 {
            loss = g.reduce(ReduceKind::Sum, loss, 0, false)?;
        }
        g.output("loss", loss);
        Ok(g)
    }
}

fn activate(g: &mut Graph, act: Activation, z: ValueId) -> Result<ValueId> {
    match act {
        Activation::GeluTanh => g.unary(UnaryOp::GeluTanh, z),
        Activation::Silu => g.unary(UnaryOp::Silu, z),
        Activation::Relu => {
            let zero = g.scalar(0.0)?;
            g.binary(BinaryOp::Max, z, zero)
        }
    }
}
