//! The graph: single-assignment values, nodes in execution order, named arguments and outputs.
//! Nodes are added through [`Graph::push`], which infers and records the types of their results,
//! so a graph under construction is always well typed.

use anyhow::{bail, Context, Result};

use crate::infer::infer;
use crate::op::{BinaryOp, Fused, Op, ReduceKind, Scan, UnaryOp};
use crate::types::{DType, Dim, Type};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgKind {
    /// Data supplied per run (`input_ids`, a scan's chunk).
    Input,
    /// A named model weight.
    Param,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Arg {
    pub name: String,
    pub kind: ArgKind,
    pub value: ValueId,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Graph {
    pub name: String,
    /// The type of every value, indexed by [`ValueId`].
    pub types: Vec<Type>,
    pub args: Vec<Arg>,
    pub nodes: Vec<Node>,
    pub outputs: Vec<(String, ValueId)>,
}

impl Graph {
    pub fn new(name: &str) -> Graph {
        Graph { name: name.to_string(), ..Graph::default() }
    }

    pub fn ty(&self, v: ValueId) -> &Type {
        &self.types[v.index()]
    }

    fn new_value(&mut self, ty: Type) -> ValueId {
        self.types.push(ty);
        ValueId(self.types.len() as u32 - 1)
    }

    pub fn arg(&mut self, name: &str, kind: ArgKind, ty: Type) -> ValueId {
        let value = self.new_value(ty);
        self.args.push(Arg { name: name.to_string(), kind, value });
        value
    }

    pub fn input(&mut self, name: &str, ty: Type) -> ValueId {
        self.arg(name, ArgKind::Input, ty)
    }

    pub fn param(&mut self, name: &str, shape: &[usize]) -> ValueId {
        self.arg(name, ArgKind::Param, Type::f32(shape))
    }

    pub fn output(&mut self, name: &str, v: ValueId) {
        self.outputs.push((name.to_string(), v));
    }

    pub fn params(&self) -> impl Iterator<Item = &Arg> {
        self.args.iter().filter(|a| a.kind == ArgKind::Param)
    }

    /// Appends a node, inferring its result types. Fails with a message naming the op when the
    /// operands do not fit.
    pub fn push(&mut self, op: Op, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        let in_types: Vec<&Type> = inputs.iter().map(|&v| self.ty(v)).collect();
        let out_types = infer(&op, &in_types).with_context(|| {
            let shown: Vec<String> = in_types.iter().map(|t| t.to_string()).collect();
            format!("{} on ({})", op.name(), shown.join(", "))
        })?;
        let outputs: Vec<ValueId> = out_types.into_iter().map(|t| self.new_value(t)).collect();
        self.nodes.push(Node { op, inputs: inputs.to_vec(), outputs: outputs.clone() });
        Ok(outputs)
    }

    /// [`Graph::push`] for the ops with exactly one result.
    pub fn push1(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId> {
        let name = op.name();
        let out = self.push(op, inputs)?;
        if out.len() != 1 {
            bail!("{name} returns {} values, not one", out.len());
        }
        Ok(out[0])
    }

    // Short builders for the frontends. Each is one `push1`.

    pub fn unary(&mut self, u: UnaryOp, x: ValueId) -> Result<ValueId> {
        self.push1(Op::Unary(u), &[x])
    }
    pub fn binary(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId> {
        self.push1(Op::Binary(b), &[x, y])
    }
    pub fn add(&mut self, x: ValueId, y: ValueId) -> Result<ValueId> {
        self.binary(BinaryOp::Add, x, y)
    }
    pub fn sub(&mut self, x: ValueId, y: ValueId) -> Result<ValueId> {
        self.binary(BinaryOp::Sub, x, y)
    }
    pub fn mul(&mut self, x: ValueId, y: ValueId) -> Result<ValueId> {
        self.binary(BinaryOp::Mul, x, y)
    }
    pub fn div(&mut self, x: ValueId, y: ValueId) -> Result<ValueId> {
        self.binary(BinaryOp::Div, x, y)
    }
    pub fn scalar(&mut self, value: f64) -> Result<ValueId> {
        self.push1(Op::Const { value, dtype: DType::F32 }, &[])
    }
    pub fn iota(&mut self, len: Dim, dtype: DType) -> Result<ValueId> {
        self.push1(Op::Iota { len, dtype }, &[])
    }
    pub fn cast(&mut self, x: ValueId, to: DType) -> Result<ValueId> {
        self.push1(Op::Cast { to }, &[x])
    }
    /// Reduces over `axis` (negative counts from the end).
    pub fn reduce(&mut self, kind: ReduceKind, x: ValueId, axis: i64, keepdim: bool) -> Result<ValueId> {
        let axis = self.axis(x, axis)?;
        self.push1(Op::Reduce { kind, axis, keepdim }, &[x])
    }
    pub fn matmul(&mut self, x: ValueId, y: ValueId) -> Result<ValueId> {
        self.push1(Op::MatMul, &[x, y])
    }
    pub fn reshape(&mut self, x: ValueId, shape: Vec<Dim>) -> Result<ValueId> {
        self.push1(Op::Reshape { shape }, &[x])
    }
    pub fn transpose(&mut self, x: ValueId, perm: &[usize]) -> Result<ValueId> {
        self.push1(Op::Transpose { perm: perm.to_vec() }, &[x])
    }
    /// Swaps the last two axes.
    pub fn transpose_last2(&mut self, x: ValueId) -> Result<ValueId> {
        let r = self.ty(x).rank();
        if r < 2 {
            bail!("transpose of the last two axes needs rank 2 or more, got {}", self.ty(x));
        }
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 2, r - 1);
        self.transpose(x, &perm)
    }
    pub fn broadcast(&mut self, x: ValueId, shape: Vec<Dim>) -> Result<ValueId> {
        self.push1(Op::Broadcast { shape }, &[x])
    }
    pub fn slice(&mut self, x: ValueId, axis: i64, start: i64, end: Option<i64>) -> Result<ValueId> {
        let axis = self.axis(x, axis)?;
        self.push1(Op::Slice { axis, start, end }, &[x])
    }
    pub fn concat(&mut self, xs: &[ValueId], axis: i64) -> Result<ValueId> {
        let Some(&first) = xs.first() else { bail!("concat of nothing") };
        let axis = self.axis(first, axis)?;
        self.push1(Op::Concat { axis }, xs)
    }
    pub fn pad(&mut self, x: ValueId, axis: i64, before: usize, after: usize) -> Result<ValueId> {
        let axis = self.axis(x, axis)?;
        self.push1(Op::Pad { axis, before, after }, &[x])
    }
    pub fn gather(&mut self, table: ValueId, index: ValueId, axis: usize) -> Result<ValueId> {
        self.push1(Op::Gather { axis }, &[table, index])
    }
    pub fn scatter_add(&mut self, updates: ValueId, index: ValueId, depth: usize) -> Result<ValueId> {
        self.push1(Op::ScatterAdd { depth }, &[updates, index])
    }
    pub fn one_hot(&mut self, x: ValueId, depth: usize) -> Result<ValueId> {
        self.push1(Op::OneHot { depth }, &[x])
    }
    pub fn tri_mask(&mut self, x: ValueId, fill: f64) -> Result<ValueId> {
        self.push1(Op::TriMask { fill, window: None }, &[x])
    }
    /// [`Graph::tri_mask`] that also fills where row − column ≥ `window`.
    pub fn tri_mask_window(&mut self, x: ValueId, fill: f64, window: Option<usize>) -> Result<ValueId> {
        self.push1(Op::TriMask { fill, window }, &[x])
    }
    pub fn stop_gradient(&mut self, x: ValueId) -> Result<ValueId> {
        self.push1(Op::StopGradient, &[x])
    }
    pub fn scan(&mut self, scan: Scan, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        self.push(Op::Scan(Box::new(scan)), inputs)
    }
    /// A fused region: `body` called on `inputs` (one per body argument).
    pub fn fused(&mut self, body: Graph, inputs: &[ValueId]) -> Result<Vec<ValueId>> {
        self.push(Op::Fused(Box::new(Fused { body })), inputs)
    }

    /// The same graph with its values numbered in definition order (arguments, then each node's
    /// results), scan bodies included: the form the text parser produces. A builder that declares
    /// parameters as it goes calls this when it is done.
    pub fn canonical(&self) -> Graph {
        let mut map = vec![ValueId(u32::MAX); self.types.len()];
        let mut types = Vec::with_capacity(self.types.len());
        let mut number = |v: ValueId, map: &mut Vec<ValueId>| {
            map[v.index()] = ValueId(types.len() as u32);
            types.push(self.types[v.index()].clone());
        };
        for a in &self.args {
            number(a.value, &mut map);
        }
        for n in &self.nodes {
            for &v in &n.outputs {
                number(v, &mut map);
            }
        }
        let at = |v: &ValueId| map[v.index()];
        Graph {
            name: self.name.clone(),
            types,
            args: self.args.iter().map(|a| Arg { value: at(&a.value), ..a.clone() }).collect(),
            nodes: self
                .nodes
                .iter()
                .map(|n| Node {
                    op: {
                        let mut op = n.op.clone();
                        if let Some(body) = op.body_mut() {
                            *body = body.canonical();
                        }
                        op
                    },
                    inputs: n.inputs.iter().map(at).collect(),
                    outputs: n.outputs.iter().map(at).collect(),
                })
                .collect(),
            outputs: self.outputs.iter().map(|(name, v)| (name.clone(), at(v))).collect(),
        }
    }

    /// Normalises a possibly negative axis of `x`.
    pub fn axis(&self, x: ValueId, axis: i64) -> Result<usize> {
        let r = self.ty(x).rank() as i64;
        let a = if axis < 0 { axis + r } else { axis };
        if a < 0 || a >= r {
            bail!("axis {axis} out of range for {}", self.ty(x));
        }
        Ok(a as usize)
    }

    /// Dimension `axis` (negative counts from the end) of `x`.
    pub fn dim(&self, x: ValueId, axis: i64) -> Result<Dim> {
        let a = self.axis(x, axis)?;
        Ok(self.ty(x).shape[a].clone())
    }
}
