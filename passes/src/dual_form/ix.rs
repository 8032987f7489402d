//! Index notation in an e-graph: sums of n-ary products of tensor accesses, with Σ binders over
//! named indices. The rules are general algebraic identities (distributivity, moving Σ past
//! factors that do not mention its index, Σ over sums and negations, Σ interchange) — nothing
//! about any particular layer. Products are n-ary with sorted children, so associativity and
//! commutativity of products need no rules (they are what blows e-graphs up).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use egg::{define_language, Analysis, DidMerge, EGraph, Id, Language, RecExpr, Symbol};

// `(sum i body)` is the sum of `body` over index `i`; a symbol `iN` is an index, `LN` leaf N of
// the lowering's table (a tensor read at some indices, or an indicator).
define_language! {
    pub enum Ix {
        "+" = Add([Id; 2]),
        "neg" = Neg(Id),
        "*" = Mul(Box<[Id]>),
        "sum" = Sum([Id; 2]),
        Sym(Symbol),
    }
}

/// What every leaf symbol stands for: the free indices of each leaf, by leaf number.
#[derive(Default)]
pub struct Leaves {
    pub free: Vec<BTreeSet<u32>>,
}

/// Free indices of an e-class (equal across the class: no rule drops or adds an index) and, for
/// an index symbol, which index it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub free: BTreeSet<u32>,
    pub index: Option<u32>,
}

pub struct FreeIndices {
    pub leaves: Leaves,
}

pub fn index_symbol(i: u32) -> Symbol {
    Symbol::from(format!("i{i}"))
}

pub fn leaf_symbol(k: usize) -> Symbol {
    Symbol::from(format!("L{k}"))
}

/// The leaf number of `LN`.
pub fn leaf_number(s: &Symbol) -> Option<usize> {
    s.as_str().strip_prefix('L').and_then(|n| n.parse().ok())
}

fn index_number(s: &Symbol) -> Option<u32> {
    s.as_str().strip_prefix('i').and_then(|n| n.parse().ok())
}

impl Analysis<Ix> for FreeIndices {
    type Data = Data;

    fn make(egraph: &mut EGraph<Ix, Self>, enode: &Ix, _id: Id) -> Data {
        let free_of = |id: &Id| egraph[*id].data.free.clone();
        match enode {
            Ix::Sym(s) => match (index_number(s), leaf_number(s)) {
                (Some(i), _) => Data { free: BTreeSet::new(), index: Some(i) },
                (_, Some(k)) => Data { free: egraph.analysis.leaves.free[k].clone(), index: None },
                _ => Data { free: BTreeSet::new(), index: None },
            },
            Ix::Add([a, b]) => Data { free: free_of(a).union(&free_of(b)).copied().collect(), index: None },
            Ix::Neg(a) => Data { free: free_of(a), index: None },
            Ix::Mul(cs) => Data { free: cs.iter().flat_map(|c| egraph[*c].data.free.iter().copied()).collect(), index: None },
            Ix::Sum([i, body]) => {
                let mut free = free_of(body);
                if let Some(k) = egraph[*i].data.index {
                    free.remove(&k);
                }
                Data { free, index: None }
            }
        }
    }

    fn merge(&mut self, a: &mut Data, b: Data) -> DidMerge {
        // Sound rules keep free indices equal within a class; a union is the safe choice anyway.
        let before = a.free.len();
        a.free.extend(b.free);
        if a.index.is_none() {
            a.index = b.index;
        }
        DidMerge(a.free.len() != before, false)
    }
}

pub type IxGraph = EGraph<Ix, FreeIndices>;

/// A term to add: existing classes combined with new nodes.
enum Term {
    Class(Id),
    Mul(Vec<Term>),
    Add(Box<Term>, Box<Term>),
    Neg(Box<Term>),
    Sum(Id, Box<Term>),
}

/// Adds a product, flattening nothing but sorting factors; a product of one factor is the factor.
pub fn add_mul(eg: &mut IxGraph, mut factors: Vec<Id>) -> Id {
    if factors.len() == 1 {
        return factors[0];
    }
    for f in factors.iter_mut() {
        *f = eg.find(*f);
    }
    factors.sort();
    eg.add(Ix::Mul(factors.into_boxed_slice()))
}

fn add_term(eg: &mut IxGraph, t: Term) -> Id {
    match t {
        Term::Class(id) => id,
        Term::Mul(fs) => {
            let ids: Vec<Id> = fs.into_iter().map(|f| add_term(eg, f)).collect();
            add_mul(eg, ids)
        }
        Term::Add(a, b) => {
            let (a, b) = (add_term(eg, *a), add_term(eg, *b));
            eg.add(Ix::Add([a, b]))
        }
        Term::Neg(a) => {
            let a = add_term(eg, *a);
            eg.add(Ix::Neg(a))
        }
        Term::Sum(i, body) => {
            let body = add_term(eg, *body);
            eg.add(Ix::Sum([i, body]))
        }
    }
}

fn without(factors: &[Id], at: usize) -> Vec<Term> {
    factors.iter().enumerate().filter(|(k, _)| *k != at).map(|(_, &f)| Term::Class(f)).collect()
}

/// One round of every rule over the whole e-graph: the equalities found, as (class, term) pairs.
fn matches(eg: &IxGraph) -> Vec<(Id, Term)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            match node {
                Ix::Mul(fs) => {
                    for (at, &f) in fs.iter().enumerate() {
                        for inner in &eg[f].nodes {
                            match inner {
                                // flatten: Π(F ∪ {Π(H)}) = Π(F ∪ H)
                                Ix::Mul(hs) => {
                                    let mut t = without(fs, at);
                                    t.extend(hs.iter().map(|&h| Term::Class(h)));
                                    out.push((class.id, Term::Mul(t)));
                                }
                                // distribute: Π(F ∪ {x + y}) = Π(F ∪ {x}) + Π(F ∪ {y})
                                Ix::Add([x, y]) => {
                                    let mut l = without(fs, at);
                                    l.push(Term::Class(*x));
                                    let mut r = without(fs, at);
                                    r.push(Term::Class(*y));
                                    out.push((class.id, Term::Add(Box::new(Term::Mul(l)), Box::new(Term::Mul(r)))));
                                }
                                // neg out: Π(F ∪ {−x}) = −Π(F ∪ {x})
                                Ix::Neg(x) => {
                                    let mut t = without(fs, at);
                                    t.push(Term::Class(*x));
                                    out.push((class.id, Term::Neg(Box::new(Term::Mul(t)))));
                                }
                                // push in: Π(F ∪ {Σ_k x}) = Σ_k Π(F ∪ {x}) when k is free in no factor of F
                                Ix::Sum([k, x]) => {
                                    let Some(ki) = eg[*k].data.index else { continue };
                                    let clash = fs.iter().enumerate().any(|(j, &g)| j != at && eg[g].data.free.contains(&ki));
                                    if !clash {
                                        let mut t = without(fs, at);
                                        t.push(Term::Class(*x));
                                        out.push((class.id, Term::Sum(*k, Box::new(Term::Mul(t)))));
                                    }
                                }
                                Ix::Sym(_) => {}
                            }
                        }
                    }
                }
                Ix::Sum([k, body]) => {
                    let Some(ki) = eg[*k].data.index else { continue };
                    for inner in &eg[*body].nodes {
                        match inner {
                            // partition: Σ_k Π(F) = Π(F∖F_k ∪ {Σ_k Π(F_k)}), F_k the factors mentioning k
                            Ix::Mul(fs) => {
                                let (with, rest): (Vec<Id>, Vec<Id>) = fs.iter().partition(|&&f| eg[f].data.free.contains(&ki));
                                if !with.is_empty() && !rest.is_empty() {
                                    let mut t: Vec<Term> = rest.into_iter().map(Term::Class).collect();
                                    let inner = Term::Mul(with.into_iter().map(Term::Class).collect());
                                    t.push(Term::Sum(*k, Box::new(inner)));
                                    out.push((class.id, Term::Mul(t)));
                                }
                            }
                            // split: Σ_k (x + y) = Σ_k x + Σ_k y
                            Ix::Add([x, y]) => out.push((
                                class.id,
                                Term::Add(Box::new(Term::Sum(*k, Box::new(Term::Class(*x)))), Box::new(Term::Sum(*k, Box::new(Term::Class(*y))))),
                            )),
                            // Σ_k (−x) = −Σ_k x
                            Ix::Neg(x) => out.push((class.id, Term::Neg(Box::new(Term::Sum(*k, Box::new(Term::Class(*x))))))),
                            // swap: Σ_k Σ_l x = Σ_l Σ_k x
                            Ix::Sum([l, x]) => out.push((class.id, Term::Sum(*l, Box::new(Term::Sum(*k, Box::new(Term::Class(*x))))))),
                            Ix::Sym(_) => {}
                        }
                    }
                }
                Ix::Add(_) => {}
                Ix::Neg(a) => {
                    // −(−x) = x
                    for inner in &eg[*a].nodes {
                        if let Ix::Neg(x) = inner {
                            out.push((class.id, Term::Class(*x)));
                        }
                    }
                }
                Ix::Sym(_) => {}
            }
        }
    }
    out
}

/// How a saturation run ended.
#[derive(Debug, Clone)]
pub struct Saturation {
    pub iterations: usize,
    pub nodes: usize,
    pub classes: usize,
    pub seconds: f64,
    pub saturated: bool,
}

/// Applies the rules until nothing changes or a limit is reached.
pub fn saturate(eg: &mut IxGraph, node_limit: usize, iter_limit: usize, time_limit: Duration) -> Saturation {
    let start = Instant::now();
    let mut iterations = 0;
    let mut saturated = false;
    while iterations < iter_limit && eg.total_size() < node_limit && start.elapsed() < time_limit {
        iterations += 1;
        let found = matches(eg);
        let mut changed = false;
        for (class, term) in found {
            let id = add_term(eg, term);
            changed |= eg.union(class, id);
            if eg.total_size() >= node_limit {
                break;
            }
        }
        eg.rebuild();
        if !changed {
            saturated = true;
            break;
        }
    }
    Saturation { iterations, nodes: eg.total_number_of_nodes(), classes: eg.number_of_classes(), seconds: start.elapsed().as_secs_f64(), saturated }
}

/// Extraction cost: every product, sum and Σ costs the number of elements it computes (the
/// product of its free indices' sizes; Σ reads its body's), negation is free (it folds into a
/// subtraction), leaves are already computed. `aliases` are leaves that read a value another
/// root computes: free for the other roots, forbidden to the root that computes them.
pub struct FlopCost<'a> {
    pub eg: &'a IxGraph,
    pub sizes: &'a [f64],
    pub aliases: &'a HashSet<Symbol>,
    pub alias_cost: f64,
}

impl FlopCost<'_> {
    fn volume(&self, free: &BTreeSet<u32>) -> f64 {
        free.iter().map(|&i| self.sizes[i as usize]).product()
    }
}

impl egg::CostFunction<Ix> for FlopCost<'_> {
    type Cost = f64;

    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &Ix, mut costs: C) -> f64 {
        let children: f64 = enode.children().iter().map(|&c| costs(c)).sum();
        let data = |id: &Id| &self.eg[*id].data.free;
        let own = match enode {
            Ix::Sym(s) if self.aliases.contains(s) => self.alias_cost,
            Ix::Sym(_) | Ix::Neg(_) => 0.0,
            Ix::Add([a, b]) => self.volume(&data(a).union(data(b)).copied().collect()),
            Ix::Mul(fs) => {
                let free: BTreeSet<u32> = fs.iter().flat_map(|f| data(f).iter().copied()).collect();
                (fs.len() as f64 - 1.0) * self.volume(&free)
            }
            Ix::Sum([_, body]) => self.volume(data(body)),
        };
        own + children
    }
}

/// An extracted root: its term, its cost, and whether it reads a value another root computes.
pub struct Extracted {
    pub cost: f64,
    pub expr: RecExpr<Ix>,
    pub shares: bool,
}

/// The cheapest term of each root class. Roots in `computing` compute the values the alias
/// leaves read, so they may not use them; every other root reads them for free.
pub fn extract(eg: &IxGraph, sizes: &[f64], roots: &[Id], computing: &[bool], aliases: &HashSet<Symbol>) -> Vec<Extracted> {
    let pick = |alias_cost: f64| egg::Extractor::new(eg, FlopCost { eg, sizes, aliases, alias_cost });
    let (own, others) = (pick(f64::INFINITY), pick(0.0));
    roots
        .iter()
        .zip(computing)
        .map(|(&root, &computes)| {
            let (cost, expr) = if computes { own.find_best(root) } else { others.find_best(root) };
            let shares = expr.as_ref().iter().any(|n| matches!(n, Ix::Sym(s) if aliases.contains(s)));
            Extracted { cost, expr, shares }
        })
        .collect()
}
