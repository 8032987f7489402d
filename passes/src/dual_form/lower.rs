//! Lowering a graph's linear algebra into index notation.
//!
//! A value is lowered together with the index each of its axes is read at: one or more atoms (an
//! axis merged from several by a reshape holds several), nothing (a size-1 axis), or its last
//! position (after a `[-1:]` slice). Matmuls become Σ over a fresh index, elementwise ops sums and
//! products, reshapes / transposes / broadcasts re-index, `tri_mask` with fill 0 an indicator
//! factor. Everything else is a leaf: a tensor read at the given indices.

use std::collections::{BTreeSet, HashMap};

use egg::Id;
use tttc_ir::{BinaryOp, Dim, Graph, Op, UnaryOp, ValueId};

use super::ix::{add_mul, index_symbol, leaf_symbol, FreeIndices, Ix, IxGraph, Leaves};

/// How one axis of a value is read.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// At these atoms (row-major when several: an axis that a reshape merged).
    Atoms(Vec<u32>),
    /// A size-1 axis: at 0.
    Unit,
    /// At its last position.
    Last,
}

#[derive(Clone, Debug)]
pub enum Leaf {
    /// A graph value read with one `Axis` per dimension.
    Value(ValueId, Vec<Axis>),
    /// `[col ≤ row]`.
    Lower { row: u32, col: u32 },
}

pub struct Lowering<'g> {
    g: &'g Graph,
    producer: Vec<Option<usize>>,
    pub eg: IxGraph,
    /// The size of every atom.
    pub atoms: Vec<Dim>,
    pub leaves: Vec<Leaf>,
    memo: HashMap<(ValueId, Vec<Axis>), Id>,
    /// Values lowered as leaves of every term but their own: the region boundaries.
    boundary: std::collections::HashSet<ValueId>,
    /// Values worth expanding: those with a contraction in their region. Elementwise
    /// combinations of leaves stay leaves, computed once.
    contracting: Vec<bool>,
    /// Values that hold the same data as a value the body returns as its next state (which it
    /// computes anyway): each lowering of one is also that state value, read as a leaf.
    aliases: HashMap<ValueId, ValueId>,
    /// The symbols of those alias leaves.
    pub alias_leaves: std::collections::HashSet<egg::Symbol>,
    /// Set when the terms grew past [`TERM_LIMIT`]: the rest were cut off as leaves, and the
    /// lowering is no faithful account of the body.
    pub exceeded: bool,
}

/// The most classes the terms of one body may take. A value that a chain of products reads
/// several times is lowered once per set of indices it is read at: a polynomial chain (Muon's
/// Newton–Schulz steps, each reading its input four times) grows its terms geometrically.
const TERM_LIMIT: usize = 20_000;

impl<'g> Lowering<'g> {
    /// A lowering of `g` whose terms stop at the `boundary` values and at values without a
    /// contraction in their region.
    pub fn new(g: &'g Graph, boundary: &[ValueId], contracting: Vec<bool>, aliases: HashMap<ValueId, ValueId>) -> Lowering<'g> {
        let mut producer = vec![None; g.types.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for o in &n.outputs {
                producer[o.index()] = Some(i);
            }
        }
        Lowering {
            g,
            producer,
            eg: IxGraph::new(FreeIndices { leaves: Leaves::default() }),
            atoms: Vec::new(),
            leaves: Vec::new(),
            memo: HashMap::new(),
            boundary: boundary.iter().copied().collect(),
            contracting,
            aliases,
            alias_leaves: Default::default(),
            exceeded: false,
        }
    }

    fn atom(&mut self, size: Dim) -> u32 {
        self.atoms.push(size);
        self.atoms.len() as u32 - 1
    }

    /// Lowers `v` as a root: a fresh atom for every axis longer than 1. Returns the class and the
    /// axes, or `None` when `v` has nothing to lower.
    pub fn root(&mut self, v: ValueId) -> Option<(Id, Vec<Axis>)> {
        let axes: Vec<Axis> = self.g.ty(v).shape.clone().into_iter().map(|d| if d.is_one() { Axis::Unit } else { Axis::Atoms(vec![self.atom(d)]) }).collect();
        let id = self.lower_op(v, &axes)?;
        Some((id, axes))
    }

    fn leaf(&mut self, leaf: Leaf) -> Id {
        let free: BTreeSet<u32> = match &leaf {
            Leaf::Value(_, axes) => axes.iter().flat_map(|a| if let Axis::Atoms(x) = a { x.clone() } else { vec![] }).collect(),
            Leaf::Lower { row, col } => [*row, *col].into_iter().collect(),
        };
        self.leaves.push(leaf);
        self.eg.analysis.leaves.free.push(free);
        self.eg.add(Ix::Sym(leaf_symbol(self.leaves.len() - 1)))
    }

    fn lower(&mut self, v: ValueId, axes: Vec<Axis>) -> Id {
        if let Some(&id) = self.memo.get(&(v, axes.clone())) {
            return id;
        }
        // Data movement is always looked through: reading a broadcast's source drops an index.
        let moves = self.producer[v.index()]
            .is_some_and(|n| matches!(self.g.nodes[n].op, Op::Broadcast { .. } | Op::Reshape { .. } | Op::Transpose { .. } | Op::Slice { .. }));
        if self.eg.number_of_classes() > TERM_LIMIT {
            self.exceeded = true;
        }
        let expand = (self.contracting[v.index()] || moves) && !self.boundary.contains(&v) && !self.exceeded;
        let op = if expand { self.lower_op(v, &axes) } else { None };
        let mut id = op.unwrap_or_else(|| self.leaf(Leaf::Value(v, axes.clone())));
        if let Some(&state) = self.aliases.get(&v) {
            // Same elements in the same order, size-1 axes aside: read the state's axes at the
            // same indices.
            let mut indices = axes.iter().zip(&self.g.ty(v).shape).filter(|(_, d)| !d.is_one()).map(|(a, _)| a.clone());
            let state_axes: Vec<Axis> =
                self.g.ty(state).shape.iter().map(|d| if d.is_one() { Axis::Unit } else { indices.next().unwrap_or(Axis::Unit) }).collect();
            if !state_axes.contains(&Axis::Last) {
                let leaf = self.leaf(Leaf::Value(state, state_axes));
                if let Ix::Sym(s) = &self.eg[leaf].nodes[0] {
                    self.alias_leaves.insert(*s);
                }
                self.eg.union(id, leaf);
                id = self.eg.find(id);
            }
        }
        self.memo.insert((v, axes), id);
        id
    }

    /// The op-specific lowering, or `None` to keep `v` as a leaf.
    fn lower_op(&mut self, v: ValueId, axes: &[Axis]) -> Option<Id> {
        let node = &self.g.nodes[self.producer[v.index()]?];
        let ins = node.inputs.clone();
        let g = self.g;
        match &node.op {
            Op::Unary(UnaryOp::Neg) => {
                let x = self.lower(ins[0], axes.to_vec());
                Some(self.eg.add(Ix::Neg(x)))
            }
            Op::Binary(b @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul)) => {
                let x = self.lower(ins[0], broadcast_axes(&g.ty(ins[0]).shape, &g.ty(v).shape, axes));
                let y = self.lower(ins[1], broadcast_axes(&g.ty(ins[1]).shape, &g.ty(v).shape, axes));
                Some(match b {
                    BinaryOp::Add => self.eg.add(Ix::Add([x, y])),
                    BinaryOp::Sub => {
                        let ny = self.eg.add(Ix::Neg(y));
                        self.eg.add(Ix::Add([x, ny]))
                    }
                    _ => add_mul(&mut self.eg, vec![x, y]),
                })
            }
            Op::Broadcast { .. } => {
                let x = broadcast_axes(&g.ty(ins[0]).shape, &g.ty(v).shape, axes);
                Some(self.lower(ins[0], x))
            }
            Op::Transpose { perm } => {
                let mut x = vec![Axis::Unit; perm.len()];
                for (k, &p) in perm.iter().enumerate() {
                    x[p] = axes[k].clone();
                }
                Some(self.lower(ins[0], x))
            }
            Op::Reshape { .. } => {
                let x = reshape_axes(&self.atoms, axes, &g.ty(v).shape, &g.ty(ins[0]).shape)?;
                Some(self.lower(ins[0], x))
            }
            Op::Slice { axis, start: -1, end: None } if axes[*axis] == Axis::Unit => {
                let mut x = axes.to_vec();
                // The last of one element is the only one.
                x[*axis] = if g.ty(ins[0]).shape[*axis].is_one() { Axis::Unit } else { Axis::Last };
                Some(self.lower(ins[0], x))
            }
            Op::TriMask { fill, window: None } if *fill == 0.0 => {
                let r = axes.len();
                let inner = self.lower(ins[0], axes.to_vec());
                match (&axes[r - 2], &axes[r - 1]) {
                    (Axis::Last, _) => Some(inner),
                    (Axis::Atoms(i), Axis::Atoms(j)) if i.len() == 1 && j.len() == 1 => {
                        let mask = self.leaf(Leaf::Lower { row: i[0], col: j[0] });
                        Some(add_mul(&mut self.eg, vec![inner, mask]))
                    }
                    _ => None,
                }
            }
            Op::MatMul => {
                let (ta, tb, to) = (g.ty(ins[0]), g.ty(ins[1]), g.ty(v));
                let (ra, rb, r) = (ta.rank(), tb.rank(), to.rank());
                let k_dim = ta.shape[ra - 1].clone();
                let k = if k_dim.is_one() { Axis::Unit } else { Axis::Atoms(vec![self.atom(k_dim)]) };
                let batch = &axes[..r - 2];
                let mut a = broadcast_axes(&ta.shape[..ra - 2], &to.shape[..r - 2], batch);
                a.extend([axes[r - 2].clone(), k.clone()]);
                let mut b = broadcast_axes(&tb.shape[..rb - 2], &to.shape[..r - 2], batch);
                b.extend([k.clone(), axes[r - 1].clone()]);
                let (x, y) = (self.lower(ins[0], a), self.lower(ins[1], b));
                let prod = add_mul(&mut self.eg, vec![x, y]);
                Some(match k {
                    Axis::Atoms(atom) => {
                        let i = self.eg.add(Ix::Sym(index_symbol(atom[0])));
                        self.eg.add(Ix::Sum([i, prod]))
                    }
                    _ => prod,
                })
            }
            _ => None,
        }
    }
}

/// The axes an operand of shape `from` is read at when the broadcast result (shape `to`) is read
/// at `axes`: leading axes dropped, size-1 axes that were stretched read at 0.
fn broadcast_axes(from: &[Dim], to: &[Dim], axes: &[Axis]) -> Vec<Axis> {
    let lead = to.len() - from.len();
    from.iter().zip(&to[lead..]).zip(&axes[lead..]).map(|((f, t), a)| if f.is_one() && !t.is_one() { Axis::Unit } else { a.clone() }).collect()
}

/// The axes of a reshape's operand (shape `from`) when its result is read at `axes`: the result's
/// atoms, in row-major order, regrouped to the operand's dimensions. `None` when the reshape cuts
/// through an atom or moves a last-position read.
fn reshape_axes(atoms: &[Dim], axes: &[Axis], to: &[Dim], from: &[Dim]) -> Option<Vec<Axis>> {
    enum Piece {
        Atom(u32),
        Last(Dim),
    }
    let mut queue: std::collections::VecDeque<Piece> = axes
        .iter()
        .zip(to)
        .flat_map(|(a, d)| match a {
            Axis::Atoms(x) => x.iter().map(|&i| Piece::Atom(i)).collect(),
            Axis::Unit => vec![],
            Axis::Last => vec![Piece::Last(d.clone())],
        })
        .collect();
    let mut out = Vec::with_capacity(from.len());
    for d in from {
        if d.is_one() {
            out.push(Axis::Unit);
            continue;
        }
        match queue.pop_front()? {
            Piece::Last(len) if len == *d => out.push(Axis::Last),
            Piece::Last(_) => return None,
            Piece::Atom(i) => {
                let mut group = vec![i];
                if atoms[i as usize] != *d {
                    // A product of constant atoms.
                    let target = d.as_const()?;
                    let mut size = atoms[i as usize].as_const()?;
                    while size < target {
                        let Some(Piece::Atom(j)) = queue.pop_front() else { return None };
                        size *= atoms[j as usize].as_const()?;
                        group.push(j);
                    }
                    if size != target {
                        return None;
                    }
                }
                out.push(Axis::Atoms(group));
            }
        }
    }
    queue.is_empty().then_some(out)
}
