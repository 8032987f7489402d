//! Index notation in an e-graph: sums of n-ary products of tensor accesses, with Σ binders over
//! named indices. The rules ([`rules`], named, each tested alone in `ix/tests.rs`) are general
//! algebraic identities (distributivity, moving Σ past factors that do not mention its index, Σ
//! over sums and negations, Σ interchange) — nothing about any particular layer. Products are n-ary with sorted children, so associativity and
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

/// A rewrite rule. Every rule matches two levels: a node, and a node of the class of one of its
/// children (n-ary sorted products and Σ side conditions on free indices are not egg patterns).
/// `find(eg, node, at, inner)`, with `inner` a node of the class of `node`'s child `at`, is a term
/// equal to `node` when the rule applies.
pub struct Rule {
    /// Stable, unique: tests and docs refer to rules by name.
    pub name: &'static str,
    find: fn(&IxGraph, &Ix, usize, &Ix) -> Option<Term>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// A Σ's index and index number, when `at` is its body.
fn sum_over(eg: &IxGraph, node: &Ix, at: usize) -> Option<(Id, u32)> {
    match node {
        Ix::Sum([k, _]) if at == 1 => Some((*k, eg[*k].data.index?)),
        _ => None,
    }
}

/// `Π(F ∪ {Π H}) = Π(F ∪ H)`
const FLATTEN_MUL: Rule = Rule {
    name: "flatten-mul",
    find: |_, node, at, inner| {
        let (Ix::Mul(fs), Ix::Mul(hs)) = (node, inner) else { return None };
        let mut t = without(fs, at);
        t.extend(hs.iter().map(|&h| Term::Class(h)));
        Some(Term::Mul(t))
    },
};

/// `Π(F ∪ {x + y}) = Π(F ∪ {x}) + Π(F ∪ {y})`
const DISTRIBUTE_MUL_OVER_ADD: Rule = Rule {
    name: "distribute-mul-over-add",
    find: |_, node, at, inner| {
        let (Ix::Mul(fs), Ix::Add([x, y])) = (node, inner) else { return None };
        let mut l = without(fs, at);
        l.push(Term::Class(*x));
        let mut r = without(fs, at);
        r.push(Term::Class(*y));
        Some(Term::Add(Box::new(Term::Mul(l)), Box::new(Term::Mul(r))))
    },
};

/// `Π(F ∪ {−x}) = −Π(F ∪ {x})`
const NEG_OUT_OF_MUL: Rule = Rule {
    name: "neg-out-of-mul",
    find: |_, node, at, inner| {
        let (Ix::Mul(fs), Ix::Neg(x)) = (node, inner) else { return None };
        let mut t = without(fs, at);
        t.push(Term::Class(*x));
        Some(Term::Neg(Box::new(Term::Mul(t))))
    },
};

/// `Π(F ∪ {Σ_k x}) = Σ_k Π(F ∪ {x})` when `k ∉ FV(F)`
const FACTORS_INTO_SUM: Rule = Rule {
    name: "factors-into-sum",
    find: |eg, node, at, inner| {
        let (Ix::Mul(fs), Ix::Sum([k, x])) = (node, inner) else { return None };
        let ki = eg[*k].data.index?;
        // Moving a factor that mentions k under Σ_k would capture its free k.
        let clash = fs.iter().enumerate().any(|(j, &g)| j != at && eg[g].data.free.contains(&ki));
        if clash {
            return None;
        }
        let mut t = without(fs, at);
        t.push(Term::Class(*x));
        Some(Term::Sum(*k, Box::new(Term::Mul(t))))
    },
};

/// `Σ_k Π(F) = Π((F ∖ F_k) ∪ {Σ_k Π(F_k)})`, `F_k = {f ∈ F : k ∈ FV(f)}`, when `F_k` and `F ∖ F_k`
/// are both non-empty
const SUM_PAST_CONSTANT_FACTORS: Rule = Rule {
    name: "sum-past-constant-factors",
    find: |eg, node, at, inner| {
        let ((k, ki), Ix::Mul(fs)) = (sum_over(eg, node, at)?, inner) else { return None };
        let (with, rest): (Vec<Id>, Vec<Id>) = fs.iter().partition(|&&f| eg[f].data.free.contains(&ki));
        if with.is_empty() || rest.is_empty() {
            return None;
        }
        let mut t: Vec<Term> = rest.into_iter().map(Term::Class).collect();
        t.push(Term::Sum(k, Box::new(Term::Mul(with.into_iter().map(Term::Class).collect()))));
        Some(Term::Mul(t))
    },
};

/// `Σ_k (x + y) = Σ_k x + Σ_k y`
const SUM_OF_ADD: Rule = Rule {
    name: "sum-of-add",
    find: |eg, node, at, inner| {
        let ((k, _), Ix::Add([x, y])) = (sum_over(eg, node, at)?, inner) else { return None };
        Some(Term::Add(Box::new(Term::Sum(k, Box::new(Term::Class(*x)))), Box::new(Term::Sum(k, Box::new(Term::Class(*y))))))
    },
};

/// `Σ_k (−x) = −Σ_k x`
const SUM_OF_NEG: Rule = Rule {
    name: "sum-of-neg",
    find: |eg, node, at, inner| {
        let ((k, _), Ix::Neg(x)) = (sum_over(eg, node, at)?, inner) else { return None };
        Some(Term::Neg(Box::new(Term::Sum(k, Box::new(Term::Class(*x))))))
    },
};

/// `Σ_k Σ_l x = Σ_l Σ_k x`
const SUM_INTERCHANGE: Rule = Rule {
    name: "sum-interchange",
    find: |eg, node, at, inner| {
        let ((k, _), Ix::Sum([l, x])) = (sum_over(eg, node, at)?, inner) else { return None };
        Some(Term::Sum(*l, Box::new(Term::Sum(k, Box::new(Term::Class(*x))))))
    },
};

/// `−(−x) = x`
const DOUBLE_NEG: Rule = Rule {
    name: "double-neg",
    find: |_, node, _, inner| {
        let (Ix::Neg(_), Ix::Neg(x)) = (node, inner) else { return None };
        Some(Term::Class(*x))
    },
};

/// Every rule of the derivation, in the order each match site tries them: that order fixes the
/// order equalities are added in, hence class ids and extraction's tie-breaks.
pub fn rules() -> &'static [Rule] {
    &[FLATTEN_MUL, DISTRIBUTE_MUL_OVER_ADD, NEG_OUT_OF_MUL, FACTORS_INTO_SUM, SUM_PAST_CONSTANT_FACTORS, SUM_OF_ADD, SUM_OF_NEG, SUM_INTERCHANGE, DOUBLE_NEG]
}

/// One round of `rules` over the whole e-graph: the equalities found, as (class, term) pairs.
fn matches(eg: &IxGraph, rules: &[Rule]) -> Vec<(Id, Term)> {
    let mut out = Vec::new();
    for class in eg.classes() {
        for node in &class.nodes {
            for (at, &child) in node.children().iter().enumerate() {
                for inner in &eg[child].nodes {
                    out.extend(rules.iter().filter_map(|rule| (rule.find)(eg, node, at, inner)).map(|t| (class.id, t)));
                }
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

/// Applies `rules` until nothing changes or a limit is reached.
pub fn saturate(eg: &mut IxGraph, rules: &[Rule], node_limit: usize, iter_limit: usize, time_limit: Duration) -> Saturation {
    let start = Instant::now();
    let mut iterations = 0;
    let mut saturated = false;
    while iterations < iter_limit && eg.total_size() < node_limit && start.elapsed() < time_limit {
        iterations += 1;
        let found = matches(eg, rules);
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

#[cfg(test)]
mod tests;
