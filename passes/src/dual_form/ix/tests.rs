//! Each rule on its own: applied alone to a small term it rewrites, it puts the expected term in
//! the original's class, and every equality it adds holds numerically on random tensors.

use std::collections::BTreeSet;
use std::time::Duration;

use egg::{AstSize, Extractor, Id, Language, RecExpr};

use super::{add_mul, index_number, leaf_number, rules, saturate, FreeIndices, Ix, IxGraph, Leaves, Rule};

/// Index sizes: `iN` runs over `0..SIZES[N]`. Unequal, so that a rule confusing indices fails.
const SIZES: [usize; 4] = [2, 3, 4, 2];

/// A small index-notation problem: leaf `LN` is a random tensor over its free indices (ascending).
struct Case {
    eg: IxGraph,
    free: Vec<Vec<u32>>,
    values: Vec<Vec<f64>>,
}

impl Case {
    fn new(leaves: &[&[u32]]) -> Case {
        let free: Vec<Vec<u32>> = leaves.iter().map(|l| l.iter().copied().collect::<BTreeSet<u32>>().into_iter().collect()).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        let values = free.iter().map(|f| (0..f.iter().map(|&i| SIZES[i as usize]).product()).map(|_| random()).collect()).collect();
        let leaves = Leaves { free: free.iter().map(|f| f.iter().copied().collect()).collect() };
        Case { eg: IxGraph::new(FreeIndices { leaves }), free, values }
    }

    /// Adds a term with products sorted as the lowering adds them (egg's `add_expr` would not).
    fn add(&mut self, term: &str) -> Id {
        let expr: RecExpr<Ix> = term.parse().unwrap();
        let mut ids: Vec<Id> = Vec::new();
        for node in expr.as_ref() {
            let id = match node {
                Ix::Mul(fs) => add_mul(&mut self.eg, fs.iter().map(|f| ids[usize::from(*f)]).collect()),
                _ => self.eg.add(node.clone().map_children(|c| ids[usize::from(c)])),
            };
            ids.push(id);
        }
        *ids.last().unwrap()
    }

    fn apply(&mut self, rule: &Rule) {
        let sat = saturate(&mut self.eg, std::slice::from_ref(rule), 10_000, 10, Duration::from_secs(5));
        assert!(sat.saturated, "{rule:?} did not saturate: {sat:?}");
    }

    fn eval(&self, expr: &RecExpr<Ix>, id: Id, env: &mut [usize]) -> f64 {
        match &expr[id] {
            Ix::Sym(s) => {
                let k = leaf_number(s).unwrap_or_else(|| panic!("{s} is not a value"));
                let at = self.free[k].iter().fold(0, |at, &i| at * SIZES[i as usize] + env[i as usize]);
                self.values[k][at]
            }
            Ix::Add([a, b]) => self.eval(expr, *a, env) + self.eval(expr, *b, env),
            Ix::Neg(a) => -self.eval(expr, *a, env),
            Ix::Mul(fs) => fs.iter().map(|f| self.eval(expr, *f, env)).product(),
            Ix::Sum([i, body]) => {
                let Ix::Sym(s) = &expr[*i] else { panic!("Σ over a non-index") };
                let i = index_number(s).unwrap() as usize;
                let outer = env[i];
                let total = (0..SIZES[i])
                    .map(|v| {
                        env[i] = v;
                        self.eval(expr, *body, env)
                    })
                    .sum();
                env[i] = outer;
                total
            }
        }
    }

    /// The term's value at every assignment of every index (bound ones are rebound by their Σ).
    fn table(&self, expr: &RecExpr<Ix>) -> Vec<f64> {
        let count: usize = SIZES.iter().product();
        let root = Id::from(expr.as_ref().len() - 1);
        (0..count)
            .map(|mut n| {
                let mut env = [0; SIZES.len()];
                for (i, size) in SIZES.iter().enumerate() {
                    env[i] = n % size;
                    n /= size;
                }
                self.eval(expr, root, &mut env)
            })
            .collect()
    }

    fn assert_equal(&self, a: &RecExpr<Ix>, b: &RecExpr<Ix>) {
        let (ta, tb) = (self.table(a), self.table(b));
        let err = ta.iter().zip(&tb).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-12, "{a} and {b} differ by {err:e}");
    }

    /// Every node of every value class, its children read as their smallest terms, equals its
    /// class's smallest term: all the equalities the e-graph holds are sound.
    fn assert_sound(&self) {
        let smallest = Extractor::new(&self.eg, AstSize);
        for class in self.eg.classes().filter(|c| c.data.index.is_none()) {
            let (_, best) = smallest.find_best(class.id);
            for node in &class.nodes {
                self.assert_equal(&best, &node.build_recexpr(|c| smallest.find_best_node(c).clone()));
            }
        }
    }

    /// Applies `name` alone to `from`: `to` lands in `from`'s class, both have the same values,
    /// and so does everything else the rule made equal.
    fn rewrites(&mut self, name: &str, from: &str, to: &str) {
        let original = self.add(from);
        self.apply(rule(name));
        let rewritten = self.add(to);
        assert_eq!(self.eg.find(original), self.eg.find(rewritten), "{name} should make {from} = {to}");
        self.assert_equal(&from.parse().unwrap(), &to.parse().unwrap());
        self.assert_sound();
    }
}

fn rule(name: &str) -> &'static Rule {
    rules().iter().find(|r| r.name == name).unwrap_or_else(|| panic!("no rule {name}"))
}

#[test]
fn rule_names_are_unique() {
    let names: BTreeSet<&str> = rules().iter().map(|r| r.name).collect();
    assert_eq!(names.len(), rules().len(), "{:?}", rules());
}

#[test]
fn flatten_mul() {
    Case::new(&[&[0], &[0, 1], &[1]]).rewrites("flatten-mul", "(* L0 (* L1 L2))", "(* L0 L1 L2)");
}

#[test]
fn distribute_mul_over_add() {
    let mut case = Case::new(&[&[0], &[1], &[0, 1], &[1]]);
    case.rewrites("distribute-mul-over-add", "(* L0 L1 (+ L2 L3))", "(+ (* L0 L1 L2) (* L0 L1 L3))");
}

#[test]
fn neg_out_of_mul() {
    Case::new(&[&[0], &[0, 1]]).rewrites("neg-out-of-mul", "(* L0 (neg L1))", "(neg (* L0 L1))");
}

#[test]
fn factors_into_sum() {
    let mut case = Case::new(&[&[0], &[1], &[0, 2], &[2]]);
    case.rewrites("factors-into-sum", "(* L0 L1 (sum i2 L2))", "(sum i2 (* L0 L1 L2))");
    // L3 reads i2 free: moving it under Σ_i2 would capture it.
    let (free, captured) = (case.add("(* L3 (sum i2 L2))"), case.add("(sum i2 (* L3 L2))"));
    case.apply(rule("factors-into-sum"));
    assert_ne!(case.eg.find(free), case.eg.find(captured));
    case.assert_sound();
}

#[test]
fn sum_past_constant_factors() {
    let mut case = Case::new(&[&[0], &[0, 2], &[1, 2]]);
    case.rewrites("sum-past-constant-factors", "(sum i2 (* L0 L1 L2))", "(* L0 (sum i2 (* L1 L2)))");
}

#[test]
fn sum_of_add() {
    Case::new(&[&[0, 1], &[1]]).rewrites("sum-of-add", "(sum i1 (+ L0 L1))", "(+ (sum i1 L0) (sum i1 L1))");
}

#[test]
fn sum_of_neg() {
    Case::new(&[&[0, 1]]).rewrites("sum-of-neg", "(sum i1 (neg L0))", "(neg (sum i1 L0))");
}

#[test]
fn sum_interchange() {
    Case::new(&[&[0, 1, 2], &[1]]).rewrites("sum-interchange", "(sum i1 (sum i2 (* L0 L1)))", "(sum i2 (sum i1 (* L0 L1)))");
}

#[test]
fn double_neg() {
    Case::new(&[&[0, 1]]).rewrites("double-neg", "(neg (neg L0))", "L0");
}

/// The rule list, in order: a rule added to it needs a test above.
#[test]
fn rules_in_order() {
    let tested = [
        "flatten-mul",
        "distribute-mul-over-add",
        "neg-out-of-mul",
        "factors-into-sum",
        "sum-past-constant-factors",
        "sum-of-add",
        "sum-of-neg",
        "sum-interchange",
        "double-neg",
    ];
    let names: Vec<&str> = rules().iter().map(|r| r.name).collect();
    assert_eq!(names, tested);
}
