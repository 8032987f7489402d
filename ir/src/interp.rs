//! The reference interpreter: plain loops over row-major data, the oracle every backend is checked
//! against. f32 graph values are computed in f32, or in f64 for finite-difference checks.

use std::borrow::Cow;
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};

use anyhow::{bail, ensure, Context, Result};

use crate::graph::{Graph, ValueId};
use crate::infer::concrete_bounds;
use crate::layout::{broadcast_shape, broadcast_strides, contiguous_strides, reduction, split_at_axis};
use crate::op::{BinaryOp, Op, ReduceKind, Scan, UnaryOp};
use crate::tensor::{Data, Tensor};
use crate::types::{DType, DimEnv};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    F32,
    F64,
}

/// Runs `graph` on its arguments, given in the order of `graph.args`.
pub fn run(graph: &Graph, args: &[&Tensor], precision: Precision) -> Result<Vec<Tensor>> {
    let args = args
        .iter()
        .map(|&t| match (precision, &t.data) {
            (Precision::F64, Data::F32(_)) => Cow::Owned(Tensor::f64(t.shape.clone(), t.to_f64().unwrap())),
            (Precision::F32, Data::F64(_)) => Cow::Owned(Tensor::f32(t.shape.clone(), t.to_f32().unwrap())),
            _ => Cow::Borrowed(t),
        })
        .collect();
    exec(graph, args, DimEnv::new(), precision)
}

/// Checks `args` (in the order of `graph.args`) against their types and binds the symbols of
/// their shapes into `env` (which may hold an enclosing scope's bindings).
pub fn bind_args(graph: &Graph, args: &[&Tensor], env: &mut DimEnv) -> Result<()> {
    let shapes: Vec<(DType, &[usize])> = args.iter().map(|t| (t.dtype(), t.shape.as_slice())).collect();
    bind_shapes(graph, &shapes, env)
}

/// [`bind_args`] from the arguments' element types and shapes alone.
pub fn bind_shapes(graph: &Graph, args: &[(DType, &[usize])], env: &mut DimEnv) -> Result<()> {
    ensure!(args.len() == graph.args.len(), "{} takes {} arguments, got {}", graph.name, graph.args.len(), args.len());
    // Arguments with a chunk count (`T/16`) bind last: their symbol comes from the others.
    let mut pairs: Vec<_> = graph.args.iter().zip(args).collect();
    pairs.sort_by_key(|(arg, _)| graph.ty(arg.value).shape.iter().any(|d| d.per != 1));
    for (arg, &(dtype, shape)) in pairs {
        let ty = graph.ty(arg.value);
        ensure!(dtype == ty.dtype, "argument {}: expected {ty}, got {}{shape:?}", arg.name, dtype.name());
        ty.bind(shape, env).with_context(|| format!("argument {}", arg.name))?;
    }
    Ok(())
}

/// For each value of `graph`, the index of the last node that reads it (`usize::MAX` for graph
/// outputs and unread values): an executor frees a value once that node has run.
pub fn last_uses(graph: &Graph) -> Result<Vec<usize>> {
    let mut last_use = vec![usize::MAX; graph.types.len()];
    for (i, node) in graph.nodes.iter().enumerate() {
        for v in &node.inputs {
            last_use[v.index()] = i;
        }
    }
    for (name, v) in &graph.outputs {
        ensure!(v.index() < last_use.len(), "output {name} (%{}) does not exist", v.0);
        last_use[v.index()] = usize::MAX;
    }
    Ok(last_use)
}

fn exec(graph: &Graph, args: Vec<Cow<'_, Tensor>>, mut env: DimEnv, prec: Precision) -> Result<Vec<Tensor>> {
    bind_args(graph, &args.iter().map(|t| &**t).collect::<Vec<_>>(), &mut env)?;
    let mut values: Vec<Option<Cow<'_, Tensor>>> = vec![None; graph.types.len()];
    for (arg, t) in graph.args.iter().zip(args) {
        values[arg.value.index()] = Some(t);
    }
    // Free each value after its last use so that long graphs hold only what is live.
    let last_use = last_uses(graph)?;
    for (i, node) in graph.nodes.iter().enumerate() {
        let what = || match node.outputs.first() {
            Some(v) => format!("{} (defining %{})", node.op.name(), v.0),
            None => node.op.name().to_string(),
        };
        let ins: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|v| values.get(v.index()).and_then(|t| t.as_deref()))
            .collect::<Option<_>>()
            .with_context(|| format!("{}: an operand is not defined (the graph does not verify)", what()))?;
        let outs = eval(&node.op, &ins, &env, prec).with_context(what)?;
        ensure!(outs.len() == node.outputs.len(), "{}: gave {} results for {}", what(), outs.len(), node.outputs.len());
        // The interpreter is the oracle: its results must have the types the graph records.
        for (v, t) in node.outputs.iter().zip(&outs) {
            let ty = graph.ty(*v);
            let shape_ok = ty.resolve(&env).map_or(true, |s| s == t.shape);
            ensure!(t.dtype() == ty.dtype && shape_ok, "{}: computed {t} for %{} typed {ty}", what(), v.0);
        }
        for v in node.inputs.iter() {
            if last_use[v.index()] == i {
                values[v.index()] = None;
            }
        }
        for (v, t) in node.outputs.iter().zip(outs) {
            values[v.index()] = Some(Cow::Owned(t));
        }
    }
    graph
        .outputs
        .iter()
        .map(|(name, v): &(String, ValueId)| values[v.index()].as_ref().map(|t| t.clone().into_owned()).with_context(|| format!("output {name} is undefined")))
        .collect()
}

/// Evaluates `$body` with `$v` bound to the float data of `$t`, whichever its precision, giving a
/// tensor of shape `$shape`. (A closure cannot be generic over the float type; a macro can.)
macro_rules! map_float {
    ($t:expr, $shape:expr, |$v:ident| $body:expr) => {{
        let t: &Tensor = $t;
        let data = match &t.data {
            Data::F32($v) => Data::F32($body),
            Data::F64($v) => Data::F64($body),
            Data::I64(_) => bail!("needs float data, got {t}"),
        };
        Tensor { shape: $shape, data }
    }};
}

fn eval(op: &Op, ins: &[&Tensor], env: &DimEnv, prec: Precision) -> Result<Vec<Tensor>> {
    let one = |t: Tensor| Ok(vec![t]);
    match op {
        Op::Unary(UnaryOp::Neg) if ins[0].dtype() == DType::I64 => {
            let v = ins[0].as_i64().expect("i64 data");
            one(Tensor::i64(ins[0].shape.clone(), v.iter().map(|x| x.wrapping_neg()).collect()))
        }
        Op::Unary(u) => one(map_float!(ins[0], ins[0].shape.clone(), |d| unary(*u, d))),
        Op::Binary(b) => one(binary(*b, ins[0], ins[1])?),
        Op::Const { value, dtype } => one(constant(*value, *dtype, prec, vec![], 1)),
        Op::Iota { len, dtype } => {
            let n = len.resolve(env)?;
            one(match dtype {
                DType::I64 => Tensor::i64(vec![n], (0..n as i64).collect()),
                DType::F32 => float_tensor(prec, vec![n], (0..n).map(|i| i as f64).collect()),
            })
        }
        Op::Cast { to } => one(cast(ins[0], *to, prec)),
        Op::Reduce { kind, axis, keepdim } => one(reduce(ins[0], *kind, *axis, *keepdim)?),
        Op::MatMul => one(matmul(ins[0], ins[1])?),
        Op::Reshape { shape } => {
            let shape: Vec<usize> = shape.iter().map(|d| d.resolve(env)).collect::<Result<_>>()?;
            ensure!(shape.iter().product::<usize>() == ins[0].len(), "cannot reshape {} to {shape:?}", ins[0]);
            one(Tensor { shape, data: ins[0].data.clone() })
        }
        Op::Transpose { perm } => {
            let t = ins[0];
            let strides = contiguous_strides(&t.shape);
            let shape: Vec<usize> = perm.iter().map(|&p| t.shape[p]).collect();
            let st: Vec<usize> = perm.iter().map(|&p| strides[p]).collect();
            one(strided(t, 0, &st, shape))
        }
        Op::Broadcast { shape } => {
            let shape: Vec<usize> = shape.iter().map(|d| d.resolve(env)).collect::<Result<_>>()?;
            let st = broadcast_strides(&ins[0].shape, &shape)?;
            one(strided(ins[0], 0, &st, shape))
        }
        Op::Slice { axis, start, end } => {
            let t = ins[0];
            let (s, e) = concrete_bounds(t.shape[*axis], *start, *end)?;
            one(slice(t, *axis, s, e))
        }
        Op::Concat { axis } => one(concat(ins, *axis)),
        Op::Pad { axis, before, after } => one(pad(ins[0], *axis, *before, *after)),
        Op::Gather { axis } => one(gather(ins[0], ins[1], *axis)?),
        Op::ScatterAdd { depth } => one(scatter_add(ins[0], ins[1], *depth)?),
        Op::OneHot { depth } => {
            let idx = ins[0].as_i64().context("one_hot needs i64")?;
            let mut v = vec![0.0; idx.len() * depth];
            for (i, &k) in idx.iter().enumerate() {
                ensure!(k >= 0 && (k as usize) < *depth, "index {k} out of range for depth {depth}");
                v[i * depth + k as usize] = 1.0;
            }
            let mut shape = ins[0].shape.clone();
            shape.push(*depth);
            one(float_tensor(prec, shape, v))
        }
        Op::Barrier | Op::StopGradient => one(ins[0].clone()),
        Op::TriMask { fill, window } => {
            let t = ins[0];
            let r = t.shape.len();
            let (rows, cols) = (t.shape[r - 2], t.shape[r - 1]);
            one(map_float!(t, t.shape.clone(), |d| tri_mask(d, rows, cols, *fill, *window)))
        }
        Op::Scan(scan) => run_scan(scan, ins, env, prec),
        Op::Grad(_) => bail!("grad is not executable: the inner-autodiff pass expands it first"),
        // A call of the body, in the same symbol bindings.
        Op::Fused(f) => {
            exec(&f.body, ins.iter().map(|&t| Cow::Borrowed(t)).collect(), env.clone(), prec).with_context(|| format!("fused body {}", f.body.name))
        }
    }
}

/// Evaluates one op on f32 (or i64) operands, as the interpreter does: the ops a backend does
/// not compile itself. A `scan` or `fused` op runs its body in the interpreter.
pub fn eval_op(op: &Op, ins: &[&Tensor], env: &DimEnv) -> Result<Vec<Tensor>> {
    eval(op, ins, env, Precision::F32)
}

fn run_scan(scan: &Scan, ins: &[&Tensor], env: &DimEnv, prec: Precision) -> Result<Vec<Tensor>> {
    drive_scan(scan, ins, env, &mut |args, env| exec(&scan.body, args, env.clone(), prec))
}

/// Executes a scan's body graph once: its arguments (the carries, the chunk of each sequence,
/// the invariants) and the bindings in scope.
pub type ScanBody<'f> = dyn FnMut(Vec<Cow<'_, Tensor>>, &DimEnv) -> Result<Vec<Tensor>> + 'f;

/// Runs a scan with `body` executing its body graph once per chunk (with the enclosing bindings,
/// the chunk symbol unbound): cuts the sequences into chunks, threads the carries, stacks the
/// per-chunk outputs.
pub fn drive_scan(scan: &Scan, ins: &[&Tensor], env: &DimEnv, body: &mut ScanBody<'_>) -> Result<Vec<Tensor>> {
    let (nc, ns) = (scan.carries, scan.seqs);
    let iteration: Vec<bool> = (nc..nc + ns).map(|i| scan.is_iteration_seq(i)).collect();
    let first = nc + iteration.iter().position(|&it| !it).context("scan has no chunked sequence")?;
    let total = ins[first].shape[scan.axis];
    ensure!(total > 0, "scan over an empty sequence");
    let n_chunks = total.div_ceil(scan.chunk);
    for (t, &it) in ins[nc..nc + ns].iter().zip(&iteration) {
        if it {
            ensure!(
                t.shape[scan.axis] == n_chunks,
                "iteration sequence {t} needs {n_chunks} entries along axis {} ({total} in chunks of {})",
                scan.axis,
                scan.chunk
            );
        } else {
            ensure!(t.shape[scan.axis] == total, "scan sequences differ in length: {} and {t}", ins[first]);
        }
    }
    // The chunk symbol is the body's own: an enclosing scope may bind the same name.
    let mut env = env.clone();
    if let Some(sym) = scan.body.ty(scan.body.args[first].value).shape.get(scan.axis).and_then(|d| d.sym.as_ref()) {
        env.remove(sym);
    }
    let mut carries: Vec<Tensor> = ins[..nc].iter().map(|&t| t.clone()).collect();
    // pieces[output][chunk], filled in visiting order.
    let mut pieces: Vec<Vec<Tensor>> = Vec::new();
    let order: Box<dyn Iterator<Item = usize>> = if scan.reverse { Box::new((0..n_chunks).rev()) } else { Box::new(0..n_chunks) };
    for k in order {
        let start = k * scan.chunk;
        let end = (start + scan.chunk).min(total);
        let mut args: Vec<Cow<'_, Tensor>> = carries.drain(..).map(Cow::Owned).collect();
        args.extend(
            ins[nc..nc + ns]
                .iter()
                .zip(&iteration)
                .map(|(&t, &it)| Cow::Owned(if it { slice(t, scan.axis, k, k + 1) } else { slice(t, scan.axis, start, end) })),
        );
        args.extend(ins[nc + ns..].iter().map(|&t| Cow::Borrowed(t)));
        let mut outs = body(args, &env).with_context(|| format!("scan body, chunk {k} (at {start})"))?;
        let rest = outs.split_off(nc);
        carries = outs;
        if pieces.is_empty() {
            pieces = rest.into_iter().map(|t| vec![t]).collect();
        } else {
            for (p, t) in pieces.iter_mut().zip(rest) {
                p.push(t);
            }
        }
    }
    if scan.reverse {
        pieces.iter_mut().for_each(|p| p.reverse());
    }
    let stacked = pieces.iter().map(|p| concat(&p.iter().collect::<Vec<_>>(), scan.axis));
    Ok(carries.into_iter().chain(stacked).collect())
}

/// The float arithmetic the interpreter needs, for f32 and f64.
pub trait Real:
    Copy + PartialOrd + Default + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self> + Div<Output = Self> + Neg<Output = Self> + AddAssign
{
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn ln_1p(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn sin(self) -> Self;
    fn cos(self) -> Self;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

fn unary<R: Real>(u: UnaryOp, x: &[R]) -> Vec<R> {
    let one = R::from_f64(1.0);
    let half = R::from_f64(0.5);
    let f = |v: R| -> R {
        match u {
            UnaryOp::Neg => -v,
            UnaryOp::Exp => v.exp(),
            UnaryOp::Log => v.ln(),
            UnaryOp::Sqrt => v.sqrt(),
            UnaryOp::Rsqrt => one / v.sqrt(),
            UnaryOp::Tanh => v.tanh(),
            UnaryOp::Sigmoid => one / (one + (-v).exp()),
            UnaryOp::Silu => v / (one + (-v).exp()),
            UnaryOp::GeluTanh => {
                let c = R::from_f64((2.0 / std::f64::consts::PI).sqrt());
                half * v * (one + (c * (v + R::from_f64(0.044715) * v * v * v)).tanh())
            }
            UnaryOp::Softplus => {
                if v > R::from_f64(20.0) {
                    v
                } else {
                    v.exp().ln_1p()
                }
            }
            UnaryOp::Sin => v.sin(),
            UnaryOp::Cos => v.cos(),
        }
    };
    x.iter().map(|&v| f(v)).collect()
}

fn bin<T: Copy + PartialOrd + From<u8> + Add<Output = T> + Sub<Output = T> + Mul<Output = T> + Div<Output = T>>(b: BinaryOp) -> impl Fn(T, T) -> T {
    move |x, y| match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Max => {
            if y > x {
                y
            } else {
                x
            }
        }
        BinaryOp::Ge => T::from((x >= y) as u8),
    }
}

fn binary(b: BinaryOp, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let shape = broadcast_shape(&x.shape, &y.shape)?;
    let sx = broadcast_strides(&x.shape, &shape)?;
    let sy = broadcast_strides(&y.shape, &shape)?;
    let data = match (&x.data, &y.data) {
        (Data::F32(a), Data::F32(c)) => Data::F32(zip_strided(a, &sx, c, &sy, &shape, bin(b))),
        (Data::F64(a), Data::F64(c)) => Data::F64(zip_strided(a, &sx, c, &sy, &shape, bin(b))),
        (Data::I64(a), Data::I64(c)) => {
            if b == BinaryOp::Div && c.contains(&0) {
                bail!("integer division by zero");
            }
            // Two's-complement wrapping, as on every backend, rather than an overflow panic.
            let f = move |x: i64, y: i64| match b {
                BinaryOp::Add => x.wrapping_add(y),
                BinaryOp::Sub => x.wrapping_sub(y),
                BinaryOp::Mul => x.wrapping_mul(y),
                BinaryOp::Div => x.wrapping_div(y),
                BinaryOp::Max => x.max(y),
                BinaryOp::Ge => (x >= y) as i64,
            };
            Data::I64(zip_strided(a, &sx, c, &sy, &shape, f))
        }
        _ => bail!("operand types differ: {x} and {y}"),
    };
    Ok(Tensor { shape, data })
}

/// Calls `f(offset)` for every index of `shape` in row-major order, with the offset that `strides` give.
fn for_each_offset(shape: &[usize], strides: &[usize], base: usize, mut f: impl FnMut(usize)) {
    let n: usize = shape.iter().product();
    if n == 0 {
        return;
    }
    let r = shape.len();
    let mut idx = vec![0usize; r];
    let mut off = base;
    for _ in 0..n {
        f(off);
        for a in (0..r).rev() {
            idx[a] += 1;
            off += strides[a];
            if idx[a] < shape[a] {
                break;
            }
            off -= strides[a] * shape[a];
            idx[a] = 0;
        }
    }
}

fn zip_strided<T: Copy, U: Copy>(a: &[T], sa: &[usize], b: &[T], sb: &[usize], shape: &[usize], f: impl Fn(T, T) -> U) -> Vec<U> {
    let mut offs_b = Vec::with_capacity(shape.iter().product());
    for_each_offset(shape, sb, 0, |o| offs_b.push(o));
    let mut out = Vec::with_capacity(offs_b.len());
    let mut k = 0;
    for_each_offset(shape, sa, 0, |o| {
        out.push(f(a[o], b[offs_b[k]]));
        k += 1;
    });
    out
}

fn strided(t: &Tensor, base: usize, strides: &[usize], shape: Vec<usize>) -> Tensor {
    fn pick<T: Copy>(v: &[T], base: usize, strides: &[usize], shape: &[usize]) -> Vec<T> {
        let mut out = Vec::with_capacity(shape.iter().product());
        // Row by row along the last axis longer than 1: copied whole when contiguous in the
        // source, else stepped through with its stride.
        let keep = shape.iter().rposition(|&n| n != 1).map_or(0, |i| i + 1);
        let (shape, strides) = (&shape[..keep], &strides[..keep]);
        match (shape.split_last(), strides.split_last()) {
            (Some((&len, outer)), Some((&1, outer_strides))) => for_each_offset(outer, outer_strides, base, |o| out.extend_from_slice(&v[o..o + len])),
            (Some((&len, outer)), Some((&step, outer_strides))) => {
                for_each_offset(outer, outer_strides, base, |o| out.extend((0..len).map(|j| v[o + j * step])))
            }
            _ => for_each_offset(shape, strides, base, |o| out.push(v[o])),
        }
        out
    }
    let data = match &t.data {
        Data::F32(v) => Data::F32(pick(v, base, strides, &shape)),
        Data::F64(v) => Data::F64(pick(v, base, strides, &shape)),
        Data::I64(v) => Data::I64(pick(v, base, strides, &shape)),
    };
    Tensor { shape, data }
}

fn slice(t: &Tensor, axis: usize, start: usize, end: usize) -> Tensor {
    let strides = contiguous_strides(&t.shape);
    let mut shape = t.shape.clone();
    shape[axis] = end - start;
    strided(t, start * strides[axis], &strides, shape)
}

/// `[outer, len, inner]` view of a shape around `axis`.
fn concat(ts: &[&Tensor], axis: usize) -> Tensor {
    fn cat<T: Copy>(parts: &[(&[T], usize)], outer: usize, inner: usize) -> Vec<T> {
        let total: usize = parts.iter().map(|(v, _)| v.len()).sum();
        let mut out = Vec::with_capacity(total);
        for o in 0..outer {
            for (v, len) in parts {
                let run = len * inner;
                // Runs of one element (interleaved pairs) are pushed: a slice copy costs more.
                if run == 1 {
                    out.push(v[o]);
                } else {
                    out.extend_from_slice(&v[o * run..(o + 1) * run]);
                }
            }
        }
        out
    }
    let (outer, _, inner) = split_at_axis(&ts[0].shape, axis);
    let mut shape = ts[0].shape.clone();
    shape[axis] = ts.iter().map(|t| t.shape[axis]).sum();
    macro_rules! cat_as {
        ($variant:ident) => {{
            let parts: Vec<_> = ts
                .iter()
                .map(|t| match &t.data {
                    Data::$variant(v) => (v.as_slice(), t.shape[axis]),
                    _ => unreachable!("verified: concat operands share a type"),
                })
                .collect();
            Data::$variant(cat(&parts, outer, inner))
        }};
    }
    let data = match &ts[0].data {
        Data::F32(_) => cat_as!(F32),
        Data::F64(_) => cat_as!(F64),
        Data::I64(_) => cat_as!(I64),
    };
    Tensor { shape, data }
}

fn pad(t: &Tensor, axis: usize, before: usize, after: usize) -> Tensor {
    fn go<T: Copy + Default>(v: &[T], outer: usize, len: usize, inner: usize, before: usize, after: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * (len + before + after) * inner);
        for o in 0..outer {
            out.extend(std::iter::repeat_n(T::default(), before * inner));
            out.extend_from_slice(&v[o * len * inner..(o + 1) * len * inner]);
            out.extend(std::iter::repeat_n(T::default(), after * inner));
        }
        out
    }
    let (outer, len, inner) = split_at_axis(&t.shape, axis);
    let mut shape = t.shape.clone();
    shape[axis] += before + after;
    let data = match &t.data {
        Data::F32(v) => Data::F32(go(v, outer, len, inner, before, after)),
        Data::F64(v) => Data::F64(go(v, outer, len, inner, before, after)),
        Data::I64(v) => Data::I64(go(v, outer, len, inner, before, after)),
    };
    Tensor { shape, data }
}

fn gather(table: &Tensor, index: &Tensor, axis: usize) -> Result<Tensor> {
    let idx = index.as_i64().context("gather index must be i64")?;
    let (outer, len, inner) = split_at_axis(&table.shape, axis);
    for &k in idx {
        ensure!(k >= 0 && (k as usize) < len, "index {k} out of range for an axis of length {len}");
    }
    fn go<T: Copy>(v: &[T], idx: &[i64], outer: usize, len: usize, inner: usize) -> Vec<T> {
        let mut out = Vec::with_capacity(outer * idx.len() * inner);
        for o in 0..outer {
            for &k in idx {
                let s = (o * len + k as usize) * inner;
                out.extend_from_slice(&v[s..s + inner]);
            }
        }
        out
    }
    let mut shape = table.shape[..axis].to_vec();
    shape.extend_from_slice(&index.shape);
    shape.extend_from_slice(&table.shape[axis + 1..]);
    let data = match &table.data {
        Data::F32(v) => Data::F32(go(v, idx, outer, len, inner)),
        Data::F64(v) => Data::F64(go(v, idx, outer, len, inner)),
        Data::I64(v) => Data::I64(go(v, idx, outer, len, inner)),
    };
    Ok(Tensor { shape, data })
}

fn scatter_add(updates: &Tensor, index: &Tensor, depth: usize) -> Result<Tensor> {
    let idx = index.as_i64().context("scatter_add index must be i64")?;
    let row: usize = updates.shape[index.shape.len()..].iter().product();
    for &k in idx {
        ensure!(k >= 0 && (k as usize) < depth, "index {k} out of range for depth {depth}");
    }
    fn go<T: Copy + Default + AddAssign>(u: &[T], idx: &[i64], depth: usize, row: usize) -> Vec<T> {
        let mut out = vec![T::default(); depth * row];
        for (i, &k) in idx.iter().enumerate() {
            let dst = &mut out[k as usize * row..(k as usize + 1) * row];
            for (o, &x) in dst.iter_mut().zip(&u[i * row..(i + 1) * row]) {
                *o += x;
            }
        }
        out
    }
    let mut shape = vec![depth];
    shape.extend_from_slice(&updates.shape[index.shape.len()..]);
    let data = match &updates.data {
        Data::F32(v) => Data::F32(go(v, idx, depth, row)),
        Data::F64(v) => Data::F64(go(v, idx, depth, row)),
        Data::I64(_) => bail!("scatter_add needs float updates, got {updates}"),
    };
    Ok(Tensor { shape, data })
}

fn reduce(t: &Tensor, kind: ReduceKind, axis: usize, keepdim: bool) -> Result<Tensor> {
    let (outer, len, inner, shape) = reduction(&t.shape, kind, axis, keepdim)?;
    Ok(map_float!(t, shape, |v| reduce_kernel(v, kind, outer, len, inner)))
}

fn reduce_kernel<R: Real>(v: &[R], kind: ReduceKind, outer: usize, len: usize, inner: usize) -> Vec<R> {
    let mut out = Vec::with_capacity(outer * inner);
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| v[(o * len + k) * inner + i];
            out.push(match kind {
                ReduceKind::Sum | ReduceKind::Mean => {
                    let mut s = R::from_f64(0.0);
                    for k in 0..len {
                        s += at(k);
                    }
                    if kind == ReduceKind::Mean {
                        s / R::from_f64(len as f64)
                    } else {
                        s
                    }
                }
                ReduceKind::Max => (1..len).map(at).fold(at(0), |m, x| if x > m { x } else { m }),
            });
        }
    }
    out
}

fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    let (m, k, n) = (a.shape[ra - 2], a.shape[ra - 1], b.shape[rb - 1]);
    ensure!(b.shape[rb - 2] == k, "matmul of {a} and {b}: contracted dimensions differ");
    let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let mut sa = broadcast_strides(&a.shape[..ra - 2], &batch)?;
    let mut sb = broadcast_strides(&b.shape[..rb - 2], &batch)?;
    sa.iter_mut().for_each(|s| *s *= m * k);
    sb.iter_mut().for_each(|s| *s *= k * n);
    let (mut offs_a, mut offs_b) = (Vec::new(), Vec::new());
    for_each_offset(&batch, &sa, 0, |o| offs_a.push(o));
    for_each_offset(&batch, &sb, 0, |o| offs_b.push(o));
    let mut shape = batch.clone();
    shape.extend([m, n]);
    fn go<R: Real>(x: &[R], y: &[R], offs_a: &[usize], offs_b: &[usize], m: usize, k: usize, n: usize) -> Vec<R> {
        let mut out = vec![R::default(); offs_a.len() * m * n];
        for (bi, (&oa, &ob)) in offs_a.iter().zip(offs_b).enumerate() {
            let c = &mut out[bi * m * n..(bi + 1) * m * n];
            for i in 0..m {
                let row = &mut c[i * n..(i + 1) * n];
                for p in 0..k {
                    let av = x[oa + i * k + p];
                    let brow = &y[ob + p * n..ob + (p + 1) * n];
                    for (r, &bv) in row.iter_mut().zip(brow) {
                        *r += av * bv;
                    }
                }
            }
        }
        out
    }
    let data = match (&a.data, &b.data) {
        (Data::F32(x), Data::F32(y)) => Data::F32(go(x, y, &offs_a, &offs_b, m, k, n)),
        (Data::F64(x), Data::F64(y)) => Data::F64(go(x, y, &offs_a, &offs_b, m, k, n)),
        _ => bail!("matmul needs float operands of one precision, got {a} and {b}"),
    };
    Ok(Tensor { shape, data })
}

fn tri_mask<R: Real>(v: &[R], rows: usize, cols: usize, fill: f64, window: Option<usize>) -> Vec<R> {
    let mut out = v.to_vec();
    for (i, x) in out.iter_mut().enumerate() {
        let (r, c) = ((i / cols) % rows, i % cols);
        if c > r || window.is_some_and(|w| r >= c + w) {
            *x = R::from_f64(fill);
        }
    }
    out
}

fn float_tensor(prec: Precision, shape: Vec<usize>, v: Vec<f64>) -> Tensor {
    match prec {
        Precision::F32 => Tensor::f32(shape, v.into_iter().map(|x| x as f32).collect()),
        Precision::F64 => Tensor::f64(shape, v),
    }
}

fn constant(value: f64, dtype: DType, prec: Precision, shape: Vec<usize>, n: usize) -> Tensor {
    match dtype {
        DType::I64 => Tensor::i64(shape, vec![value as i64; n]),
        DType::F32 => float_tensor(prec, shape, vec![value; n]),
    }
}

fn cast(t: &Tensor, to: DType, prec: Precision) -> Tensor {
    match (&t.data, to) {
        (Data::I64(v), DType::F32) => float_tensor(prec, t.shape.clone(), v.iter().map(|&x| x as f64).collect()),
        (Data::F32(v), DType::I64) => Tensor::i64(t.shape.clone(), v.iter().map(|&x| x as i64).collect()),
        (Data::F64(v), DType::I64) => Tensor::i64(t.shape.clone(), v.iter().map(|&x| x as i64).collect()),
        _ => t.clone(),
    }
}
